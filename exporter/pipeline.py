"""gap-export's job as one library function: checkpoint -> verified ONNX [-> precision variant] [-> engine].

Every input is checked before the first write (the calibration data included). The model stays in memory on
the way to the engine; the files of one run (FP32 ONNX, variant, plan, manifest) appear together or not at
all (runtime.publish), and an existing file at any output path is left as it was when anything fails, a
failed engine build and Ctrl-C included. The CLI only parses options, calls :func:`run_export` and prints
what it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gap_deploy.exporter.builder import BuildConfig, PipelineResult
from gap_deploy.exporter.onnx_export import ExportOptions
from gap_deploy.exporter.precision import VariantOptions, VariantResult, convert_verified
from gap_deploy.runtime.errors import ExportError, UsageError
from gap_deploy.runtime.files import check_output_path, sha256_file
from gap_deploy.runtime.naming import engine_path, variant_path
from gap_deploy.runtime.parity import FP32, ParityReport, Tolerance
from gap_deploy.runtime.publish import Publication
from gap_deploy.runtime.shapes import format_shape


@dataclass(frozen=True)
class ExportJob:
    checkpoint: Path
    output: Path
    arch: str | None = None
    num_classes: int | None = None
    trust_checkpoint: bool = False
    options: ExportOptions = field(default_factory=ExportOptions)
    verify: bool = True
    #: BxCxHxW shapes, or (H, W) pairs that take the model's channels
    verify_shapes: Sequence[tuple[int, ...]] | None = None
    tolerance: Tolerance = FP32
    variant: VariantOptions | None = None
    #: build a TensorRT engine too (from the variant when there is one)
    engine: BuildConfig | None = None


@dataclass
class ExportOutcome:
    path: Path
    export: object  # exporter.onnx_export.OnnxExport
    parity: ParityReport | None
    notes: list[str] = field(default_factory=list)
    arch: str = ""
    variant: VariantResult | None = None
    variant_path: Path | None = None
    build: PipelineResult | None = None


def run_export(job: ExportJob, log: Callable[[str], None] = lambda _: None, *, trt=None, cuda=None) -> ExportOutcome:
    """Load, export and verify; make and verify the precision variant; build the engine; publish them together."""
    from gap_deploy.exporter.checkpoint import load_model
    from gap_deploy.exporter.onnx_export import export_verified

    output = check_output_path(job.output)
    extra = variant_path(output, job.variant.precision, job.variant.int8_layout) if job.variant else None
    if extra is not None:
        check_output_path(extra)
    if job.engine is not None:
        from gap_deploy.exporter.builder import build_device, check_buildable, import_builder
        from gap_deploy.runtime.metadata import ModelMetadata

        check_buildable(ModelMetadata(), job.variant, output)
        check_output_path(engine_path(output, job.variant.precision if job.variant else None))
        trt = trt if trt is not None else import_builder()  # no TensorRT or GPU: said before the export
        cuda, _ = build_device(cuda)
    log(f"Loading {job.checkpoint} ...")
    loaded = load_model(job.checkpoint, arch=job.arch, num_classes=job.num_classes,
                        trust_checkpoint=job.trust_checkpoint)
    if job.variant is not None and job.variant.precision == "int8":  # a bad --calib fails before any write
        from gap_deploy.exporter.precision import load_calibration
        from gap_deploy.runtime.artifact import for_metadata
        from gap_deploy.runtime.metadata import ModelMetadata

        load_calibration(job.variant.calib, for_metadata(ModelMetadata(in_channels=loaded.in_channels)),
                         size=job.variant.calib_size)
    opts = job.options
    log(f"Exporting {loaded.arch} ({'dynamic batch/height/width' if opts.dynamic else 'static'}, opset {opts.opset})"
        + (" and verifying against PyTorch" if job.verify else "") + " ...")
    shapes = None
    if job.verify_shapes:
        shapes = [(1, loaded.in_channels, *s) if len(s) == 2 else tuple(s) for s in job.verify_shapes]
        bad = [s for s in shapes if s[1] != loaded.in_channels]
        if bad:
            raise UsageError(f"verify shape {format_shape(bad[0])} has {bad[0][1]} channels; the model takes "
                             f"{loaded.in_channels}.")
    exported, report = export_verified(loaded, opts, verify=job.verify, verify_shapes=shapes,
                                       tolerance=job.tolerance, destination=str(output))
    outcome = ExportOutcome(output, exported, report, list(loaded.notes), loaded.arch)
    if job.variant is not None:  # one sweep, whether an engine follows or not: the FP32 model's own
        meta = exported.metadata
        sweep = [r.shape for r in report.rows] if report else [(opts.batch, meta.in_channels, *opts.imgsz)]
        log(f"Converting to {job.variant.precision} and verifying against the FP32 ONNX ...")
        try:
            outcome.variant = convert_verified(exported.model, job.variant, sweep)
        except ExportError as exc:  # the gate failed: say how to see which layer
            from gap_deploy.exporter.onnx_export import debug_command

            raise exc.with_hint("see which layer departs: " + debug_command(
                loaded, sweep[0], precision=job.variant.precision, calib=job.variant.calib)) from None
        outcome.variant_path = extra
    # The FP32 model, the variant and (with --engine) the plan and its manifest appear together, or none of them.
    from gap_deploy.runtime.lineage import Lineage, record_in_model, variant_lineage, versions

    record_in_model(exported.model, Lineage(
        Path(job.checkpoint).name, loaded.source_sha256, "checkpoint", exported.metadata.toolkit_version,
        versions("torch", "onnx", "onnxscript", "onnxslim"),
        {"dynamic": opts.dynamic, "imgsz": list(opts.imgsz), "batch": opts.batch, "opset": opts.opset,
         "arch": loaded.arch}, {"parity_vs_pytorch": report.to_dict() if report else None}))
    with Publication() as pub:
        staged_fp32 = next(p for p in pub.write_model(output, exported.model) if p.name == output.name)
        if outcome.variant is not None:
            record_in_model(outcome.variant.model, variant_lineage(
                output.name, sha256_file(staged_fp32), outcome.variant,
                {"precision": job.variant.precision, "int8_layout": job.variant.int8_layout,
                 "calib": Path(job.variant.calib).name if job.variant.calib else None}))
            pub.write_model(extra, outcome.variant.model)
        if job.engine is not None:
            from gap_deploy.exporter.builder import stage_engine

            built, source = (outcome.variant.model, extra) if outcome.variant is not None else (exported.model, output)
            plan = engine_path(output, job.variant.precision if job.variant else None)
            build = stage_engine(pub, built, source, plan, job.engine, verify=job.verify, trt=trt, cuda=cuda, log=log)
            outcome.build = PipelineResult(build, outcome.variant, source)
    return outcome
