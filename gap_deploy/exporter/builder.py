"""ONNX -> TensorRT engine, for TensorRT 10 and 11, without torch.

Precision comes from the ONNX (see exporter.precision): networks are strongly typed (a flag on
TensorRT 10, always on 11). What the engine really runs in is read back from the engine inspector
and recorded in the manifest, so an FP16 request that built FP32 cannot go unnoticed.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from gap_deploy.exporter.precision import VariantOptions, VariantResult
from gap_deploy.runtime._lazy import require
from gap_deploy.runtime.artifact import ArtifactSpec, describe
from gap_deploy.runtime.errors import BackendUnavailableError, BuildError, GapError, UsageError, first_line
from gap_deploy.runtime.files import check_output_path, sha256_bytes, sha256_file
from gap_deploy.runtime.manifest import HARDWARE_COMPAT, EngineManifest
from gap_deploy.runtime.metadata import ModelMetadata
from gap_deploy.runtime.naming import manifest_path
from gap_deploy.runtime.parity import ParityReport
from gap_deploy.runtime.profiles import Profile
from gap_deploy.runtime.publish import Publication, publish_bytes
from gap_deploy.runtime.shapes import Shape

GPU_HINT = "pip install 'gap-deploy[gpu]' on a machine with an NVIDIA GPU and driver."


@dataclass(frozen=True)
class BuildConfig:
    profiles: tuple[Profile, ...] = ()
    workspace_gib: float = 4.0
    timing_cache: Path | None = None
    version_compatible: bool = False
    hardware_compat: str = "none"
    #: TensorRT enables TF32 by default (BuilderFlag.TF32, NvInfer.h: "Enabled by default"), so an "FP32" engine
    #: would compute convolutions and matrix products in TF32 on Ampere and newer. gap-build clears the flag
    #: unless this is True; then an FP32 engine's manifest says precision "tf32", judged with its own tolerance.
    tf32: bool = False

    def __post_init__(self):
        if self.hardware_compat not in HARDWARE_COMPAT:  # checked once, before any work
            raise UsageError(f"hardware_compat {self.hardware_compat!r}; choose one of {', '.join(HARDWARE_COMPAT)}.")


@dataclass(frozen=True)
class BuildResult:
    plan: Path
    manifest: EngineManifest
    seconds: float
    layer_precisions: dict[str, int] = field(default_factory=dict)
    #: the engine against ONNX Runtime (CPU), when the build was verified
    parity: ParityReport | None = None


def read_onnx_input(path: Path) -> ArtifactSpec:
    """The ONNX model's spec (runtime.artifact.describe): gap-build takes one image input."""
    return describe(path)


def check_profiles(info: ArtifactSpec, profiles: Sequence[Profile], path: Path) -> None:
    meta = info.metadata
    for profile in profiles:
        for a, b in ((profile.min, profile.opt), (profile.opt, profile.max)):
            if any(x > y for x, y in zip(a, b)):
                raise BuildError(f"profile {profile} is not ordered: need min <= opt <= max in every dim.")
        for axis, label in enumerate(("batch", "channels", "height", "width")):
            dim = info.fixed(axis)
            if dim is not None and not (profile.min[axis] == profile.max[axis] == dim):
                hint = "re-export with gap-export --dynamic" if axis != 1 else f"use {dim} channels"
                raise BuildError(f"{path} has a static {label} of {dim}, but profile {profile} asks for "
                                 f"{profile.min[axis]}..{profile.max[axis]}.", hint=f"{hint}.")
        if profile.min[2] < meta.min_height or profile.min[3] < meta.min_width:
            raise BuildError(f"profile {profile} goes below the model's minimum input size "
                             f"{meta.min_height}x{meta.min_width}.")


#: TensorRT versions this builder is written and tested for (docs/commands/gap-build.md, "Supported TensorRT").
SUPPORTED_TENSORRT = ">= 10.0, < 12"
#: gap-build's --hardware-compat choices -> TensorRT's HardwareCompatibilityLevel member, and the first
#: TensorRT version that has it.
HARDWARE_LEVELS: dict[str, tuple[str, tuple[int, int]]] = dict(zip(
    HARDWARE_COMPAT, [("NONE", (10, 0)), ("AMPERE_PLUS", (10, 0)), ("SAME_COMPUTE_CAPABILITY", (10, 9))]))
