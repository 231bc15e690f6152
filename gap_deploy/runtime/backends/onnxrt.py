"""ONNX Runtime backends: ort-cpu, ort-cuda, ort-trt."""

from __future__ import annotations

import contextlib
import functools
import importlib
from pathlib import Path
from typing import Any

import numpy as np

from gap_deploy.runtime._lazy import require
from gap_deploy.runtime.backends.base import LoadOptions, Runner, TensorInfo
from gap_deploy.runtime.backends.table import BACKENDS, facts
from gap_deploy.runtime.errors import ArtifactError, BackendError, BackendUnavailableError, UsageError, first_line
from gap_deploy.runtime.shapes import format_shape

#: backend -> the provider that must run its model (runtime.backends.table)
PROVIDERS = {name: f.provider for name, f in BACKENDS.items() if f.provider}
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
           "tensor(bool)": np.bool_}


#: A one-node ONNX model (y = Relu(x), opset 17), serialized, to probe whether a provider really starts.
#: Kept as bytes so the runtime needs no onnx package (edge installs ship without it).
PROBE_MODEL = (b'\x08\x08:7\n\x0c\n\x01x\x12\x01y"\x04Relu\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08\x01\x12\x04\n\x02'
               b'\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\x11')


#: Graph optimizations every gap-deploy session turns off. onnxruntime's QDQPropagationTransformer moves a
#: QuantizeLinear backwards across a MaxPool; where the pool follows a layer kept in float (an INT8 model's
#: first convolution), that replaces a fast float pool (fused into the float convolution's blocked layout) by
#: a slow NCHW UINT8 pool: on the demo model's CPU-layout INT8 at 1x3x224x224, 1 thread, 10.5 ms with it and
#: 4.4 ms without (FP32: 6.4 ms). Without it the results are the same (max commutes with a monotonic
#: quantization), and models without Q/DQ nodes are not affected.
DISABLED_OPTIMIZERS = ("QDQPropagationTransformer",)


def cpu_session(model, threads: int | None = None, *, quiet: bool = False):
    """An onnxruntime CPU session for a model path or bytes, with the session options every backend uses.
    ``quiet``: onnxruntime logs nothing, not even errors (a probe whose failure is reported by the caller)."""
    ort = _ort()
    options = ort.SessionOptions()
    options.log_severity_level = 4 if quiet else 3
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                providers=["CPUExecutionProvider"], disabled_optimizers=list(DISABLED_OPTIMIZERS))


def tensor_info(arg) -> TensorInfo:
    """An onnxruntime NodeArg as a TensorInfo: fixed dims as ints, symbolic ones by name (None if unnamed)."""
    shape = tuple(d if isinstance(d, int) else (d or None) for d in arg.shape)
    return TensorInfo(arg.name, np.dtype(_DTYPES.get(arg.type, object)), shape)


def _ort():
    return require("onnxruntime", purpose="to run .onnx models")


@functools.cache
def load_gpu_libraries(backend: str) -> None:
    """Make the GPU providers' libraries loadable before a GPU session starts, in any process.

    onnxruntime-gpu's pip wheels do not load CUDA and cuDNN from the nvidia-* wheels by themselves:
    ``onnxruntime.preload_dlls()`` does (onnxruntime/__init__.py; a no-op on the CPU build, and where torch
    already loaded them). Its TensorRT provider needs libnvinfer loadable as well, which importing the
    tensorrt wheel does. Without this, a fresh ``gap-run --backend ort-trt`` process could find the
    providers unavailable where a process that had imported torch and tensorrt first (gpu_check) did not."""
    ort = _ort()
    with contextlib.suppress(Exception):  # best effort: provider_works still says what is missing
        if hasattr(ort, "preload_dlls"):
            ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
    if "TensorrtExecutionProvider" in PROVIDER_CHAIN[backend]:
        with contextlib.suppress(Exception):
            importlib.import_module("tensorrt")


@functools.cache
def provider_works(backend: str) -> tuple[bool, str]:
    """Whether ``backend`` really runs a model here, and why not.

    onnxruntime-gpu lists the CUDA and TensorRT providers even when their libraries are missing and
    then quietly runs on the CPU, so a tiny model is loaded and the session's real providers read.
    """
    try:
        ort = _ort()
    except BackendUnavailableError as exc:
        return False, first_line(exc)
    provider = PROVIDERS[backend]
    if provider not in ort.get_available_providers():
        return False, f"this onnxruntime build has no {provider}"
    if not facts(backend).gpu:
        return True, ""
    load_gpu_libraries(backend)
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(PROBE_MODEL, options,
                                       providers=[provider, "CPUExecutionProvider"])
    except Exception as exc:
        return False, f"{provider} failed to start: {first_line(exc)}"
    if provider not in session.get_providers():
        return False, f"{provider} is listed but its libraries (CUDA/cuDNN/TensorRT) could not be loaded"
    return True, ""


