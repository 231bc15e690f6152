"""gap-debug's job as one library function: load the checkpoint, export the FP32 reference in memory, make the
inputs, and compare each artifact layer by layer (exporter.debug)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gap_deploy.runtime.backends.table import ENGINE_SUFFIXES
from gap_deploy.runtime.errors import UsageError

if TYPE_CHECKING:
    import onnx
from gap_deploy.runtime.layers import DEFAULT_CHUNK
from gap_deploy.runtime.shapes import Shape, format_shape

DEFAULT_IMGSZ = (224, 224)


def export_size(job: DebugJob) -> tuple[int, int]:
    """--imgsz, else the export size the first ONNX artifact's metadata records (gap-bench's default too), else
    DEFAULT_IMGSZ."""
    if job.imgsz is not None:
        return job.imgsz
    from gap_deploy.runtime.artifact import describe
    from gap_deploy.runtime.onnx_file import check_onnx_file

    for artifact in job.artifacts:
        if Path(artifact).suffix.lower() == ".onnx":
            meta = describe(check_onnx_file(artifact)).metadata
            if meta.export_height and meta.export_width:
                return meta.export_height, meta.export_width
    return DEFAULT_IMGSZ


#: a layer's relative error that counts as departing from PyTorch, per precision (an FP16 layer rounds to ~1e-3)
LAYER_TOLERANCE = {"fp32": 1e-4, "tf32": 1e-2, "fp16": 1e-2, "int8": 0.1}


@dataclass(frozen=True)
class DebugJob:
    checkpoint: Path
    artifacts: tuple[Path, ...] = ()
    arch: str | None = None
    num_classes: int | None = None
    trust_checkpoint: bool = False
    shapes: tuple[Shape, ...] = ()
    images: Path | None = None
    #: None: the export size the first ONNX artifact records, else DEFAULT_IMGSZ (run_debug resolves it)
    imgsz: tuple[int, int] | None = None
    max_images: int = 8
    tolerance: float | None = None
    chunk: int = DEFAULT_CHUNK
    #: also make this variant in memory, as converted before any FP32 fallback, and compare it ("fp16", "int8")
    precision: str | None = None
    calib: Path | None = None
    int8_layout: str = "tensorrt"
    #: where --precision's variant is made and run: "onnx" (ONNX Runtime), or "executorch" (the program gap-pack
    #: --target executorch would make, lowered per operation in a temporary folder)
    target: str = "onnx"

    @property
    def size(self) -> tuple[int, int]:
        return self.imgsz if self.imgsz is not None else DEFAULT_IMGSZ


def _inputs(job: DebugJob, channels: int, meta) -> list[np.ndarray]:
    from gap_deploy.runtime.limits import check_memory

    if job.images is not None:
        from gap_deploy.runtime.images import IMAGE_SUFFIXES, collect_images

        folder = Path(job.images)
        subfolders = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        files = collect_images([folder, *subfolders])[:job.max_images]  # a labelled folder's classes too
        if not files:
            raise UsageError(f"no image files in {job.images} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}).")
        check_chunk_memory([(1, channels, *job.size)] * len(files), job.chunk)
        contract = meta.preprocessing(job.size, channels)  # the model's own preprocessing, at --imgsz
        return [contract.load(f, channels)[None].astype(np.float32) for f in files]
    shapes = list(job.shapes) or [(1, channels, *job.size)]
    rng = np.random.default_rng(0)
    arrays = []
    for shape in shapes:
        if shape[1] != channels:
            raise UsageError(f"--shape {format_shape(shape)} has {shape[1]} channels; the model takes {channels}.")
        if shape[2] < meta.min_height or shape[3] < meta.min_width:
            raise UsageError(f"--shape {format_shape(shape)} is below the model's minimum input "
                             f"{meta.min_height}x{meta.min_width}.")
        check_memory(shape, f"--shape {format_shape(shape)}")
    check_chunk_memory([tuple(s) for s in shapes], job.chunk)
    for shape in shapes:
        arrays.append(rng.standard_normal(shape).astype(np.float32))
    return arrays


def check_chunk_memory(shapes: list[tuple[int, ...]], chunk: int) -> None:
    """gap-debug holds, for every input at once, one chunk of layers' outputs from PyTorch and from the artifact's
    runtime: about ``2 x chunk`` activations per input where a plain inference keeps a few alive
    (runtime/limits.py's ACTIVATION_FACTOR). Refused before the export when that cannot fit, with the largest
    --chunk that does. Failed before: 256x3x224x224 ran until the OOM killer ended the process."""
    import math

    from gap_deploy.runtime.errors import ResourceError
    from gap_deploy.runtime.limits import ACTIVATION_FACTOR, LIMIT_ENV, _gb, limit_bytes

    elements = sum(math.prod(s) for s in shapes) * 4  # bytes of the inputs
    need = elements * (1 + ACTIVATION_FACTOR * 2 * chunk)
    limit = limit_bytes()
    if need <= limit:
        return
    fits = int((limit / max(elements, 1) - 1) // (ACTIVATION_FACTOR * 2))
    raise ResourceError(
        f"comparing {len(shapes)} input(s) ({', '.join(format_shape(s) for s in shapes)}) {chunk} layer(s) per pass "
        f"would need about {_gb(need)} of memory; {_gb(limit)} is available.",
        note=f"each pass holds about 2 x {chunk} layer outputs per input, estimated as {ACTIVATION_FACTOR} times the "
             "input each (runtime/limits.py).",
        hint=(f"use --chunk {fits} or less, " if fits >= 1 else "") + "use fewer or smaller inputs, or set "
             f"{LIMIT_ENV}=<GB> to allow more.")


def _variant(job: DebugJob, fp32, channels: int, log) -> onnx.ModelProto:
    """The FP16 or INT8 conversion of ``fp32`` as the converter makes it, before any gate or FP32 fallback: what
    a failed gate measured."""
    from gap_deploy.exporter.precision import check_variant_request, load_calibration, to_fp16, to_int8
    from gap_deploy.runtime.artifact import describe

    precision = job.precision or "fp32"
    check_variant_request(precision, job.calib)
    log(f"Converting to {precision} in memory (no gate, no FP32 fallback) ...")
    if precision == "fp16":
        return to_fp16(fp32)
    if job.calib is None:  # check_variant_request refuses INT8 without calibration images; said again for types
        raise UsageError("--precision int8 needs --calib DIR.")
    data = load_calibration(job.calib, describe(fp32), size=job.size)
    return to_int8(fp32, data, layout=job.int8_layout)


def engine_source(plan: Path) -> Path:
    """The ONNX a gap-build plan was built from: the .onnx beside it whose SHA-256 its manifest records."""
    from gap_deploy.runtime.lineage import plan_source

    found = plan_source(plan)
    if found is not None:
        return found
    raise UsageError(f"the ONNX {plan.name} was built from is not beside it (no .onnx in {plan.parent} has the "
                     "SHA-256 its manifest records).", hint="put the model the plan was built from next to it.")


def plan_tf32(manifest) -> bool:
    """Whether the deployed plan let FP32 layers compute in TF32: the manifest's record, and for a manifest written
    before gap-deploy recorded it (``tf32`` None) TensorRT's default, which is on (NvInfer.h, BuilderFlag::kTF32:
    "Enabled by default"). Only an explicit False means off."""
    return manifest.tf32 is not False


def plan_tolerance(manifest) -> float:
    """The per-layer tolerance for a plan: TF32's for an FP32 plan that computed in TF32."""
    key = "tf32" if manifest.precision == "fp32" and plan_tf32(manifest) else manifest.precision
    return LAYER_TOLERANCE.get(key, 1e-2)