#: Words of the engine inspector's per-layer ``Format/Datatype`` value (10.x and 11.x alike): a description
#: ("Row major linear FP16 format", "Thirty-two wide channel vectorized row major Int8 format") or, for
#: generated kernels, the bare type name ("Half", "Float", "BFloat16", "Int8", "FP8", "Int32").
_DATATYPES = {"int8": "int8", "half": "fp16", "fp16": "fp16", "float16": "fp16", "float": "fp32", "fp32": "fp32",
              "float32": "fp32", "bfloat16": "bf16", "bf16": "bf16", "fp8": "fp8", "int4": "int4", "fp4": "fp4"}


def _datatype_of(tensor: dict) -> str | None:
    """The precision of one layer output; None for non-float bookkeeping (Int32, Bool)."""
    text = str(tensor.get("Format/Datatype", "")).lower()
    for word in re.findall(r"[a-z0-9]+", text):
        if word in _DATATYPES:
            return _DATATYPES[word]
    return None


def layer_precisions(inspector_json: str) -> dict[str, int]:
    """Count layer outputs per data type in the engine inspector's JSON (needs DETAILED verbosity).

    The per-layer key is ``Format/Datatype`` in TensorRT 10 and 11 (only the top-level ``Bindings`` list
    became ``I/O Tensors`` in 11). Returns {} when the JSON holds no layer details.
    """
    counts: Counter[str] = Counter()
    try:
        layers = json.loads(inspector_json).get("Layers", [])
    except (ValueError, AttributeError, TypeError):
        return {}
    for layer in layers:
        if not isinstance(layer, dict):
            continue
        for tensor in layer.get("Outputs", []):
            kind = _datatype_of(tensor) if isinstance(tensor, dict) else None
            if kind:
                counts[kind] += 1
    return dict(counts)


def summarize_precision(counts: dict[str, int]) -> str:
    """The lowest precision any layer runs in; an engine whose layers cannot be read is an error."""
    for name in ("int4", "fp4", "fp8", "int8", "fp16", "bf16", "fp32"):
        if counts.get(name):
            return name
    raise BuildError("could not read the engine's layer precisions from TensorRT's engine inspector, so the "
                     "precision really built is unknown; the engine was not written.",
                     note="the inspector JSON held no layer data types (profiling verbosity DETAILED is set by "
                          "gap-build; an unknown inspector schema also ends here).",
                     hint=f"use a supported TensorRT ({SUPPORTED_TENSORRT}) and report the TensorRT version.")


def import_builder():
    return require("tensorrt", purpose="to build engines", hint=GPU_HINT,
                   message="gap-build needs the full TensorRT ('tensorrt' module), which is not installed here.",
                   note="the lean runtime (tensorrt_lean) can run engines but cannot build them.")


def tensorrt_version(trt) -> tuple[int, int]:
    parts = [int(p) for p in re.findall(r"\d+", str(trt.__version__))[:2]] + [0, 0]
    return parts[0], parts[1]


def hardware_level(trt, choice: str):
    """The HardwareCompatibilityLevel for ``choice``, looked up alone (10.0-10.8 lack SAME_COMPUTE_CAPABILITY)."""
    member, since = HARDWARE_LEVELS[choice]
    level = getattr(trt.HardwareCompatibilityLevel, member, None)
    if level is None:
        raise BuildError(f"hardware compatibility {choice!r} needs TensorRT {since[0]}.{since[1]} or newer; this "
                         f"is TensorRT {trt.__version__}.",
                         hint="upgrade TensorRT, or choose another hardware compatibility (ampere+ or none).")
    return level


def build_device(cuda=None):
    """(cuda, device 0), or BackendUnavailableError: TensorRT builds engines on the GPU they target."""
    if cuda is None:
        from gap_deploy.runtime.backends.cuda import Cuda

        cuda = Cuda()
    try:
        device = cuda.device(0) if cuda.device_count() > 0 else None
    except GapError as exc:  # no driver, no cuda-python: CudaError / MissingDependencyError
        raise BackendUnavailableError(f"no usable CUDA device for building: {first_line(exc)}",
                                      hint=GPU_HINT) from None
    if device is None:
        raise BackendUnavailableError("no CUDA device found; TensorRT builds engines on the GPU they target.",
                                      hint=GPU_HINT)
    return cuda, device


# The build as composable steps (as Polygraphy composes its loaders): each can be called and tested alone.

@dataclass
class ParsedNetwork:  # TensorRT's objects, from the module imported at run time
    trt: Any
    logger: Any
    builder: Any
    network: Any
    parser: Any  # kept alive: the network refers to the parser's weights


