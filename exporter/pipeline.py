"""gap-export's job as one library function: checkpoint -> verified ONNX [-> precision variant] [-> engine].

Every input is checked before the first write (the calibration data included), the ONNX files of one
run appear together or not at all, and an existing file at any output path is left as it was when
anything fails. The CLI only parses options, calls :func:`run_export` and prints what it returns.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gap_deploy.exporter.builder import BuildConfig, PipelineResult
from gap_deploy.exporter.onnx_export import ExportOptions
from gap_deploy.exporter.precision import VariantOptions, VariantResult, convert_verified, variant_path
from gap_deploy.runtime.errors import OutputPathError, UsageError
from gap_deploy.runtime.files import check_output_path, write_together
from gap_deploy.runtime.parity import FP32, ParityReport, Tolerance
from gap_deploy.runtime.shapes import format_shape


@dataclass(frozen=True)
class ExportJob:
    checkpoint: Path
    output: Path
    arch: str | None = None
    num_classes: int | None = None
    trust_checkpoint: bool = False
    options: ExportOptions = ExportOptions(dynamic=False)
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


def onnx_files(model, output: Path) -> tuple[list[tuple[Path, bytes | Path]], Path | None]:
    """What writing ``model`` to ``output`` takes: one file, or, above runtime.parity.EXTERNAL_DATA_THRESHOLD
    (protobuf's 2 GiB limit), the graph plus ``OUTPUT.data`` with the weights, staged in a hidden folder
    beside ``output`` (returned, for cleanup)."""
    import onnx

    from gap_deploy.runtime import parity

    if model.ByteSize() <= parity.EXTERNAL_DATA_THRESHOLD:
        return [(output, model.SerializeToString())], None
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # save_model rewrites the tensors it externalizes
    data = output.with_name(output.name + ".data")
    onnx.save_model(copy, str(staging / output.name), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [(data, staging / data.name), (output, staging / output.name)], staging


def write_models(models: Sequence[tuple[Path, object]]) -> None:
    """Write ONNX models (with external data above 2 GiB) so that all of them appear, or none."""
    files: list[tuple[Path, bytes | Path]] = []
    stagings: list[Path] = []
    try:
        for path, model in models:
            parts, staging = onnx_files(model, path)
            files += parts
            if staging is not None:
                stagings.append(staging)
        write_together(files)
    except OSError as exc:
        raise OutputPathError(f"cannot write {', '.join(str(p) for p, _ in models)}: {exc.strerror or exc}.",
                              note="the files that were there before are unchanged.",
                              hint="free some disk space, or choose another folder.") from None
    finally:
        for staging in stagings:
            shutil.rmtree(staging, ignore_errors=True)


def run_export(job: ExportJob, log: Callable[[str], None] = lambda _: None) -> ExportOutcome:
    """Load, export and verify; make and verify the precision variant; write both; then build the engine."""
    from gap_deploy.exporter.checkpoint import load_model
    from gap_deploy.exporter.onnx_export import export_verified

    output = check_output_path(job.output)
    extra = variant_path(output, job.variant.precision, job.variant.int8_layout) if job.variant else None
    if extra is not None:
        check_output_path(extra)
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
    models = [(output, exported.model)]
    if job.variant is not None and job.engine is None:
        meta = exported.metadata
        shapes = [r.shape for r in report.rows] if report else [(opts.batch, meta.in_channels, *opts.imgsz)]
        log(f"Converting to {job.variant.precision} and verifying against the FP32 ONNX ...")
        outcome.variant = convert_verified(exported.model, job.variant, shapes)
        outcome.variant_path = extra
        models.append((extra, outcome.variant.model))
    write_models(models)
    if job.engine is not None:  # the engine pipeline makes and checks the variant itself, from the file
        from gap_deploy.exporter.builder import build_with_precision

        suffix = f".{job.variant.precision}" if job.variant else ""
        outcome.build = build_with_precision(output, output.with_name(f"{output.stem}{suffix}.plan"),
                                             variant=job.variant, config=job.engine, verify=job.verify, log=log)
        outcome.variant = outcome.build.variant
    return outcome