def _debug_plan(job: DebugJob, plan: Path, loaded, reference, inputs, log):
    """A plan: rebuilt from its ONNX (found by SHA-256) per chunk with that chunk's tensors marked as outputs,
    with the manifest's profiles and TF32 setting."""
    import onnx

    from gap_deploy.exporter.builder import BuildConfig, build_device, import_builder
    from gap_deploy.exporter.debug import debug_engine
    from gap_deploy.runtime.manifest import EngineManifest
    from gap_deploy.runtime.profiles import Profile

    trt = import_builder()
    cuda, _ = build_device()
    manifest = EngineManifest.read(plan)
    source = engine_source(plan)
    profiles = tuple(Profile(*(tuple(v) for v in next(iter(p.values())))) for p in manifest.profiles)
    config = BuildConfig(profiles=profiles, tf32=plan_tf32(manifest), hardware_compat=manifest.hardware_compatibility)
    tolerance = job.tolerance if job.tolerance is not None else plan_tolerance(manifest)
    log(f"Comparing {plan} (TensorRT, {manifest.precision}, from {source.name}) with PyTorch, {job.chunk} layer(s) "
        "per build ...")
    return debug_engine(loaded.module, reference, onnx.load(str(source)), str(plan), inputs, config, trt=trt,
                        cuda=cuda, tolerance=tolerance, chunk=job.chunk, log=log)


