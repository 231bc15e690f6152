"""Optimization profiles (min:opt:max input shapes), shared by gap-build and ONNX Runtime's TensorRT provider.

Defined once here, on the torch-free side, so the builder and the runtime's ``ort-trt`` backend pick
the same default range for a model: 1 x C x the model's minimum up to 16 x C x 1024 x 1024, tuned for
1 x C x 224 x 224, with a static model's fixed dims kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gap_deploy.runtime.errors import InputError
from gap_deploy.runtime.metadata import ModelMetadata
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


def default_profile(dims: Sequence[int | str], meta: ModelMetadata) -> Profile:
    """min: 1 x C x the model's minimum; opt: 1 x C x 224x224; max: 16 x C x 1024x1024 (static dims kept)."""
    c = dims[1] if isinstance(dims[1], int) and dims[1] > 0 else (meta.in_channels or 3)

    def pick(axis: int, dynamic_value: int) -> int:
        dim = dims[axis]
        return dim if isinstance(dim, int) and dim > 0 else dynamic_value

    lo = (pick(0, 1), c, pick(2, meta.min_height), pick(3, meta.min_width))
    opt = (pick(0, 1), c, pick(2, max(DEFAULT_OPT_SIDE, meta.min_height)),
           pick(3, max(DEFAULT_OPT_SIDE, meta.min_width)))
    hi = (pick(0, DEFAULT_MAX_BATCH), c, pick(2, DEFAULT_MAX_SIDE), pick(3, DEFAULT_MAX_SIDE))
    return Profile(lo, opt, hi)
