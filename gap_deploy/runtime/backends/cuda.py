"""A small CUDA wrapper over cuda-python's runtime bindings: device memory, streams, events, graphs.

No torch. Every call's error code is checked; a failure raises CudaError naming the call.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from gap_deploy.runtime._lazy import require
from gap_deploy.runtime.errors import CudaError

#: The fix for the CUDA errors a user meets; anything else points at the driver.
_HINTS = {
    "cudaErrorMemoryAllocation": "the GPU is out of memory: use a smaller batch or size, or free the GPU "
                                 "(nvidia-smi lists its processes).",
    "cudaErrorInvalidDevice": "no GPU with that index; nvidia-smi lists the devices, CUDA_VISIBLE_DEVICES hides some.",
    "cudaErrorNoDevice": "no NVIDIA GPU is visible: check nvidia-smi and CUDA_VISIBLE_DEVICES.",
    "cudaErrorInsufficientDriver": "the NVIDIA driver is older than this CUDA runtime needs: update the driver.",
    "cudaErrorStreamCaptureInvalidated": "another stream's work broke the CUDA graph capture: run without "
                                         "--cuda-graph, or keep other GPU work off the legacy default stream.",
}
_DRIVER_HINT = "check that an NVIDIA driver and GPU are present (nvidia-smi)."


def load_cudart():
    """cuda-python's runtime bindings (``cuda.bindings.runtime`` from 12.6, ``cuda.cudart`` before)."""
    module = require("cuda.bindings.runtime", "cuda.cudart", purpose="to run TensorRT engines",
                     hint="pip install 'gap-deploy[gpu]' (or 'gap-deploy[lean]').")
    return module


@dataclass(frozen=True)
class DeviceInfo:
    index: int
    name: str
    major: int
    minor: int

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"


def native_handle(obj) -> int:
    """The integer handle of a cuda-bindings object (a stream, for TensorRT's ``stream_handle: int``).

    cuda-bindings 12.9.1 and 13 deprecate ``int(cuda_obj)`` in favour of
    ``cuda.bindings.utils.get_cuda_native_handle``; older bindings only have ``int()``.
    """
    if isinstance(obj, int):
        return obj
    try:
        from cuda.bindings.utils import get_cuda_native_handle
    except ImportError:
        return int(obj)
    return int(get_cuda_native_handle(obj))


