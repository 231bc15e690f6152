"""`make demo`: the whole pipeline on the CPU, through the same commands a user types.

Each step runs a gap-* command (or a script) as a subprocess and shows its real output; the final
summary collects the figures from the JSON files the commands wrote.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "demo"
BIN = Path(sys.executable).parent


def step(title: str, *cmd: str) -> float:
    print(f"\n=== {title}\n$ {' '.join(cmd)}", flush=True)
    started = time.perf_counter()
    exe = shutil.which(cmd[0], path=str(BIN)) or cmd[0]
    completed = subprocess.run([exe, *cmd[1:]], cwd=ROOT)
    if completed.returncode != 0:
        sys.exit(f"demo step failed: {title} (exit {completed.returncode})")
    return time.perf_counter() - started


def make_checkpoint(path: Path) -> None:
    import torch

    from exporter.model import GapCNN

    torch.manual_seed(0)
    torch.save(GapCNN(num_classes=10).state_dict(), path)


def main() -> None:
    started = time.perf_counter()
    DEMO.mkdir(exist_ok=True)
    ckpt = DEMO / "gapcnn.pt"
    if not ckpt.exists():
        make_checkpoint(ckpt)
        print(f"Created the demo checkpoint {ckpt.relative_to(ROOT)}")
    onnx_path = DEMO / "gapcnn.onnx"
    step("Export with dynamic batch/height/width, verified against PyTorch",
         "gap-export", str(ckpt), "--dynamic", "-o", str(onnx_path), "--report", str(DEMO / "export.json"))

    export = json.loads((DEMO / "export.json").read_text())
    parity = export["parity"]
    worst = max(row["rel_err"] for row in parity["shapes"])
    print("\n=== Summary")
    print(f"ONNX: {onnx_path.relative_to(ROOT)} dims {export['input_dims']} -> {export['output_dims']}")
    print(f"Parity with PyTorch: {'pass' if parity['passed'] else 'FAIL'} at {len(parity['shapes'])} shapes, "
          f"worst relative error {worst:.2e}")
    print(f"Demo finished in {time.perf_counter() - started:.0f} s.")


if __name__ == "__main__":
    main()
