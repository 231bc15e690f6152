"""gap-run: classify image files with an exported model, without PyTorch."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from gap_deploy.runtime.classify import iter_classify
from gap_deploy.runtime.cli.common import FiniteFloat, fail, gap_command, image_size, info, report_errors
from gap_deploy.runtime.session import BACKENDS
from gap_deploy.runtime.stream import StreamStats


def print_skipped(errors) -> None:
    """One "Skipped:" line per failed file, on stderr, naming the file once."""
    for item in errors:
        said = item["error"] if item["file"] in item["error"] else f"{item['file']}: {item['error']}"
        said = printable(said)
        click.echo(click.style("Skipped: ", fg="yellow") + said, err=True)


def printable(name: str) -> str:
    """A file name on one line: control characters (a newline would split gap-run's line) as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in name)


def result_line(item: dict) -> str:
    tops = "  ".join(f"{t['name']} {t['prob']:.3f}" for t in item["top"])
    return f"{printable(item['file'])} ({item['size'][0]}x{item['size'][1]}): {tops}"


def report(result: dict, total: int, as_json: bool, printed: bool = False) -> None:
    """gap-run's output for a classification report, local or remote (``printed``: the result lines were
    printed as they came); exit 1 when any file failed."""
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif not printed:
        for item in result["results"]:
            click.echo(result_line(item))
    print_skipped(result["errors"])
    if result["errors"]:
        info(f"{len(result['errors'])} of {total} image(s) failed.")
        sys.exit(1)


def run_on_server(server, model, images, *, topk, imgsz, as_json, concurrency, decode, recursive=False) -> None:
    from gap_deploy.runtime.images import collect_images, no_images_message
    from gap_deploy.runtime.triton_client import classify_remote, connect

    paths = collect_images(images, recursive=recursive)
    if not paths:
        fail(no_images_message(images, recursive=recursive))
    remote = connect(server, model, concurrency=concurrency)
    info(f"{model} on Triton at {server}: {len(paths)} image(s)")
    result = classify_remote(remote, paths, topk=topk, imgsz=image_size(imgsz) if imgsz else None, decode=decode)
    report(result, len(paths), as_json)


def run_on_ray(artifact, images, address, output, *, topk, backend, imgsz, batch_size, workers, cpus_per_worker,
               logits, trust_engine, decode, recursive=False) -> None:
    from gap_deploy.runtime.batch import BatchJob, run_batch

    if address is None or output is None:
        raise click.UsageError("--ray and --output go together: --ray [ADDRESS] --output results.parquet.")
    job = BatchJob(artifact, tuple(map(str, images)), output, backend=backend,
                   imgsz=image_size(imgsz) if imgsz else None, topk=topk, logits=logits, batch_size=batch_size,
                   workers=workers, cpus_per_worker=cpus_per_worker, address=address, trust_engine=trust_engine,
                   decode=decode, recursive=recursive)
    result = run_batch(job)
    click.echo(f"Wrote {result.output}: {result.rows} row(s) from {result.workers} worker(s) in {result.seconds:.1f} s"
               f" ({result.rows / max(result.seconds, 1e-9):.1f} images/s).")
    if result.per_worker:
        info("Images per worker: " + ", ".join(f"{w} {n}" for w, n in sorted(result.per_worker.items())))
    print_skipped(result.errors)
    if result.errors:
        info(f"{len(result.errors)} of {result.rows} image(s) failed; their rows hold the error.")
        sys.exit(1)


#: the options each of gap-run's three modes reads; any other option given is refused (exit 2), never ignored
MODE_OPTIONS = {
    "local": {"topk", "backend", "imgsz", "batch_size", "as_json", "json_lines", "trust_engine", "verify_key", "decode",
              "recursive"},
    "ray": {"topk", "backend", "imgsz", "decode", "trust_engine", "ray_address", "output", "workers", "cpus_per_worker",
            "logits", "ray_batch_size", "recursive"},
    "server": {"topk", "imgsz", "decode", "as_json", "server", "server_model", "concurrency", "recursive"},
}
MODE_NAMES = {"local": "a local run (no --ray, no --server)", "ray": "--ray", "server": "--server"}


def refuse_unused(ctx: click.Context, mode: str) -> None:
    """A usage error naming the first option given on the command line that ``mode`` does not read."""
    for param in ctx.command.params:
        if not isinstance(param, click.Option) or not param.expose_value or param.name in MODE_OPTIONS[mode]:
            continue
        if ctx.get_parameter_source(param.name) not in (None, click.core.ParameterSource.DEFAULT):
            users = [MODE_NAMES[m] for m, names in MODE_OPTIONS.items() if param.name in names]
            raise click.UsageError(f"{param.opts[0]} does not apply to {MODE_NAMES[mode]}; it is read only by "
                                   f"{' and '.join(users) or 'no mode'}. Nothing was run.")


@gap_command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1)  # str: click.Path would turn s3://bucket into s3:/bucket
@click.option("--topk", "-k", default=5, show_default=True, type=click.IntRange(min=1), help="Classes shown per image.")
@click.option("--backend", type=click.Choice(BACKENDS), help="Default: the best backend that really works here.")
@click.option("--imgsz", metavar="N|HxW", help="The input size, in place of the one in the model's preprocessing "
              "(its resize policy, crop and interpolation are kept). Default: the model's own preprocessing; a model "
              "exported without one keeps each image's size (a GAP network takes any size above its minimum).")