def _is_openvino(path: Path) -> bool:
    from gap_deploy.runtime.bundle import is_bundle, read_description

    if path.suffix.lower() == ".xml":
        return True
    return is_bundle(path) and read_description(path).get("target") == "openvino"


def _openvino_bundle(path: Path) -> tuple[Path, Path, dict]:
    """(model.xml, the ONNX it was converted from, model.json) of an OpenVINO bundle given as its folder or its
    model.xml; its files checked against model.json's SHA-256s."""
    from gap_deploy.runtime.bundle import bundle_model

    folder, source, description = _converted_bundle(path, ".xml", "compares an OpenVINO IR", "openvino")
    return bundle_model(folder, None), source, description


def _is_ncnn(path: Path) -> bool:
    from gap_deploy.runtime.bundle import is_bundle, read_description

    if path.suffix.lower() == ".param":
        return True
    return is_bundle(path) and read_description(path).get("target") == "ncnn"


def _ncnn_bundle(path: Path) -> tuple[Path, Path, dict]:
    """(the bundle folder, the ONNX pnnx converted, model.json) of an ncnn bundle given as its folder or its
    model.param."""
    return _converted_bundle(path, ".param", "maps an ncnn program's blobs", "ncnn")


def _converted_bundle(path: Path, suffix: str, what: str, target: str) -> tuple[Path, Path, dict]:
    """(the bundle folder, the ONNX it was converted from, beside it by SHA-256, model.json) of a bundle made from
    an ONNX (OpenVINO, ncnn), given as its folder or its model file (``suffix``)."""
    from gap_deploy.exporter.debug import bundle_source
    from gap_deploy.runtime.bundle import is_bundle, read_description

    folder = path.parent if path.suffix.lower() == suffix else path
    if not is_bundle(folder):
        raise UsageError(f"{path} is not in a gap-pack bundle: gap-debug {what} through the bundle that says which "
                         "ONNX it was converted from (model.json).",
                         hint=f"give the bundle folder gap-pack --target {target} wrote.")
    description = read_description(folder)
    return folder, bundle_source(folder, description), description


def _debug_ncnn(job: DebugJob, name: str, bundle: tuple[Path, Path, dict], loaded, reference, inputs, log):
    import onnx

    from gap_deploy.exporter.debug_ncnn import debug_ncnn, open_bundle

    folder, source, description = bundle
    precision = description.get("precision", "fp32")
    tolerance = job.tolerance if job.tolerance is not None else LAYER_TOLERANCE.get(precision, 1e-4)
    log(f"Comparing {name} (ncnn, {precision}, from {source.name}) with PyTorch, {job.chunk} layer(s) per pass ...")
    runner, layers = open_bundle(folder)
    return debug_ncnn(loaded.module, reference, onnx.load(str(source)), runner, layers, name, inputs,
                      tolerance=tolerance, chunk=job.chunk, log=log)


def _is_executorch(path: Path) -> bool:
    from gap_deploy.runtime.bundle import is_bundle, read_description

    return is_bundle(path) and read_description(path).get("target") == "executorch"


def _debug_executorch(job: DebugJob, name: str, folder: Path, loaded, inputs, log):
    from gap_deploy.exporter.debug_executorch import debug_executorch
    from gap_deploy.runtime.bundle import read_description

    description = read_description(folder)
    precision = description.get("precision", "fp32")
    tolerance = job.tolerance if job.tolerance is not None else LAYER_TOLERANCE.get(precision, 1e-4)
    log(f"Comparing {name} (ExecuTorch, {precision}, its debug program model.debug.pte) with PyTorch, "
        f"{job.chunk} layer(s) per pass ...")
    return debug_executorch(loaded.module, folder, description, name, inputs, tolerance=tolerance, chunk=job.chunk,
                            log=log)