#: Provider order per backend, as onnxruntime's documentation recommends: the accelerator first, then the
#: provider it hands unsupported nodes to. The CPU provider is listed last and takes only what the accelerator
#: leaves; where each node really ran is checked after the session starts (runtime.backends.placement), since
#: onnxruntime's own switch (session.disable_cpu_ep_fallback) cannot be combined with a listed CPU provider.
PROVIDER_CHAIN = {
    "ort-cpu": ("CPUExecutionProvider",),
    "ort-plain": ("CPUExecutionProvider",),
    "ort-cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "ort-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
#: the providers each GPU backend is meant to compute on
ACCELERATORS = {"ort-cuda": ("CUDAExecutionProvider",),
                "ort-trt": ("TensorrtExecutionProvider", "CUDAExecutionProvider")}
#: the provider a backend must compute at least one node on, or its figures are another provider's: onnxruntime
#: hands a graph its TensorRT provider rejects (or cannot load libnvinfer for) to the CUDA provider silently
MUST_USE = {"ort-trt": "TensorrtExecutionProvider"}
CACHE_FOLDER = ".gap-trt-cache"


def trt_profile_options(spec, profile=None) -> dict[str, str]:
    """The TensorRT provider's profile entries for ``spec``'s input: ``profile``, or the default profile. Used by
    ort-trt and by gap-triton's TensorRT accelerator."""
    profile = profile or spec.default_profile()
    name = spec.input_name
    return {"trt_profile_min_shapes": f"{name}:{format_shape(profile.min)}",
            "trt_profile_opt_shapes": f"{name}:{format_shape(profile.opt)}",
            "trt_profile_max_shapes": f"{name}:{format_shape(profile.max)}"}


def trt_provider_options(path: Path, spec, *, cache_dir: Path | None = None, profile=None) -> dict[str, str]:
    """TensorRT execution provider options: engine and timing caches beside the model, so the second start
    does not rebuild; the input's profile from the model's metadata (gap-build's default) or ``profile``."""
    cache = str(cache_dir if cache_dir is not None else Path(path).resolve().parent / CACHE_FOLDER)
    return {"trt_engine_cache_enable": "True", "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "True", "trt_timing_cache_path": cache, **trt_profile_options(spec, profile)}


def session_setup(backend: str, path: Path, *, spec=None, provider_options: dict | None = None,
                  cache_dir: Path | None = None, profile=None) -> tuple[list, dict[str, str]]:
    """(providers with their options, session config entries) for ``backend``: what OrtRunner passes to
    onnxruntime. User ``provider_options`` override the defaults of the backend's own provider. No config
    entry forbids the CPU: that is checked per node once the session runs (see check_nodes)."""
    chain = PROVIDER_CHAIN[backend]
    defaults: dict[str, dict[str, str]] = {p: {} for p in chain}
    if "CUDAExecutionProvider" in defaults:  # FP32 means FP32: cuDNN's TF32 (on by default) off, as in gap-build
        defaults["CUDAExecutionProvider"]["use_tf32"] = "0"
    if facts(backend).builds_at_start:  # the TensorRT provider: its engine caches and profile
        defaults[chain[0]] = trt_provider_options(path, spec, cache_dir=cache_dir, profile=profile)
    defaults[chain[0]].update({k: str(v) for k, v in (provider_options or {}).items()})
    return [(p, defaults[p]) for p in chain], {}


def probe_shape(spec, profile=None) -> tuple[int, ...]:
    """The smallest input the model (or the TensorRT profile) accepts: what the placement probe runs."""
    return tuple((profile or spec.default_profile()).min)


def profiled_placement(session, input_name: str, dtype, shape) -> list:
    """Run ``session`` (created with profiling on) once at ``shape`` and read where each node ran."""
    from gap_deploy.runtime.backends.placement import read_profile

    try:
        session.run(None, {input_name: np.zeros(shape, dtype=dtype)})
    finally:
        profile = session.end_profiling()
    try:
        return read_profile(profile)
    finally:
        Path(profile).unlink(missing_ok=True)


def probe(backend: str) -> tuple[bool, str]:
    """Whether ``backend`` (an ONNX Runtime backend) really works here, and why not."""
    return provider_works(backend)


def open_runner(path: Path, backend: str, options: LoadOptions) -> OrtRunner:
    """An .onnx or .ort file on ``backend``, after the file checks (ORT files have no external data, and the onnx
    package cannot parse them)."""
    from gap_deploy.runtime.files import check_input_file
    from gap_deploy.runtime.onnx_file import check_onnx_file
    from gap_deploy.runtime.profiles import Profile

    if path.suffix.lower() == ".ort":
        check_input_file(path, "ORT model")
    else:
        check_onnx_file(path)
    if options.check_works is not None:
        options.check_works(backend)
    spec = None
    if facts(backend).gpu and options.describe is not None:  # the GPU backends' profile and placement probe
        spec = options.describe()
    return OrtRunner(path, backend, spec=spec, threads=options.threads, provider_options=options.provider_options,
                     cache_dir=options.cache_dir, profile=Profile.parse(options.trt_profile) if options.trt_profile
                     else None, allow_cpu_fallback=options.allow_cpu_fallback)


class OrtRunner(Runner):
    """``spec`` (runtime.artifact.describe of ``path``) is needed by the GPU backends: ort-trt's default profile
    and the placement probe's smallest input."""

    def __init__(self, path: Path, backend: str = "ort-cpu", *, spec=None, threads: int | None = None,
                 provider_options: dict | None = None, cache_dir: Path | None = None, profile=None,
                 allow_cpu_fallback: bool = False):
        import tempfile

        ort = _ort()
        works, why = provider_works(backend)
        if not works:
            raise BackendUnavailableError(f"backend '{backend}' is not available: {why}.")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        if spec is None and facts(backend).gpu:
            raise UsageError(f"backend '{backend}' needs the model's spec (runtime.artifact.describe) to start.")
        providers, entries = session_setup(backend, path, spec=spec, provider_options=provider_options,
                                           cache_dir=cache_dir, profile=profile)
        for key, value in entries.items():
            options.add_session_config_entry(key, value)
        if facts(backend).builds_at_start:
            Path(providers[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
        gpu = backend in ACCELERATORS
        with tempfile.TemporaryDirectory(prefix="gap-placement-") as scratch:
            if gpu:  # where each node really runs is read from one profiled inference (placement.py)
                options.enable_profiling = True
                options.profile_file_prefix = str(Path(scratch) / "placement")
            try:
                disabled = [] if facts(backend).plain_session else list(DISABLED_OPTIMIZERS)
                self._session: Any = ort.InferenceSession(str(path), options, providers=providers,
                                                          disabled_optimizers=disabled)
            except Exception as exc:
                from gap_deploy.runtime.onnx_file import not_onnx, torch_checkpoint

                if torch_checkpoint(Path(path)):  # an edge install (no onnx package) gets here
                    raise not_onnx(Path(path), first_line(exc)) from None
                raise ArtifactError(f"cannot read ONNX model {path}: {first_line(exc)}",
                                    hint="re-export the model with gap-export.") from None
            if PROVIDERS[backend] not in self._session.get_providers():  # never fall back silently
                raise BackendUnavailableError(f"backend '{backend}' did not start for {path}; "
                                              f"the session runs on {self._session.get_providers()} only.")
            self.cpu_nodes: tuple = ()
            if gpu:
                self.cpu_nodes = self._check_nodes(path, backend, spec, profile, allow_cpu_fallback)
        self.backend = backend
        self.inputs = tuple(tensor_info(i) for i in self._session.get_inputs())
        self.outputs = tuple(tensor_info(o) for o in self._session.get_outputs())
        self.props = dict(self._session.get_modelmeta().custom_metadata_map)
        self._in_name, self._out_names = self.inputs[0].name, [self.outputs[0].name]
        self.session_options = options
        self.session_config = dict(entries)

    def _check_nodes(self, path: Path, backend: str, spec, profile, allow_cpu_fallback: bool) -> tuple:
        """One profiled inference at the smallest accepted shape; CPU compute nodes fail the session."""
        from gap_deploy.runtime.backends.placement import check_placement

        session = self._session
        value = session.get_inputs()[0]
        shape = probe_shape(spec, profile)
        try:
            nodes = profiled_placement(session, value.name, _DTYPES.get(value.type, np.float32), shape)
        except Exception as exc:
            raise BackendError(f"backend '{backend}' could not run {path} at {format_shape(shape)} to check where "
                               f"its nodes run: {first_line(exc)}",
                               hint="check the model on ort-cpu first (gap-run --backend ort-cpu).") from None
        return check_placement(nodes, ACCELERATORS[backend], backend=backend, path=path,
                               allow_cpu_fallback=allow_cpu_fallback, must_use=MUST_USE.get(backend))

    @property
    def provider_options(self) -> dict[str, dict[str, str]]:
        """The options onnxruntime really applied, per provider (read back from the session)."""
        return dict(self._session.get_provider_options())

    def infer(self, array: np.ndarray) -> np.ndarray:
        try:
            return self._session.run(self._out_names, {self._in_name: array})[0]
        except Exception as exc:  # a model that passed the input checks and still fails is the model's problem
            raise BackendError(f"ONNX Runtime failed to run the model on input {format_shape(array.shape)}: "
                               f"{first_line(exc)}",
                               note="the input passed every check the model's metadata allows.",
                               hint="the model may not support this size; re-export it with gap-export and "
                                    "check it with --verify-shapes.") from None

    @property
    def device(self) -> dict:
        threads = self.session_options.intra_op_num_threads
        device = {"ort_providers": self._session.get_providers(),
                  "ort_intra_op_threads": threads or "default (one per core)"}
        if self.backend in ACCELERATORS:  # what onnxruntime left to the CPU on purpose, shown in gap-bench's header
            device["ort_cpu_nodes"] = [n.describe() for n in self.cpu_nodes] or "none"
        return device

    @property
    def versions(self) -> dict[str, str]:
        return {"onnxruntime": _ort().__version__}

    @property
    def ort_session(self):
        """The underlying ``onnxruntime.InferenceSession`` (for benchmarks against a bare loop)."""
        return self._session

    def close(self) -> None:
        self._session = None
