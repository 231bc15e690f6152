"""Edge and mobile bundles (gap-pack): ORT-format models, fixed-shape variants, what each phone
accelerator will run, a reduced-build operator config, and a model.json that describes it all.

Uses onnxruntime's own tools as functions (exporter.ort_format): ``convert_onnx_models_to_ort`` (ORT format and
the operator config), ``onnx_model_utils.make_input_shape_fixed`` (fixed shapes) and the mobile usability
checker's partitioning (NNAPI, CoreML NeuralNetwork, CoreML MLProgram). torch is not needed.

The ORT files are saved with ONNX Runtime's *basic* graph optimizations only (constant folding,
redundant-node removal): the *extended*/*all* levels fuse operators into CPU-only kernels (FusedConv,
NCHWc layouts) that NNAPI, CoreML and XNNPACK cannot take. Every model file is run with ONNX Runtime and
compared with the source ONNX before the bundle is written; the bundle appears whole or not at all.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from gap_deploy.exporter.ort_format import Usability, fixed_variant, format_usability, to_ort, usability
from gap_deploy.runtime.artifact import ArtifactSpec, describe
from gap_deploy.runtime.errors import ExportError, OutputPathError, UsageError, first_line
from gap_deploy.runtime.files import check_new_folder, sha256_file
from gap_deploy.runtime.metadata import ModelMetadata
from gap_deploy.runtime.onnx_file import save_onnx
from gap_deploy.runtime.parity import ParityReport, compare, ort_cpu_infer, tolerance_for
from gap_deploy.runtime.publish import Publication
from gap_deploy.runtime.shapes import Shape, format_shape

OPERATOR_CONFIG = "required_operators_and_types.config"
#: Shapes every dynamic model file is checked at (the minimum is added per model)
CHECK_SIDES = [(37, 53), (64, 64), (224, 224), (97, 31)]


@dataclass
class PackResult:
    folder: Path
    files: dict[str, dict]
    usability: list[Usability]
    parity: dict[str, ParityReport]
    operators: list[str]


def _check_shapes(meta: ModelMetadata, channels: int, fixed: Shape | None) -> list[Shape]:
    if fixed is not None:
        return [fixed]
    side = max(meta.min_height, meta.min_width)
    return [(1, channels, side, side)] + [(1, channels, max(h, side), max(w, side)) for h, w in CHECK_SIDES] + \
        [(2, channels, max(64, side), max(48, side))]


TARGETS = ("ort", "openvino", "ncnn", "litert", "executorch", "coreml")
NEEDS_CALIB = "--precision int8 needs calibration data: NNCF measures each layer's range on it."
CALIB_HINT = "pass --calib DIR (image files like the deployment's) or --calib FILE.npy."


def pack(onnx_path: str | os.PathLike, folder: str | os.PathLike, *, fixed: Sequence[Shape] = (),
         target: str = "ort", precision: str = "fp32", checkpoint=None, max_side: int | None = None,
         max_batch: int | None = None, min_side: int | None = None, other_weights: bool = False, app: bool = False,
         calib: str | os.PathLike | None = None, min_top1: float = 0.9, keep_fp32: Sequence[str] = (),
         log=lambda _: None) -> PackResult:
    """Write the bundle ``folder`` for ``onnx_path`` (an FP32, FP16 or INT8 ONNX from gap-export) for ``target``:
    "ort" (ONNX Runtime Mobile), "openvino" (OpenVINO IR), "ncnn" (pnnx from the ONNX), or "litert",
    "executorch", "coreml", converted from ``checkpoint`` (the exporter's LoadedModel of the PyTorch model the
    ONNX came from) and judged against the ONNX. FP32 unless ``precision`` is "fp16" (OpenVINO, ncnn, Core ML).
    ``max_side`` and ``max_batch`` bound ExecuTorch's and Core ML's dynamic dims; ``min_side`` raises the smallest
    height and width the bundle accepts (and is checked at) above the model's own minimum, for a target that
    differs from the ONNX only at the smallest sizes. ``app`` adds the app-ready model of an ORT, LiteRT, OpenVINO or
    Core ML bundle (exporter.pack_app), at ``fixed``'s one shape or the contract's size. ``precision`` "int8"
    (OpenVINO only): NNCF's post-training quantization on ``calib`` (a folder of images, or an .npy batch),
    judged by top-1 agreement with the FP32 IR (at least ``min_top1``), ``keep_fp32`` layers left in FP32 and
    more put back by NNCF's accuracy control when the gate is missed (exporter.ov_int8)."""
    max_side, max_batch = _check_request(target, precision, fixed, checkpoint, Path(onnx_path).name, max_side,
                                         max_batch, min_side, app)
    if precision == "int8" and calib is None:
        raise UsageError(NEEDS_CALIB, hint=CALIB_HINT)
    if precision != "int8" and (calib is not None or keep_fp32):
        raise UsageError("--calib and --keep-fp32 are for --precision int8 (an OpenVINO bundle quantized by NNCF).")
    if not 0 <= min_top1 <= 1:
        raise UsageError(f"--min-top1 is a fraction between 0 and 1; got {min_top1}.")
    from gap_deploy.runtime.onnx_file import check_onnx_file

    source = check_onnx_file(onnx_path)
    folder = check_new_folder(folder, "bundle folder")
    model = onnx.load(str(source))
    spec = describe(model)
    if min_side is not None:
        from dataclasses import replace

        raised = replace(spec.metadata, min_height=max(spec.metadata.min_height, min_side),
                         min_width=max(spec.metadata.min_width, min_side))
        spec = replace(spec, metadata=raised)
    _check_model(spec, source, target, fixed, precision)
    app_plan = None
    if app:
        from gap_deploy.exporter import pack_app

        app_plan = pack_app.plan(target, spec, fixed[0] if fixed else None)  # refused before any conversion
        fixed = ()
    from gap_deploy.runtime.errors import ctrl_c_kept

    # the bundle appears whole, once every file in it is checked; Ctrl-C during the converters and runtimes stays
    # Ctrl-C (ctrl_c_kept), raised inside the publication, so nothing appears
    int8 = None
    if precision == "int8":
        from gap_deploy.exporter.precision import load_calibration

        if calib is None:  # refused above; said again for the type checker
            raise UsageError(NEEDS_CALIB, hint=CALIB_HINT)
        int8 = Int8Request(load_calibration(Path(calib), spec, size=meta_size(spec.metadata)), min_top1,
                           tuple(keep_fp32))
    request = PackRequest(model, source, spec, precision, list(dict.fromkeys(fixed)), checkpoint, max_side,
                          max_batch, other_weights, log, app_plan, int8)
    with Publication() as pub, ctrl_c_kept(f"gap-pack --target {target}"), _write_errors(folder):
        result = BUILDERS[target](request, pub.folder(folder, "bundle folder"))
    result.folder = folder
    return result