def _debug_unpacked(job: DebugJob, loaded, inputs, log):
    from gap_deploy.exporter.debug_executorch import debug_unpacked

    precision = job.precision or "fp32"
    tolerance = job.tolerance if job.tolerance is not None else LAYER_TOLERANCE.get(precision, 1e-4)
    name = f"in-memory ExecuTorch {precision} program (as gap-pack converts it, every module's output returned)"
    log(f"Comparing {name} with PyTorch, {job.chunk} layer(s) per pass ...")
    return debug_unpacked(loaded.module, precision, name, inputs, tolerance=tolerance, chunk=job.chunk, log=log)


def _is_litert(path: Path) -> bool:
    from gap_deploy.runtime.bundle import is_bundle, read_description

    return is_bundle(path) and read_description(path).get("target") == "litert"


def _litert_bundle(folder: Path) -> tuple[Path, dict]:
    """(model.tflite, model.json) of a LiteRT bundle, its file checked against model.json's SHA-256."""
    from gap_deploy.runtime.bundle import checked_bundle_file, read_description

    description = read_description(folder)
    name = next((n for n, e in description["files"].items() if n.endswith(".tflite") and e.get("role") != "app"),
                None)
    if name is None:
        raise UsageError(f"{folder} lists no LiteRT program (.tflite) in its model.json.",
                         hint="write the bundle again with gap-pack --target litert.")
    return checked_bundle_file(folder, name, description["files"][name]), description


def _debug_litert(job: DebugJob, name: str, bundle: tuple[Path, dict], loaded, reference, inputs, log):
    from gap_deploy.exporter.debug_litert import debug_litert

    tflite, description = bundle
    precision = description.get("precision", "fp32")
    tolerance = job.tolerance if job.tolerance is not None else LAYER_TOLERANCE.get(precision, 1e-4)
    log(f"Comparing {name} (LiteRT, {precision}, converted from the checkpoint) with PyTorch, {job.chunk} layer(s) "
        "per pass ...")
    return debug_litert(loaded.module, reference, tflite, name, inputs, tolerance=tolerance, chunk=job.chunk, log=log)


def _debug_openvino(job: DebugJob, name: str, bundle: tuple[Path, Path, dict], loaded, reference, inputs, log):
    import onnx

    from gap_deploy.exporter.debug_openvino import debug_openvino

    xml, source, description = bundle
    precision = description.get("precision", "fp32")
    tolerance = job.tolerance if job.tolerance is not None else LAYER_TOLERANCE.get(precision, 1e-4)
    log(f"Comparing {name} (OpenVINO, {precision}, from {source.name}) with PyTorch, {job.chunk} layer(s) per "
        "compile ...")
    return debug_openvino(loaded.module, reference, onnx.load(str(source)), xml, name, inputs, tolerance=tolerance,
                          chunk=job.chunk, log=log)


def _check_artifacts(job: DebugJob, artifacts, ours, sources: dict, converted: set) -> None:
    """Every artifact against the checkpoint's model (channels, classes), before any comparison runs: an ONNX by its
    own description, a bundle converted from an ONNX (OpenVINO, ncnn) by that ONNX (``sources``), one converted
    from the checkpoint itself (LiteRT, ExecuTorch: ``converted``) by its model.json's classes."""
    import onnx

    from gap_deploy.runtime.artifact import describe
    from gap_deploy.runtime.bundle import read_description
    from gap_deploy.runtime.onnx_file import check_onnx_file

    for name, path in artifacts:
        if isinstance(path, onnx.ModelProto) or Path(path).suffix in ENGINE_SUFFIXES:
            continue
        if name in converted:
            other = read_description(Path(path)).get("num_classes")
            if other is not None and ours.num_classes is not None and other != ours.num_classes:
                raise UsageError(f"{name} has {other} classes; {job.checkpoint}'s model has {ours.num_classes}: it "
                                 "was not packed from this checkpoint.", hint="give the checkpoint it was packed from.")
            continue
        theirs = describe(check_onnx_file(sources.get(name, path)))
        for what, mine, other in (("input channel(s)", ours.channels, theirs.declared_channels),
                                  ("classes", ours.num_classes, theirs.num_classes)):
            if other is not None and mine is not None and other != mine:
                raise UsageError(f"{name} has {other} {what}; {job.checkpoint}'s model has {mine}: it was not exported "
                                 "from this checkpoint, so no layer of it can be compared.",
                                 hint="give the checkpoint the artifact was exported from.")


