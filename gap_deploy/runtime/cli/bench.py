"""gap-bench: latency and throughput of .onnx and .plan artifacts, with PyTorch side by side."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from gap_deploy.runtime.backends.table import facts
from gap_deploy.runtime.bench import BenchSettings
from gap_deploy.runtime.cli.common import (
    FiniteFloat,
    checkpoint_options,
    gap_command,
    info,
    report_errors,
    shape_option,
    write_json,
)
from gap_deploy.runtime.session import BACKENDS
from gap_deploy.runtime.shapes import format_shape


def default_shape(session):
    """A static model's shape, a TensorRT profile's opt shape, else 1 x C x the export size (224 if unknown)."""
    spec, meta = session.spec, session.metadata
    if spec.profiles:
        return tuple(spec.profiles[0].opt)
    return (spec.static_batch or 1, spec.channels, spec.fixed(2) or meta.export_height or 224,
            spec.fixed(3) or meta.export_width or 224)


def check_reference_fits(reference, session, shape, checkpoint) -> None:
    """The --torch model must take the artifact's input and give its number of classes, or no figure means anything."""
    import numpy as np

    from gap_deploy.runtime.errors import UsageError, first_line

    probe = np.zeros((1, *shape[1:]), dtype=np.float32)
    try:
        ref = reference(probe)
    except Exception as exc:  # PyTorch's own error: most often the channels differ
        raise UsageError(f"--torch {checkpoint} does not run on the artifact's input {format_shape(probe.shape)}: "
                         f"{first_line(exc)}", hint="give the checkpoint the artifact was exported from.") from None
    out = session.run(probe)
    if np.shape(ref) != out.shape:
        raise UsageError(f"--torch {checkpoint} gives logits of shape {tuple(np.shape(ref))}; the artifact gives "
                         f"{tuple(out.shape)}.", hint="give the checkpoint the artifact was exported from "
                                                      "(and --num-classes if it needs one).")


@gap_command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--backend", type=click.Choice(BACKENDS), help="Default: the best backend that really works here.")
@click.option("--shape", "shapes", multiple=True, metavar="BxCxHxW",
              help="Input shape; repeat for a sweep. Default: the artifact's own (its export size, or a TensorRT "
                   "profile's opt shape).")
@click.option("--warmup", default=BenchSettings.warmup_s, show_default=True, type=FiniteFloat(),
              help="Warm-up seconds.")
@click.option("--duration", default=BenchSettings.duration_s, show_default=True, type=FiniteFloat(),
              help="Seconds to measure per shape (at least 10 iterations).")
@click.option("--iterations", type=click.IntRange(min=1), help="A fixed number of iterations instead of --duration.")
@click.option("--threads", type=click.IntRange(1, 1024), help="Intra-op threads for ONNX Runtime and PyTorch. "
              "Default: their own defaults (one per core).")
@click.option("--torch", "torch_ckpt", type=click.Path(path_type=Path),
              help="Checkpoint to run through PyTorch eager on the same inputs: speed-up and max/relative error "
                   "per shape. Loaded as gap-export does.")
@checkpoint_options("the --torch checkpoint")
@click.option("--cuda-graph", is_flag=True, help="TensorRT: capture the enqueue in a CUDA graph and replay it.")
@click.option("--transfers/--no-transfers", default=True, show_default=True,
              help="TensorRT: copy the input host-to-device every iteration (the output is always copied back).")
