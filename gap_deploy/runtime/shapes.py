"""Parse the shape strings of the CLIs (``BxCxHxW`` or ``HxW``)."""

from __future__ import annotations

from gap_deploy.runtime.errors import InputError

Shape = tuple[int, ...]  # (N, C, H, W): the rank is checked where a shape is parsed or read from a model
MAX_DIM = (1 << 31) - 1


def parse_shape(text: str, channels: int | None = None) -> Shape:
    """``"2x3x97x131"`` -> (2, 3, 97, 131); ``"97x131"`` -> (1, channels, 97, 131)."""
    parts = text.lower().replace("*", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        dims = []
    if len(dims) == 2 and channels is not None:
        dims = [1, channels, *dims]
    if len(dims) != 4:
        expected = "BxCxHxW (e.g. 1x3x224x224)" + (" or HxW" if channels is not None else "")
        raise InputError(f"shape {text!r} is not of the form {expected}.")
    if any(d < 1 for d in dims):
        raise InputError(f"shape {text!r} has a dimension below 1; every dimension must be >= 1.")
    if any(d > MAX_DIM for d in dims):
        raise InputError(f"shape {text!r} has a dimension above {MAX_DIM}, more than any backend can index.")
    return tuple(dims)  # type: ignore[return-value]


def batches_by_shape(items, shape_of, limit: int | None = None) -> list[list]:
    """``items`` grouped by ``shape_of(item)`` in first-seen order, each group cut into batches of at most
    ``limit``. Different shapes never share a batch: padding would change every global average."""
    groups: dict = {}
    for item in items:
        groups.setdefault(shape_of(item), []).append(item)
    step = limit or max((len(g) for g in groups.values()), default=1)
    return [group[i:i + step] for group in groups.values() for i in range(0, len(group), step)]


def format_shape(shape) -> str:
    return "x".join(str(int(d)) for d in shape)
