"""ONNX -> TensorRT engine, for TensorRT 10 and 11, without torch.

Precision comes from the ONNX (see exporter.precision): networks are strongly typed (a flag on
TensorRT 10, always on 11). What the engine really runs in is read back from the engine inspector
and recorded in the manifest, so an FP16 request that built FP32 cannot go unnoticed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from runtime.errors import BackendUnavailableError, BuildError, MissingDependencyError
from runtime.files import check_output_path, sha256_bytes, sha256_file, write_bytes_atomic
from runtime.manifest import HARDWARE_COMPAT, EngineManifest, manifest_path
from runtime.metadata import ModelMetadata
from runtime.shapes import Shape, format_shape

DEFAULT_OPT_SIDE = 224
DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_BATCH = 16
GPU_HINT = "pip install 'gap-deploy[gpu]' on a machine with an NVIDIA GPU and driver."


@dataclass(frozen=True)
class Profile:
    min: Shape
    opt: Shape
    max: Shape

    def __str__(self) -> str:
        return f"{format_shape(self.min)}:{format_shape(self.opt)}:{format_shape(self.max)}"


@dataclass(frozen=True)
class BuildConfig:
    profiles: tuple[Profile, ...] = ()
    workspace_gib: float = 4.0
    timing_cache: Path | None = None
    version_compatible: bool = False
    hardware_compat: str = "none"


@dataclass(frozen=True)
class BuildResult:
    plan: Path
    manifest: EngineManifest
    seconds: float
    layer_precisions: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class OnnxInput:
    name: str
    dims: tuple[int | str, ...]
    metadata: ModelMetadata


def read_onnx_input(path: Path) -> OnnxInput:
    from runtime.onnx_file import check_onnx_file

    check_onnx_file(path)
    model = onnx.load(str(path), load_external_data=False)
    if len(model.graph.input) != 1:
        raise BuildError(f"{path} has {len(model.graph.input)} inputs; gap-build takes one image input.")
    value = model.graph.input[0]
    dims = tuple(d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim)
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    return OnnxInput(value.name, dims, meta)


def default_profile(info: OnnxInput) -> Profile:
    """min: 1 x C x the model's minimum; opt: 1 x C x 224x224; max: 16 x C x 1024x1024 (static dims kept)."""
    meta = info.metadata
    c = info.dims[1] if isinstance(info.dims[1], int) and info.dims[1] > 0 else (meta.in_channels or 3)

    def pick(axis: int, dynamic_value: int) -> int:
        dim = info.dims[axis]
        return dim if isinstance(dim, int) and dim > 0 else dynamic_value

    lo = (pick(0, 1), c, pick(2, meta.min_height), pick(3, meta.min_width))
    opt = (pick(0, 1), c, pick(2, max(DEFAULT_OPT_SIDE, meta.min_height)),
           pick(3, max(DEFAULT_OPT_SIDE, meta.min_width)))
    hi = (pick(0, DEFAULT_MAX_BATCH), c, pick(2, DEFAULT_MAX_SIDE), pick(3, DEFAULT_MAX_SIDE))
    return Profile(lo, opt, hi)


def check_profiles(info: OnnxInput, profiles: Sequence[Profile], path: Path) -> None:
    meta = info.metadata
    for profile in profiles:
        for a, b in ((profile.min, profile.opt), (profile.opt, profile.max)):
            if any(x > y for x, y in zip(a, b)):
                raise BuildError(f"profile {profile} is not ordered: need min <= opt <= max in every dim.")
        for axis, label in enumerate(("batch", "channels", "height", "width")):
            dim = info.dims[axis]
            if isinstance(dim, int) and dim > 0 and not (profile.min[axis] == profile.max[axis] == dim):
                hint = "re-export with gap-export --dynamic" if axis != 1 else f"use {dim} channels"
                raise BuildError(f"{path} has a static {label} of {dim}, but profile {profile} asks for "
                                 f"{profile.min[axis]}..{profile.max[axis]}.", hint=f"{hint}.")
        if profile.min[2] < meta.min_height or profile.min[3] < meta.min_width:
            raise BuildError(f"profile {profile} goes below the model's minimum input size "
                             f"{meta.min_height}x{meta.min_width}.")


def layer_precisions(inspector_json: str) -> dict[str, int]:
    """Count layer outputs per data type in the engine inspector's JSON (needs DETAILED verbosity)."""
    counts: Counter[str] = Counter()
    try:
        layers = json.loads(inspector_json).get("Layers", [])
    except (ValueError, AttributeError):
        return {}
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        for tensor in layer.get("Outputs", []):
            text = str(tensor.get("Format/Datatype", "")).lower()
            if re.search(r"int8", text):
                counts["int8"] += 1
            elif re.search(r"half|fp16|float16", text):
                counts["fp16"] += 1
            elif re.search(r"float|fp32", text):
                counts["fp32"] += 1
    return dict(counts)


