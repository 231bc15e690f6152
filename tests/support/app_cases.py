"""The models and image files gap-pack --app is judged on (tests/exporter/test_pack_app.py and
scripts/app_matrix.py): the reference CNN and two families, each with another preprocessing contract, and image
files of mixed sizes and formats."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gap_deploy.runtime.preprocess import Preprocess

CONTRACTS = {
    "reference": None,  # exported without one: its own size, stretched to the app size
    "ResNetish": Preprocess(resize="shorter-side", size=(56, 56), crop_fraction=0.875, interpolation="bilinear",
                            space="uint8", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
    "MobileNetish": Preprocess(resize="stretch", size=(48, 64), interpolation="bilinear", space="float",
                               channel_order="BGR", mean=(0.5, 0.4, 0.3), std=(0.25, 0.25, 0.25)),
}
LABELS = tuple(f"kind {i}" for i in range(10))
REFERENCE_LABELS = tuple(f"class{i}" for i in range(10))


def make_source(name: str, folder: Path) -> tuple[Path, Path, str | None]:
    """(FP32 ONNX with its contract, checkpoint, arch) of ``name``, exported at 64x64 with dynamic sizes."""
    import torch

    import tests.support.families as fam
    from gap_deploy.exporter import export_onnx, load_model
    from tests.conftest import make_reference, randomize_batchnorm

    ckpt = folder / f"{name}.pt"
    if name == "reference":
        torch.save(make_reference().state_dict(), ckpt)
        arch, labels = None, REFERENCE_LABELS
    else:
        torch.manual_seed(1)
        torch.save(randomize_batchnorm(getattr(fam, name)(num_classes=10)).state_dict(), ckpt)
        arch, labels = f"tests.support.families:{name}", LABELS
    onnx_path = export_onnx(load_model(ckpt, arch=arch), folder / f"{name}.onnx", dynamic=True, imgsz=(64, 64),
                            class_names=labels, preprocess=CONTRACTS[name]).path
    return onnx_path, ckpt, arch


def make_images(folder: Path, count: int = 56, seed: int = 3) -> list[Path]:
    """``count`` image files: PNG and JPEG, 33 to 301 pixels a side, odd, non-square, some at the app sizes
    exactly; gradients, stripes and noise (a random-weight classifier's classes still change across them)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    sizes = [(64, 64), (56, 56), (48, 64), (33, 41), (301, 97)]
    sizes += [tuple(int(v) for v in rng.integers(33, 302, 2)) for _ in range(count - len(sizes))]
    files = []
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([(xx * (i % 7 + 2)) % 256, (yy * (i % 5 + 3)) % 256, ((xx + yy) * (i % 3 + 1)) % 256], 2)
        pixels = pixels * rng.uniform(0.3, 1.0, 3) + rng.normal(0, 20, (h, w, 3))
        path = folder / f"img{i:02d}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
        files.append(path)
    return files
