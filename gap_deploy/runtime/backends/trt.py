"""TensorRT engines (TensorRT 10 and 11, full or lean runtime), tensor-name API only, without torch."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gap_deploy.runtime._lazy import require
from gap_deploy.runtime.backends.base import LoadOptions, Runner, TensorInfo
from gap_deploy.runtime.backends.cuda import Cuda, DeviceBuffer, native_handle
from gap_deploy.runtime.errors import (
    ArtifactError,
    BackendError,
    GapError,
    InputError,
    UntrustedCodeError,
    first_line,
)
from gap_deploy.runtime.files import check_input_file, sha256_bytes
from gap_deploy.runtime.manifest import EngineManifest, manifest_path
from gap_deploy.runtime.shapes import format_shape

_AXES = ("batch", "channels", "height", "width")


def import_tensorrt():
    """The full ``tensorrt`` if installed, else the lean runtime ``tensorrt_lean``."""
    return require("tensorrt", "tensorrt_lean", purpose="to run TensorRT engines",
                   hint="pip install 'gap-deploy[gpu]' (full TensorRT) or 'gap-deploy[lean]' (lean runtime, runs "
                        "engines built with --version-compatible).")


def trt_works() -> tuple[bool, str]:
    try:
        import_tensorrt()
        count = Cuda().device_count()
    except GapError as exc:
        return False, first_line(exc)
    return (count > 0, "" if count else "no CUDA device found")


@dataclass(frozen=True)
class GpuTiming:
    """One inference's parts in milliseconds, as trtexec splits them."""

    h2d_ms: float
    compute_ms: float
    d2h_ms: float
    enqueue_ms: float


def probe(backend: str) -> tuple[bool, str]:
    return trt_works()


def open_runner(path: Path, backend: str, options: LoadOptions) -> TrtRunner:
    """A plan on TensorRT: its signature (or ``trust_engine``) and manifest are checked by the runner."""
    return TrtRunner(path, trust_engine=options.trust_engine, verify_keys=options.verify_key)


