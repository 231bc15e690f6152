"""INT8 against FP32, per model, where each artifact runs: ONNX Runtime (gap-export's CPU-layout INT8 ONNX, in a
plain ``onnxruntime.InferenceSession`` and in gap-deploy's session) and OpenVINO (gap-pack's NNCF INT8 IR against
the FP32 IR), with top-1 agreement with FP32 on held-out images.

The five sessions of a model are timed in turns (A B C D E A B ...) in one process, 1 thread each, at 1x3x224x224,
so a drifting machine affects them alike; each speed-up is the median of the per-turn ratios against the FP32 model
of the same runtime. Calibration (64 images) and held-out images (200) are the demo's procedural images at 224,
from different seeds, normalized as the models expect.

    python scripts/bench_int8.py demo=demo/gapcnn.onnx resnet18=tv/resnet18.onnx --json int8.json
    .venv-tv/bin/python scripts/bench_int8.py --torchvision-onnx tv/   # ResNet-18, MobileNetV3-Small (random weights)
    python scripts/bench_int8.py --families-onnx fam/                  # ResNetDish, MobileNetV3ish (random weights)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPE = (1, 3, 224, 224)


def images(n: int, seed: int) -> np.ndarray:
    from demo_data import make_batch, normalize

    batch, _ = make_batch(n, SHAPE[2], SHAPE[3], np.random.default_rng(seed))
    return normalize(batch)


def export_torchvision(out: Path) -> None:
    """ResNet-18 and MobileNetV3-Small from torchvision (random weights), exported as gap-export does."""
    import importlib

    import torch

    from gap_deploy.exporter import export_onnx
    from gap_deploy.exporter.checkpoint import from_module

    out.mkdir(parents=True, exist_ok=True)
    for name in ("resnet18", "mobilenet_v3_small"):
        torch.manual_seed(0)
        model = getattr(importlib.import_module("torchvision.models"), name)(weights=None)
        export_onnx(from_module(model, name=name), out / f"{name}.onnx", dynamic=True, imgsz=(224, 224))
        print(f"wrote {out / f'{name}.onnx'}")


def export_families(out: Path) -> None:
    import torch

    from gap_deploy.exporter import export_onnx
    from gap_deploy.exporter.checkpoint import from_module
    from tests.support import families

    out.mkdir(parents=True, exist_ok=True)
    for name in ("ResNetDish", "MobileNetV3ish"):
        torch.manual_seed(0)
        export_onnx(from_module(getattr(families, name)()), out / f"{name}.onnx", dynamic=True, imgsz=(224, 224))
        print(f"wrote {out / f'{name}.onnx'}")


def measure(name: str, path: Path, calibration: np.ndarray, held_out: np.ndarray, seconds: float) -> dict:
    import onnx
    import onnxruntime as ort
    import openvino as ov

    from gap_deploy.exporter import ov_int8
    from gap_deploy.exporter.precision import in_turns, make_variant, paired_speedup
    from gap_deploy.runtime.backends.onnxrt import cpu_session
    from gap_deploy.runtime.parity import INT8

    started = time.perf_counter()
    fp32 = onnx.load(str(path))
    variant = make_variant(fp32, "int8", [SHAPE], calibration=calibration, tolerance=INT8, int8_layout="cpu")
    int8 = variant.model
    ort_s = time.perf_counter() - started
    started = time.perf_counter()
    ov_fp32 = ov.convert_model(str(path))
    quantized = ov_int8.quantize(ov, ov_fp32, calibration, min_top1=0.9)
    ov_s = time.perf_counter() - started

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    config = {"INFERENCE_NUM_THREADS": 1, "INFERENCE_PRECISION_HINT": "f32"}
    core = ov.Core()
    runs = {
        "ort_fp32": cpu_session(fp32.SerializeToString(), threads=1),
        "ort_int8_plain": ort.InferenceSession(int8.SerializeToString(), options, providers=["CPUExecutionProvider"]),
        "ort_int8_session": cpu_session(int8.SerializeToString(), threads=1),
        "ov_fp32": core.compile_model(ov_fp32, "CPU", config),
        "ov_int8": core.compile_model(quantized.model, "CPU", config),
    }
    input_name = runs["ort_fp32"].get_inputs()[0].name

    def call(key, x):
        run = runs[key]
        return run.run(None, {input_name: x})[0] if key.startswith("ort") else run(x)[0]

    top1 = {key: np.asarray([int(np.argmax(call(key, held_out[i:i + 1]))) for i in range(len(held_out))])
            for key in runs}
    x = held_out[:1]
    timed = in_turns([lambda key=key: call(key, x) for key in runs], seconds, min_turns=20)
    samples = dict(zip(runs, timed))

    def ratio(reference, key):
        return paired_speedup(samples[reference], samples[key])

    return {"model": name, "turns": len(samples["ov_int8"]),
            "ms": {key: float(np.median(v)) for key, v in samples.items()},
            "speedup": {"ort_int8_plain": ratio("ort_fp32", "ort_int8_plain"),
                        "ort_int8_session": ratio("ort_fp32", "ort_int8_session"),
                        "ov_int8": ratio("ov_fp32", "ov_int8"), "ov_int8_vs_ort_fp32": ratio("ort_fp32", "ov_int8")},
            "agreement": {"ort_int8": float(np.mean(top1["ort_int8_plain"] == top1["ort_fp32"])),
                          "ort_int8_session_equals_plain": bool(np.all(top1["ort_int8_plain"] ==
                                                                       top1["ort_int8_session"])),
                          "ov_int8": float(np.mean(top1["ov_int8"] == top1["ov_fp32"]))},
            "held_out": len(held_out), "calibration": len(calibration),
            "ov_fp32_layers": list(quantized.fp32_layers), "ov_mode": quantized.mode,
            "ort_fp32_layers": list(variant.fp32_layers),
            "quantize_s": {"ort": ort_s, "openvino": ov_s}}


def row(r: dict) -> str:
    s, a, ms = r["speedup"], r["agreement"], r["ms"]
    return (f"| {r['model']} | {ms['ort_fp32']:.2f} | {s['ort_int8_plain']:.2f}x | {s['ort_int8_session']:.2f}x | "
            f"{a['ort_int8']:.1%} | {ms['ov_fp32']:.2f} | {s['ov_int8']:.2f}x "
            f"({s['ov_int8_vs_ort_fp32']:.2f}x ORT FP32) | {a['ov_int8']:.1%} |")


HEADER = ("| model | ORT FP32 ms | ORT INT8, plain onnxruntime | ORT INT8, gap-deploy's session | top-1 agr. | "
          "OpenVINO FP32 ms | OpenVINO INT8 (NNCF) | top-1 agr. |\n| --- | --- | --- | --- | --- | --- | --- | --- |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("models", nargs="*", metavar="NAME=FP32.onnx")
    parser.add_argument("--seconds", type=float, default=20.0, help="timing turns per model (default 20 s)")
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--torchvision-onnx", type=Path, metavar="DIR")
    parser.add_argument("--families-onnx", type=Path, metavar="DIR")
    args = parser.parse_args(argv)
    if args.torchvision_onnx:
        export_torchvision(args.torchvision_onnx)
    if args.families_onnx:
        export_families(args.families_onnx)
    if not args.models:
        return 0
    from gap_deploy.runtime.backends.openvino import no_telemetry

    no_telemetry()
    calibration, held_out = images(64, 1), images(args.held_out, 2)
    results = []
    print(HEADER, flush=True)
    for item in args.models:
        name, _, path = item.partition("=")
        results.append(measure(name, Path(path), calibration, held_out, args.seconds))
        print(row(results[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
