"""gap-run: classify image files with an exported model, without PyTorch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from runtime.classify import classify
from runtime.cli.common import fail, image_size, info, report_errors
from runtime.session import BACKENDS

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.command(context_settings=CONTEXT)
@click.argument("artifact", type=click.Path(path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--topk", "-k", default=5, show_default=True, type=click.IntRange(min=1), help="Classes shown per image.")
@click.option("--backend", type=click.Choice(BACKENDS), help="Default: the best backend that really works here.")
@click.option("--imgsz", metavar="N|HxW", help="Resize every image first. Default: keep each image's size "
              "(a GAP network takes any size above its minimum).")
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1),
              help="Most images of one size run together.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option("--trust-engine", is_flag=True, help="Run a .plan that has no gap-build manifest (plans are code).")
@report_errors
def main(artifact, images, topk, backend, imgsz, batch_size, as_json, trust_engine):
    """Classify IMAGES (files or folders of PNG/JPEG/BMP/...) with ARTIFACT (.onnx or .plan).

    Images are converted to the model's channels, normalized with the mean/std stored in the model,
    and kept at their own size unless --imgsz is given. Files that cannot be read or are too small are
    reported and skipped; the exit code is then 1.
    """
    import runtime
    from runtime.files import check_input_file
    from runtime.images import IMAGE_SUFFIXES, collect_images
    from runtime.limits import check_memory

    size = image_size(imgsz) if imgsz else None
    check_input_file(artifact, "artifact")
    paths = collect_images(images)
    if not paths:
        fail(f"no image files in {', '.join(map(str, images))} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
    session = runtime.load(artifact, backend, trust_engine=trust_engine)
    if size:
        check_memory((batch_size, session.input_spec.channels or 3, *size), "--imgsz with --batch-size")
    info(f"{artifact} on {session.backend}: {len(paths)} image(s)")
    if len(paths) >= 20:
        with click.progressbar(length=len(paths), label="Classifying", file=sys.stderr) as bar:
            report = classify(session, paths, topk=topk, imgsz=size, batch_size=batch_size, progress=bar.update)
    else:
        report = classify(session, paths, topk=topk, imgsz=size, batch_size=batch_size)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for item in report["results"]:
            tops = "  ".join(f"{t['name']} {t['prob']:.3f}" for t in item["top"])
            click.echo(f"{item['file']} ({item['size'][0]}x{item['size'][1]}): {tops}")
    for item in report["errors"]:
        said = item["error"] if item["file"] in item["error"] else f"{item['file']}: {item['error']}"
        click.echo(click.style("Skipped: ", fg="yellow") + said, err=True)
    if report["errors"]:
        info(f"{len(report['errors'])} of {len(paths)} image(s) failed.")
        sys.exit(1)