def parse_network(trt, onnx_path: Path) -> ParsedNetwork:
    """Step 1: TensorRT's ONNX parser, strongly typed (a flag on 10.x, always on 11.x)."""
    major, _ = tensorrt_version(trt)
    if major < 10:
        raise BuildError(f"TensorRT {trt.__version__} is not supported; gap-build needs TensorRT "
                         f"{SUPPORTED_TENSORRT}.", hint="pip install 'tensorrt>=11'.")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if major >= 11 else 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            errors.append(f"node '{err.node_name()}' ({err.node_operator()}): {err.desc()}")
        raise BuildError(f"TensorRT's ONNX parser rejected {onnx_path} with {len(errors)} error(s):\n  "
                         + "\n  ".join(errors or ["(no details)"]),
                         hint="check the opset (gap-export --opset) and that every op is supported by this "
                              "TensorRT version.")
    return ParsedNetwork(trt, logger, builder, network, parser)


def create_config(parsed: ParsedNetwork, input_name: str, profiles: Sequence[Profile], config: BuildConfig,
                  log: Callable[[str], None] = lambda _: None):
    """Step 2: workspace, profiles, timing cache, compatibility flags."""
    trt, builder = parsed.trt, parsed.builder
    level = hardware_level(trt, config.hardware_compat)  # before any work: a clear error on an old TensorRT
    cfg = builder.create_builder_config()
    cfg.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(config.workspace_gib * (1 << 30)))
    cfg.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # so the inspector reports layer precisions
    for profile in profiles:
        p = builder.create_optimization_profile()
        p.set_shape(input_name, profile.min, profile.opt, profile.max)
        # -1 for a profile TensorRT finds invalid (NvInfer.h, IBuilderConfig::addOptimizationProfile): said here,
        # not as a failed build later
        if cfg.add_optimization_profile(p) < 0:
            raise BuildError(f"TensorRT refused the optimization profile {profile} for input '{input_name}'.",
                             hint="each of min <= opt <= max, per axis, within the model's fixed dims.")
    cache_bytes = b""
    if config.timing_cache and Path(config.timing_cache).is_file():
        cache_bytes = Path(config.timing_cache).read_bytes()
        log(f"Using timing cache {config.timing_cache} ({len(cache_bytes)} bytes)")
    cache = cfg.create_timing_cache(cache_bytes)
    # create_timing_cache returns None for bytes it cannot read: treated like a cache set_timing_cache rejects
    if cache is None or not cfg.set_timing_cache(cache, ignore_mismatch=False):
        log(f"Note: TensorRT rejected the timing cache {config.timing_cache} (unreadable, or made for another GPU or "
            "TensorRT version); starting a new one, which replaces it after the build.")
        fresh = cfg.create_timing_cache(b"")
        if fresh is None or not cfg.set_timing_cache(fresh, ignore_mismatch=False):
            raise BuildError("TensorRT could not create an empty timing cache.",
                             hint="build without --timing-cache, and report the TensorRT version.")
    if config.version_compatible:
        cfg.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if not config.tf32:
        cfg.clear_flag(trt.BuilderFlag.TF32)
    cfg.hardware_compatibility_level = level
    return cfg


def build_plan(parsed: ParsedNetwork, cfg, onnx_path: Path) -> bytes:
    """Step 3: the serialized engine."""
    serialized = parsed.builder.build_serialized_network(parsed.network, cfg)
    if serialized is None:
        raise BuildError(f"TensorRT failed to build an engine from {onnx_path}; its log above says why.",
                         hint="common causes: too little workspace (--workspace), or a profile too large for "
                              "GPU memory (--max).")
    return bytes(serialized)


def save_timing_cache(cfg, path: Path | None, log: Callable[[str], None] = lambda _: None) -> None:
    if not path:
        return
    cache = cfg.get_timing_cache()
    if cache is None:
        log(f"Note: TensorRT returned no timing cache; {path} was left as it was.")
        return
    publish_bytes(path, bytes(cache.serialize()))