def run_debug(job: DebugJob, log: Callable[[str], None] = lambda _: None) -> list:
    """A DebugReport per artifact (the in-memory FP32 export when ``job.artifacts`` is empty)."""
    import dataclasses

    import onnx

    from gap_deploy.exporter.checkpoint import load_model
    from gap_deploy.exporter.onnx_export import export_model
    from gap_deploy.runtime.artifact import describe

    job = dataclasses.replace(job, imgsz=export_size(job))
    log(f"Loading {job.checkpoint} (inputs at {job.size[0]}x{job.size[1]}) ...")
    loaded = load_model(job.checkpoint, arch=job.arch, num_classes=job.num_classes,
                        trust_checkpoint=job.trust_checkpoint)
    log("Exporting the FP32 reference in memory (its node metadata names the PyTorch modules) ...")
    reference = export_model(loaded, dynamic=True, imgsz=job.size, keep_stack_traces=False)
    meta = reference.metadata
    inputs = _inputs(job, loaded.in_channels, meta)
    artifacts: list[tuple[str, Path | onnx.ModelProto]] = [(str(a), Path(a)) for a in job.artifacts]
    if not artifacts and job.target != "executorch":
        artifacts.append(("in-memory FP32 export", reference.model))
    if job.precision not in (None, "fp32") and job.target != "executorch":
        artifacts.append((f"in-memory {job.precision} (before any FP32 fallback)", _variant(job, reference.model,
                                                                                             loaded.in_channels, log)))
    reports = []
    ours = describe(reference.model)
    bundles = {name: _openvino_bundle(Path(path)) for name, path in artifacts
               if not isinstance(path, onnx.ModelProto) and _is_openvino(Path(path))}
    litert = {name: _litert_bundle(Path(path)) for name, path in artifacts
              if not isinstance(path, onnx.ModelProto) and _is_litert(Path(path))}
    ncnn = {name: _ncnn_bundle(Path(path)) for name, path in artifacts
            if not isinstance(path, onnx.ModelProto) and _is_ncnn(Path(path))}
    executorch = {name: Path(path) for name, path in artifacts
                  if not isinstance(path, onnx.ModelProto) and _is_executorch(Path(path))}
    sources = {name: bundle[1] for name, bundle in [*bundles.items(), *ncnn.items()]}
    _check_artifacts(job, artifacts, ours, sources, {*litert, *executorch})
    for name, path in artifacts:
        started = time.perf_counter()
        if not isinstance(path, onnx.ModelProto) and Path(path).suffix in ENGINE_SUFFIXES:
            reports.append(_debug_plan(job, Path(path), loaded, reference.model, inputs, log))
        elif name in bundles:
            reports.append(_debug_openvino(job, name, bundles[name], loaded, reference.model, inputs, log))
        elif name in executorch:
            reports.append(_debug_executorch(job, name, executorch[name], loaded, inputs, log))
        elif name in ncnn:
            reports.append(_debug_ncnn(job, name, ncnn[name], loaded, reference.model, inputs, log))
        elif name in litert:
            reports.append(_debug_litert(job, name, litert[name], loaded, reference.model, inputs, log))
        else:
            reports.append(_debug_onnx(job, name, path, loaded, reference.model, inputs, log))
        reports[-1].seconds = time.perf_counter() - started
    if job.target == "executorch":
        started = time.perf_counter()
        reports.append(_debug_unpacked(job, loaded, inputs, log))
        reports[-1].seconds = time.perf_counter() - started
    return reports


def _debug_onnx(job: DebugJob, name: str, path, loaded, reference, inputs, log):
    """An ONNX artifact (a file, or the in-memory export or variant), run by ONNX Runtime."""
    import onnx

    from gap_deploy.exporter.debug import debug_artifact
    from gap_deploy.runtime.artifact import describe
    from gap_deploy.runtime.onnx_file import check_onnx_file

    if isinstance(path, onnx.ModelProto):
        model = path
    else:
        check_onnx_file(path)
        model = onnx.load(str(path))
    precision = describe(model).metadata.precision
    tolerance = job.tolerance if job.tolerance is not None else LAYER_TOLERANCE.get(precision, 1e-4)
    log(f"Comparing {name} ({precision}) with PyTorch, {job.chunk} layer(s) per pass ...")
    return debug_artifact(loaded.module, reference, model, name, inputs, tolerance=tolerance, chunk=job.chunk,
                          log=log)