@dataclass(frozen=True)
class PackRequest:
    """One gap-pack call, checked: what every target's builder gets (each takes what applies to it)."""

    model: object  # the ONNX ModelProto
    source: Path
    spec: ArtifactSpec
    precision: str
    fixed: list
    checkpoint: object  # the exporter's LoadedModel, for the targets converted from PyTorch
    max_side: int
    max_batch: int
    other_weights: bool
    log: object
    app: Any = None  # exporter.pack_app.AppPlan, when --app
    int8: Any = None  # Int8Request, for --precision int8


@dataclass(frozen=True)
class Int8Request:
    calibration: Any  # (N, C, H, W) float32, normalized as the model expects
    min_top1: float
    keep_fp32: tuple[str, ...]


def meta_size(meta: ModelMetadata) -> tuple[int, int]:
    """The size calibration images are prepared at: the export size, else 224 (within the model's minimum)."""
    if meta.export_height and meta.export_width:
        return meta.export_height, meta.export_width
    return max(224, meta.min_height), max(224, meta.min_width)


def _pack_ort(request: PackRequest, staged: Path) -> PackResult:
    result = _build(request.model, request.source, staged, request.spec, request.fixed, request.log)
    return _with_app(request, staged, result, "ort", bundle_readme)


def _pack_openvino(request: PackRequest, staged: Path) -> PackResult:
    result = _build_openvino(request.model, request.source, staged, request.spec, request.precision, request.log,
                             int8=request.int8)
    return _with_app(request, staged, result, "openvino", openvino_readme)


