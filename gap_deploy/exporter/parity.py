"""Check an ONNX model against the PyTorch model it came from."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import torch
from torch import nn

from gap_deploy.runtime.parity import (
    FP32,
    Infer,
    ParityReport,
    Tolerance,
    compare,
    default_verify_shapes,
    ort_cpu_infer,
)
from gap_deploy.runtime.shapes import Shape

__all__ = ["check_parity", "default_verify_shapes", "ort_cpu_infer", "torch_infer"]


def torch_infer(module: nn.Module) -> Infer:
    module.eval()

    def infer(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(np.ascontiguousarray(x))).float().numpy()

    return infer


def check_parity(module: nn.Module, onnx_model: onnx.ModelProto | str, shapes: Sequence[Shape],
                 tolerance: Tolerance = FP32, *, seed: int = 0) -> ParityReport:
    """Run PyTorch and ONNX Runtime (CPU) on the same seeded inputs at every shape and compare."""
    return compare(torch_infer(module), ort_cpu_infer(onnx_model), shapes, tolerance,
                   reference_name="PyTorch", candidate_name="ONNX Runtime CPU", seed=seed)
