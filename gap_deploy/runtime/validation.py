"""Input checks made before any backend sees the array, each naming the expected and the actual value."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gap_deploy.runtime.errors import InputError, InputTypeError
from gap_deploy.runtime.shapes import format_shape

_FLOATS = (np.float16, np.float32, np.float64)


@dataclass(frozen=True)
class InputSpec:
    name: str
    channels: int | None
    dtype: np.dtype
    min_height: int
    min_width: int
    #: TensorRT optimization profiles as (min, max) NCHW shapes; empty for ONNX Runtime.
    profiles: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = ()
    #: A static model's fixed (batch, height, width); None where a dim is symbolic.
    fixed: tuple[int | None, int | None, int | None] = (None, None, None)
    #: The largest height or width the backend was planned for (an ExecuTorch program's bound); None: any.
    max_side: int | None = None


def prepare(images, spec: InputSpec, *, cast: bool = False, check_finite: bool = False) -> np.ndarray:
    """Return ``images`` as a C-contiguous array of the model's dtype, or raise InputError/InputTypeError.

    Float inputs of another width are converted (float64 -> float32 loses nothing a float32 model
    could use). Integer, bool and other dtypes are refused unless ``cast=True``: raw 0-255 pixels fed
    to a normalized model give confident nonsense.
    """
    if not isinstance(images, np.ndarray):
        raise InputTypeError(f"input '{spec.name}' must be a numpy.ndarray, got {type(images).__name__}.",
                             hint="convert with numpy.asarray(x, dtype=numpy.float32).")
    check_shape(tuple(images.shape), spec)
    if images.dtype != spec.dtype:
        if images.dtype.type in _FLOATS:
            images = images.astype(spec.dtype)
        elif cast and (np.issubdtype(images.dtype, np.number) or images.dtype == np.bool_):
            images = images.astype(spec.dtype)
        else:
            raise InputTypeError(
                f"input '{spec.name}' has dtype {images.dtype}; this model takes {np.dtype(spec.dtype).name}.",
                hint="normalize pixels to float first (x.astype(numpy.float32) / 255, then mean/std), "
                     "or pass cast=True to convert the values as they are.")
    images = np.ascontiguousarray(images)  # never hand a backend strides it would ignore
    if check_finite and not np.isfinite(images).all():
        raise InputError(f"input '{spec.name}' contains NaN or Inf values.")
    return images


def _within(shape, lo, hi) -> bool:
    return all(a <= int(s) <= b for s, a, b in zip(shape, lo, hi))



def check_shape(shape: tuple[int, ...], spec: InputSpec) -> None:
    """Raise InputError when an input of ``shape`` cannot run: rank, batch, channels, minimum size, static
    dims, TensorRT profiles."""
    if len(shape) != 4:
        hint = "add a batch axis with images[None]." if len(shape) == 3 else "pass a batch as (N, C, H, W)."
        raise InputError(f"input '{spec.name}' must be 4-D (N, C, H, W); got {len(shape)}-D shape "
                         f"{shape}.", hint=hint)
    n, c, h, w = (int(d) for d in shape)
    if n < 1:
        raise InputError(f"input '{spec.name}' has batch size 0; at least 1 image is needed.")
    if spec.channels is not None and c != spec.channels:
        hint = ("the array may be NHWC; transpose with images.transpose(0, 3, 1, 2)."
                if shape[-1] == spec.channels else f"give {spec.channels}-channel images.")
        raise InputError(f"input '{spec.name}' has {c} channels; this model takes {spec.channels}.", hint=hint)
    if h < spec.min_height or w < spec.min_width:
        raise InputError(f"input '{spec.name}' is {h}x{w}, below this model's minimum of "
                         f"{spec.min_height}x{spec.min_width}.",
                         hint="upscale the image, or export a model with a smaller minimum.")
    if spec.max_side is not None and max(h, w) > spec.max_side:
        raise InputError(f"input '{spec.name}' is {h}x{w}, above the largest side this model was planned for "
                         f"({spec.max_side}).", hint="resize the image, or pack the model again with a larger "
                                                      "--max-side.")
    for axis, (got, want) in enumerate(zip((n, h, w), spec.fixed)):
        if want is not None and got != want:
            label = ("batch", "height", "width")[axis]
            raise InputError(f"input '{spec.name}' has {label} {got}; this static model takes only {want}.",
                             hint="give it its own size (gap-run without --imgsz prepares images at the size its "
                                  "preprocessing contract says), or use a model that takes any size (gap-export "
                                  "--dynamic; gap-pack without --fixed).")
    if spec.profiles and not any(_within(shape, lo, hi) for lo, hi in spec.profiles):
        ranges = "; ".join(f"{format_shape(lo)} to {format_shape(hi)}" for lo, hi in spec.profiles)
        raise InputError(f"input '{spec.name}' shape {format_shape(shape)} is outside every optimization "
                         f"profile of this engine ({ranges}).",
                         hint="resize the input into that range, or rebuild the engine with gap-build "
                              "--min/--max (or another --profile) that covers it.")


def check_image(chw: np.ndarray, spec: InputSpec) -> None:
    """Check one CHW image as it will run: height, width and channels; the batch is the model's own (a static
    batch is filled by Session.run_many), so only what belongs to the image can fail."""
    if not isinstance(chw, np.ndarray) or chw.ndim != 3:
        got = f"{chw.ndim}-D" if isinstance(chw, np.ndarray) else type(chw).__name__
        raise InputError(f"input '{spec.name}' image must be CHW (3-D); got {got}.")
    check_shape((spec.fixed[0] or 1, *chw.shape), spec)


def int_tuple(value, length: int, what: str) -> tuple[int, ...]:
    """``value`` as ``length`` positive whole numbers (a list or tuple of ints), or InputTypeError saying what
    was given: the check API callers get for shapes and sizes (a string such as "1x3x64x64" is no shape)."""
    ok = isinstance(value, (list, tuple)) and len(value) == length and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v > 0 for v in value)
    if not ok:
        raise InputTypeError(f"{what} must be {length} positive whole numbers (a tuple such as "
                             f"{(1, 3, 224, 224)[-length:]}), got {value!r:.80}.")
    return tuple(int(v) for v in value)
