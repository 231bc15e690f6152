"""Accuracy of exported models across input resolutions, on held-out procedural images (no torch).

The claim under test: a GAP network trained at one range of sizes still classifies at others. Every
model sees the same images (same seed) at each resolution; writes a table, JSON and a PNG plot.

    python scripts/eval_resolution.py --model fp32=demo/gapcnn.onnx --model fp16=demo/gapcnn.fp16.onnx \
        [--sizes 16,24,32,48,64,96,128,192,256] [--per-size 300] [--json acc.json] [--plot acc.png]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_data import CLASSES, make_batch, normalize  # noqa: E402

import runtime  # noqa: E402
from runtime.files import write_text_atomic  # noqa: E402

EVAL_SEED = 12345  # never used for training, calibration or samples


def evaluate(models: dict[str, Path], sizes: list[int], per_size: int) -> dict:
    sessions = {name: runtime.load(path, "ort-cpu") for name, path in models.items()}
    table: dict[str, dict[int, float]] = {name: {} for name in models}
    per_class: dict[str, dict[int, list[float]]] = {name: {} for name in models}
    for size in sizes:
        rng = np.random.default_rng(EVAL_SEED + size)
        images, labels = make_batch(per_size, size, size, rng)
        x = normalize(images)
        for name, session in sessions.items():
            preds = np.concatenate([session.run(x[i:i + 64]).argmax(1) for i in range(0, len(x), 64)])
            table[name][size] = float((preds == labels).mean())
            per_class[name][size] = [float((preds[labels == k] == k).mean()) if (labels == k).any() else float("nan")
                                     for k in range(len(CLASSES))]
    return {"sizes": sizes, "per_size": per_size, "classes": list(CLASSES), "accuracy": table,
            "per_class": per_class}


def format_table(result: dict) -> str:
    sizes = result["sizes"]
    head = f"{'model':>6} " + " ".join(f"{s:>6}" for s in sizes)
    lines = ["Accuracy by input size (square, pixels):", head, "-" * len(head)]
    for name, row in result["accuracy"].items():
        lines.append(f"{name:>6} " + " ".join(f"{row[s]:6.1%}" for s in sizes))
    fp32 = next(iter(result["per_class"].values()))
    lines.append("\nPer class (first model), smallest / largest size:")
    for k, cls in enumerate(result["classes"]):
        lines.append(f"  {cls:>12}: {fp32[sizes[0]][k]:6.1%} at {sizes[0]}px, {fp32[sizes[-1]][k]:6.1%} "
                     f"at {sizes[-1]}px")
    return "\n".join(lines)


def plot(result: dict, path: Path, trained: tuple[int, int]) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from runtime.files import write_bytes_atomic

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.axvspan(*trained, color="tab:green", alpha=0.12, label=f"training sizes {trained[0]}-{trained[1]} px")
    for name, row in result["accuracy"].items():
        ax.plot(result["sizes"], [row[s] for s in result["sizes"]], marker="o", label=name)
    ax.axhline(1 / len(result["classes"]), color="grey", linestyle=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xticks(result["sizes"], [str(s) for s in result["sizes"]])
    ax.set_xlabel("input size (pixels, square)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left")
    ax.set_title(f"Reference GAP CNN on held-out procedural images ({result['per_size']} per size)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    write_bytes_atomic(path, buffer.getvalue())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--sizes", default="16,24,32,48,64,96,128,192,256")
    parser.add_argument("--per-size", type=int, default=300)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args(argv)
    models = dict(item.split("=", 1) for item in args.model)
    result = evaluate({k: Path(v) for k, v in models.items()}, [int(s) for s in args.sizes.split(",")],
                      args.per_size)
    print(format_table(result))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot, (32, 96))
    return 0


if __name__ == "__main__":
    sys.exit(main())