class TrtRunner(Runner):
    backend = "trt"
    gpu_timing = True

    def __init__(self, path: Path, *, trust_engine: bool = False, device: int = 0, trt=None, cuda: Cuda | None = None,
                 clock: Callable[[], float] = time.perf_counter, marked_outputs: bool = False, verify_keys=None):
        path = check_input_file(path, "TensorRT engine")
        self._clock = clock  # host seconds, for the enqueue time
        self._trt = trt = trt if trt is not None else import_tensorrt()
        self._cuda = cuda = cuda if cuda is not None else Cuda()
        plan = path.read_bytes()
        lean = trt.__name__.split(".")[0] == "tensorrt_lean"
        self._verify_keys = verify_keys
        self.manifest = self._check_manifest(path, plan, trust_engine, device, lean)

        self._device = device
        cuda.set_device(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        if self.manifest is not None and self.manifest.version_compatible:
            # Version-compatible plans embed the lean runtime's host code: allowed only for a plan whose signature
            # (and its manifest's) verified under a trusted public key (or that the caller trusts), checked above.
            self._runtime.engine_host_code_allowed = True
        self._engine: Any = self._runtime.deserialize_cuda_engine(plan)  # tensorrt's ICudaEngine (loaded lazily)
        if self._engine is None:
            raise ArtifactError(f"TensorRT could not deserialize engine {path}.",
                                note="the plan is corrupt, or was built by another TensorRT version or for "
                                     "another GPU.",
                                hint=f"rebuild it on this machine: gap-build MODEL.onnx -o {path}")
        self._context: Any = self._engine.create_execution_context()
        if self._context is None:
            raise BackendError(f"TensorRT could not create an execution context for {path} (out of GPU memory?).")

        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        ins = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self.inputs = tuple(self._info(n, with_profiles=True) for n in ins)
        self.outputs = tuple(self._info(n) for n in outs)
        # marked_outputs: an engine built with intermediate tensors marked as outputs (gap-debug): infer_outputs
        # reads every one; the Session still refuses such an engine
        if len(ins) != 1 or not outs or (len(outs) != 1 and not marked_outputs):
            raise ArtifactError(f"engine {path} has {len(ins)} inputs and {len(outs)} outputs; expected 1 and 1.")
        self._extra: dict[str, tuple[DeviceBuffer, DeviceBuffer]] = {}
        self.props = dict(self.manifest.metadata) if self.manifest else {}
        self._in_name, self._out_name = ins[0], outs[0]
        self._out_dtype = np.dtype(self.outputs[0].dtype)
        self._stream = cuda.create_stream()
        self._stream_handle = native_handle(self._stream)  # TensorRT takes the stream as an int
        self._in_buf, self._out_buf = DeviceBuffer(cuda), DeviceBuffer(cuda)
        self._in_host, self._out_host = DeviceBuffer(cuda, pinned=True), DeviceBuffer(cuda, pinned=True)
        self._events = [cuda.create_event() for _ in range(4)]
        # At most one CUDA graph, valid for exactly one (shape, profile, buffer addresses): TensorRT's developer
        # guide ("CUDA Graphs") requires a recapture when the shapes or the profile change, so A -> B -> A
        # captures A again instead of replaying a graph made before B ran.
        self._graph: tuple | None = None  # (key, graph, graph_exec)
        self._set_on_context: tuple | None = None  # (profile, shape) last set on the context: a change drops graphs
        #: why the last CUDA-graph capture failed (the run then went on without a graph); None when it did not
        self.graph_failure: str | None = None
        self._failed_key: tuple | None = None
        self._active_profile = 0
        self._lock = threading.RLock()

    def _check_manifest(self, path: Path, plan: bytes, trust: bool, device: int, lean: bool) -> EngineManifest | None:
        if not manifest_path(path).exists():
            if trust:
                return None
            raise UntrustedCodeError(
                f"engine {path} has no manifest ({manifest_path(path).name}), so its origin, TensorRT version and "
                "GPU cannot be checked; a plan file is executable code.",
                hint="build it with gap-build (which writes the manifest), or pass --trust-engine "
                     "(trust_engine=True) for a plan from a source you trust.")
        manifest = EngineManifest.read(path)
        if not trust:
            self._check_signatures(path, manifest)
        info = self._cuda.device(device)
        manifest.check(plan=path, plan_sha256=sha256_bytes(plan), tensorrt_version=self._trt.__version__,
                       gpu_name=info.name, compute_capability=info.compute_capability, lean=lean)
        return manifest

    def _check_signatures(self, path: Path, manifest: EngineManifest) -> None:
        """Trust comes from signatures a verifier cannot make: the plan's and its manifest's, each verified under
        a trusted public key (runtime.signing). A manifest is a file anyone can write, and a plan is code."""
        from gap_deploy.runtime.signing import signature_path, verify_path

        if manifest.signature and not signature_path(path).exists():
            raise UntrustedCodeError(
                f"engine {path} carries only the old shared-secret (HMAC) signature in its manifest, which no longer "
                "grants trust: every machine that could check it could also forge it.",
                hint="re-sign it on the build machine (gap-build --sign-key KEY.pem rebuilds and signs), then run it "
                     "with --verify-key PUB.pem; or pass --trust-engine for a plan from a source you trust.")
        try:
            verify_path(path, self._verify_keys)
            verify_path(manifest_path(path), self._verify_keys)
        except UntrustedCodeError as exc:
            raise exc.with_hint("Or pass --trust-engine (trust_engine=True) for a plan from a source you trust; a "
                                "plan file is executable code.") from None

    def _info(self, name: str, with_profiles: bool = False) -> TensorInfo:
        engine, trt = self._engine, self._trt
        dims = tuple(engine.get_tensor_shape(name))
        shape = tuple(d if d >= 0 else (_AXES[i] if i < len(_AXES) else f"dim{i}") for i, d in enumerate(dims))
        profiles: tuple = ()
        if with_profiles:
            profiles = tuple(tuple(tuple(int(v) for v in s) for s in engine.get_tensor_profile_shape(name, p))
                             for p in range(engine.num_optimization_profiles))
        dtype = engine.get_tensor_dtype(name)
        try:
            numpy_type = np.dtype(trt.nptype(dtype))
        except TypeError:  # nptype maps float32/16, int8/32/64, bool and uint8 only (BF16, FP8, INT4 raise)
            raise ArtifactError(f"engine tensor '{name}' has data type {getattr(dtype, 'name', dtype)}, which has no "
                                "NumPy equivalent, so gap-deploy cannot feed or read it.",
                                hint="build the engine from an ONNX whose input and output are float32 or float16 "
                                     "(gap-export's variants are).") from None
        return TensorInfo(name, numpy_type, shape, profiles)

    def _profile_for(self, shape) -> int:
        for index, (lo, _, hi) in enumerate(self.inputs[0].profiles):
            if all(a <= s <= b for s, a, b in zip(shape, lo, hi)):
                return index
        ranges = "; ".join(f"{format_shape(lo)} to {format_shape(hi)}"
                           for lo, _, hi in self.inputs[0].profiles)
        raise InputError(f"shape {format_shape(shape)} is outside every optimization profile ({ranges}).",
                         hint="rebuild the engine with gap-build --min/--max covering it.")

    def _prepare(self, array: np.ndarray) -> tuple[tuple, int]:
        """Select the profile and shape, size the buffers, bind the addresses; returns the output's shape and
        byte size."""
        ctx = self._context
        profile = self._profile_for(array.shape)
        if profile != self._active_profile:
            try:
                switched = ctx.set_optimization_profile_async(profile, self._stream_handle)
            except RuntimeError as exc:  # the binding raises on failure
                raise BackendError(f"TensorRT refused to switch to optimization profile {profile}: {exc}") from None
            if switched is False:
                raise BackendError(f"TensorRT refused to switch to optimization profile {profile}.")
            self._active_profile = profile
        if (profile, tuple(array.shape)) != self._set_on_context:
            # the code's rule (TensorRT's developer guide, "CUDA Graphs": recapture after the shapes or the profile
            # change): a graph captured before this change is not replayed after it, even for its own shape
            self._drop_graphs()
            self._set_on_context = None
        if not ctx.set_input_shape(self._in_name, tuple(array.shape)):
            raise BackendError(f"TensorRT refused input shape {tuple(array.shape)} for '{self._in_name}', which "
                               f"lies inside profile {profile}.", note="the engine and its profiles disagree.",
                               hint="rebuild the engine with gap-build.")
        self._set_on_context = (profile, tuple(array.shape))
        out_shape = tuple(int(d) for d in ctx.get_tensor_shape(self._out_name))
        out_bytes = int(np.prod(out_shape)) * self._out_dtype.itemsize
        for buffer, nbytes in ((self._in_buf, array.nbytes), (self._out_buf, out_bytes),
                               (self._in_host, array.nbytes), (self._out_host, out_bytes)):
            buffer.ensure(nbytes)  # a moved buffer changes the graph key: the next graph is captured anew
        for name, buffer in ((self._in_name, self._in_buf), (self._out_name, self._out_buf)):
            if not ctx.set_tensor_address(name, buffer.ptr):
                raise BackendError(f"TensorRT refused the device address of tensor '{name}'.")
        return out_shape, out_bytes

    def infer_outputs(self, array: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the engine for one input (engines with marked intermediate outputs, for gap-debug)."""
        cuda, stream, ctx = self._cuda, self._stream, self._context
        with self._lock:
            cuda.set_device(self._device)
            self._prepare(array)  # the profile, the input shape and the first output's buffers
            shapes = {}
            for info in self.outputs:
                shape = tuple(int(d) for d in ctx.get_tensor_shape(info.name))
                nbytes = int(np.prod(shape)) * np.dtype(info.dtype).itemsize
                if info.name == self._out_name:
                    device_buf, host_buf = self._out_buf, self._out_host
                else:
                    device_buf, host_buf = self._extra.setdefault(
                        info.name, (DeviceBuffer(cuda), DeviceBuffer(cuda, pinned=True)))
                    device_buf.ensure(nbytes)
                    host_buf.ensure(nbytes)
                    if not ctx.set_tensor_address(info.name, device_buf.ptr):
                        raise BackendError(f"TensorRT refused the device address of tensor '{info.name}'.")
                shapes[info.name] = (shape, nbytes, device_buf, host_buf, np.dtype(info.dtype))
            self._in_host.view(array.shape, array.dtype)[...] = array
            cuda.copy_to_device(self._in_buf.ptr, self._in_host.ptr, array.nbytes, stream)
            self._enqueue()
            for _shape, nbytes, device_buf, host_buf, _ in shapes.values():
                cuda.copy_to_host(host_buf.ptr, device_buf.ptr, nbytes, stream)
            cuda.synchronize(stream)
            return {name: host.view(shape, dtype).copy() for name, (shape, _, _, host, dtype) in shapes.items()}

    def _enqueue(self) -> None:
        if not self._context.execute_async_v3(self._stream_handle):
            raise BackendError("TensorRT execute_async_v3 failed; see the TensorRT log above.")

    @property
    def device(self) -> dict:
        """The GPU this runner executes on (set in every inference call's thread)."""
        info = self._cuda.device(self._device)
        return {"index": self._device, "gpu": info.name, "compute_capability": info.compute_capability}

    @property
    def versions(self) -> dict[str, str]:
        return {"tensorrt": f"{self._trt.__name__} {self._trt.__version__}"}

    def infer(self, array: np.ndarray) -> np.ndarray:
        return self.infer_timed(array)[0]

    def infer_timed(self, array: np.ndarray, *, cuda_graph: bool = False,
                    transfers: bool = True) -> tuple[np.ndarray, GpuTiming]:
        """Run once and time H2D, GPU compute (CUDA events), D2H and the host-side enqueue call.

        The input is staged through pinned host memory, as trtexec does, so the copies are truly
        asynchronous; H2D is timed from after that host copy. On an idle stream "compute" also holds the
        gaps while the host enqueues: :meth:`timed_loop` measures as trtexec does, with work queued.
        ``cuda_graph`` replays the graph captured for this shape and profile (captured on first use);
        ``transfers=False`` skips the input copy and computes on what the previous call left on the
        device (same shape, same data: gap-bench runs the input once before timing).
        """
        cuda, stream, (e0, e1, e2, e3) = self._cuda, self._stream, self._events
        with self._lock:
            cuda.set_device(self._device)  # per host thread: this call may come from any thread
            out_shape, out_bytes = self._prepare(array)
            if transfers:
                self._in_host.view(array.shape, array.dtype)[...] = array
            cuda.record(e0, stream)
            if transfers:
                cuda.copy_to_device(self._in_buf.ptr, self._in_host.ptr, array.nbytes, stream)
            cuda.record(e1, stream)
            enqueue_ms = self._launch(array.shape, cuda_graph)
            cuda.record(e2, stream)
            cuda.copy_to_host(self._out_host.ptr, self._out_buf.ptr, out_bytes, stream)
            cuda.record(e3, stream)
            cuda.synchronize(stream)
            out = self._out_host.view(out_shape, self._out_dtype).copy()
            timing = GpuTiming(cuda.elapsed_ms(e0, e1), cuda.elapsed_ms(e1, e2), cuda.elapsed_ms(e2, e3),
                                 enqueue_ms or 0.0)
        return out, timing

    def _launch(self, shape, cuda_graph: bool) -> float:
        """Enqueue the inference (or replay its graph); returns the host's enqueue time in ms."""
        graph = self._graph_exec_for(shape) if cuda_graph else None
        started = self._clock()
        if graph is not None:
            self._cuda.launch(graph, self._stream)
        else:
            self._enqueue()
        return (self._clock() - started) * 1e3

    @contextlib.contextmanager
    def timed_loop(self, array: np.ndarray, *, cuda_graph: bool = False, transfers: bool = True):
        """A benchmark loop that measures as trtexec does: two inferences in flight on the stream.

        Each ``step()`` enqueues one inference (H2D from pinned memory, compute, D2H, four events) and
        returns the timing of the one enqueued two steps before, which it first waits for; ``finish()``
        returns the rest. Because the next inference is queued while the GPU still computes the previous
        one, its compute-start event fires when the GPU really starts, not when the host began to
        enqueue: GPU compute excludes the enqueue latency unless the host cannot keep up (enqueue-bound).
        The input is copied into pinned memory once, so H2D is the device copy alone. The runner is held
        (its lock) for the whole loop.
        """
        cuda, stream = self._cuda, self._stream
        with self._lock:
            cuda.set_device(self._device)
            out_shape, out_bytes = self._prepare(array)
            self._in_host.view(array.shape, array.dtype)[...] = array
            cuda.copy_to_device(self._in_buf.ptr, self._in_host.ptr, array.nbytes, stream)
            if cuda_graph:  # captured before the first timed inference, not inside it
                self._graph_exec_for(array.shape)
            cuda.synchronize(stream)
            slots = [[cuda.create_event() for _ in range(4)] for _ in range(2)]
            pending: list[float | None] = [None, None]  # enqueue ms of the inference in flight in each slot
            count = [0]

            def read(slot: int) -> GpuTiming:
                e0, e1, e2, e3 = slots[slot]
                cuda.wait_event(e3)
                enqueue_ms, pending[slot] = pending[slot], None
                return GpuTiming(cuda.elapsed_ms(e0, e1), cuda.elapsed_ms(e1, e2), cuda.elapsed_ms(e2, e3),
                                 enqueue_ms or 0.0)

            def step() -> GpuTiming | None:
                slot = count[0] % 2
                count[0] += 1
                done = read(slot) if pending[slot] is not None else None
                e0, e1, e2, e3 = slots[slot]
                cuda.record(e0, stream)
                if transfers:
                    cuda.copy_to_device(self._in_buf.ptr, self._in_host.ptr, array.nbytes, stream)
                cuda.record(e1, stream)
                pending[slot] = self._launch(array.shape, cuda_graph)
                cuda.record(e2, stream)
                cuda.copy_to_host(self._out_host.ptr, self._out_buf.ptr, out_bytes, stream)
                cuda.record(e3, stream)
                return done

            def finish() -> list[GpuTiming]:
                order = [(count[0] + k) % 2 for k in range(2)]  # the older inference first
                return [read(slot) for slot in order if pending[slot] is not None]

            try:
                yield TimedLoop(step, finish, lambda: self._out_host.view(out_shape, self._out_dtype).copy())
            finally:
                with contextlib.suppress(GapError):
                    cuda.synchronize(stream)
                for event in (e for slot in slots for e in slot):
                    with contextlib.suppress(GapError):
                        cuda.destroy_event(event)

    def check_cuda_graph(self, array: np.ndarray) -> float | None:
        """Max abs difference between a CUDA-graph replay and a normal execution on the same input; None when
        no graph could be captured (``graph_failure`` says why; inference then runs without graphs).

        The output buffer is filled with NaN bytes before the replay, so a replay that computes
        nothing, or on stale addresses or a stale shape, shows here before anything is timed.
        """
        normal = self.infer_timed(array)[0]
        with self._lock:
            self._cuda.set_device(self._device)
            self._prepare(array)
            if self._graph_exec_for(array.shape) is None:  # capturing runs the enqueue once
                return None
            self._cuda.memset(self._out_buf.ptr, 0xFF, self._out_buf.nbytes, self._stream)
            replayed = self.infer_timed(array, cuda_graph=True)[0]
        if normal.shape != replayed.shape or not np.isfinite(replayed).all():
            return float("inf")
        return float(np.max(np.abs(normal.astype(np.float64) - replayed.astype(np.float64)))) if normal.size else 0.0

    def _graph_exec_for(self, shape):
        """The graph for this shape, profile and buffers (captured now if it is not the current one), or None
        when capturing fails: the failed graph is destroyed, the CUDA error cleared, ``graph_failure`` set."""
        key = (tuple(shape), self._active_profile, self._in_buf.ptr, self._out_buf.ptr)
        if self._graph is not None and self._graph[0] == key:
            return self._graph[2]
        if self._failed_key == key:  # failed for exactly this: not tried again at every call
            return None
        self._drop_graphs()
        cuda = self._cuda
        self._enqueue()  # TensorRT must run once after a shape change before it can be captured
        # and that run must be finished before the capture begins, as trtexec (sampleInference.cpp, stream.synchronize
        # before beginCapture) and Triton's TensorRT backend (instance_state.cc) do
        cuda.synchronize(self._stream)
        graph = None
        try:
            cuda.begin_capture(self._stream)
            try:
                self._enqueue()
            finally:
                graph = cuda.end_capture(self._stream)
            graph_exec = cuda.instantiate(graph)
        except GapError as exc:
            if graph is not None:
                with contextlib.suppress(GapError):
                    cuda.destroy_graph(graph)
            cuda.clear_error()
            self.graph_failure, self._failed_key = first_line(exc), key
            return None
        self._graph, self.graph_failure, self._failed_key = (key, graph, graph_exec), None, None
        return graph_exec

    def _drop_graphs(self) -> None:
        if self._graph is not None:
            _, graph, graph_exec = self._graph
            self._graph = None
            self._cuda.destroy_graph(graph, graph_exec)

    def close(self) -> None:
        with self._lock:
            if self._stream is None:
                return
            self._cuda.set_device(self._device)  # the buffers, events and stream belong to that device
            self._drop_graphs()
            for buffer in (self._in_buf, self._out_buf, self._in_host, self._out_host,
                           *(b for pair in self._extra.values() for b in pair)):
                buffer.free()
            for event in self._events:
                self._cuda.destroy_event(event)
            self._events = []
            self._cuda.destroy_stream(self._stream)
            self._stream = None
            self._context = self._engine = None


@dataclass(frozen=True)
class TimedLoop:
    """What :meth:`TrtRunner.timed_loop` yields: ``step()``, ``finish()`` and ``output()`` (the last result)."""

    step: Callable[[], GpuTiming | None]
    finish: Callable[[], list[GpuTiming]]
    output: Callable[[], np.ndarray]
