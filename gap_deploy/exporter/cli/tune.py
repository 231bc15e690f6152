"""gap-tune: which input size, precision and backend to deploy, decided from measurements on your own data."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from gap_deploy.runtime.cli.common import (
    FiniteFloat,
    fail,
    gap_command,
    info,
    old_name,
    report_errors,
    sign_key_option,
    threads_option,
    write_json,
)


@gap_command()
@click.argument("artifacts", nargs=-1, required=True)
@click.option("--data", "folder", required=True, type=click.Path(path_type=Path),
              help="Labelled images: one sub-folder per class, named like the model's classes.")
@click.option("--imgsz", "sizes", multiple=True, metavar="SPEC",
              help="Input sizes: START:STOP:STEP (e.g. 32:256:16), a list (32,48,64) or HxW; repeatable. "
                   "Default: half to twice the export size in quarter steps, above the model's minimum.")
@old_name("--sizes", "--imgsz", "sizes", multiple=True)
@click.option("--no-native", is_flag=True, help="Leave out the 'native' point (each image at its own size).")
@click.option("--backend", "backends", multiple=True, metavar="NAME",
              help="Backends to measure (repeatable). Default: every one that really works here "
                   "(ort-trt only when named: it builds an engine per start).")
@click.option("--batch-size", "batch", default=1, show_default=True, type=click.IntRange(1, 4096),
              help="Batch size the latency and throughput are measured at.")
@old_name("--batch", "--batch-size", "batch", type=click.IntRange(1, 4096))
@threads_option("the runtime's own (one per core), as gap-bench measures")
@click.option("--max-images", type=click.IntRange(1, None), metavar="N",
              help="At most N images per class (the first in name order); the intervals widen accordingly.")
@click.option("--duration", default=0.5, show_default=True, type=FiniteFloat(0.05, 600),
              help="Seconds of timing per point, after 0.1 s of warm-up.")
@click.option("--min-top1", type=FiniteFloat(0.0, 1.0), metavar="X", help="Choose the fastest point with top-1 >= X "
              "(0.75 or 75%: give 0.75).")
@click.option("--max-ms", type=FiniteFloat(0.0, 1e9), metavar="Y", help="Choose the most accurate point with median "
              "latency <= Y ms at --batch-size.")
@click.option("--min-ips", type=FiniteFloat(0.0, 1e12), metavar="Z",
              help="Choose the most accurate point with throughput >= Z images/s.")
@click.option("--traffic", multiple=True, metavar="DIR_OR_LIST",
              help="--buckets: the images the deployment will see (a folder, walked with its sub-folders; image "
                   "files; a quoted glob; or a text file of image paths). Only their headers are read.")
@click.option("--buckets", metavar="K|auto", help="Choose K fixed sizes (1 to 8) that serve --traffic fastest with "
              "every bucket at --min-top1, each image going to the smallest bucket at least its size; auto: the "
              "fewest within 5% of the best K's predicted latency.")
@click.option("--traffic-sample", default=5000, show_default=True, type=click.IntRange(1, 10_000_000), metavar="N",
              help="--traffic: read at most N headers (evenly spaced through the sorted list).")
@click.option("--serving-sample", default=32, show_default=True, type=click.IntRange(0, 100_000), metavar="N",
              help="--buckets: run N of the traffic's images at every size through gap-run's own pipeline "
                   "(decoding threads, preparation, the model) for the serving prediction a replay is compared "
                   "with; 0: predict from the model's medians alone.")
@click.option("--plot-buckets", "plot_buckets", type=click.Path(path_type=Path, dir_okay=False),
              help="--buckets: write a PNG of the traffic's size histogram with the bucket edges, and predicted "
                   "latency against the number of buckets (needs gap-deploy[plot]).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write every figure as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write a PNG of top-1 against latency with the Pareto front (needs gap-deploy[plot]).")
@click.option("--emit", "emit_dir", type=click.Path(path_type=Path, file_okay=False),
              help="Write what deploying the chosen point needs into this new folder (needs a constraint and "
                   "gap-deploy[convert]).")
@sign_key_option
@report_errors
def main(artifacts, folder, sizes, no_native, backends, batch, threads, max_images, duration, min_top1, max_ms, min_ips,
         traffic, buckets, traffic_sample, serving_sample, plot_buckets, json_path, plot_path, emit_dir):
    """Measure ARTIFACTS (.onnx, .plan, .xml, bundles; NAME=PATH to name them) at many input sizes on your labelled
    images, and choose what to deploy.

    For every artifact x backend x size: top-1 and top-5 with 95% Wilson intervals (points whose intervals
    overlap are tied), and median/p99 latency and throughput at --batch-size, timed with gap-bench's harness in
    the same run. Prints the table and the Pareto front of accuracy against latency; with one of
    --min-top1, --max-ms or --min-ips, the chosen point, why, and what the next better points cost.
    Ctrl-C stops and still prints and writes what was measured (exit 130). Example:

        gap-tune fp32=model.onnx fp16=model.fp16.onnx int8=model.int8.onnx --data val/ --imgsz 32:128:16 \\
            --min-top1 0.75 --plot tune.png --emit deploy/
    """
    from gap_deploy.runtime.bench import BenchSettings
    from gap_deploy.runtime.errors import UsageError
    from gap_deploy.runtime.tune import parse_sizes

    named, given = _check_options(artifacts, folder, backends, min_top1, max_ms, min_ips, json_path, plot_path,
                                  emit_dir, plot_buckets)
    traffic_sizes = _check_buckets(traffic, buckets, min_top1, traffic_sample)
    if plot_buckets and traffic_sizes is None:
        raise UsageError("--plot-buckets draws the plan of --traffic --buckets; give them, or drop it.")
    parsed = parse_sizes(sizes) if sizes else None
    settings = BenchSettings(warmup_s=0.1, duration_s=duration, min_iterations=5)
    result = _sweep(named, folder, sizes=parsed, native=not no_native, backends=list(backends) or None,
                    batch=batch, threads=threads, max_per_class=max_images, settings=settings,
                    stream=traffic_sizes.sample_paths(serving_sample) if traffic_sizes and serving_sample else ())
    from gap_deploy.runtime.tune import decide, format_table, plain_notes, plot

    decision = None
    if given and result.points:
        decision = decide(result.points, min_top1=min_top1, max_ms=max_ms, min_ips=min_ips)
    click.echo(format_table(result, decision))
    plain = plain_notes(result)
    for note in plain:
        click.echo(click.style("Warning: ", fg="yellow") + note, err=True)
    planning = None
    if traffic_sizes is not None and result.points and not result.interrupted:
        planning = _plan(result, traffic_sizes, buckets, min_top1, serving_sample)
    seconds = result.seconds
    info(f"Sweep: {seconds['total']:.1f} s (decoding {seconds['decode']:.1f} s once, evaluating "
         f"{seconds['evaluate']:.1f} s, timing {seconds['bench']:.1f} s).")
    if json_path:
        write_json(json_path, {**result.to_dict(decision), "buckets": planning.to_dict() if planning else None,
                               "plain_onnxruntime": plain})
        info(f"Wrote {json_path}")
    if plot_path and result.points:
        plot(result, plot_path, decision)
        info(f"Wrote {plot_path}")
    if plot_buckets and planning is not None:
        from gap_deploy.runtime.tune import plot_buckets as plot_plan

        plot_plan(planning, result.contract, plot_buckets)
        info(f"Wrote {plot_buckets}")
    if emit_dir and planning is not None:
        from gap_deploy.exporter.emit import emit_buckets

        files = emit_buckets(result, planning, named, emit_dir, log=info)
        info(f"Wrote {emit_dir}: {', '.join(files)}")
    elif emit_dir and decision and not result.interrupted:
        from gap_deploy.exporter.emit import emit

        files = emit(result, decision, named, emit_dir, log=info)
        info(f"Wrote {emit_dir}: {', '.join(files)}")
    for item in result.errors:
        click.echo(click.style("Skipped: ", fg="yellow") + f"{item['file']} at {item['size']}: {item['error']}",
                   err=True)
    if result.interrupted:
        click.echo("Interrupted: the figures above are what was measured.", err=True)
        sys.exit(130)
    if result.errors:
        fail(f"{len(result.errors)} image(s) could not be evaluated (listed above); the figures leave them out.")


def _check_buckets(traffic, buckets, min_top1, sample):
    """--traffic and --buckets go together, under --min-top1; the traffic's sizes, read before the sweep so a
    wrong folder answers at once (None without --buckets)."""
    from gap_deploy.runtime.buckets import MAX_BUCKETS, read_traffic
    from gap_deploy.runtime.errors import UsageError

    if not traffic and not buckets:
        return None
    if not (traffic and buckets):
        raise UsageError("--traffic and --buckets go together: --traffic IMAGES --buckets K (or auto).")
    if buckets != "auto" and not (buckets.isdigit() and 1 <= int(buckets) <= MAX_BUCKETS):
        raise UsageError(f"--buckets takes 1 to {MAX_BUCKETS} or auto; got {buckets!r}.")
    if min_top1 is None:
        raise UsageError("--buckets chooses under --min-top1 (every bucket must reach it); give --min-top1.")
    loaded = read_traffic(traffic, sample=sample)
    info(f"Traffic: {loaded.sampled} of {loaded.files} image header(s) read"
         + (f", {len(loaded.errors)} unreadable (left out)" if loaded.errors else "") + ".")
    return loaded


def _plan(result, traffic, buckets, min_top1, serving):
    """The bucket plan and its report: the buckets, the traffic's histogram over them, the K curve and the
    one-size choice beside it."""
    import numpy as np

    from gap_deploy.runtime.buckets import histogram, plan_buckets
    from gap_deploy.runtime.errors import ArtifactError
    from gap_deploy.runtime.images import header_size

    sizes = []
    for path in result.labelled:
        try:
            w, h = header_size(path)
        except ArtifactError:
            h = w = 0  # could not run anyway (its hits are -1 at every size)
        sizes.append((h, w))
    planning = plan_buckets(result, traffic, np.asarray(sizes).reshape(-1, 2), result.contract, k=buckets,
                            min_top1=min_top1)
    chosen, single = planning.chosen, planning.single
    click.echo(f"\nBuckets for the traffic ({traffic.sampled} image(s)), every bucket at top-1 >= {min_top1:.1%}: "
               f"{chosen.artifact} on {chosen.backend}")
    click.echo(f"  {'bucket':>7} {'share':>7} {'labelled':>8} {'top-1 (95% interval)':>24} "
               f"{'on the traffic':>22} {'median ms':>10}" + (f" {'serving ms':>10}" if chosen.streamed else ""))
    for b in chosen.buckets:
        low, high = b.interval
        on = "-" if b.on_traffic is None or b.on_traffic_interval is None else \
            f"{b.on_traffic:.1%} ({b.on_traffic_interval[0]:.1%}-{b.on_traffic_interval[1]:.1%})"
        click.echo(f"  {b.label:>7} {b.share:7.1%} {b.images:8d} {b.top1:8.1%} ({low:.1%}-{high:.1%})"
                   f"{'*' if b.whole_set else ' ':1} {on:>22} {b.latency_ms:10.3f}"
                   + (f" {b.stream_ms:10.3f}" if chosen.streamed else ""))
    click.echo(histogram(traffic, result.contract, chosen))
    change = chosen.mean_ms / single.mean_ms - 1 if single.mean_ms else 0.0
    click.echo(f"Predicted per batch: mean {chosen.mean_ms:.3f} ms, p95 {chosen.p95_ms:.3f} ms; one size "
               f"({single.buckets[0].label}): {single.mean_ms:.3f} ms, so the buckets are "
               f"{abs(change):.1%} {'faster' if change < 0 else 'slower'}"
               + (" (more buckets than the accuracy needs: try --buckets auto)." if change > 0 else "."))
    if chosen.streamed and single.streamed:
        click.echo(f"Serving (gap-run's pipeline, measured on {len(traffic.sample_paths(serving))} traffic image(s) "
                   f"per size): mean {chosen.stream_mean_ms:.3f} ms, p95 {chosen.stream_p95_ms:.3f} ms per batch; "
                   f"one size: {single.stream_mean_ms:.3f} ms.")
    if len(planning.by_k) > 1:
        click.echo("By number of buckets: " + ", ".join(f"K={k} {p.mean_ms:.3f} ms" for k, p in
                                                        sorted(planning.by_k.items())))
    for note in planning.notes:
        info(f"Note: {note}" + (" (marked *)." if "whole labelled set" in note else "."))
    return planning


def _check_options(artifacts, folder, backends, min_top1, max_ms, min_ips, json_path, plot_path, emit_dir,
                   plot_buckets=None):
    """The NAME=PATH artifacts and the constraint given, once every option is known to go together and every
    output can be written."""
    from gap_deploy.runtime.cli.common import named_artifacts
    from gap_deploy.runtime.errors import UsageError
    from gap_deploy.runtime.files import check_distinct, check_output_path
    from gap_deploy.runtime.session import BACKENDS

    named = named_artifacts(artifacts)
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}.")
    constraints = {"--min-top1": min_top1, "--max-ms": max_ms, "--min-ips": min_ips}
    given = [k for k, v in constraints.items() if v is not None]
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} cannot go together; give one constraint.")
    if emit_dir and not given:
        raise UsageError("--emit needs a constraint (--min-top1, --max-ms or --min-ips) to know what to deploy.")
    check_distinct({**{f"artifact {n}": p for n, p in named.items()}, "--data": folder},
                   {"--json": json_path, "--plot": plot_path, "--emit": emit_dir, "--plot-buckets": plot_buckets},
                   output_folders=("--emit",))
    for path in (json_path, plot_path, plot_buckets):
        if path:
            check_output_path(path)
    if emit_dir:
        from gap_deploy.runtime._lazy import require

        require("onnx", purpose="for --emit", hint="pip install 'gap-deploy[convert]'.")
        if emit_dir.exists() and (not emit_dir.is_dir() or any(emit_dir.iterdir())):
            raise UsageError(f"--emit folder {emit_dir} exists and is not empty; choose a new folder.")
    if plot_path or plot_buckets:
        from gap_deploy.runtime._lazy import require

        require("matplotlib", purpose="for --plot" if plot_path else "for --plot-buckets")
    return named, given


def _sweep(named, folder, **options):
    """runtime.tune.tune with a progress bar on standard error once the sweep's length is known."""
    from gap_deploy.runtime.tune import tune

    bar = None

    def planned(points: int, seconds: float) -> None:
        nonlocal bar
        info(f"Measuring {points} point(s) (artifact x backend x size); estimated at most {seconds:.0f} s ...")
        bar = click.progressbar(length=points, label="Tuning", file=sys.stderr)
        bar.__enter__()

    def advance(label: str) -> None:
        if bar is not None:
            bar.update(1)

    try:
        return tune(named, folder, progress=advance, on_plan=planned, **options)
    finally:
        if bar is not None:
            bar.__exit__(None, None, None)


if __name__ == "__main__":  # python -m gap_deploy.exporter.cli.tune
    main()