class Cuda:
    def __init__(self, cudart=None):
        self.rt = cudart if cudart is not None else load_cudart()

    def _check(self, call: str, result) -> Any:  # what cuda-bindings returned: a handle, a number, a struct
        err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
        if err != self.rt.cudaError_t.cudaSuccess:
            name = self.rt.cudaGetErrorName(err)[1]
            name = name.decode() if isinstance(name, bytes) else str(name)
            raise CudaError(f"CUDA call {call} failed: {name}.", hint=_HINTS.get(name, _DRIVER_HINT))
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    def device_count(self) -> int:
        return int(self._check("cudaGetDeviceCount", self.rt.cudaGetDeviceCount()))

    def set_device(self, index: int) -> None:
        self._check("cudaSetDevice", self.rt.cudaSetDevice(index))

    def device(self, index: int = 0) -> DeviceInfo:
        props = self._check("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(index))
        name = props.name
        name = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
        return DeviceInfo(index, name.split("\x00")[0].strip(), int(props.major), int(props.minor))

    def malloc(self, nbytes: int) -> int:
        return int(self._check("cudaMalloc", self.rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        if ptr:
            self._check("cudaFree", self.rt.cudaFree(ptr))

    def malloc_host(self, nbytes: int) -> int:
        """Page-locked host memory: copies from it are truly asynchronous (what trtexec stages through)."""
        return int(self._check("cudaMallocHost", self.rt.cudaMallocHost(nbytes)))

    def free_host(self, ptr: int) -> None:
        if ptr:
            self._check("cudaFreeHost", self.rt.cudaFreeHost(ptr))

    def create_stream(self):
        """A non-blocking stream: work on the legacy default stream elsewhere in the process neither waits for
        it nor invalidates a CUDA graph being captured on it."""
        flags = self.rt.cudaStreamNonBlocking
        return self._check("cudaStreamCreateWithFlags", self.rt.cudaStreamCreateWithFlags(flags))

    def destroy_stream(self, stream) -> None:
        self._check("cudaStreamDestroy", self.rt.cudaStreamDestroy(stream))

    def synchronize(self, stream) -> None:
        self._check("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))

    def wait_event(self, event) -> None:
        """Block the host until ``event`` (and the work recorded before it) has completed."""
        self._check("cudaEventSynchronize", self.rt.cudaEventSynchronize(event))

    def clear_error(self) -> str:
        """Read and reset the thread's last CUDA error (after a failed graph capture); returns its name."""
        err = self.rt.cudaGetLastError()
        err = err[0] if isinstance(err, tuple) else err
        if err == self.rt.cudaError_t.cudaSuccess:
            return ""
        name = self.rt.cudaGetErrorName(err)[1]
        return name.decode() if isinstance(name, bytes) else str(name)

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes of the current device."""
        free, total = self._check("cudaMemGetInfo", self.rt.cudaMemGetInfo())
        return int(free), int(total)

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check("cudaMemcpyAsync(HtoD)", self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream))

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check("cudaMemcpyAsync(DtoH)", self.rt.cudaMemcpyAsync(dst, src, nbytes, kind, stream))

    def memset(self, ptr: int, value: int, nbytes: int, stream) -> None:
        self._check("cudaMemsetAsync", self.rt.cudaMemsetAsync(ptr, value, nbytes, stream))

    def create_event(self):
        return self._check("cudaEventCreate", self.rt.cudaEventCreate())

    def destroy_event(self, event) -> None:
        self._check("cudaEventDestroy", self.rt.cudaEventDestroy(event))

    def record(self, event, stream) -> None:
        self._check("cudaEventRecord", self.rt.cudaEventRecord(event, stream))

    def elapsed_ms(self, start, end) -> float:
        return float(self._check("cudaEventElapsedTime", self.rt.cudaEventElapsedTime(start, end)))

    def begin_capture(self, stream) -> None:
        mode = self.rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        self._check("cudaStreamBeginCapture", self.rt.cudaStreamBeginCapture(stream, mode))

    def end_capture(self, stream):
        return self._check("cudaStreamEndCapture", self.rt.cudaStreamEndCapture(stream))

    def instantiate(self, graph):
        return self._check("cudaGraphInstantiate", self.rt.cudaGraphInstantiate(graph, 0))

    def launch(self, graph_exec, stream) -> None:
        self._check("cudaGraphLaunch", self.rt.cudaGraphLaunch(graph_exec, stream))

    def destroy_graph(self, graph, graph_exec=None) -> None:
        if graph_exec is not None:
            self._check("cudaGraphExecDestroy", self.rt.cudaGraphExecDestroy(graph_exec))
        if graph is not None:
            self._check("cudaGraphDestroy", self.rt.cudaGraphDestroy(graph))


class DeviceBuffer:
    """Device memory (or, with ``pinned=True``, page-locked host memory) that is reused across calls and
    grows when a larger shape comes."""

    def __init__(self, cuda: Cuda, *, pinned: bool = False):
        self._cuda = cuda
        self._alloc, self._free = (cuda.malloc_host, cuda.free_host) if pinned else (cuda.malloc, cuda.free)
        self.ptr = 0
        self.nbytes = 0

    def ensure(self, nbytes: int) -> bool:
        """Make room for ``nbytes``; True when the address changed (captured graphs must be redone)."""
        if nbytes <= self.nbytes:
            return False
        self.free()
        self.ptr = self._alloc(nbytes)
        self.nbytes = nbytes
        return True

    def view(self, shape, dtype) -> np.ndarray:
        """The first bytes of a pinned buffer as a numpy array (no copy)."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        raw = (ctypes.c_char * (count * dtype.itemsize)).from_address(self.ptr)
        return np.frombuffer(memoryview(raw), dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self._free(self.ptr)
        self.ptr, self.nbytes = 0, 0
