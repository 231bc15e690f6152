"""gap-eval: accuracy of one or more artifacts on a labelled image folder, per precision and input size."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gap_deploy.runtime.cli.common import (
    fail,
    gap_command,
    image_size,
    info,
    named_artifacts,
    report_errors,
    threads_option,
    write_json,
)
from gap_deploy.runtime.session import BACKENDS


@gap_command()
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--data", "folder", required=True, type=click.Path(path_type=Path),
              help="Labelled images: one sub-folder per class, named like the model's classes.")
@click.option("--imgsz", "sizes", multiple=True, metavar="N|HxW",
              help="The input size, in place of the model's preprocessing's own (its resize policy, crop and "
                   "interpolation kept); repeat for a sweep. Default: the model's preprocessing as stored.")
@click.option("--decode", type=click.Choice(["exact", "fast", "both"]), default="exact", show_default=True,
              help="exact: the preprocessing to the letter; fast: JPEGs decoded at reduced scale and resized as "
                   "8-bit (see gap-run --decode); both: every artifact both ways, side by side, with their top-1 "
                   "agreement and how far the probability of the true class moves.")
@click.option("--backend", type=click.Choice(BACKENDS), help="Default: the best backend that really works here.")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(1, 4096),
              help="Most images of one size run together.")
@threads_option("the cores the image decoding leaves")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write the results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write a PNG of accuracy against input size (needs matplotlib: gap-deploy[plot]).")
@report_errors
def main(artifacts, folder, sizes, decode, backend, batch_size, threads, json_path, plot_path):
    """Accuracy of ARTIFACTS (.onnx, .plan, .xml, bundles; NAME=PATH to name them) on a labelled folder, at one
    or more sizes.

    Top-1 and top-5 per artifact and size, top-1 agreement between artifacts, top-1 per class, JSON and a
    plot of accuracy against size: whether the model is as good at other sizes as at its training size,
    and what FP16 or INT8 cost on your own data. Example:

        gap-eval fp32=model.onnx fp16=model.fp16.onnx int8=model.int8.onnx --data val/ --imgsz 32 --imgsz 64
    """
    from gap_deploy.runtime.evaluate import evaluate, format_table, plot
    from gap_deploy.runtime.files import check_distinct, check_output_path
    from gap_deploy.runtime.images import IMAGE_SUFFIXES
    named = named_artifacts(artifacts)
    parsed = [image_size(s) for s in sizes] or [None]
    for path in (json_path, plot_path):
        if path:
            check_output_path(path)
    check_distinct({**{f"artifact {n}": p for n, p in named.items()}, "--data": folder},
                   {"--json": json_path, "--plot": plot_path})
    if plot_path:
        from gap_deploy.runtime._lazy import require

        require("matplotlib", purpose="for --plot")
    count = sum(1 for p in Path(folder).glob("*/*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else 0
    info(f"Evaluating {len(named)} artifact(s) on {folder} ({count} images) at "
         f"{', '.join(s and f'{s[0]}x{s[1]}' or 'native' for s in parsed)} ...")
    from gap_deploy.runtime.stream import StreamStats

    stats = StreamStats()
    decodes = ("exact", "fast") if decode == "both" else (decode,)
    with click.progressbar(length=max(count * len(parsed) * len(decodes), 1), label="Evaluating",
                           file=sys.stderr) as bar:
        result = evaluate(named, folder, parsed, backend=backend, batch_size=batch_size, threads=threads,
                          progress=bar.update,
                          stats=stats, decodes=decodes)
    click.echo(format_table(result))
    info(stats.summary())
    if json_path:
        write_json(json_path, result.to_dict())
        info(f"Wrote {json_path}")
    if plot_path:
        plot(result, plot_path)
        info(f"Wrote {plot_path}")
    for item in result.errors:
        click.echo(click.style("Skipped: ", fg="yellow") + f"{item['file']} at {item['size']}: {item['error']}",
                   err=True)
    if result.errors:
        fail(f"{len(result.errors)} image evaluation(s) failed (listed above); the figures leave them out.")


if __name__ == "__main__":  # python -m gap_deploy.runtime.cli.eval
    main()