def _with_app(request: PackRequest, staged: Path, result: PackResult, target: str, readme) -> PackResult:
    """``result`` with the app-ready model of an ONNX-converted bundle when --app asked for one (its README
    written again by ``readme`` with the app section)."""
    if request.app is not None:
        description = _add_app(request, staged, module=None, target=target)
        result.files = description["files"]
        (staged / "README.md").write_text(readme(description))
    return result


def _add_app(request: PackRequest, staged: Path, *, module, target: str) -> dict:
    """The app-ready model of a staged bundle, built, checked and added to its model.json (returned)."""
    from gap_deploy.exporter import pack_app

    description = json.loads((staged / "model.json").read_text())
    props = {k: v for k, v in request.spec.metadata.to_props().items() if k.startswith("gap.")}
    files, section = pack_app.add_to_bundle(
        target, request.app, staged, module=module, onnx_model=request.model, source=request.source,
        precision=request.precision, labels=description["class_names"], meta_props=props, log=request.log)
    description["files"].update(files)
    description["app"] = section
    (staged / "model.json").write_text(json.dumps(description, indent=2) + "\n")
    return description


def _pack_edge(target: str):
    """The builder of an ncnn, LiteRT, ExecuTorch or Core ML bundle (exporter.pack_edge)."""

    def build(request: PackRequest, staged: Path) -> PackResult:
        from gap_deploy.exporter import pack_edge

        meta, checkpoint = request.spec.metadata, request.checkpoint
        if checkpoint is not None:
            _check_source(checkpoint, meta, request.source, request.log, target=target,
                          other_weights=request.other_weights)
        description, report = pack_edge.build_edge(
            target, request.model, request.source, staged, request.spec, request.precision, request.log,
            module=getattr(checkpoint, "module", None), max_side=request.max_side, max_batch=request.max_batch,
            base_shapes=list(request.fixed) or _check_shapes(meta, request.spec.channels, None),
            describe_bundle=_describe_bundle,
            # with --app, --fixed is the app model's size only; the bundle's own program stays dynamic
            enumerated=[] if request.app is not None else list(request.fixed))
        if request.app is not None:
            description = _add_app(request, staged, module=getattr(checkpoint, "module", None), target=target)
        readme = pack_edge.edge_readme(description)
        if "app" in description:
            from gap_deploy.exporter.pack_app import app_readme

            readme += "\n" + app_readme(description)
        (staged / "README.md").write_text(readme)
        return PackResult(staged, description["files"], [], {} if report is None else
                          {next(iter(description["files"])): report}, [])

    return build


#: each target's builder: (request, staged bundle folder) -> PackResult; a new target is a builder and a line here
BUILDERS = {"ort": _pack_ort, "openvino": _pack_openvino,
            **{target: _pack_edge(target) for target in ("ncnn", "litert", "executorch", "coreml")}}


