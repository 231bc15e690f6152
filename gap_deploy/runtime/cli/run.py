"""gap-run: classify image files with an exported model, without PyTorch."""

from __future__ import annotations

import contextlib
import csv
import json
import sys
from pathlib import Path

import click

from gap_deploy.runtime.classify import iter_classify
from gap_deploy.runtime.cli.common import (
    FiniteFloat,
    debug_enabled,
    fail,
    gap_command,
    image_size,
    info,
    old_name,
    report_errors,
    threads_option,
)
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


#: gap-run --format: how the results reach stdout
FORMATS = ("text", "json", "jsonl", "csv")


class ResultWriter:
    """gap-run's results on stdout in one of FORMATS. text, jsonl and csv write each result as it comes (flushed,
    nothing kept but the failed files of text, which go to stderr at the end); json keeps them for one document
    at the end. ``finish`` returns how many failed."""

    def __init__(self, fmt: str, topk: int, out=None):
        self.fmt, self.topk = fmt, topk
        self.out = out or sys.stdout
        self.results: list[dict] = []
        self.errors: list[dict] = []
        self.done = self.failed = 0
        self._csv = csv.writer(self.out, lineterminator="\n") if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(csv_header(topk))
            self.out.flush()

    def add(self, item: dict) -> None:
        self.done += 1
        self.failed += "error" in item
        if self.fmt == "jsonl":
            self.out.write(json.dumps(item) + "\n")
        elif self._csv is not None:
            self._csv.writerow(csv_row(item, self.topk))
        elif "error" in item:
            self.errors.append(item)
            return
        elif self.fmt == "json":
            self.results.append(item)
            return
        else:
            self.out.write(result_line(item) + "\n")
        self.out.flush()

    def finish(self, head: dict, stats: dict | None) -> int:
        """The end of the output: json's document, jsonl's summary line; text's failed files on stderr."""
        if self.fmt == "json":
            self.out.write(json.dumps({**head, "results": self.results, "errors": self.errors,
                                       **({"stats": stats} if stats is not None else {})}, indent=2) + "\n")
        elif self.fmt == "jsonl":
            self.out.write(json.dumps({"summary": {**head, "images": self.done, "failed": self.failed,
                                                   **({"stats": stats} if stats is not None else {})}}) + "\n")
        self.out.flush()
        print_skipped(self.errors)
        return self.failed


def csv_header(topk: int) -> list[str]:
    return ["file", "height", "width", *[f"{what}{i}" for i in range(1, topk + 1) for what in ("class", "prob")],
            "error"]


def csv_row(item: dict, topk: int) -> list:
    """One CSV row: the file, the size the model saw, top-k class and probability pairs, or the error."""
    if "error" in item:
        return [item["file"], "", "", *[""] * (2 * topk), item["error"]]
    tops = [value for t in item["top"] for value in (t["name"], f"{t['prob']:.6g}")]
    return [item["file"], *item["size"], *tops, *[""] * (2 * topk - len(tops)), ""]


def report(result: dict, total: int, fmt: str, topk: int) -> None:
    """gap-run's output for a classification that ended before any of it was written (--server); exit 1 when
    any file failed."""
    writer = ResultWriter(fmt, topk)
    for item in [*result["results"], *result["errors"]]:
        writer.add(item)
    writer.finish({k: v for k, v in result.items() if k not in ("results", "errors", "stats")}, result.get("stats"))
    if result["errors"]:
        info(f"{len(result['errors'])} of {total} image(s) failed.")
        sys.exit(1)


def run_on_server(server, model, images, *, topk, imgsz, fmt, concurrency, decode, recursive=False) -> None:
    from gap_deploy.runtime.images import collect_images, no_images_message
    from gap_deploy.runtime.triton_client import classify_remote, connect

    paths = collect_images(images, recursive=recursive)
    if not paths:
        fail(no_images_message(images, recursive=recursive))
    remote = connect(server, model, concurrency=concurrency)
    info(f"{model} on Triton at {server}: {len(paths)} image(s)")
    result = classify_remote(remote, paths, topk=topk, imgsz=image_size(imgsz) if imgsz else None, decode=decode)
    report(result, len(paths), fmt, topk)


def run_on_ray(artifact, images, address, output, *, topk, backend, imgsz, batch_size, workers, cpus_per_worker,
               logits, trust_engine, decode, recursive=False, threads=None) -> None:
    from gap_deploy.runtime.batch import BatchJob, run_batch

    if address is None or output is None:
        raise click.UsageError("--ray and --output go together: --ray [ADDRESS] --output results.parquet.")
    job = BatchJob(artifact, tuple(map(str, images)), output, backend=backend,
                   imgsz=image_size(imgsz) if imgsz else None, topk=topk, logits=logits, batch_size=batch_size,
                   workers=workers, cpus_per_worker=cpus_per_worker, address=address, trust_engine=trust_engine,
                   decode=decode, recursive=recursive, threads=threads, quiet=not debug_enabled())
    result = run_batch(job)
    click.echo(f"Wrote {result.output}: {result.rows} row(s) from {result.workers} worker(s) in {result.seconds:.1f} s"
               f" ({result.rows / max(result.seconds, 1e-9):.1f} images/s).")
    if result.per_worker:
        info("Images per worker: " + ", ".join(f"{w} {n}" for w, n in sorted(result.per_worker.items())))
    print_skipped(result.errors)
    if result.errors:
        info(f"{len(result.errors)} of {result.rows} image(s) failed; their rows hold the error.")
        sys.exit(1)


