"""gap-triton: a Triton Inference Server model repository from artifacts, or a check of any repository."""

from __future__ import annotations

from pathlib import Path

import click

from gap_deploy.runtime.cli.common import fail, gap_command, info, report_errors, sign_key_option


@gap_command()
@click.argument("artifacts", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", "repo", type=click.Path(path_type=Path), help="The model repository to write into.")
@click.option("--check", "check_repo", type=click.Path(path_type=Path),
              help="Check the repository REPO (written by anyone) against Triton's schema and its artifacts.")
@click.option("--name", help="Model name (default: the artifact's file name without suffixes).")
@click.option("--model-version", "version", default=1, show_default=True, type=click.IntRange(1),
              help="The model version folder (Triton serves the highest).")
@click.option("--backend", type=click.Choice(["auto", "python"]), default="auto", show_default=True,
              help="auto: onnxruntime_onnx / tensorrt_plan; python: the gap-deploy runtime inside Triton.")
@click.option("--kind", type=click.Choice(["auto", "KIND_GPU", "KIND_CPU"]), default="auto", show_default=True,
              help="Instance kind (auto: GPU, CPU for the python backend).")
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
              help="--backend python: folders the Triton python stub must import from (it ignores PYTHONPATH); "
                   "not needed where gap-deploy is installed for the stub's Python.")
@sign_key_option
@report_errors
def main(artifacts, repo, check_repo, name, version, backend, kind, count, gpus, max_batch, dynamic_batching,
         preferred, max_queue_delay_us, ort_tensorrt, python_paths):
    """Write a Triton model repository for ARTIFACTS (.onnx, .plan), or --check one.

    \b
        gap-triton model.onnx model.fp16.plan -o repo/
        gap-triton model.onnx --backend python -o repo/
        gap-triton --check repo/
    """
    from gap_deploy.exporter.triton import ServeOptions, check_repository, notes_for, read_artifact, write_repository

    if check_repo is not None:
        models, problems = check_repository(check_repo)
        for problem in problems:
            click.echo(str(problem))
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
    for artifact, folder in zip(artifacts, write_repository(artifacts, repo, options)):
        info(f"Wrote {folder} (config.pbtxt, labels.txt, {version}/)")
        click.echo((folder / "config.pbtxt").read_text())
        for note in notes_for(read_artifact(artifact)) if backend != "python" else ():
            info(f"Note: {folder.name} is {note}")


if __name__ == "__main__":  # python -m gap_deploy.exporter.cli.triton
    main()
