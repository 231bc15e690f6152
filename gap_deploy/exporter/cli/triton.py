"""gap-triton: a Triton Inference Server model repository from artifacts, or a check of any repository."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gap_deploy.runtime.cli.common import (
    fail,
    gap_command,
    info,
    old_name,
    report_errors,
    sign_key_option,
    write_json,
)


@gap_command()
@click.argument("artifacts", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", "repo", type=click.Path(path_type=Path), help="The model repository to write into.")
@click.option("--check", "check_repo", type=click.Path(path_type=Path),
              help="Check the repository REPO (written by anyone) against Triton's schema and its artifacts.")
@click.option("--serve", "serve_repo", type=click.Path(path_type=Path), metavar="REPO",
              help="Serve REPO with the tritonserver nvidia-pytriton bundles (python-backend models only; CPU) until "
                   "Ctrl-C, on --address:--http-port.")
@click.option("--address", default="127.0.0.1", show_default=True, help="--serve: the address to listen on.")
@click.option("--http-port", type=click.IntRange(1, 65535), help="--serve: the HTTP port. Default: a free one.")
@click.option("--name", help="Model name (default: the artifact's file name without suffixes).")
@click.option("--model-version", "version", default=1, show_default=True, type=click.IntRange(1),
              help="The model version folder (Triton serves the highest).")
@click.option("--triton-backend", "backend", type=click.Choice(["auto", "python"]), default="auto",
              show_default=True, help="Triton's backend. auto: onnxruntime_onnx / tensorrt_plan; python: the "
                                      "gap-deploy runtime inside Triton.")
@old_name("--backend", "--triton-backend", "backend", type=click.Choice(["auto", "python"]))
@click.option("--kind", type=click.Choice(["auto", "KIND_AUTO", "KIND_GPU", "KIND_CPU"]), default="auto",
              show_default=True, help="Instance kind. auto: what the backend needs: KIND_GPU for a plan and "
                                      "--ort-tensorrt, KIND_AUTO for ONNX (GPU where there is one, else CPU), "
                                      "KIND_CPU for the python backend.")
@click.option("--count", default=1, show_default=True, type=click.IntRange(1, 64), help="Instances per group.")
@click.option("--gpus", default="0", show_default=True, help="GPU ids for GPU instances, comma-separated.")
@click.option("--max-batch", type=click.IntRange(1, 4096),
              help="max_batch_size (default: a plan's smallest profile max batch, 16 for ONNX).")
@click.option("--dynamic-batching/--no-dynamic-batching", default=True, show_default=True)
@click.option("--preferred-batch", "preferred", multiple=True, type=click.IntRange(1, 4096),
              help="Preferred batch sizes for the dynamic batcher (repeatable; default 4, 8, 16 up to max).")
@click.option("--max-queue-delay-us", default=1000, show_default=True, type=click.IntRange(0, 10_000_000),
              help="How long the dynamic batcher waits to fill a batch.")
@click.option("--ort-tensorrt", is_flag=True, help="ONNX on GPU: ONNX Runtime's TensorRT accelerator, with the "
              "model's profile and engine cache on; the precision is the ONNX's own (no precision_mode).")
@click.option("--python-path", "python_paths", multiple=True, metavar="DIR",
              help="--triton-backend python: folders the Triton python stub must import from (it ignores PYTHONPATH); "
                   "not needed where gap-deploy is installed for the stub's Python.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), metavar="FILE",
              help="Write what was written (or --check's findings) as JSON.")
@sign_key_option
@report_errors
def main(artifacts, repo, check_repo, serve_repo, address, http_port, name, version, backend, kind, count, gpus,
         max_batch, dynamic_batching, preferred, max_queue_delay_us, ort_tensorrt, python_paths, json_path):
    """Write a Triton model repository for ARTIFACTS (.onnx, .plan), --check one, or --serve one.

    \b
        gap-triton model.onnx model.fp16.plan -o repo/
        gap-triton model.onnx --triton-backend python -o repo/
        gap-triton --check repo/
        gap-triton --serve repo/ --http-port 8000
    """
    from gap_deploy.exporter.triton import ServeOptions, check_repository, notes_for, read_artifact, write_repository

    if sum(x is not None for x in (check_repo, serve_repo, repo)) > 1:
        raise click.UsageError("-o REPO, --check REPO and --serve REPO are three tasks: give one.")
    if serve_repo is not None:
        return serve_until_stopped(serve_repo, address, http_port)
    if json_path:  # never over an artifact, nor inside the repository checked or written
        from gap_deploy.runtime.files import check_distinct, check_output_path

        check_distinct({**{f"ARTIFACT {a}": a for a in artifacts}, "--check": check_repo},
                       {"--json": json_path, "-o/--output": repo}, output_folders=("-o/--output",))
        check_output_path(json_path)
    if check_repo is not None:
        models, problems = check_repository(check_repo)
        for problem in problems:
            click.echo(str(problem))
        if json_path:
            write_json(json_path, {"repository": str(check_repo), "models": models,
                                   "problems": [str(p) for p in problems]})
        if problems:
            fail(f"{len(problems)} problem(s) in {check_repo} ({len(models)} model(s) checked).")
        click.echo(f"{check_repo}: {len(models)} model(s), every config agrees with Triton's schema and its artifact.")
        return
    if not artifacts or repo is None:
        raise click.UsageError("give ARTIFACTS and -o REPO, or --check REPO.")
    try:
        gpu_ids = tuple(int(g) for g in gpus.split(",") if g.strip())
    except ValueError:
        raise click.BadParameter(f"{gpus!r} is not a comma-separated list of GPU ids.", param_hint="--gpus") from None
    options = ServeOptions(name=name, version=version, backend=backend, kind=kind, count=count, gpus=gpu_ids,
                           max_batch=max_batch, dynamic_batching=dynamic_batching,
                           preferred_batch_sizes=tuple(preferred), max_queue_delay_us=max_queue_delay_us,
                           ort_tensorrt=ort_tensorrt, python_paths=tuple(str(Path(p).resolve()) for p in python_paths))
    written = []
    for artifact, folder in zip(artifacts, write_repository(artifacts, repo, options)):
        info(f"Wrote {folder} (config.pbtxt, labels.txt, {version}/)")
        config = (folder / "config.pbtxt").read_text()
        click.echo(config)
        notes = [f"{folder.name} is {note}" for note in notes_for(read_artifact(artifact))] \
            if backend != "python" else []
        for note in notes:
            info(f"Note: {note}")
        written.append({"name": folder.name, "artifact": str(artifact), "folder": str(folder),
                        "config": config, "notes": notes})
    if json_path:
        write_json(json_path, {"repository": str(repo), "models": written})
    if backend == "python":
        info(f"Try it here: gap-triton --serve {repo}")
        if not python_paths and sys.prefix != sys.base_prefix:
            info("Note: Triton's python stub does not see this virtual environment: where gap-deploy is not "
                 "installed for the stub's Python, write the repository with --python-path for each of "
                 f"{', '.join(stub_paths())}.")


def stub_paths() -> list[str]:
    """The folders a python stub needs to import gap-deploy as this interpreter does: the package's parent
    (an editable install is found through a .pth file, which the stub does not read) and site-packages."""
    import site

    import gap_deploy

    return list(dict.fromkeys([str(Path(gap_deploy.__file__).resolve().parents[1]), *site.getsitepackages()]))


def serve_until_stopped(repo: Path, address: str, http_port: int | None) -> None:
    """--serve: the bundled tritonserver on REPO until Ctrl-C (or until it exits by itself: exit 1)."""
    import tempfile

    from gap_deploy.exporter.triton import check_repository
    from gap_deploy.exporter.triton_serve import serve

    models, problems = check_repository(repo)
    if problems:
        for problem in problems:
            click.echo(str(problem), err=True)
        fail(f"{len(problems)} problem(s) in {repo}; nothing was started.")
    with tempfile.TemporaryDirectory(prefix="gap-triton-") as work:
        info(f"Starting tritonserver on {repo} ({len(models)} model(s)) ...")
        with serve(repo, work, address=address, http_port=http_port) as served:
            import signal

            def terminated(signum, frame):  # docker stop, systemd, kill: stop as Ctrl-C does
                raise KeyboardInterrupt

            previous = signal.signal(signal.SIGTERM, terminated)  # before the line that says it serves
            try:
                click.echo(f"Serving {', '.join(models)} at http://{served.url}; classify with: gap-run --server "
                           f"{served.url} --model {models[0] if models else 'NAME'} IMAGES... (Ctrl-C stops it)")
                code = served.process.wait()
            except KeyboardInterrupt:
                info("Stopping tritonserver ...")
                return
            finally:
                signal.signal(signal.SIGTERM, previous)
            tail = served.log.read_text(errors="replace")[-2000:]
            fail(f"tritonserver exited by itself ({code}):\n{tail}")


if __name__ == "__main__":  # python -m gap_deploy.exporter.cli.triton
    main()
