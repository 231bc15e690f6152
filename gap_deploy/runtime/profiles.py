"""Optimization profiles (min:opt:max input shapes), shared by gap-build and ONNX Runtime's TensorRT provider.

The default range for a model (runtime.artifact.ArtifactSpec.default_profile), which gap-build, ort-trt and
gap-triton share: 1 x C x the model's minimum up to 16 x C x 1024 x 1024, tuned for 1 x C x 224 x 224, with a
static model's fixed dims kept.
"""

from __future__ import annotations

from dataclasses import dataclass

from gap_deploy.runtime.errors import InputError
from gap_deploy.runtime.shapes import Shape, format_shape, parse_shape

DEFAULT_OPT_SIDE = 224
DEFAULT_MAX_SIDE = 1024
DEFAULT_MAX_BATCH = 16


@dataclass(frozen=True)
class Profile:
    min: Shape
    opt: Shape
    max: Shape

    def __str__(self) -> str:
        return f"{format_shape(self.min)}:{format_shape(self.opt)}:{format_shape(self.max)}"

    @classmethod
    def parse(cls, text: str) -> Profile:
        """``"1x3x32x32:1x3x224x224:8x3x512x512"`` -> Profile; the syntax of gap-build --profile."""
        parts = text.split(":")
        if len(parts) != 3:
            raise InputError(f"{text!r} is not MIN:OPT:MAX, e.g. 1x3x32x32:1x3x224x224:8x3x512x512.")
        return cls(*(parse_shape(p) for p in parts))