@click.option("--decode", type=click.Choice(["exact", "fast"]), default="exact", show_default=True,
              help="exact: the model's preprocessing to the letter. fast: JPEGs decoded at reduced scale by libjpeg "
                   "and resized as 8-bit when the target is at most half the image (several times faster on photos; "
                   "gap-eval --decode both measures what it costs).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Most images of one size run together (local runs; --ray has --ray-batch-size).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document on stdout, at the end.")
@click.option("--json-lines", is_flag=True, help="Print one JSON object per image on stdout as each is done (in input "
              "order, flushed), then a summary line: results reach disk as they come and memory does not grow with "
              "the number of images.")
@click.option("-r", "--recursive", is_flag=True, help="Folders' sub-folders too (a class-per-folder tree). Quoted "
              "glob patterns (\"photos/**/*.jpg\") are expanded alike with and without --ray.")
@click.option("--trust-engine", is_flag=True, help="Run a .plan that has no gap-build manifest (plans are code).")
@click.option("--verify-key", "verify_key", multiple=True, type=click.Path(path_type=Path), metavar="PUB.pem",
              help="Open the artifact only if its signature verifies under this public key (a file or a folder of "
                   ".pem; repeatable). Default: $GAP_DEPLOY_TRUSTED_KEYS. Plans always need one (or --trust-engine).")
@click.option("--ray", "ray_address", is_flag=False, flag_value="auto", default=None, metavar="[ADDRESS]",
              help="Classify with Ray Data: --ray alone joins RAY_ADDRESS or starts a local Ray; --ray ADDRESS joins "
                   "that cluster. IMAGES may also be globs or object-store URIs. Needs --output.")
@click.option("--output", "-o", type=click.Path(path_type=Path),
              help="--ray: the Parquet dataset (a folder) to write, one row per image.")
@click.option("--workers", type=click.IntRange(1, 10000),
              help="--ray: actors, one model each. Default: as many as the CPUs allow, leaving room for reading.")
@click.option("--cpus-per-worker", default=0.5, show_default=True, type=FiniteFloat(0.01, 1024),
              help="--ray: CPUs each actor asks for (a fraction leaves CPUs for the read tasks).")
@click.option("--logits", is_flag=True, help="--ray: also write each image's logits.")
@click.option("--ray-batch-size", default=256, show_default=True, type=click.IntRange(min=1),
              help="--ray: images per batch handed to a worker (Ray Data's map_batches batch size).")
@click.option("--server", metavar="HOST:PORT", help="Classify through a Triton server's HTTP API (see gap-triton); "
              "every positional argument is then an image.")
@click.option("--model", "server_model", help="--server: the model's name on the server.")
@click.option("--concurrency", default=8, show_default=True, type=click.IntRange(1, 256),
              help="--server: requests in flight at once.")
