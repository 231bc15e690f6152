"""Image files -> normalized CHW float32 arrays, as the model's metadata says (Pillow)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from gap_deploy.runtime.errors import ArtifactError
from gap_deploy.runtime.metadata import ModelMetadata

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def collect_images(paths) -> list[Path]:
    """Files as given; folders expanded to their image files (by suffix), sorted."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            from gap_deploy.runtime.files import folder_entries

            found.extend(p for p in folder_entries(item, "image folder")
                         if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            found.append(item)
    return found


#: Pillow modes that hold more than 8 bits per pixel, and the full-scale value of each
_HIGH_DEPTH = {"I;16": 65535.0, "I;16B": 65535.0, "I;16L": 65535.0, "I;16N": 65535.0}


def load_image(path: str | Path, channels: int = 3, size: tuple[int, int] | None = None) -> np.ndarray:
    """Pixels in [0, 1] as (channels, H, W) float32; any Pillow mode is converted, ``size`` is (H, W).

    Only regular files are opened (a FIFO would block). 16-bit and 32-bit integer images are scaled by
    their bit depth, float images by their range ([0, 1], [0, 255] or [0, 65535]), never clipped. The
    memory an image needs is checked from its header before it is decoded; a decompression bomb is an
    error for that file alone.
    """
    path = Path(path)
    # One step, on the descriptor: opened without blocking (a FIFO opens at once with O_NONBLOCK), then checked. A
    # check of the path followed by an open of the path could be raced: a regular file when checked, a FIFO when
    # opened, and the decode thread blocked for ever.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ArtifactError(f"image {path} does not exist.") from None
    except IsADirectoryError:
        raise ArtifactError(f"image {path} is a directory.") from None
    except OSError as exc:
        raise ArtifactError(f"image {path} cannot be read: {exc.strerror or exc}.") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ArtifactError(f"image {path} is a directory.")
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactError(f"image {path} is not a regular file (a pipe, device or socket); it was not read.")
        with os.fdopen(fd, "rb") as handle:
            fd = -1
            return decode_image(handle, channels, size, name=str(path))
    finally:
        if fd >= 0:
            os.close(fd)


def decode_image(source, channels: int = 3, size: tuple[int, int] | None = None, *, name: str) -> np.ndarray:
    """:func:`load_image` for a path or an open binary file (bytes read by Ray from any filesystem)."""
    from PIL import Image, UnidentifiedImageError

    from gap_deploy.runtime.limits import check_memory

    path = name
    if channels not in _MODES:
        raise ArtifactError(f"cannot turn images into {channels}-channel input; supported: 1, 3 or 4 channels.")
    try:
        with Image.open(source) as image:
            width, height = image.size
            check_memory((1, channels, height, width), f"image {path}", activations=False)
            if size is None:
                check_memory((1, channels, height, width), f"image {path} at its own size")
            else:  # the resized image, before it is made, and the model's activations on it
                check_memory((1, channels, *size), f"image {path} resized to")
            image.load()  # decode now, so a truncated file fails here with its name
            pixels = _pixels(image, channels, path)
    except Image.DecompressionBombError as exc:
        raise ArtifactError(f"{path} is refused as a decompression bomb: {exc}",
                            hint="downscale the image first if it is genuine.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        reason = str(exc).replace(repr(source), repr(path)) if not isinstance(source, (str, Path)) else str(exc)
        raise ArtifactError(f"{path} is not a readable image: {reason}") from None
    if size is not None:
        pixels = resize_hwc(pixels, size)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def _pixels(image, channels: int, path) -> np.ndarray:
    """(H, W, channels) float32 in [0, 1]."""
    mode = image.mode
    if mode not in _HIGH_DEPTH and mode not in ("I", "F"):
        pixels = np.asarray(image.convert(_MODES[channels]), dtype=np.float32) / 255.0
        return pixels[:, :, None] if pixels.ndim == 2 else pixels  # "L" (1 channel) decodes to H x W
    values = np.asarray(image, dtype=np.float64)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    if finite.size != values.size:
        raise ArtifactError(f"{path} holds NaN or infinite pixel values.")
    if mode in _HIGH_DEPTH:
        scale = _HIGH_DEPTH[mode]
    elif low >= 0 and high <= 1 and mode == "F":
        scale = 1.0
    elif low >= 0 and high <= 255:
        scale = 255.0
    elif low >= 0 and high <= 65535:
        scale = 65535.0  # 16-bit PNGs open as 32-bit integer images
    else:
        raise ArtifactError(f"{path} has pixel values from {low:g} to {high:g}, which is no pixel range this tool "
                            "knows (0-1, 0-255 or 0-65535).", hint="convert it to an 8- or 16-bit image.")
    gray = (values / scale).astype(np.float32)[:, :, None]
    if channels == 1:
        return gray
    rgb = np.repeat(gray, 3, axis=2)
    return rgb if channels == 3 else np.concatenate([rgb, np.ones_like(gray)], axis=2)


def resize_hwc(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of (H, W, C) float pixels to ``size`` (H, W), channel by channel, without rounding."""
    from PIL import Image

    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(pixels[:, :, c], dtype=np.float32)).resize(
        (size[1], size[0]), Image.Resampling.BILINEAR), dtype=np.float32) for c in range(pixels.shape[2])]
    return np.stack(planes, axis=2)


def normalize(chw: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    mean, std = metadata.normalization()
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return (chw - m) / s


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
