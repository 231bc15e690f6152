"""Test doubles for TensorRT and CUDA, as strict as the real bindings.

``create_autospec`` over ``tensorrt_lean`` (ICudaEngine, IExecutionContext, Runtime) and over
``cuda.bindings.runtime`` catches methods that do not exist; tests/support/strict_signatures.py adds what
autospec cannot read from pybind11/Cython: arity, keywords and basic types, from the bindings' own
docstrings. Device memory (and pinned host memory) is host memory (ctypes), so data really flows
through the copies. The fake engine computes with ONNX Runtime on a small real CNN
(:func:`reference_model`), which is position-sensitive: a transposed, mis-strided or stale buffer
gives other logits.

Time is simulated as CUDA documents it (CUDA Runtime API, "Stream Management" and "Event Management"):
work in a stream runs in issue order and cannot start before the host has issued it; an event completes
when the work recorded before it has completed (at once on an idle stream), and cudaEventElapsedTime is
the difference of the completion times; cudaEventSynchronize and cudaStreamSynchronize make the host
wait for that. So the host has a clock (``host``, advanced by the enqueue's launches, ``enqueue_ms``)
and each stream a tail (when its queued work ends). ``execute_async_v3`` launches ``KERNELS`` kernels
spread over the enqueue time, each taking COMPUTE_MS / KERNELS once launched: on an idle stream the
GPU waits for the launches, with work already queued it does not. Streams and events are the
bindings' own ``cudaStream_t`` / ``cudaEvent_t`` objects, as cuda-bindings returns them.
"""

from __future__ import annotations

import ctypes
import functools
import types
from unittest import mock

import numpy as np
import pytest

from tests.support.strict_signatures import make_strict, types_of

trt = pytest.importorskip("tensorrt_lean")
cudart = pytest.importorskip("cuda.bindings.runtime")

OK = cudart.cudaError_t.cudaSuccess
NUM_CLASSES = 10
BINDING_TYPES = types_of(trt, cudart)
# two profiles: small images and large images
PROFILES = [((1, 3, 4, 4), (1, 3, 32, 32), (8, 3, 64, 64)), ((1, 3, 65, 65), (1, 3, 128, 128), (4, 3, 256, 256))]
#: simulated device time, in ms, that each kind of work adds to the clock the events read
H2D_MS, COMPUTE_MS, D2H_MS = 0.75, 2.5, 0.125
KERNELS = 4  # kernels one enqueue launches


def strict(cls, **kwargs):
    """``create_autospec`` of a real binding class, with every method's signature enforced."""
    return make_strict(mock.create_autospec(cls, **kwargs), cls, types=BINDING_TYPES)