@click.pass_context
@report_errors
def main(ctx, artifact, images, topk, backend, imgsz, decode, batch_size, as_json, json_lines, recursive, trust_engine,
         ray_address, output, workers, cpus_per_worker, logits, ray_batch_size, server, server_model, concurrency,
         verify_key):
    """Classify IMAGES (files or folders of PNG/JPEG/BMP/...) with ARTIFACT (.onnx, .plan, OpenVINO .xml, or a
    gap-pack bundle).

    Images become the model's input as its preprocessing contract says (resize policy, interpolation, crop,
    channel order, scale, mean/std: stored in the model by gap-export, and the same in every runtime). Files
    that cannot be read or are too small are reported and skipped; the exit code is then 1.

    With --ray, Ray Data reads and classifies the images on a local Ray or a cluster and writes one
    Parquet row per image to --output (the same answers as without --ray). With --server, a Triton server
    classifies them and every positional argument is an image. An option that the chosen mode does not read
    is refused (exit 2).
    """
    mode = "server" if server is not None or server_model is not None else \
        "ray" if ray_address is not None or output is not None else "local"
    refuse_unused(ctx, mode)
    if as_json and json_lines:
        raise click.UsageError("--json and --json-lines are two forms of the same output: choose one.")
    if not images and mode != "server":  # with --server, ARTIFACT is the first image
        raise click.UsageError(f"no images given: gap-run {artifact} IMAGES... (image files, or folders of them).")
    if mode == "server":
        if not (server and server_model):
            raise click.UsageError("--server and --model go together: --server HOST:PORT --model NAME IMAGES...")
        return run_on_server(server, server_model, (str(artifact), *images), topk=topk, imgsz=imgsz,
                             as_json=as_json, concurrency=concurrency, decode=decode, recursive=recursive)
    if mode == "ray":
        return run_on_ray(artifact, images, ray_address, output, topk=topk, backend=backend, imgsz=imgsz,
                          batch_size=ray_batch_size, workers=workers, cpus_per_worker=cpus_per_worker, logits=logits,
                          trust_engine=trust_engine, decode=decode, recursive=recursive)
    from gap_deploy import runtime
    from gap_deploy.runtime.bundle import check_artifact
    from gap_deploy.runtime.images import image_paths, no_images_message
    from gap_deploy.runtime.limits import check_memory

    size = image_size(imgsz) if imgsz else None
    check_artifact(artifact)
    paths = image_paths(images, recursive=recursive)  # strings: the list is held for the whole run
    if not paths:
        fail(no_images_message(images, recursive=recursive))
    from gap_deploy.runtime.stream import inference_threads

    session = runtime.load(artifact, backend, trust_engine=trust_engine, verify_key=verify_key or None,
                           threads=inference_threads())
    if size:
        check_memory((batch_size, session.spec.channels, *size), "--imgsz with --batch-size")
    info(f"{artifact} on {session.backend}: {len(paths)} image(s)")
    if json_lines:
        return stream_json_lines(session, paths, topk=topk, imgsz=size, batch_size=batch_size, decode=decode)
    stats = StreamStats()
    results, errors = [], []
    # A progress bar on stderr for many images, unless the result lines go to the same terminal (they are the
    # progress there).
    show_bar = len(paths) >= 20 and (as_json or not sys.stdout.isatty())
    with click.progressbar(length=len(paths), label="Classifying", file=sys.stderr) if show_bar \
            else contextlib.nullcontext() as bar:
        # a stream: each line is printed as soon as it and every earlier image are done, in input order
        for item in iter_classify(session, paths, topk=topk, imgsz=size, batch_size=batch_size, stats=stats,
                                  decode=decode):
            if "error" in item:
                errors.append(item)
            elif as_json:
                results.append(item)
            else:
                click.echo(result_line(item))
            if bar is not None:
                bar.update(1)
    info(stats.summary())
    report({"artifact": str(session.path), "backend": session.backend, "results": results, "errors": errors,
            "stats": stats.to_dict()}, len(paths), as_json, printed=not as_json)


def stream_json_lines(session, paths, *, topk, imgsz, batch_size, decode) -> None:
    """--json-lines: each image's result (or error) as one JSON line on stdout as soon as it is done, flushed, and
    a last line with the summary; nothing is kept per image, so memory stays flat with the number of images. Exit
    1 when any file failed (its line holds the error)."""
    stats = StreamStats()
    failed = done = 0
    out = sys.stdout
    for item in iter_classify(session, paths, topk=topk, imgsz=imgsz, batch_size=batch_size, stats=stats,
                              decode=decode):
        done += 1
        failed += "error" in item
        out.write(json.dumps(item) + "\n")
        out.flush()
    out.write(json.dumps({"summary": {"artifact": str(session.path), "backend": session.backend, "images": done,
                                      "failed": failed, "stats": stats.to_dict()}}) + "\n")
    out.flush()
    info(stats.summary())
    if failed:
        info(f"{failed} of {done} image(s) failed; their lines hold the error.")
        sys.exit(1)


if __name__ == "__main__":  # python -m gap_deploy.runtime.cli.run
    main()
