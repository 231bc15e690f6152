"""`make demo`: the whole pipeline on the CPU, through the commands a user types.

train (skipped when demo/gapcnn.pt exists) -> gap-export --dynamic, verified -> gap-run on images of
different sizes -> gap-bench against PyTorch at two shapes -> FP16 and INT8 variants -> accuracy per
resolution for each precision -> a summary. Each step's real output is shown; the summary is read from
the JSON files the commands wrote. TensorRT steps need a GPU: see scripts/gpu_check.sh.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from checkout import use_checkout  # noqa: E402

use_checkout()
from gap_deploy.runtime.shapes import format_shape  # noqa: E402

DEMO = ROOT / "demo"
BIN = Path(sys.executable).parent
EVAL_SIZES = (16, 32, 48, 64, 96, 128, 192)
TUNE_SIZES = (16, 24, 32, 40, 48, 64, 80, 96, 128)


def step(title: str, *cmd: str | Path, check: bool = True) -> int:
    shown = " ".join(str(c).replace(str(ROOT) + "/", "") for c in cmd)
    print(f"\n=== {title}\n$ {shown}", flush=True)
    exe = shutil.which(str(cmd[0]), path=str(BIN)) or str(cmd[0])
    code = subprocess.run([exe, *map(str, cmd[1:])], cwd=ROOT).returncode
    if check and code != 0:
        sys.exit(f"demo step failed: {title} (exit {code})")
    return code


def main() -> None:
    started = time.perf_counter()
    DEMO.mkdir(exist_ok=True)
    ckpt, onnx_path = DEMO / "gapcnn.pt", DEMO / "gapcnn.onnx"
    if ckpt.exists():
        print(f"=== Training skipped: {ckpt.relative_to(ROOT)} exists (delete it to retrain)")
    else:
        step("Train the reference GAP CNN on procedural shapes and textures (about a minute)",
             sys.executable, "scripts/train_demo.py", "--out", DEMO)
    step("Export with dynamic batch/height/width, verified against PyTorch",
         "gap-export", ckpt, "--dynamic", "--imgsz", "64", "--class-names", DEMO / "classes.txt",
         "-o", onnx_path, "--json", DEMO / "export.json")
    step("Classify images of different sizes, without PyTorch", "gap-run", onnx_path, DEMO / "samples", "--topk", "2")
    step("Benchmark ONNX Runtime against PyTorch eager on the same inputs",
         "gap-bench", onnx_path, "--shape", "1x3x64x64", "--shape", "1x3x224x224", "--torch", ckpt,
         "--duration", "1.5", "--json", DEMO / "bench.json")
    step("FP16 variant, verified against the FP32 ONNX", "gap-export", ckpt, "--dynamic", "--imgsz", "64",
         "--class-names", DEMO / "classes.txt", "-o", onnx_path, "--precision", "fp16",
         "--json", DEMO / "export_fp16.json")
    step("INT8 (QDQ) variant, calibrated on 128 images, top-1 agreement checked",
         "gap-export", ckpt, "--dynamic", "--imgsz", "64", "--class-names", DEMO / "classes.txt", "-o", onnx_path,
         "--precision", "int8", "--calib", DEMO / "calib", "--min-top1", "0.9", "--json", DEMO / "export_int8.json")
    step("INT8 for the CPU (UINT8 activations, Relu folded, float layers chosen by measurement), timed against FP32",
         "gap-export", ckpt, "--dynamic", "--imgsz", "64", "--class-names", DEMO / "classes.txt", "-o", onnx_path,
         "--precision", "int8", "--int8-layout", "cpu", "--calib", DEMO / "calib", "--min-top1", "0.9",
         "--json", DEMO / "export_int8_cpu.json")
    if not (DEMO / "heldout").is_dir():
        step("Held-out labelled images (one folder per class, drawn at 64 px, never seen in training)",
             sys.executable, "scripts/demo_data.py", DEMO / "heldout")
    step("Accuracy per precision and input size on the held-out images (gap-eval)",
         "gap-eval", f"fp32={onnx_path}", f"fp16={DEMO / 'gapcnn.fp16.onnx'}", f"int8={DEMO / 'gapcnn.int8.onnx'}",
         "--data", DEMO / "heldout", *[arg for s in EVAL_SIZES for arg in ("--imgsz", str(s))],
         "--json", DEMO / "accuracy.json", "--plot", DEMO / "accuracy.png")
    step("Where each artifact departs from PyTorch, layer by layer, named by the PyTorch module (gap-debug)",
         "gap-debug", ckpt, onnx_path, DEMO / "gapcnn.fp16.onnx", DEMO / "gapcnn.int8.onnx", "--imgsz", "64",
         "--images", DEMO / "heldout", "--json", DEMO / "debug.json", "--plot", DEMO / "debug.png")
    edge = {"openvino": DEMO / "openvino", "ncnn": DEMO / "ncnn", "litert": DEMO / "litert"}
    for target, folder in edge.items():
        shutil.rmtree(folder, ignore_errors=True)  # gap-pack writes a new folder, never over an old one
        step(f"{target} bundle, run by its own runtime and checked against the FP32 ONNX before it appears (gap-pack)",
             "gap-pack", onnx_path, "--target", target, "-o", folder,
             *(["--checkpoint", ckpt] if target == "litert" else []))
    step("Every target timed in one run against ONNX Runtime, logits compared (gap-bench --compare)",
         "gap-bench", onnx_path, "--threads", "1", "--shape", "1x3x224x224", "--duration", "1",
         *[arg for folder in edge.values() for arg in ("--compare", folder)], "--json", DEMO / "bench_edge.json")
    shutil.rmtree(DEMO / "deploy", ignore_errors=True)  # --emit writes a new folder, never over an old one
    step("Which size and precision to deploy: the fastest point at >= 75% top-1 (gap-tune)",
         "gap-tune", f"fp32={onnx_path}", f"fp16={DEMO / 'gapcnn.fp16.onnx'}", f"int8={DEMO / 'gapcnn.int8.onnx'}",
         f"int8-cpu={DEMO / 'gapcnn.int8-cpu.onnx'}",
         "--data", DEMO / "heldout", "--imgsz", ",".join(map(str, TUNE_SIZES)), "--min-top1", "0.75",
         "--json", DEMO / "tune.json", "--plot", DEMO / "tune.png", "--emit", DEMO / "deploy")
    summary(time.perf_counter() - started)


def summary(seconds: float) -> None:
    load = lambda name: json.loads((DEMO / name).read_text())  # noqa: E731
    export, bench, acc = load("export.json"), load("bench.json"), load("accuracy.json")
    fp16, int8 = load("export_fp16.json")["precision_variant"], load("export_int8.json")["precision_variant"]
    parity = export["parity"]
    print("\n=== Summary")
    print(f"ONNX {export['output'].replace(str(ROOT) + '/', '')}: input {export['input_dims']}, "
          f"minimum {export['metadata']['gap.min_height']}x{export['metadata']['gap.min_width']}")
    print(f"Parity with PyTorch: {'pass' if parity['passed'] else 'FAIL'} at {len(parity['shapes'])} shapes, "
          f"worst relative error {max(r['rel_err'] for r in parity['shapes']):.1e}")
    for row in (r for r in bench["results"] if r.get("speedup_vs_torch")):
        print(f"Speed at {format_shape(row['shape'])}: ONNX Runtime {row['latency_ms']['median']:.2f} ms "
              f"median, {row['speedup_vs_torch']:.1f}x PyTorch eager")
    print(f"FP16 vs FP32: worst relative error {max(r['rel_err'] for r in fp16['sweep']['shapes']):.1e}")
    real = int8["real_data"]["shapes"][0]
    print(f"INT8 vs FP32 on 128 calibration images: top-1 agreement {real['top1_agreement']:.1%}, "
          f"relative error {real['rel_err']:.2f}")
    for name in ("export_int8.json", "export_int8_cpu.json"):
        variant = load(name)["precision_variant"]
        lat = variant["latency"]
        print(f"INT8 ({variant['int8_layout']} layout) on ort-cpu at {'x'.join(map(str, lat['shape']))}: "
              f"{lat['variant_ms']:.3f} ms against FP32 {lat['fp32_ms']:.3f} ms ({lat['speedup']:.2f}x), top-1 "
              f"agreement {variant['real_data']['shapes'][0]['top1_agreement']:.0%}")
    sizes = acc["sizes"]
    print("Top-1 by input size (gap-eval): " + "  ".join(f"{s}px" for s in sizes))
    for name, row in acc["accuracy"].items():
        print(f"  {name:>5}: " + "  ".join(f"{row[s]['top1']:.0%}".rjust(len(s) + 2) for s in sizes))
    best = max(sizes, key=lambda s: acc["accuracy"]["fp32"][s]["top1"])
    print(f"Best at {best}px (training used 32-96 px); see demo/accuracy.png and "
          "docs/concepts/size-invariance.md on why it falls off.")
    for row in load("bench_edge.json")["results"][1:]:
        print(f"{row['backend']} at {format_shape(row['shape'])}: {row['latency_vs_first']:.2f}x ONNX Runtime's "
              f"latency, logits {'match' if row['parity']['passed'] else 'DIFFER'} (relative error "
              f"{row['parity']['rel_err']:.1e})")
    decision = load("tune.json")["decision"]
    if decision:
        chosen = decision["chosen"]
        print(f"gap-tune, fastest at >= 75% top-1: {chosen['artifact']} on {chosen['backend']} at {chosen['size']}px: "
              f"top-1 {chosen['top1']:.0%} ({chosen['top1_low']:.0%}-{chosen['top1_high']:.0%}), "
              f"{chosen['latency_ms']:.3f} ms; see demo/tune.png and demo/deploy/README.md")
    print(f"Demo finished in {seconds:.0f} s.")


if __name__ == "__main__":
    main()