def summarize_precision(counts: dict[str, int]) -> str:
    for name in ("int8", "fp16", "fp32"):
        if counts.get(name):
            return name
    return "unknown"


def import_builder():
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError(
            "gap-build needs the full TensorRT ('tensorrt' module), which is not installed here.",
            note="the lean runtime (tensorrt_lean) can run engines but cannot build them.", hint=GPU_HINT) from None
    return trt


def build_device(cuda=None):
    """(cuda, device 0), or BackendUnavailableError: TensorRT builds engines on the GPU they target."""
    if cuda is None:
        from runtime.backends.cuda import Cuda

        cuda = Cuda()
    try:
        device = cuda.device(0) if cuda.device_count() > 0 else None
    except Exception as exc:  # no driver, no cuda-python: CudaError / MissingDependencyError
        raise BackendUnavailableError(f"no usable CUDA device for building: {str(exc).splitlines()[0]}",
                                      hint=GPU_HINT) from None
    if device is None:
        raise BackendUnavailableError("no CUDA device found; TensorRT builds engines on the GPU they target.",
                                      hint=GPU_HINT)
    return cuda, device


def build_engine(onnx_path: str | Path, output: str | Path, config: BuildConfig = BuildConfig(), *, trt=None,
                 cuda=None, verify: Callable[[Path], None] | None = None,
                 log: Callable[[str], None] = lambda _: None) -> BuildResult:
    """Build ``onnx_path`` into ``output`` (+ ``output.json`` manifest), atomically.

    ``verify(temp_plan)`` runs on the finished plan before it is moved into place; if it raises,
    neither the plan nor the manifest is written.
    """
    onnx_path, output = Path(onnx_path), check_output_path(output)
    info = read_onnx_input(onnx_path)
    profiles = tuple(config.profiles) or (default_profile(info),)
    check_profiles(info, profiles, onnx_path)
    if config.hardware_compat not in HARDWARE_COMPAT:
        raise BuildError(f"--hardware-compat {config.hardware_compat!r}; choose one of {', '.join(HARDWARE_COMPAT)}.")
    trt = trt if trt is not None else import_builder()
    cuda, device = build_device(cuda)

    started = time.perf_counter()
    major = int(str(trt.__version__).split(".")[0])
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 11 is always strongly typed and removed EXPLICIT_BATCH; on 10 strong typing is opt-in.
    flags = 0 if major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    log(f"Parsing {onnx_path} (TensorRT {trt.__version__}, {device.name}) ...")
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            errors.append(f"node '{err.node_name()}' ({err.node_operator()}): {err.desc()}")
        raise BuildError(f"TensorRT's ONNX parser rejected {onnx_path} with {len(errors)} error(s):\n  "
                         + "\n  ".join(errors or ["(no details)"]),
                         hint="check the opset (gap-export --opset) and that every op is supported by this "
                              "TensorRT version.")

    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * (1 << 30)))
    cfg.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # so the inspector reports layer precisions
    for profile in profiles:
        p = builder.create_optimization_profile()
        p.set_shape(info.name, profile.min, profile.opt, profile.max)
        cfg.add_optimization_profile(p)
    cache_bytes = b""
    if config.timing_cache and Path(config.timing_cache).is_file():
        cache_bytes = Path(config.timing_cache).read_bytes()
        log(f"Using timing cache {config.timing_cache} ({len(cache_bytes)} bytes)")
    cache = cfg.create_timing_cache(cache_bytes)
    cfg.set_timing_cache(cache, ignore_mismatch=False)
    if config.version_compatible:
        cfg.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    levels = {"none": trt.HardwareCompatibilityLevel.NONE, "ampere+": trt.HardwareCompatibilityLevel.AMPERE_PLUS,
              "same-cc": trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY}
    cfg.hardware_compatibility_level = levels[config.hardware_compat]

    log(f"Building {len(profiles)} profile(s): {', '.join(map(str, profiles))} (this can take minutes) ...")
    serialized = builder.build_serialized_network(network, cfg)
    if serialized is None:
        raise BuildError(f"TensorRT failed to build an engine from {onnx_path}; its log above says why.",
                         hint="common causes: too little workspace (--workspace), or a profile too large for "
                              "GPU memory (--max).")
    plan = bytes(serialized)
    if config.timing_cache:
        write_bytes_atomic(config.timing_cache, bytes(cfg.get_timing_cache().serialize()))

    runtime = trt.Runtime(logger)
    if config.version_compatible:
        runtime.engine_host_code_allowed = True  # the plan was built just now, by this process
    engine = runtime.deserialize_cuda_engine(plan)
    counts = {}
    if engine is not None:
        inspector = engine.create_engine_inspector()
        counts = layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    meta = info.metadata
    manifest = EngineManifest(
        tensorrt_version=str(trt.__version__), gpu_name=device.name, compute_capability=device.compute_capability,
        precision=summarize_precision(counts), plan_sha256=sha256_bytes(plan), onnx_sha256=sha256_file(onnx_path),
        profiles=[{info.name: [list(profile.min), list(profile.opt), list(profile.max)]} for profile in profiles],
        version_compatible=config.version_compatible, hardware_compatibility=config.hardware_compat,
        metadata=meta.to_props(), builder="gap-deploy")

    temp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    try:
        write_bytes_atomic(temp, plan)
        manifest.write(temp)
        if verify is not None:
            verify(temp)
        os.replace(manifest_path(temp), manifest_path(output))
        os.replace(temp, output)
    finally:
        for leftover in (temp, manifest_path(temp)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
    return BuildResult(output, manifest, time.perf_counter() - started, counts)


def profile_shapes(profiles: Sequence[Profile]) -> list[Shape]:
    shapes: list[Shape] = []
    for profile in profiles:
        for shape in (profile.min, profile.opt, profile.max):
            if shape not in shapes:
                shapes.append(shape)
    return shapes


@dataclass(frozen=True)
class PipelineResult:
    build: BuildResult
    engine_parity: object | None  # runtime.parity.ParityReport
    variant: object | None  # exporter.precision.VariantResult
    source: Path


def build_with_precision(onnx_path: str | Path, output: str | Path, *, precision: str | None = None,
                         calib: str | Path | None = None, calib_size: tuple[int, int] = (224, 224),
                         config: BuildConfig = BuildConfig(), verify: bool = True, trt=None, cuda=None,
                         log: Callable[[str], None] = lambda _: None) -> PipelineResult:
    """gap-build's pipeline: [precision variant, verified on CPU] -> engine -> [engine vs ONNX Runtime]."""
    from runtime.parity import compare, tolerance_for

    onnx_path = Path(onnx_path)
    check_output_path(output)
    info = read_onnx_input(onnx_path)
    # Fail for a missing TensorRT or GPU before anything is written.
    trt = trt if trt is not None else import_builder()
    cuda, _ = build_device(cuda)

    source, variant = onnx_path, None
    have = info.metadata.precision
    if precision and precision != have:
        if have != "fp32":
            raise BuildError(f"{onnx_path} is already {have}; convert from the FP32 model instead.")
        from exporter.precision import load_calibration, make_variant, variant_path
        from runtime.parity import default_verify_shapes

        fp32 = onnx.load(str(onnx_path))
        data = load_calibration(calib, info.metadata, size=calib_size) if precision == "int8" and calib else None
        shapes = default_verify_shapes(info.metadata.in_channels or 3, calib_size, info.metadata.min_height,
                                       dynamic=not isinstance(info.dims[2], int) or info.dims[2] <= 0)
        log(f"Converting to {precision} and verifying against the FP32 model on the CPU ...")
        variant = make_variant(fp32, precision, shapes, calibration=data)
        if not variant.passed:
            raise BuildError(f"the {precision} model differs too much from the FP32 model; no engine was built.",
                             note="\n".join(r.format_table() for r in (variant.sweep, variant.real_data) if r))
        source = variant_path(onnx_path, precision)
        write_bytes_atomic(source, variant.model.SerializeToString())
        log(f"Wrote {source}")

    report_box: list = []

    def check(plan: Path) -> None:
        from runtime.backends.trt import TrtRunner
        from runtime.parity import ort_cpu_infer

        runner = TrtRunner(plan, trt=trt, cuda=cuda)
        try:
            profiles = config.profiles or (default_profile(read_onnx_input(source)),)
            built = runner.manifest.precision
            report = compare(ort_cpu_infer(str(source)), runner.infer, profile_shapes(profiles),
                             tolerance_for(built, "trt"), reference_name="ONNX Runtime CPU",
                             candidate_name=f"TensorRT ({built})")
        finally:
            runner.close()
        report_box.append(report)
        if not report.passed:
            raise BuildError("the engine's outputs differ from ONNX Runtime's; the engine was not written.",
                             note=report.format_table())

    result = build_engine(source, output, config, trt=trt, cuda=cuda, verify=check if verify else None, log=log)
    return PipelineResult(result, report_box[0] if report_box else None, variant, source)