def _check_request(target: str, precision: str, fixed, checkpoint, onnx_name: str, max_side: int | None,
                   max_batch: int | None, min_side: int | None, app: bool = False) -> tuple[int, int]:
    """The options of one gap-pack call go together (before any file is read); (max_side, max_batch) with their
    defaults."""
    from gap_deploy.exporter import pack_edge

    if target not in TARGETS:
        raise UsageError(f"target {target!r}; choose one of {', '.join(TARGETS)}.")
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"precision {precision!r}; a bundle is fp32, fp16 or int8 (OpenVINO).")
    if precision == "int8" and target != "openvino":
        raise UsageError(f"--precision int8 with --target {target}: INT8 bundles are OpenVINO's (NNCF) here.",
                         hint="for ONNX Runtime, make the INT8 ONNX with gap-export --precision int8 --int8-layout "
                              "cpu and pack that (--target ort); for OpenVINO, --target openvino --precision int8 "
                              "--calib DIR.")
    if precision == "fp16" and target not in pack_edge.FP16_TARGETS:
        why = ("an ORT bundle holds the ONNX it is given: make the FP16 variant with gap-export --precision fp16 and "
               "pack that." if target == "ort" else
               f"the {target} target is FP32 only here (litert-torch has no FP16 option without TensorFlow's "
               "converter, which gap-deploy does not install).")
        raise UsageError(f"--precision fp16 with --target {target}: {why}",
                         hint=f"FP16 bundles: --target {', '.join(pack_edge.FP16_TARGETS)}.")
    if app:
        from gap_deploy.exporter.pack_app import APP_TARGETS

        if target not in APP_TARGETS:
            raise UsageError(f"--app makes the app-ready model of a {', '.join(APP_TARGETS)} bundle, not {target}.",
                             hint="ncnn and ExecuTorch bundles apply the contract in their README's code.")
        if len(fixed) > 1:
            raise UsageError("--app takes one --fixed shape, the size of its app-ready model.")
    elif target in pack_edge.STATIC_TARGETS and len(fixed) > 1:
        raise UsageError(f"a {target} bundle with --fixed is one static program of one shape; got {len(fixed)}.",
                         hint="pack one bundle per shape (gap-tune --buckets --emit writes those lines), or "
                              "drop --fixed for one program that takes any size.")
    elif target not in ("ort", "coreml", *pack_edge.STATIC_TARGETS) and fixed:
        raise UsageError(f"--fixed variants are for the ORT target's NNAPI and Core ML, a Core ML bundle's "
                         f"enumerated shapes and a static LiteRT or ExecuTorch program; the {target} target runs any "
                         "size (with --app, --fixed is the size of its app-ready model).")
    if target in pack_edge.TORCH_TARGETS and checkpoint is None:
        raise UsageError(f"--target {target} converts from PyTorch: pass --checkpoint, the PyTorch model "
                         f"{onnx_name} was exported from.",
                         hint=f"gap-pack {onnx_name} --target {target} --checkpoint model.pt")
    if target not in pack_edge.TORCH_TARGETS and checkpoint is not None:
        raise UsageError(f"--target {target} converts the ONNX itself; --checkpoint is for "
                         f"{', '.join(pack_edge.TORCH_TARGETS)}.")
    bounded = target in ("executorch", "coreml")
    if not bounded and (max_side is not None or max_batch is not None):
        raise UsageError("--max-side and --max-batch bound the ExecuTorch and Core ML targets' dynamic dims; "
                         f"the {target} target has no such bound.")
    max_side = pack_edge.DEFAULT_MAX_SIDE if max_side is None else max_side
    max_batch = pack_edge.DEFAULT_MAX_BATCH if max_batch is None else max_batch
    if max_batch < 1 or max_side < 1:
        raise UsageError("--max-side and --max-batch are at least 1.")
    if min_side is not None and (target == "ort" or min_side < 1):
        raise UsageError("--min-side raises the smallest size of an OpenVINO, ncnn, LiteRT, ExecuTorch or Core ML "
                         "bundle (a whole number >= 1); an ORT bundle holds the ONNX, whose minimum is its own.")
    return max_side, max_batch


def _check_model(spec, source: Path, target: str, fixed, precision: str = "fp32") -> None:
    """The ONNX can be packed for ``target``: --fixed only on a dynamic model, within its channels and minimum
    size; a converting target only from the FP32 model."""
    from gap_deploy.exporter import pack_edge

    meta, channels = spec.metadata, spec.channels
    if fixed and (spec.static_size or spec.static_batch):
        raise UsageError(f"{source.name} is already static (input {'x'.join(str(d) for d in spec.written_dims)}): "
                         "--fixed variants fix a dynamic model's sizes, and this one runs at its own size only.",
                         hint="pack it without --fixed, or export with gap-export --dynamic and give the sizes to "
                              "--fixed.")
    if target == "openvino" and precision == "int8" and meta.precision != "fp32":
        raise UsageError(f"{source.name} is a {meta.precision} variant; --precision int8 quantizes the FP32 model "
                         "with NNCF and judges it against the FP32 IR.", hint="pack the FP32 ONNX.")
    if target not in ("ort", "openvino") and meta.precision != "fp32":
        raise UsageError(f"{source.name} is a {meta.precision} variant; the {target} target converts the FP32 model "
                         "and judges it against the FP32 ONNX.",
                         hint=f"pack the FP32 ONNX (with --precision fp16 for an FP16 {target} bundle)."
                         if target in pack_edge.FP16_TARGETS else "pack the FP32 ONNX.")
    from gap_deploy.runtime.limits import check_memory

    for shape in fixed:
        check_memory(shape, f"--fixed {format_shape(shape)}")  # its parity sweep allocates it
        if shape[1] != channels:
            raise UsageError(f"fixed shape {format_shape(shape)} has {shape[1]} channels; the model takes {channels}.")
        if shape[2] < meta.min_height or shape[3] < meta.min_width:
            raise UsageError(f"fixed shape {format_shape(shape)} is below the model's minimum "
                             f"{meta.min_height}x{meta.min_width}.")