def inspect_precision(trt, plan: bytes, *, version_compatible: bool) -> tuple[str, dict[str, int]]:
    """Step 4: the precision the engine really runs in, from the engine inspector."""
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if version_compatible:
        runtime.engine_host_code_allowed = True  # the plan was built just now, by this process
    engine = runtime.deserialize_cuda_engine(plan)
    if engine is None:
        raise BuildError("TensorRT could not deserialize the engine it has just built, so its precision cannot be "
                         "checked; nothing was written.", hint="see the TensorRT log above.")
    inspector = engine.create_engine_inspector()
    counts = layer_precisions(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    return summarize_precision(counts), counts


def write_engine(plan: bytes, manifest: EngineManifest, output: Path, pub: Publication,
                 verify: Callable[[Path], ParityReport] | None = None) -> ParityReport | None:
    """Step 6: stage the plan and its manifest in ``pub`` and run ``verify(staged_plan)`` on them; they appear
    (with whatever else ``pub`` holds: the ONNX files the engine was built from) when ``pub`` is published."""
    staged = pub.write_bytes(output, plan)
    pub.add(manifest_path(output), manifest_path(staged))  # beside the staged plan, where a runner looks for it
    manifest_path(staged).write_text(manifest.to_json())
    if verify is None:
        return None
    report = verify(staged)
    if not report.passed:
        raise BuildError("the engine's outputs differ from ONNX Runtime's; the engine was not written.",
                         note=report.format_table())
    return report


def check_buildable(meta: ModelMetadata, variant: VariantOptions | None, source: Path | str) -> None:
    """TensorRT builds what the ONNX parser takes; the INT8 'cpu' layout it does not."""
    if meta.int8_layout == "cpu" or (variant is not None and variant.int8_layout == "cpu"):
        raise UsageError(f"the INT8 'cpu' layout (UINT8 activations, non-zero zero points) cannot be built by "
                         f"TensorRT{f': {source} has it' if meta.int8_layout == 'cpu' else ''}.",
                         hint="export with --int8-layout tensorrt (the default) for gap-build.")


def build_engine(onnx_path: str | Path, output: str | Path, config: BuildConfig = BuildConfig(), *, trt=None,
                 cuda=None, verify: Callable[[Path], ParityReport] | None = None,
                 log: Callable[[str], None] = lambda _: None, publication: Publication | None = None,
                 spec: ArtifactSpec | None = None) -> BuildResult:
    """Build ``onnx_path`` into ``output`` (+ ``output.json`` manifest), atomically.

    ``verify(staged_plan)`` runs on the finished plan before it is moved into place and returns a parity
    report; if it fails, neither the plan nor the manifest is written. With ``publication`` the plan and the
    manifest are staged there (to appear with the ONNX files of the same run) instead of published at once;
    ``spec`` is ``onnx_path``'s description when the caller holds it already.
    """
    onnx_path, output = Path(onnx_path), check_output_path(output)
    info = spec or read_onnx_input(onnx_path)
    profiles = tuple(config.profiles) or (info.default_profile(),)
    check_profiles(info, profiles, onnx_path)
    trt = trt if trt is not None else import_builder()
    cuda, device = build_device(cuda)

    started = time.perf_counter()
    log(f"Parsing {onnx_path} (TensorRT {trt.__version__}, {device.name}) ...")
    parsed = parse_network(trt, onnx_path)
    cfg = create_config(parsed, info.input_name, profiles, config, log)
    log(f"Building {len(profiles)} profile(s): {', '.join(map(str, profiles))} (this can take minutes) ...")
    plan = build_plan(parsed, cfg, onnx_path)
    precision, counts = inspect_precision(trt, plan, version_compatible=config.version_compatible)
    if config.tf32 and precision == "fp32":  # FP32 layers may compute in TF32: say so, and judge it as such
        precision = "tf32"
    manifest = EngineManifest(
        tensorrt_version=str(trt.__version__), gpu_name=device.name, compute_capability=device.compute_capability,
        precision=precision, plan_sha256=sha256_bytes(plan), onnx_sha256=sha256_file(onnx_path),
        profiles=[{info.input_name: [list(profile.min), list(profile.opt), list(profile.max)]} for profile in profiles],
        version_compatible=config.version_compatible, hardware_compatibility=config.hardware_compat,
        metadata=info.metadata.to_props(), builder="gap-deploy", tf32=config.tf32)
    if publication is None:
        with Publication() as pub:
            report = write_engine(plan, manifest, output, pub, verify)
    else:
        report = write_engine(plan, manifest, output, publication, verify)
    save_timing_cache(cfg, config.timing_cache, log)
    return BuildResult(output, manifest, time.perf_counter() - started, counts, report)


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
    variant: VariantResult | None
    source: Path

    @property
    def engine_parity(self) -> ParityReport | None:
        return self.build.parity


def verify_shapes_for(info: ArtifactSpec, size: tuple[int, int]) -> list[Shape]:
    """The CPU sweep for a precision variant: the model's static dims where it has them, else the default sweep."""
    from gap_deploy.runtime.parity import default_verify_shapes

    if info.static_size:
        return [(info.static_batch or 1, info.channels, *info.static_size)]
    shapes = default_verify_shapes(info.channels, size, max(info.metadata.min_height, info.metadata.min_width),
                                   dynamic=True)
    return [(info.static_batch, *s[1:]) for s in shapes] if info.static_batch else shapes


def engine_verifier(source, config: BuildConfig, spec: ArtifactSpec, *, trt, cuda) -> Callable[[Path], ParityReport]:
    """Step 5: run a finished plan at min/opt/max of every profile against ONNX Runtime (CPU) on ``source`` (a
    path or the in-memory model)."""
    profiles = tuple(config.profiles) or (spec.default_profile(),)

    def verify(plan: Path) -> ParityReport:
        from gap_deploy.runtime.backends.trt import TrtRunner
        from gap_deploy.runtime.parity import compare, ort_cpu_infer, tolerance_for

        # the plan this process has just built, still in its staging place (signed when it is published)
        runner = TrtRunner(plan, trust_engine=True, trt=trt, cuda=cuda)
        try:
            if runner.manifest is None:
                raise BuildError(f"the engine just built at {plan} has no manifest beside it.")
            built = runner.manifest.precision
            return compare(ort_cpu_infer(source), runner.infer, profile_shapes(profiles),
                           tolerance_for(built, "trt"), reference_name="ONNX Runtime CPU",
                           candidate_name=f"TensorRT ({built})")
        finally:
            runner.close()

    return verify


def build_with_precision(onnx_path: str | Path, output: str | Path, *, variant: VariantOptions | None = None,
                         config: BuildConfig = BuildConfig(), verify: bool = True, trt=None, cuda=None,
                         log: Callable[[str], None] = lambda _: None) -> PipelineResult:
    """gap-build's pipeline: [precision variant, verified on CPU] -> engine -> [engine vs ONNX Runtime].

    The variant goes through the same pipeline as gap-export's (exporter.precision.convert_verified), so
    every option (``min_top1``, ``keep_float_ends``) applies here too. The variant ONNX, the plan and the
    manifest appear together once the engine built from the variant is verified, or none of them does.
    """
    from gap_deploy.exporter.precision import convert_verified
    from gap_deploy.runtime.naming import variant_path

    onnx_path = Path(onnx_path)
    check_output_path(output)
    info = read_onnx_input(onnx_path)
    check_buildable(info.metadata, variant, onnx_path)
    # Fail for a missing TensorRT or GPU before anything is written.
    trt = trt if trt is not None else import_builder()
    cuda, _ = build_device(cuda)
    have = info.metadata.precision
    if variant is None or variant.precision == have:
        result = build_engine(onnx_path, output, config, trt=trt, cuda=cuda, log=log, spec=info,
                              verify=engine_verifier(str(onnx_path), config, info, trt=trt, cuda=cuda) if verify
                              else None)
        return PipelineResult(result, None, onnx_path)
    if have != "fp32":
        raise UsageError(f"{onnx_path} is already {have}; convert from the FP32 model instead.")
    source = check_output_path(variant_path(onnx_path, variant.precision, variant.int8_layout))
    log(f"Converting to {variant.precision} and verifying against the FP32 model on the CPU ...")
    result_variant = convert_verified(onnx.load(str(onnx_path)), variant, verify_shapes_for(info, variant.calib_size))
    from gap_deploy.runtime.lineage import record_in_model, variant_lineage

    record_in_model(result_variant.model, variant_lineage(
        onnx_path.name, sha256_file(onnx_path), result_variant,
        {"precision": variant.precision, "int8_layout": variant.int8_layout,
         "calib": Path(variant.calib).name if variant.calib else None}))
    with Publication() as pub:
        result = stage_engine(pub, result_variant.model, source, Path(output), config, verify=verify, trt=trt,
                              cuda=cuda, log=log)
    log(f"Wrote {source}")
    return PipelineResult(result, result_variant, source)


def stage_engine(pub: Publication, model, onnx_target: Path, output: Path, config: BuildConfig, *, verify: bool,
                 trt=None, cuda=None, log: Callable[[str], None] = lambda _: None) -> BuildResult:
    """Stage ``model`` at ``onnx_target`` in ``pub`` (unless it is staged there already) and the engine built
    from it (TensorRT parses the staged file; the verifier runs the in-memory model on ONNX Runtime): all of
    them appear when ``pub`` is published."""
    staged = pub.staged(onnx_target) or pub.write_model(onnx_target, model)[-1]
    spec = describe(model)
    checker = engine_verifier(model, config, spec, trt=trt, cuda=cuda) if verify else None
    return build_engine(staged, output, config, trt=trt, cuda=cuda, verify=checker, log=log, publication=pub,
                        spec=spec)
