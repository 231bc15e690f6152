"""Train the reference GAP CNN on the procedural dataset (scripts/demo_data.py), on the CPU.

Fixed seed; random crops and horizontal flips, as the classic recipe suggests; each batch at a random
resolution between 32 and 96 pixels, so that the network meets many sizes. About a minute on 2 cores.
Writes the checkpoint (a plain state_dict), the class names, INT8 calibration images and a few sample
images of different sizes for gap-run.

    python scripts/train_demo.py --out demo [--steps 700]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_data import CLASSES, make_batch, make_image, normalize  # noqa: E402

from gap_deploy.exporter.model import GapCNN  # noqa: E402

TRAIN_SIZES = (32, 40, 48, 56, 64, 80, 96)
PAD = 4  # random-crop margin in pixels


def augment(images: np.ndarray, rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Random crop of (h, w) out of an image drawn PAD pixels larger, and a random horizontal flip."""
    out = np.empty((len(images), 3, h, w), np.float32)
    for i, image in enumerate(images):
        y, x = rng.integers(0, PAD + 1, 2)
        crop = image[:, y:y + h, x:x + w]
        out[i] = crop[:, :, ::-1] if rng.random() < 0.5 else crop
    return out


def train(steps: int, batch: int, seed: int) -> tuple[GapCNN, list[float]]:
    torch.manual_seed(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = np.random.default_rng(seed)
    model = GapCNN(in_channels=3, num_classes=len(CLASSES))
    optimizer = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=4e-3, total_steps=steps, pct_start=0.15)
    losses = []
    model.train()
    for step in range(steps):
        side = int(rng.choice(TRAIN_SIZES))
        h, w = side, int(rng.choice(TRAIN_SIZES)) if rng.random() < 0.3 else side  # some non-square batches
        images, labels = make_batch(batch, h + PAD, w + PAD, rng)
        x = torch.from_numpy(normalize(augment(images, rng, h, w)))
        loss = F.cross_entropy(model(x), torch.from_numpy(labels))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d}/{steps}  {h}x{w}  loss {np.mean(losses[-50:]):.3f}", flush=True)
    return model.eval(), losses


def save_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray((image.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo"))
    parser.add_argument("--steps", type=int, default=700)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model, losses = train(args.steps, args.batch, args.seed)
    torch.save(model.state_dict(), args.out / "gapcnn.pt")
    (args.out / "classes.txt").write_text("\n".join(CLASSES) + "\n")

    rng = np.random.default_rng(1000 + args.seed)  # calibration and samples: not the evaluation seed
    calib = args.out / "calib"
    calib.mkdir(exist_ok=True)
    for i in range(128):
        save_png(calib / f"{i:03d}.png", make_image(i % len(CLASSES), 64, 64, rng))
    samples = args.out / "samples"
    samples.mkdir(exist_ok=True)
    for i, (label, size) in enumerate([(0, (48, 48)), (3, (64, 100)), (5, (120, 80)), (7, (96, 96)),
                                       (9, (37, 53))]):
        save_png(samples / f"{i}_{CLASSES[label]}_{size[0]}x{size[1]}.png", make_image(label, *size, rng))
    print(f"Trained {args.steps} steps in {time.perf_counter() - started:.0f} s, final loss "
          f"{np.mean(losses[-50:]):.3f}; wrote {args.out / 'gapcnn.pt'}, classes.txt, calib/ (128), samples/ (5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
