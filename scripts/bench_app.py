"""What the preprocessing inside an app-ready ORT model (gap-pack --app) costs: its latency against the fixed-size
float model plus the same steps in NumPy (the contract's scale and normalization, then a softmax), in plain
onnxruntime, alternating rounds, one thread.

    python scripts/bench_app.py BUNDLE [--rounds 5] [--seconds 1]     # BUNDLE: gap-pack --app (target ort)

Prints the median milliseconds of each and their ratio, for the .ort (what ORT Mobile loads) and the .onnx.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import use_checkout  # noqa: E402

use_checkout()


def timed(fn, seconds: float) -> float:
    for _ in range(20):
        fn()
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return (time.perf_counter() - start) / count * 1e3


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    import numpy as np
    import onnx
    import onnxruntime as ort

    from gap_deploy.exporter.pack import fixed_variant, to_ort
    from gap_deploy.runtime.images import softmax
    from gap_deploy.runtime.metadata import ModelMetadata

    description = json.loads((args.bundle / "model.json").read_text())
    app = description.get("app")
    if description.get("target") != "ort" or not app:
        print(f"error: {args.bundle} is no ORT bundle written with gap-pack --app.", file=sys.stderr)
        return 2
    h, w = app["size"]
    source = onnx.load(str(args.bundle / "model.onnx"))
    contract = ModelMetadata.from_props({p.key: p.value for p in source.metadata_props}).preprocessing((h, w), 3)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    pixels = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        fixed = Path(tmp) / "fixed.onnx"
        onnx.save(fixed_variant(source, (1, 3, h, w)), str(fixed))
        fixed_ort, _ = to_ort(fixed, Path(tmp))
        for form, app_file, float_file in ((".ort", app["ort_file"], fixed_ort), (".onnx", app["file"], fixed)):
            app_session = ort.InferenceSession(str(args.bundle / app_file), options,
                                               providers=["CPUExecutionProvider"])
            float_session = ort.InferenceSession(str(float_file), options, providers=["CPUExecutionProvider"])
            name = float_session.get_inputs()[0].name

            def in_graph(session=app_session):
                session.run(None, {"image": pixels[None]})

            def in_numpy(session=float_session, name=name):
                softmax(np.asarray(session.run(None, {name: contract.from_pixels(pixels)[None]})[0]))
            times: dict[str, list[float]] = {"app model": [], "float model + NumPy": []}
            for _ in range(args.rounds):
                times["app model"].append(timed(in_graph, args.seconds))
                times["float model + NumPy"].append(timed(in_numpy, args.seconds))
            medians = {k: float(np.median(v)) for k, v in times.items()}
            print(f"{form}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in medians.items())
                  + f"; ratio {medians['app model'] / medians['float model + NumPy']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