@contextlib.contextmanager
def _write_errors(folder):
    """A converter or runtime that fails to write into the staged bundle (a full disk, a read-only folder) is the
    bundle's write error, said once, not an OSError traceback; nothing is published."""
    try:
        yield
    except OSError as exc:
        raise OutputPathError(f"cannot write bundle {folder}: {exc.strerror or exc}.",
                              note="nothing was published; what was there before is unchanged.",
                              hint="free some disk space, or choose another folder."
                              if exc.errno == errno.ENOSPC else "choose a folder you can write to.") from None


def _check_source(checkpoint, meta: ModelMetadata, source: Path, log, *, target: str = "",
                  other_weights: bool = False) -> None:
    """A checkpoint other than the one the ONNX names (gap.source_sha256) is said; the bundle is still judged
    against the ONNX, so a checkpoint with other weights fails the check. Core ML cannot run here, so nothing
    would catch other weights: refused unless ``other_weights``."""
    if meta.source_sha256 and meta.source_sha256 != checkpoint.source_sha256:
        if target == "coreml" and not other_weights:
            raise UsageError(f"{checkpoint.source.name} is not the file {source.name} was exported from (SHA-256 "
                             "differs), and a Core ML bundle cannot be run here to show that its weights are the "
                             "ONNX's.", hint="give the checkpoint the ONNX was exported from, or pass --other-weights "
                                             "if these are the weights you mean to ship.")
        log(f"note: {checkpoint.source.name} is not the file {source.name} was exported from (SHA-256 differs); "
            "the bundle must still match the ONNX.")


def _build(model, source: Path, out: Path, spec: ArtifactSpec, fixed: list[Shape], log) -> PackResult:
    meta, channels = spec.metadata, spec.channels
    work = out / ".work"
    work.mkdir()
    variants: list[tuple[str, onnx.ModelProto, Shape | None]] = [("model", model, None)]
    variants += [(f"model_{format_shape(s)}", fixed_variant(model, s), s) for s in fixed]
    files: dict[str, dict] = {}
    usable: list[Usability] = []
    parity: dict[str, ParityReport] = {}
    operators: set[str] = set()
    reference = ort_cpu_infer(model)
    for stem, variant, shape in variants:
        onnx_file = out / f"{stem}.onnx"
        save_onnx(variant, onnx_file)
        log(f"Converting {onnx_file.name} to ORT format ...")
        ort_tmp, config = to_ort(onnx_file, work)
        ort_file = out / f"{stem}.ort"
        shutil.move(ort_tmp, ort_file)  # from the work folder inside the staged bundle
        operators.update(line.strip() for line in config.read_text().splitlines()
                         if line.strip() and not line.startswith("#"))
        shapes = _check_shapes(meta, channels, shape)
        for path in (onnx_file, ort_file):  # every file runs and matches the source ONNX
            report = compare(reference, ort_cpu_infer(path), shapes, tolerance_for(meta.precision),
                             reference_name=f"source {source.name}", candidate_name=path.name)
            if not report.passed:
                raise ExportError(f"{path.name} does not match {source.name}; no bundle was written.",
                                  note=report.format_table())
            parity[path.name] = report
        usable += usability(onnx_file, onnx_file.name)
        accepts = ("any" if shape is None else format_shape(shape))
        for path in (onnx_file, ort_file):
            files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size,
                                "format": path.suffix[1:], "shape": None if shape is None else list(shape),
                                "accepts": accepts if shape else
                                f"N x {channels} x H x W with H >= {meta.min_height} and W >= {meta.min_width}"}
    (out / OPERATOR_CONFIG).write_text("# Operators and types gap-pack found in this bundle's models, for a reduced "
                                       "ONNX Runtime build\n" + "\n".join(sorted(operators)) + "\n")
    shutil.rmtree(work)
    description = _describe_bundle(out, spec, source, files, target="ort", precision=meta.precision,
                                   usability=[vars(u) for u in usable])
    (out / "model.json").write_text(json.dumps(description, indent=2) + "\n")
    (out / "usability.txt").write_text(format_usability(usable) + "\n")
    (out / "README.md").write_text(bundle_readme(description))
    return PackResult(out, files, usable, parity, sorted(operators))