@click.option("--compare", "compare", multiple=True, type=click.Path(path_type=Path), metavar="ARTIFACT",
              help="Another artifact of the same model (an OpenVINO, ncnn, LiteRT or ExecuTorch bundle, an ORT "
                   "bundle, ...) timed in the same run, shape by shape, on its own default backend: its latency "
                   "over ARTIFACT's, and its logits against ARTIFACT's on the same input. Repeatable.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), help="Write the results as JSON.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Write a PNG of latency and throughput against resolution (needs matplotlib: gap-deploy[plot]).")
@click.option("--trust-engine", is_flag=True, help="Run a .plan that has no gap-build manifest (plans are code).")
@click.option("--verify-key", "verify_key", multiple=True, type=click.Path(path_type=Path), metavar="PUB.pem",
              help="Open the artifact only if its signature verifies under this public key (a file or a folder of "
                   ".pem; repeatable). Default: $GAP_DEPLOY_TRUSTED_KEYS. Plans always need one (or --trust-engine).")
@report_errors
def main(artifact, backend, shapes, warmup, duration, iterations, threads, torch_ckpt, arch, num_classes,
         trust_checkpoint, cuda_graph, transfers, compare, json_path, plot_path, trust_engine, verify_key):
    """Benchmark ARTIFACT (.onnx, .plan, OpenVINO .xml, or a gap-pack bundle): latency percentiles, throughput,
    against PyTorch with --torch, and against other targets' bundles with --compare.

    Example:

        gap-bench model.onnx --shape 1x3x224x224 --shape 4x3x97x131 --torch model.pt --json out.json

        gap-bench model.onnx --threads 1 --compare model_ncnn --compare model_litert
    """
    from gap_deploy import runtime
    from gap_deploy.runtime.bench import bench_shapes, environment

    parsed = [shape_option(s) for s in shapes]
    _check_paths(artifact, compare, torch_ckpt, json_path, plot_path)
    started = time.perf_counter()
    session = runtime.load(artifact, backend, threads=threads, trust_engine=trust_engine, verify_key=verify_key or None)
    create_ms = (time.perf_counter() - started) * 1e3
    others = [_open_other(other, session, threads) for other in compare]
    parsed = parsed or [default_shape(session)]
    _check_shapes(parsed, [session, *(o.session for o in others)])
    reference, extra_versions = None, {}
    if torch_ckpt:
        reference, extra_versions = _torch_reference(session, torch_ckpt, arch, num_classes, trust_checkpoint,
                                                     threads)
        check_reference_fits(reference, session, parsed[0], torch_ckpt)

    settings = BenchSettings(warmup_s=warmup, duration_s=duration, iterations=iterations, cuda_graph=cuda_graph,
                             transfers=transfers)
    device_info, versions = environment(session, {k: str(v) for k, v in extra_versions.items()})
    info(f"{artifact} on {session.backend} ({session.metadata.precision}); {device_info}")
    results, interrupted = bench_shapes(session, parsed, settings, artifact=str(artifact), create_ms=create_ms,
                                        reference=reference,
                                        reference_name=f"torch-{extra_versions.get('torch_device')}",
                                        others=others, progress=info)
    _report(session, artifact, results, device_info, versions, transfers)
    if json_path:
        write_json(json_path, {"artifact": str(artifact), "device": device_info, "versions": versions,
                               "settings": {"warmup_s": warmup, "duration_s": duration, "iterations": iterations,
                                            "threads": threads, "cuda_graph": cuda_graph, "transfers": transfers},
                               "interrupted": interrupted, "results": [r.to_dict() for r in results]})
        info(f"Wrote {json_path}")
    if plot_path and results:
        from gap_deploy.runtime.plot import plot_results

        plot_results(results, plot_path, title=f"{artifact.name} ({session.metadata.precision})")
        info(f"Wrote {plot_path}")
    if interrupted:
        info("Interrupted: the results above are what was measured.")
        sys.exit(130)
    mismatched = [r for r in results if r.parity and not r.parity["passed"]]
    if mismatched:
        references = ", ".join(sorted({str((r.parity or {}).get("reference")) for r in mismatched}))
        info(f"{len(mismatched)} shape(s) differ from their reference ({references}) beyond the tolerance of their "
             "precision.")
        sys.exit(1)


def _check_paths(artifact, compare, torch_ckpt, json_path, plot_path) -> None:
    """Every input exists and every output can be written (and none is another), before anything loads."""
    from gap_deploy.runtime.bundle import check_artifact
    from gap_deploy.runtime.files import check_distinct, check_input_file, check_output_path

    check_artifact(artifact)
    for other in compare:
        check_artifact(other)
    for path in (json_path, plot_path):
        if path:
            check_output_path(path)
    check_distinct({"ARTIFACT": artifact, "--torch": torch_ckpt, **{f"--compare {c}": c for c in compare}},
                   {"--json": json_path, "--plot": plot_path})
    if plot_path:
        from gap_deploy.runtime._lazy import require

        require("matplotlib", purpose="for --plot")
    if torch_ckpt:
        check_input_file(torch_ckpt, "checkpoint")


def _open_other(other, session, threads):
    """A --compare artifact's session, with its load time; it must classify as many classes as ARTIFACT."""
    from gap_deploy import runtime
    from gap_deploy.runtime.bench import Compared
    from gap_deploy.runtime.errors import UsageError

    started = time.perf_counter()
    other_session = runtime.load(other, threads=threads)
    compared = Compared(str(other), other_session, (time.perf_counter() - started) * 1e3)
    if other_session.metadata.num_classes != session.metadata.num_classes:
        raise UsageError(f"--compare {other} has {other_session.metadata.num_classes} classes, ARTIFACT has "
                         f"{session.metadata.num_classes}: compare artifacts of one model.")
    return compared


def _check_shapes(shapes, sessions) -> None:
    """Every shape is checked on every session before anything is timed or allocated."""
    from gap_deploy.runtime.limits import check_memory
    from gap_deploy.runtime.validation import check_shape

    for shape in shapes:
        for each in sessions:
            check_shape(shape, each.input_spec)
        check_memory(shape, "--shape")


def _torch_reference(session, torch_ckpt, arch, num_classes, trust_checkpoint, threads):
    """The --torch checkpoint as a callable on the artifact's device, and the versions it reports."""
    from gap_deploy.runtime.references import load_reference

    torch_reference = load_reference("torch")  # registered by the exporter side; runtime never imports it
    device = facts(session.backend).device
    info(f"Loading {torch_ckpt} into PyTorch ({device}) ...")
    return torch_reference(torch_ckpt, arch=arch, num_classes=num_classes, trust_checkpoint=trust_checkpoint,
                           device=device, threads=threads)


def _report(session, artifact, results, device_info, versions, transfers) -> None:
    from gap_deploy.runtime.bench import format_table

    click.echo(f"gap-bench {artifact} | backend {session.backend} | precision {session.metadata.precision} | "
               f"transfers {'included' if transfers else 'excluded'}")
    click.echo(f"versions: {', '.join(f'{k} {v}' for k, v in versions.items())}")
    click.echo(f"device: {', '.join(f'{k}: {v}' for k, v in device_info.items())}")
    if results:
        click.echo(format_table(results))
    for r in results:
        for warning in r.warnings:
            where = f"{r.backend} {format_shape(r.shape)}"
            click.echo(click.style("Warning: ", fg="yellow") + f"{where}: {warning}", err=True)


if __name__ == "__main__":  # python -m gap_deploy.runtime.cli.bench
    main()
