"""A procedural 10-class image dataset for the demo: no downloads, any resolution, fixed seeds.

Five shapes drawn at a random position and scale on a noisy background, and five textures whose period
scales with the image. Each image gets random foreground/background colours, so colour carries no label.
"""

from __future__ import annotations

import numpy as np

CLASSES = ("circle", "ring", "square", "triangle", "cross",
           "h-stripes", "v-stripes", "checkerboard", "diagonal", "grid")
MEAN = np.array([0.485, 0.456, 0.406], np.float32).reshape(3, 1, 1)  # ImageNet's, the exporter's default
STD = np.array([0.229, 0.224, 0.225], np.float32).reshape(3, 1, 1)


def _mask(label: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    side = min(h, w)
    if label < 5:  # a shape
        r = rng.uniform(0.18, 0.38) * side
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        dy, dx = yy - cy, xx - cx
        d = np.hypot(dy, dx)
        if label == 0:
            return d <= r
        if label == 1:
            return (d <= r) & (d >= r * rng.uniform(0.5, 0.7))
        if label == 2:
            return (np.abs(dx) <= r * 0.85) & (np.abs(dy) <= r * 0.85)
        if label == 3:
            return (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2)
        arm = r * rng.uniform(0.22, 0.35)
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    period = rng.uniform(0.1, 0.22) * side
    phase = rng.uniform(0, period)
    if label == 5:
        return ((yy + phase) % period) < period / 2
    if label == 6:
        return ((xx + phase) % period) < period / 2
    if label == 7:
        return (((yy + phase) // period + (xx + phase) // period) % 2) == 0
    if label == 8:
        sign = rng.choice([-1.0, 1.0])
        return ((xx + sign * yy + phase) % (period * 1.4)) < period * 0.7
    return (((yy + phase) % period) < period * 0.25) | (((xx + phase) % period) < period * 0.25)


def make_image(label: int, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """One RGB image, (3, h, w) float32 in [0, 1]."""
    background = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    while True:
        foreground = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        if np.abs(foreground - background).mean() > 0.3:
            break
    mask = _mask(label, h, w, rng)[None]
    image = np.where(mask, foreground.reshape(3, 1, 1), background.reshape(3, 1, 1))
    image = image + rng.normal(0, 0.04, image.shape).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32)


def make_batch(n: int, h: int, w: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, len(CLASSES), n)
    return np.stack([make_image(int(k), h, w, rng) for k in labels]), labels


def normalize(images: np.ndarray) -> np.ndarray:
    return ((images - MEAN) / STD).astype(np.float32)


EVAL_SEED = 12345  # never used for training, calibration or samples


def write_labelled_folder(root, per_class: int = 30, size: int = 64, seed: int = EVAL_SEED) -> int:
    """Held-out images as gap-eval reads them: ROOT/<class>/<n>.png, drawn at ``size``; returns the count."""
    from pathlib import Path

    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for label, name in enumerate(CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = make_image(label, size, size, rng)
            Image.fromarray((pixels.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    return per_class * len(CLASSES)


if __name__ == "__main__":
    import sys

    print(f"wrote {write_labelled_folder(sys.argv[1])} images to {sys.argv[1]}")
