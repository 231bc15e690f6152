"""Test doubles for TensorRT and CUDA, spec'd from the real classes and functions.

``create_autospec`` over ``tensorrt_lean`` (ICudaEngine, IExecutionContext, Runtime) and over
``cuda.bindings.runtime`` means a call to a method that does not exist, or with the wrong number of
arguments, fails here exactly as it would on a GPU machine. Device memory is host memory (ctypes), so
data really flows through the copies; the fake engine writes each image's channel means as logits.
"""

from __future__ import annotations

import ctypes
import types
from unittest import mock

import numpy as np
import pytest

trt = pytest.importorskip("tensorrt_lean")
cudart = pytest.importorskip("cuda.bindings.runtime")

OK = cudart.cudaError_t.cudaSuccess
NUM_CLASSES = 10
# two profiles: small images and large images
PROFILES = [((1, 3, 4, 4), (1, 3, 32, 32), (8, 3, 64, 64)), ((1, 3, 65, 65), (1, 3, 128, 128), (4, 3, 256, 256))]


class FakeDevice:
    """A CUDA runtime whose device memory is host memory."""

    def __init__(self, name="NVIDIA H100 80GB HBM3", major=9, minor=0):
        self.memory: dict[int, ctypes.Array] = {}
        self.name, self.major, self.minor = name, major, minor
        self.rt = mock.create_autospec(cudart, instance=False)
        for enum in ("cudaError_t", "cudaMemcpyKind", "cudaStreamCaptureMode"):
            setattr(self.rt, enum, getattr(cudart, enum))
        rt = self.rt
        rt.cudaGetDeviceCount.side_effect = lambda: (OK, 1)
        rt.cudaSetDevice.side_effect = lambda i: (OK,)
        rt.cudaGetDeviceProperties.side_effect = lambda i: (OK, types.SimpleNamespace(
            name=self.name.encode() + b"\x00" * 8, major=self.major, minor=self.minor))
        rt.cudaMalloc.side_effect = self._malloc
        rt.cudaFree.side_effect = lambda p: (self.memory.pop(p) and OK,)
        rt.cudaMemcpyAsync.side_effect = lambda dst, src, n, kind, stream: (ctypes.memmove(dst, src, n) and OK,)
        rt.cudaStreamCreate.side_effect = lambda: (OK, 7)
        rt.cudaStreamDestroy.side_effect = lambda s: (OK,)
        rt.cudaStreamSynchronize.side_effect = lambda s: (OK,)
        rt.cudaEventCreate.side_effect = lambda: (OK, object())
        rt.cudaEventDestroy.side_effect = lambda e: (OK,)
        rt.cudaEventRecord.side_effect = lambda e, s: (OK,)
        rt.cudaEventElapsedTime.side_effect = lambda a, b: (OK, 0.25)
        rt.cudaStreamBeginCapture.side_effect = lambda s, mode: (OK,)
        rt.cudaStreamEndCapture.side_effect = lambda s: (OK, "graph")
        rt.cudaGraphInstantiate.side_effect = lambda g, flags: (OK, "graph-exec")
        rt.cudaGraphLaunch.side_effect = lambda g, s: (OK,)
        rt.cudaGraphExecDestroy.side_effect = lambda g: (OK,)
        rt.cudaGraphDestroy.side_effect = lambda g: (OK,)
        rt.cudaGetErrorName.side_effect = lambda err: (OK, err.name.encode())

    def _malloc(self, n):
        buf = ctypes.create_string_buffer(n)
        self.memory[ctypes.addressof(buf)] = buf
        return OK, ctypes.addressof(buf)


def channel_means(x: np.ndarray) -> np.ndarray:
    out = np.zeros((x.shape[0], NUM_CLASSES), np.float32)
    out[:, : x.shape[1]] = x.reshape(x.shape[0], x.shape[1], -1).mean(axis=2)
    return out


def make_engine(profiles=PROFILES, compute=channel_means):
    """A spec'd ICudaEngine + IExecutionContext pair; ``compute`` maps the input batch to the logits."""
    engine = mock.create_autospec(trt.ICudaEngine, instance=True)
    context = mock.create_autospec(trt.IExecutionContext, instance=True)
    names = ["images", "logits"]
    engine.num_io_tensors = 2
    engine.num_optimization_profiles = len(profiles)
    engine.get_tensor_name.side_effect = names.__getitem__
    engine.get_tensor_mode.side_effect = lambda n: trt.TensorIOMode.INPUT if n == "images" else trt.TensorIOMode.OUTPUT
    engine.get_tensor_shape.side_effect = lambda n: (-1, 3, -1, -1) if n == "images" else (-1, NUM_CLASSES)
    engine.get_tensor_dtype.side_effect = lambda n: trt.DataType.FLOAT
    engine.get_tensor_profile_shape.side_effect = lambda n, p: profiles[p]
    engine.create_execution_context.return_value = context

    state = {"profile": 0, "shape": None, "addr": {}}

    def set_profile(index, stream):
        state["profile"] = index
        return True

    def set_input_shape(name, shape):
        lo, _, hi = profiles[state["profile"]]
        if not all(a <= s <= b for s, a, b in zip(shape, lo, hi)):
            return False
        state["shape"] = tuple(shape)
        return True

    def execute(stream):
        n, c, h, w = state["shape"]
        count = n * c * h * w
        x = np.frombuffer((ctypes.c_float * count).from_address(state["addr"]["images"]), dtype=np.float32)
        out = np.ascontiguousarray(compute(x.reshape(n, c, h, w).copy()), dtype=np.float32)
        ctypes.memmove(state["addr"]["logits"], out.ctypes.data, out.nbytes)
        return True

    context.set_optimization_profile_async.side_effect = set_profile
    context.set_input_shape.side_effect = set_input_shape
    context.get_tensor_shape.side_effect = lambda n: (state["shape"][0], NUM_CLASSES)
    context.set_tensor_address.side_effect = lambda n, p: state["addr"].__setitem__(n, p) or True
    context.execute_async_v3.side_effect = execute
    return engine, context


def make_trt(engine, version="11.4.0.106", name="tensorrt"):
    """The TensorRT module as the runner sees it: real enums and helpers, a spec'd Runtime."""
    runtime = mock.create_autospec(trt.Runtime, instance=True)
    runtime.deserialize_cuda_engine.return_value = engine
    module = types.SimpleNamespace(
        __name__=name, __version__=version, Logger=trt.Logger, TensorIOMode=trt.TensorIOMode,
        nptype=trt.nptype, Runtime=mock.Mock(return_value=runtime))
    return module, runtime


expected_logits = channel_means
