"""What gap-deploy's Session costs over a bare onnxruntime loop, measured in one process.

Session.run (input checks + backend call) and InferenceSession.run on the *same* ONNX Runtime session
and the same input alternate in short blocks, so drift in the machine's speed hits both equally. Prints
the ratio of the medians; the target at 1x3x224x224 on the reference GAP CNN is <= 1.03.

    python scripts/bench_overhead.py [MODEL.onnx] [--shape 1x3x224x224] [--rounds 300] [--block 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def reference_onnx(folder: Path) -> Path:
    import torch

    from gap_deploy.exporter import export_onnx, load_model
    from gap_deploy.exporter.model import GapCNN

    torch.manual_seed(0)
    ckpt = folder / "gapcnn.pt"
    torch.save(GapCNN().state_dict(), ckpt)
    return export_onnx(load_model(ckpt), folder / "gapcnn.onnx", dynamic=True).path


def measure(model: Path, shape, rounds: int, block: int) -> dict:
    from gap_deploy import runtime
    from gap_deploy.runtime.backends.onnxrt import OrtRunner

    session = runtime.load(model, "ort-cpu")
    assert isinstance(session.runner, OrtRunner)  # ort-cpu
    bare = session.runner.ort_session
    in_name, out_names = bare.get_inputs()[0].name, [bare.get_outputs()[0].name]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.testing.assert_array_equal(session.run(x), bare.run(out_names, {in_name: x})[0])

    def wrapped():
        session.run(x)

    def plain():
        bare.run(out_names, {in_name: x})

    for fn in (wrapped, plain) * 5:  # warm-up
        fn()
    times = {"wrapped": [], "plain": []}
    for r in range(rounds):
        order = (("wrapped", wrapped), ("plain", plain)) if r % 2 == 0 else (("plain", plain), ("wrapped", wrapped))
        for name, fn in order:
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med_w, med_p = statistics.median(times["wrapped"]), statistics.median(times["plain"])
    # The harness's own work, timed alone (no backend call): what the ratio above should reflect.
    from gap_deploy.runtime.validation import prepare

    checks = []
    for _ in range(2000):
        t0 = time.perf_counter()
        prepare(x, session.input_spec)
        checks.append(time.perf_counter() - t0)
    return {"shape": shape, "calls_each": len(times["plain"]), "session_median_ms": med_w * 1e3,
            "bare_median_ms": med_p * 1e3, "ratio": med_w / med_p,
            "checks_median_us": statistics.median(checks) * 1e6}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="ONNX model (default: a freshly exported reference CNN)")
    parser.add_argument("--shape", default="1x3x224x224")
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--block", type=int, default=1)
    args = parser.parse_args(argv)
    shape = tuple(int(v) for v in args.shape.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or reference_onnx(Path(tmp))
        r = measure(model, shape, args.rounds, args.block)
    print(f"shape {args.shape}: Session.run median {r['session_median_ms']:.3f} ms, bare InferenceSession.run "
          f"median {r['bare_median_ms']:.3f} ms over {r['calls_each']} calls each")
    print(f"overhead ratio (Session / bare): {r['ratio']:.4f}  (target <= 1.03)")
    print(f"input checks alone: {r['checks_median_us']:.1f} us per call "
          f"({r['checks_median_us'] / 1e3 / r['bare_median_ms']:.3%} of the bare call)")
    return 0 if r["ratio"] <= 1.03 else 1


if __name__ == "__main__":
    sys.exit(main())