def _describe_bundle(out: Path, spec: ArtifactSpec, source: Path, files: dict, **fields) -> dict:
    """What every bundle's model.json says (input, layout, normalization, minimum size, classes, source, files),
    with the target's own ``fields``; labels.txt is written beside it."""
    meta, channels = spec.metadata, spec.channels
    names = list(meta.class_names or [str(i) for i in range(meta.num_classes or 0)])
    (out / "labels.txt").write_text("\n".join(names) + "\n")
    mean, std = meta.normalization()
    return {"format": 1, "input": spec.input_name, "output": spec.output_name, "layout": "NCHW",
            "channels": channels, "channel_order": "RGB" if channels == 3 else ("gray" if channels == 1 else "RGBA"),
            "pixel_scale": "pixels / 255, then (x - mean) / std", "mean": list(mean), "std": list(std),
            "min_height": meta.min_height, "min_width": meta.min_width, "num_classes": meta.num_classes,
            "class_names": names, "source": source.name, "source_sha256": sha256_file(source), "files": files,
            **fields}


def _build_openvino(model, source: Path, out: Path, spec: ArtifactSpec, precision: str, log, *,
                    int8: Int8Request | None = None) -> PackResult:
    """model.xml + model.bin from the ONNX by OpenVINO's converter, saved FP32 (OpenVINO's save_model compresses
    weights to FP16 unless told not to: ``compress_to_fp16`` defaults to True), FP16 when asked, or INT8 by NNCF
    (exporter.ov_int8: gated on top-1 agreement with the FP32 IR on the calibration images); run by OpenVINO here
    at the sweep's sizes against the source ONNX (judged with the FP16 tolerance for FP16; for INT8 the errors
    are reported, as gap-export's INT8 sweep does) before the bundle is published."""
    from gap_deploy.runtime._lazy import require
    from gap_deploy.runtime.backends.openvino import HINT, RT_INFO_SECTION, OvRunner, no_telemetry

    no_telemetry()  # before openvino (and its converter) is imported
    ov = require("openvino", purpose="for gap-pack --target openvino", hint=HINT)
    meta, channels = spec.metadata, spec.channels
    log(f"Converting {source.name} to OpenVINO IR ({precision}) ...")
    try:
        converted = ov.convert_model(str(source))
    except Exception as exc:
        raise ExportError(f"OpenVINO's converter failed on {source.name}: {first_line(exc)}") from None
    quantized = None
    if int8 is not None:
        from gap_deploy.exporter import ov_int8

        quantized = ov_int8.quantize(ov, converted, int8.calibration, min_top1=int8.min_top1,
                                     keep_fp32=int8.keep_fp32, log=log)
        for step in quantized.steps:
            log(step)
        if not quantized.passed:
            raise ExportError(f"OpenVINO INT8 misses its gate: top-1 agreement with the FP32 IR "
                              f"{quantized.agreement:.1%} < {quantized.min_top1:.0%} on {quantized.images} "
                              "calibration images, even with NNCF's accuracy control; no bundle was written.",
                              note="\n".join(quantized.steps),
                              hint="use more or more representative --calib images, keep layers in FP32 with "
                                   "--keep-fp32 NAME, or lower --min-top1.")
        if quantized.all_float:
            raise ExportError(f"OpenVINO INT8 keeps no layer in INT8: all {quantized.layers} convolutions and MatMuls "
                              f"are in FP32 (top-1 agreement {quantized.agreement:.1%}, gate "
                              f"{quantized.min_top1:.0%}), so the bundle would be the FP32 model under an INT8 name; "
                              "no bundle was written.", note="\n".join(quantized.steps),
                              hint="pack FP32 (--precision fp32), use more or more representative --calib images "
                                   "(a model whose classes nearly tie on them loses agreement to any rounding), "
                                   "keep fewer layers with --keep-fp32, or lower --min-top1.")
        quantized.latency = ov_int8.measure_latency(ov, converted, quantized.model,
                                                    (1, *int8.calibration.shape[1:]))
        converted = quantized.model
    for key, value in meta.to_props().items():
        if key.startswith("gap."):
            converted.set_rt_info(value, [RT_INFO_SECTION, key[len("gap."):]])
    if precision != "fp32":
        converted.set_rt_info(precision, [RT_INFO_SECTION, "precision"])
    if quantized is not None and quantized.fp32_layers:
        converted.set_rt_info(",".join(quantized.fp32_layers), [RT_INFO_SECTION, "fp32_layers"])
    xml = out / "model.xml"
    try:
        ov.save_model(converted, str(xml), compress_to_fp16=(precision == "fp16"))
    except RuntimeError as exc:  # OpenVINO says only "basic_ios::clear: iostream error" for a full disk
        raise OutputPathError(f"OpenVINO could not write {xml.name} into the bundle: {first_line(exc)}.",
                              note="nothing was published; a full disk or a folder that cannot be written gives "
                                   "this.", hint="free some disk space, or choose another folder.") from None
    runner = OvRunner(xml)
    shapes = _check_shapes(meta, channels, None)
    tolerance = tolerance_for("fp16" if precision == "fp16" else meta.precision)
    if precision == "int8":  # judged on real images above; the sweep shows every size runs, with its errors
        from gap_deploy.runtime.parity import Tolerance

        tolerance = Tolerance(atol=float("inf"), rtol=float("inf"))
    from gap_deploy.exporter.pack_edge import verify

    report = verify(ort_cpu_infer(model), runner.infer, shapes, tolerance, num_classes=meta.num_classes,
                    source=source, candidate=f"model.xml (OpenVINO, {precision})", what="OpenVINO")
    dims = runner.inputs[0].shape
    accepts = (f"N x {channels} x H x W with H >= {meta.min_height} and W >= {meta.min_width}"
               if dims[2] is None and dims[3] is None else f"the fixed size {dims}")
    files = {p.name: {"sha256": sha256_file(p), "bytes": p.stat().st_size, "format": p.suffix[1:], "shape": None,
                      "accepts": accepts} for p in (xml, out / "model.bin")}
    extra = {}
    if quantized is not None:
        from importlib.metadata import version

        extra["int8"] = dict(quantized.to_dict(), nncf=version("nncf"),
                             reference="the FP32 IR converted from the same ONNX, on the calibration images")
    description = _describe_bundle(out, spec, source, files, target="openvino", openvino=ov.__version__,
                                   precision=precision, input_dims=["?" if d is None else d for d in dims],
                                   verification=report.to_dict(), **extra)
    (out / "model.json").write_text(json.dumps(description, indent=2) + "\n")
    (out / "verification.txt").write_text(report.format_table() + "\n")
    (out / "README.md").write_text(openvino_readme(description))
    return PackResult(out, files, [], {"model.xml": report}, [])


