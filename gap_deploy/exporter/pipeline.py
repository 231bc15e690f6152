"""gap-export's job as one library function: checkpoint -> verified ONNX [-> precision variant] [-> engine].

Every input is checked before the first write (the calibration data included). The model stays in memory on
the way to the engine; the files of one run (FP32 ONNX, variant, plan, manifest) appear together or not at
all (runtime.publish), and an existing file at any output path is left as it was when anything fails, a
failed engine build and Ctrl-C included. The CLI only parses options, calls :func:`run_export` and prints
what it returns.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

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
class PreprocessJob:
    """Where the preprocessing contract comes from, and what it is checked against (exporter.preprocess)."""

    #: "FILE.py:fn", "module:fn" (the user's eval transform) or "timm" (the model's pretrained_cfg); None: flags only
    source: str | None = None
    #: contract fields given as flags (resize, crop_fraction, interpolation, ...): they win over the source
    overrides: Mapping[str, object] = field(default_factory=dict)
    #: the transform the check runs ("FILE.py:fn" / "module:fn"); default: the source's transform
    check: str | None = None
    #: image files for the check; default: images drawn with natural statistics and awkward sizes
    images: Path | None = None
    #: --imgsz was given on the command line (otherwise the transform's size is the export size)
    size_given: bool = False


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
    preprocess: PreprocessJob = field(default_factory=PreprocessJob)


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
    #: exporter.preprocess.PreprocessCheck, when there was a transform to check against
    preprocess_check: object = None


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
    opts, transform = resolve_preprocess(job, loaded)
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
    outcome.preprocess_check = check_contract(job, opts.preprocess, transform, exported, loaded.in_channels, log)
    if job.variant is not None:  # one sweep, whether an engine follows or not: the FP32 model's own
        sweep = [r.shape for r in report.rows] if report else [(opts.batch, loaded.in_channels, *opts.imgsz)]
        # calibrate at the export size: --imgsz, or the size the preprocessing contract makes when it has one
        variant = replace(job.variant, calib_size=tuple(opts.imgsz))
        log(f"Converting to {variant.precision} and verifying against the FP32 ONNX"
            + (f" (calibrating at {opts.imgsz[0]}x{opts.imgsz[1]})" if variant.precision == "int8" else "") + " ...")
        try:
            outcome.variant = convert_verified(exported.model, variant, sweep)
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
        if outcome.variant is not None and job.variant is not None and extra is not None:  # all three, or none
            record_in_model(outcome.variant.model, variant_lineage(
                output.name, sha256_file(staged_fp32), outcome.variant,
                {"precision": job.variant.precision, "int8_layout": job.variant.int8_layout,
                 "calib": Path(job.variant.calib).name if job.variant.calib else None}))
            pub.write_model(extra, outcome.variant.model)
        if job.engine is not None:
            from gap_deploy.exporter.builder import stage_engine

            built, source = (outcome.variant.model, extra) if outcome.variant is not None and extra is not None \
                else (exported.model, output)
            plan = engine_path(output, job.variant.precision if job.variant else None)
            build = stage_engine(pub, built, source, plan, job.engine, verify=job.verify, trt=trt, cuda=cuda, log=log)
            outcome.build = PipelineResult(build, outcome.variant, source)
    return outcome


def resolve_preprocess(job: ExportJob, loaded):
    """The export options with the preprocessing contract filled in, and the transform it came from (or None)."""
    from gap_deploy.exporter.onnx_export import check_normalization
    from gap_deploy.exporter.preprocess import PreprocessError, contract_from_transform, load_transform, timm_transform
    from gap_deploy.runtime.preprocess import Preprocess

    spec, opts = job.preprocess, job.options
    transform = None
    if spec.source == "timm":
        transform = timm_transform(loaded.module)
    elif spec.source is not None:
        transform = load_transform(spec.source)
    contract = contract_from_transform(transform, loaded.in_channels) if transform is not None else Preprocess()
    overrides = dict(spec.overrides)
    check_normalization(opts.mean, opts.std, loaded.in_channels)
    if opts.mean is not None:
        overrides["mean"] = opts.mean
    if opts.std is not None:
        overrides["std"] = opts.std
    contract = replace(contract, **overrides)
    if contract.resize != "none" and contract.size is None:
        contract = replace(contract, size=tuple(opts.imgsz))
    if contract.resize == "none" and contract.crop_fraction != 1.0:
        raise UsageError("--crop-fraction needs a resize policy that crops (--resize shorter-side or stretch).")
    imgsz = tuple(opts.imgsz)
    if contract.size is not None and tuple(contract.size) != imgsz:
        if spec.size_given:
            raise UsageError(f"--imgsz {imgsz[0]}x{imgsz[1]} differs from the {contract.size[0]}x{contract.size[1]} "
                             f"inputs the preprocessing makes ({spec.source or 'the flags'}).",
                             hint="leave --imgsz out (the preprocessing's size is the export size), or change the "
                                  "transform's CenterCrop/Resize.")
        imgsz = tuple(contract.size)
    if contract.mean is None or contract.std is None:
        from gap_deploy.runtime.metadata import default_normalization

        mean, std = default_normalization(loaded.in_channels)
        contract = replace(contract, mean=contract.mean or mean, std=contract.std or std)
    contract.validate(loaded.in_channels, bad=lambda why: PreprocessError(f"the preprocessing: {why}."))
    return replace(opts, imgsz=imgsz, preprocess=contract, mean=None, std=None), transform


def check_contract(job: ExportJob, contract, transform, exported, channels: int, log):
    """exporter.preprocess.check_preprocess against --check-transform (or the source transform), on --images or
    drawn images; raises PreprocessError naming the step when they disagree. None without a transform."""
    from gap_deploy.exporter.preprocess import PreprocessError, SampleImages, check_preprocess, load_transform
    from gap_deploy.runtime.parity import ort_cpu_infer

    spec = job.preprocess
    checker, name = transform, spec.source
    if spec.check is not None:
        checker, name = load_transform(spec.check, "--check-transform"), spec.check
    if checker is None:
        return None
    log(f"Checking the preprocessing against {name} on "
        f"{spec.images or 'drawn images (natural statistics, odd sizes, gray, RGBA, 16-bit)'} ...")
    run = ort_cpu_infer(exported.model)
    batch = 1 if exported.dynamic else job.options.batch  # a static batch runs B copies

    def infer(chw):
        return run(np.repeat(chw[None], batch, axis=0).astype(np.float32))[0]
    with SampleImages(spec.images) as files:
        result = check_preprocess(contract, checker, name or "the transform", files, channels, infer)
    if not result.passed:
        worst = max(result.rows, key=lambda r: r.levels)
        raise PreprocessError(
            f"the preprocessing contract disagrees with {name}: {result.finding}.",
            note=f"largest tensor difference {worst.levels:.3g}/255 of the pixel range on {worst.file} (limit 1); "
                 f"top-1 agreement {result.agreement:.0%}; nothing was written.\n" + result.format(),
            hint="make the flags (or the transform given to --preprocess) say what the transform does, or fix the "
                 "transform.")
    return result