def bucket_sizes(text: str | None, imgsz: str | None) -> list[tuple[int, int]] | None:
    """--buckets as sizes (a list, HxW, or START:STOP:STEP, as gap-tune --imgsz reads them); None without it."""
    if text is None:
        return None
    if imgsz:
        raise click.UsageError("--buckets and --imgsz both set the size: give one.")
    from gap_deploy.runtime.tune import parse_sizes

    sizes = parse_sizes([text])
    if len({min(s) for s in sizes}) != len(sizes):
        raise click.BadParameter(f"{text!r}: two sizes share a side, so no image could be routed between them.",
                                 param_hint="--buckets")
    return sizes


#: the options each of gap-run's three modes reads; any other option given is refused (exit 2), never ignored
MODE_OPTIONS = {
    "local": {"topk", "backend", "imgsz", "buckets", "batch_size", "output_format", "trust_engine", "verify_key",
              "decode", "recursive", "threads"},
    "ray": {"topk", "backend", "imgsz", "decode", "trust_engine", "ray_address", "output", "workers", "cpus_per_worker",
            "logits", "ray_batch_size", "recursive", "threads"},
    "server": {"topk", "imgsz", "decode", "output_format", "server", "server_model", "concurrency", "recursive"},
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
@click.option("--buckets", metavar="SIZES", help="Each image at one of these sizes (e.g. 32,64,128; gap-tune "
              "--buckets chooses them): the smallest at least its side as the preprocessing scales it, else the "
              "largest. In place of --imgsz.")
@click.option("--decode", type=click.Choice(["exact", "fast"]), default="exact", show_default=True,
              help="exact: the model's preprocessing to the letter. fast: JPEGs decoded at reduced scale by libjpeg "
                   "and resized as 8-bit when the target is at most half the image (several times faster on photos; "
                   "gap-eval --decode both measures what it costs).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Most images of one size run together (local runs; --ray has --ray-batch-size).")
@click.option("--format", "output_format", type=click.Choice(FORMATS), default="text", show_default=True,
              help="How results reach stdout. text: a line per image. jsonl: a JSON object per image, then a summary "
                   "line. csv: a header, then a row per image (file, height, width, class1, prob1, ..., error). "
                   "text, jsonl and csv stream: each result is written as it is done (input order, flushed), so "
                   "results reach disk as they come and memory does not grow with the number of images. json: one "
                   "document at the end.")
@old_name("--json", "--format json", "output_format", flag_value="json")
@old_name("--json-lines", "--format jsonl", "output_format", flag_value="jsonl")
@threads_option("the cores the image decoding leaves (--ray: one per CPU an actor asks for)")
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
def main(ctx, artifact, images, topk, backend, imgsz, buckets, decode, batch_size, output_format, threads, recursive,
         trust_engine,
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
    if not images and mode != "server":  # with --server, ARTIFACT is the first image
        raise click.UsageError(f"no images given: gap-run {artifact} IMAGES... (image files, or folders of them).")
    if mode == "server":
        if not (server and server_model):
            raise click.UsageError("--server and --model go together: --server HOST:PORT --model NAME IMAGES...")
        return run_on_server(server, server_model, (str(artifact), *images), topk=topk, imgsz=imgsz,
                             fmt=output_format, concurrency=concurrency, decode=decode, recursive=recursive)
    if mode == "ray":
        return run_on_ray(artifact, images, ray_address, output, topk=topk, backend=backend, imgsz=imgsz,
                          batch_size=ray_batch_size, workers=workers, cpus_per_worker=cpus_per_worker, logits=logits,
                          trust_engine=trust_engine, decode=decode, recursive=recursive, threads=threads)
    from gap_deploy import runtime
    from gap_deploy.runtime.bundle import check_artifact
    from gap_deploy.runtime.images import image_paths, no_images_message
    from gap_deploy.runtime.limits import check_memory

    size = image_size(imgsz) if imgsz else None
    routed = bucket_sizes(buckets, imgsz)
    check_artifact(artifact)
    paths = image_paths(images, recursive=recursive)  # strings: the list is held for the whole run
    if not paths:
        fail(no_images_message(images, recursive=recursive))
    from gap_deploy.runtime.stream import inference_threads

    session = runtime.load(artifact, backend, trust_engine=trust_engine, verify_key=verify_key or None,
                           threads=threads or inference_threads())
    largest = size or (max(routed, key=lambda s: s[0] * s[1]) if routed else None)
    if largest:
        check_memory((batch_size, session.spec.channels, *largest),
                     "--imgsz with --batch-size" if size else "the largest --buckets size with --batch-size")
    info(f"{artifact} on {session.backend}: {len(paths)} image(s)")
    stats = StreamStats()
    writer = ResultWriter(output_format, topk)
    # A progress bar on stderr for many images, unless the result lines go to the same terminal (they are the
    # progress there).
    show_bar = len(paths) >= 20 and (output_format == "json" or not sys.stdout.isatty())
    with click.progressbar(length=len(paths), label="Classifying", file=sys.stderr) if show_bar \
            else contextlib.nullcontext() as bar:
        for item in iter_classify(session, paths, topk=topk, imgsz=size, batch_size=batch_size, stats=stats,
                                  decode=decode, buckets=routed):
            writer.add(item)
            if bar is not None:
                bar.update(1)
    failed = writer.finish({"artifact": str(session.path), "backend": session.backend}, stats.to_dict())
    info(stats.summary())
    if failed:
        held = "" if output_format == "text" else f"; their {'rows' if output_format == 'csv' else 'entries'} " \
                                                  "hold the error"
        info(f"{failed} of {len(paths)} image(s) failed{held}.")
        sys.exit(1)


if __name__ == "__main__":  # python -m gap_deploy.runtime.cli.run
    main()