def openvino_readme(d: dict) -> str:
    from gap_deploy.exporter.pack_edge import readme_template

    text = readme_template("openvino").format(**d, precision_upper=d["precision"].upper())
    if "int8" in d:
        gate = d["int8"]
        kept = ", ".join(gate["fp32_layers"]) or "none"
        text += (f"\n## INT8\n\nQuantized by NNCF {gate['nncf']} ({gate['mode']}): top-1 agreement "
                 f"{gate['agreement']:.1%} with the FP32 IR on {gate['images']} calibration images (gate "
                 f"{gate['min_top1']:.0%}). Layers left in FP32: {kept}. The IR's 8-bit weights are dequantized "
                 "and its activations quantized by FakeQuantize operations, which OpenVINO's CPU plugin runs as "
                 "integer kernels; the errors against the FP32 model at each size are in `verification.txt` "
                 "(reported, not gated: INT8 is judged by top-1 on real images).\n")
    if "app" in d:
        from gap_deploy.exporter.pack_app import app_readme

        text += "\n" + app_readme(d)
    return text


def bundle_readme(d: dict) -> str:
    from gap_deploy.exporter.pack_edge import readme_template

    fixed = [name for name, entry in d["files"].items() if name.endswith(".ort") and name != "model.ort"
             and entry.get("role") != "app"]
    text = readme_template("ort").format(**d, fixed_files=", ".join(f"`{n}`" for n in fixed)
                                         or "no fixed-shape variant", OPERATOR_CONFIG=OPERATOR_CONFIG)
    if "app" in d:
        from gap_deploy.exporter.pack_app import app_readme

        text += "\n" + app_readme({**d, "target": "ort"})
    return text
