"""Check an ONNX model against the PyTorch model it came from."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from runtime.parity import FP32, Infer, ParityReport, Tolerance, compare
from runtime.shapes import Shape


def torch_infer(module: nn.Module) -> Infer:
    module.eval()

    def infer(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()

    return infer


def ort_cpu_infer(model: onnx.ModelProto | str) -> Infer:
    """ONNX Runtime on the CPU, for a model in memory (not yet written) or on disk."""
    from runtime._lazy import require

    ort = require("onnxruntime", purpose="to verify the exported model")
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
    return lambda x: session.run([out_name], {in_name: x})[0]


def default_verify_shapes(channels: int, imgsz: tuple[int, int], min_side: int, *, dynamic: bool,
                          batch: int = 1) -> list[Shape]:
    """The export size, the minimum, odd and non-square sizes, a large size, and batch > 1."""
    h, w = imgsz
    if not dynamic:
        return [(batch, channels, h, w)]

    def at_least_min(a: int, b: int) -> tuple[int, int]:
        return max(a, min_side), max(b, min_side)

    candidates = [
        (1, h, w),
        (1, min_side, min_side),
        (1, *at_least_min(37, 53)),
        (1, *at_least_min(min_side + 1, 2 * min_side + 3)),
        (3, *at_least_min(61, 45)),
        (2, h, w),
        (1, *at_least_min(384, 512)),
    ]
    shapes: list[Shape] = []
    for b, hh, ww in candidates:
        shape = (b, channels, hh, ww)
        if shape not in shapes:
            shapes.append(shape)
    return shapes


def check_parity(module: nn.Module, onnx_model: onnx.ModelProto | str, shapes: Sequence[Shape],
                 tolerance: Tolerance = FP32, *, seed: int = 0) -> ParityReport:
    """Run PyTorch and ONNX Runtime (CPU) on the same seeded inputs at every shape and compare."""
    return compare(torch_infer(module), ort_cpu_infer(onnx_model), shapes, tolerance,
                   reference_name="PyTorch", candidate_name="ONNX Runtime CPU", seed=seed)
