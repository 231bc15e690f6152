"""Image files -> normalized CHW float32 arrays, as the model's metadata says (Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.errors import ArtifactError
from runtime.metadata import ModelMetadata

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def collect_images(paths) -> list[Path]:
    """Files as given; folders expanded to their image files (by suffix), sorted."""
    found: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found.extend(sorted(p for p in item.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(item)
    return found


def load_image(path: str | Path, channels: int = 3, size: tuple[int, int] | None = None) -> np.ndarray:
    """Pixels in [0, 1] as (channels, H, W) float32; any Pillow mode is converted, ``size`` is (H, W)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if channels not in _MODES:
        raise ArtifactError(f"cannot turn images into {channels}-channel input; supported: 1, 3 or 4 channels.")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so a truncated file fails here with its name
            image = image.convert(_MODES[channels])
            if size is not None:
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            pixels = np.asarray(image, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise ArtifactError(f"image {path} does not exist.") from None
    except IsADirectoryError:
        raise ArtifactError(f"image {path} is a directory.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ArtifactError(f"{path} is not a readable image: {exc}") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


def normalize(chw: np.ndarray, metadata: ModelMetadata) -> np.ndarray:
    mean, std = metadata.normalization()
    m = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    s = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return (chw - m) / s


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