@functools.cache
def reference_model() -> bytes:
    """A small real GAP CNN (no torch): asymmetric 3x3 conv, ReLU, 1x1 conv, global average, 10 logits."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(42)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((NUM_CLASSES, 8, 1, 1)).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("GlobalAveragePool", ["c2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["logits"])]
    graph = helper.make_graph(nodes, "ref", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                           ["batch", 3, "height", "width"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", NUM_CLASSES])],
                              [w1, b1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@functools.cache
def _reference_session():
    import onnxruntime as ort

    return ort.InferenceSession(reference_model(), providers=["CPUExecutionProvider"])


def expected_logits(x: np.ndarray) -> np.ndarray:
    """What the real model gives for ``x``: ONNX Runtime, independent of the runner under test."""
    return _reference_session().run(None, {"images": np.ascontiguousarray(x, dtype=np.float32)})[0]


def _key(obj) -> int:
    """A stream's or event's integer handle (what the runner must pass on to TensorRT)."""
    from cuda.bindings.utils import get_cuda_native_handle

    return obj if isinstance(obj, int) else int(get_cuda_native_handle(obj))


class FakeDevice:
    """A CUDA runtime whose device memory is host memory, with simulated host and stream clocks."""

    def __init__(self, name="NVIDIA H100 80GB HBM3", major=9, minor=0, count=1, total_memory=80 << 30):
        self.memory: dict[int, ctypes.Array] = {}
        self.pinned: dict[int, ctypes.Array] = {}
        self.name, self.major, self.minor, self.count = name, major, minor, count
        self.total_memory = total_memory
        self.host = 0.0  # the host's clock, ms
        self.tails: dict[int, float] = {}  # stream handle -> when its queued work ends, ms
        self.enqueue_ms = 0.0  # host time one execute_async_v3 takes to launch its kernels
        self.event_times: dict[int, float] = {}
        self.on_record = None  # called with the event at each cudaEventRecord (to observe ordering)
        self.current_device: dict[int, int] = {}  # host thread id -> device
        self.stream_flags: dict[int, int] = {}
        self.rt = rt = make_strict(mock.create_autospec(cudart, instance=False), cudart, types=BINDING_TYPES)
        for enum in ("cudaError_t", "cudaMemcpyKind", "cudaStreamCaptureMode", "cudaStreamNonBlocking",
                     "cudaStreamDefault"):
            setattr(rt, enum, getattr(cudart, enum))
        rt.cudaGetDeviceCount.side_effect = lambda: (OK, self.count)
        rt.cudaSetDevice.side_effect = self._set_device
        rt.cudaGetDevice.side_effect = lambda: (OK, self.current_device.get(_thread(), 0))
        rt.cudaGetDeviceProperties.side_effect = lambda i: (OK, types.SimpleNamespace(
            name=self.name.encode() + b"\x00" * 8, major=self.major, minor=self.minor))
        rt.cudaMalloc.side_effect = lambda n: self._alloc(self.memory, n)
        rt.cudaFree.side_effect = lambda p: (self.memory.pop(p) and OK,)
        rt.cudaMallocHost.side_effect = lambda n: self._alloc(self.pinned, n)
        rt.cudaFreeHost.side_effect = lambda p: (self.pinned.pop(p) and OK,)
        rt.cudaMemGetInfo.side_effect = lambda: (OK, self.total_memory - sum(map(ctypes.sizeof, self.memory.values())),
                                                 self.total_memory)
        rt.cudaMemcpyAsync.side_effect = self._memcpy
        rt.cudaMemsetAsync.side_effect = lambda p, v, n, s: (ctypes.memset(p, v, n) and OK,)
        rt.cudaStreamCreate.side_effect = lambda: self._stream_with_flags(cudart.cudaStreamDefault)
        rt.cudaStreamCreateWithFlags.side_effect = self._stream_with_flags
        rt.cudaStreamDestroy.side_effect = lambda s: (OK,)
        rt.cudaStreamSynchronize.side_effect = self._stream_sync
        rt.cudaEventCreate.side_effect = self._event
        rt.cudaEventDestroy.side_effect = lambda e: (OK,)
        rt.cudaEventRecord.side_effect = self._record
        rt.cudaEventSynchronize.side_effect = self._event_sync
        rt.cudaEventElapsedTime.side_effect = lambda a, b: (OK, self.event_times[_key(b)] - self.event_times[_key(a)])
        # Capture records the enqueued work instead of running it; a launch replays it, as CUDA graphs do.
        self.capturing: list | None = None
        self.pending_at_capture: list[bool] = []
        self.graphs: dict[int, list] = {}
        self.broken_replay = False  # a replay that computes nothing (to prove the replay check can fail)
        self.failing_capture = False  # cudaStreamEndCapture reports an invalidated capture
        self.sticky_error = OK  # what cudaGetLastError returns (and resets)
        rt.cudaStreamBeginCapture.side_effect = self._begin_capture
        rt.cudaStreamEndCapture.side_effect = self._end_capture
        rt.cudaGraphInstantiate.side_effect = lambda g, flags: (OK, g + 1)
        rt.cudaGraphLaunch.side_effect = self._launch
        rt.cudaGraphExecDestroy.side_effect = lambda g: (OK,)
        rt.cudaGraphDestroy.side_effect = lambda g: (OK,)
        rt.cudaGetErrorName.side_effect = lambda err: (OK, err.name.encode())
        rt.cudaGetLastError.side_effect = self._last_error

    def _last_error(self):
        err, self.sticky_error = self.sticky_error, OK
        return (err,)

    def _begin_capture(self, stream, mode):
        # CUDA allows a capture to begin with work still queued; trtexec and Triton synchronize first, and
        # this records whether the caller did (True: the stream still had unfinished work)
        self.pending_at_capture.append(self.tails.get(_key(stream), 0.0) > self.host)
        self.capturing = []
        return (OK,)

    def _end_capture(self, stream):
        work, self.capturing = self.capturing, None
        if self.failing_capture:
            self.sticky_error = cudart.cudaError_t.cudaErrorStreamCaptureInvalidated
            return cudart.cudaError_t.cudaErrorStreamCaptureInvalidated, None
        handle = 2 * len(self.graphs) + 500
        self.graphs[handle], self.graphs[handle + 1] = work, work
        return OK, handle

    def _launch(self, graph_exec, stream):
        if not self.broken_replay:
            for work in self.graphs[graph_exec]:
                work(_key(stream), 0.0)  # a graph launch issues every kernel at once
        return (OK,)

    def _set_device(self, index):
        if not 0 <= index < self.count:
            return (cudart.cudaError_t.cudaErrorInvalidDevice,)
        self.current_device[_thread()] = index
        return (OK,)

    @staticmethod
    def _alloc(pool, n):
        buf = ctypes.create_string_buffer(n)
        pool[ctypes.addressof(buf)] = buf
        return OK, ctypes.addressof(buf)

    def _memcpy(self, dst, src, n, kind, stream):
        for pointer in (dst, src):  # device side must be device memory, host side pinned memory
            if not any(base <= pointer < base + ctypes.sizeof(buf)
                       for pool in (self.memory, self.pinned) for base, buf in pool.items()):
                raise AssertionError(f"cudaMemcpyAsync on unregistered memory {pointer:#x}")
        ctypes.memmove(dst, src, n)
        self.queue(_key(stream), H2D_MS if kind == cudart.cudaMemcpyKind.cudaMemcpyHostToDevice else D2H_MS)
        return (OK,)

    def queue(self, stream: int, ms: float, issued_at: float | None = None) -> None:
        """Work of ``ms`` on ``stream``: it starts when the stream is free and the host has issued it."""
        start = max(self.tails.get(stream, 0.0), self.host if issued_at is None else issued_at)
        self.tails[stream] = start + ms

    def kernels(self, stream: int, enqueue_ms: float) -> None:
        """One enqueue: KERNELS launches spread over ``enqueue_ms`` of host time, then the host goes on."""
        began = self.host
        for i in range(KERNELS):
            self.queue(stream, COMPUTE_MS / KERNELS, issued_at=began + enqueue_ms * (i + 1) / KERNELS)
        self.host = began + enqueue_ms

    def _record(self, event, stream):
        self.event_times[_key(event)] = max(self.tails.get(_key(stream), 0.0), self.host)
        if self.on_record is not None:
            self.on_record(_key(event))
        return (OK,)

    def _event_sync(self, event):
        self.host = max(self.host, self.event_times[_key(event)])
        return (OK,)

    def _stream_sync(self, stream):
        self.host = max(self.host, self.tails.get(_key(stream), 0.0))
        return (OK,)

    def _stream_with_flags(self, flags):
        handle = 100 + len(self.stream_flags)
        self.stream_flags[handle] = int(flags)
        return OK, cudart.cudaStream_t(handle)

    def _event(self):
        handle = len(self.event_times) + 1000 + id(self) % 7
        self.event_times[handle] = 0.0
        return OK, cudart.cudaEvent_t(handle)

    def clock(self) -> float:
        """The host clock in seconds, for TrtRunner(clock=...)."""
        return self.host / 1e3


def _thread() -> int:
    import threading

    return threading.get_ident()


def make_engine(profiles=PROFILES, compute=expected_logits, device: FakeDevice | None = None, extra=None):
    """A strict ICudaEngine + IExecutionContext pair; ``compute`` maps the input batch to the logits.

    ``extra`` (name -> function of the input batch) adds outputs, as an engine built with intermediate tensors
    marked as outputs has them (INetworkDefinition.mark_output)."""
    engine = strict(trt.ICudaEngine, instance=True)
    context = strict(trt.IExecutionContext, instance=True)
    extra = dict(extra or {})
    names = ["images", "logits", *extra]
    engine.num_io_tensors = len(names)
    engine.num_optimization_profiles = len(profiles)
    engine.get_tensor_name.side_effect = names.__getitem__
    engine.get_tensor_mode.side_effect = lambda n: trt.TensorIOMode.INPUT if n == "images" else trt.TensorIOMode.OUTPUT
    engine.get_tensor_shape.side_effect = lambda n: (-1, 3, -1, -1) if n == "images" else \
        (-1, NUM_CLASSES) if n == "logits" else (-1,) * extra[n](np.zeros(profiles[0][0], np.float32)).ndim
    engine.get_tensor_dtype.side_effect = lambda n: trt.DataType.FLOAT
    engine.get_tensor_profile_shape.side_effect = lambda n, p: profiles[p]
    engine.create_execution_context.return_value = context

    kernels = _Kernels(profiles, compute, extra, names, device)
    context.set_optimization_profile_async.side_effect = kernels.set_profile
    context.set_input_shape.side_effect = kernels.set_input_shape
    context.get_tensor_shape.side_effect = kernels.tensor_shape
    context.set_tensor_address.side_effect = lambda n, p: kernels.addr.__setitem__(n, p) or True
    context.execute_async_v3.side_effect = kernels.execute
    return engine, context


class _Kernels:
    """What an IExecutionContext holds and does: the profile and input shape set, the tensor addresses, and
    the work enqueued on a stream (run at once, or recorded while a FakeDevice captures a graph).

    ``epoch`` changes with every new input shape or profile: TensorRT's developer guide ("CUDA Graphs") says a
    graph must be recaptured after such a change, so replaying work captured in another epoch is stale."""

    def __init__(self, profiles, compute, extra: dict, names: list, device: FakeDevice | None):
        self.profiles, self.compute, self.extra, self.names, self.device = profiles, compute, extra, names, device
        self.profile, self.shape, self.epoch = 0, None, 0
        self.addr: dict = {}

    def set_profile(self, index, stream):
        if not isinstance(stream, int):  # pybind11 takes typing.SupportsInt; the bindings' objects are not ints
            raise TypeError(f"stream_handle must be an int, got {type(stream).__name__}")
        if not 0 <= index < len(self.profiles):  # the binding raises; it does not return False
            raise RuntimeError(f"profile index {index} out of range")
        if index != self.profile:
            self.epoch += 1
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        lo, _, hi = self.profiles[self.profile]
        if not all(a <= s <= b for s, a, b in zip(shape, lo, hi)):
            return False
        if tuple(shape) != self.shape:
            self.epoch += 1
        self.shape = tuple(shape)
        return True

    def tensor_shape(self, name):
        if name == "logits":
            return (self.shape[0], NUM_CLASSES)
        return tuple(self.extra[name](np.zeros(self.shape, np.float32)).shape)

    def run(self, shape, addr, epoch):
        n, c, h, w = shape
        if epoch != self.epoch:  # stale graph: what it computes is undefined; make that visible
            count = n * NUM_CLASSES
            nan = np.full(count, np.nan, np.float32)
            ctypes.memmove(addr["logits"], nan.ctypes.data, nan.nbytes)
            return
        count = n * c * h * w
        x = np.frombuffer((ctypes.c_float * count).from_address(addr["images"]), dtype=np.float32)
        out = np.ascontiguousarray(self.compute(x.reshape(n, c, h, w).copy()), dtype=np.float32)
        ctypes.memmove(addr["logits"], out.ctypes.data, out.nbytes)
        for name, fn in self.extra.items():
            if name in addr:  # an output whose address was set, as TensorRT writes only those
                value = np.ascontiguousarray(fn(x.reshape(n, c, h, w).copy()), dtype=np.float32)
                ctypes.memmove(addr[name], value.ctypes.data, value.nbytes)

    def execute(self, stream):
        if not isinstance(stream, int):
            raise TypeError(f"stream_handle must be an int, got {type(stream).__name__}")
        # NvInferRuntime.h, IExecutionContext::enqueueV3: "each input must have a non-null address and each output
        # must have a non-null address or an IOutputAllocator"; it returns false otherwise
        if any(not self.addr.get(n) for n in self.names):
            return False
        shape, addr, epoch = self.shape, dict(self.addr), self.epoch  # what the kernels get
        device = self.device

        def work(handle, enqueue_ms):
            self.run(shape, addr, epoch)
            if device is not None:
                device.kernels(handle, enqueue_ms)

        if device is not None and device.capturing is not None:
            device.capturing.append(work)
        else:
            self.run(shape, addr, epoch)
            if device is not None:
                device.kernels(stream, device.enqueue_ms)
        return True


def make_trt(engine, version="11.4.0.106", name="tensorrt"):
    """The TensorRT module as the runner sees it: real enums and helpers, a strict Runtime."""
    runtime = strict(trt.Runtime, instance=True)
    runtime.deserialize_cuda_engine.return_value = engine
    module = types.SimpleNamespace(
        __name__=name, __version__=version, Logger=trt.Logger, TensorIOMode=trt.TensorIOMode,
        nptype=trt.nptype, Runtime=mock.Mock(return_value=runtime))
    return module, runtime
