"""Benchmark: gap-run and gap-eval over 1,000 to 50,000 images, and INT8 against FP32 on the CPU.

    python scripts/bench_stream.py [MODEL.onnx] [--counts 1000,10000,50000] [--json FILE] [--skip-int8]

MODEL defaults to demo/gapcnn.onnx (run `make demo` first). For each count, a folder of that many images
(1,000 distinct 48x48 PNGs, hard-linked under further names: the same files decode at the same cost) is
classified by `gap-run` and evaluated by `gap-eval`, each as a whole process: wall time, images/s and
peak RSS (the process's own, from wait4). In the same run it measures the two bounds a stream can reach:
decoding alone (core-seconds per image) and inference alone (core-seconds per image on pre-decoded
batches, at the batch size gap-run uses), and reports gap-run's images/s against the CPU-work bound
(cores / (decode + inference core-seconds per image)). Then, unless --skip-int8, the median latency of
INT8 against FP32 on ONNX Runtime's CPU provider at 1x3x224x224 for the model and every family of
tests/support/families.py, in both INT8 layouts (tensorrt and cpu), with top-1 agreement on the calibration data.
Figures are ratios within one run on one machine; quote medians.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from checkout import use_checkout  # noqa: E402

use_checkout()
BIN = Path(sys.executable).parent
UNIQUE = 1000


def make_folder(root: Path, count: int, classes: list[str]) -> Path:
    """``count`` image files in one sub-folder per class (gap-eval's layout; gap-run takes the folders too)."""
    from PIL import Image

    folder = root / f"images_{count}"
    if folder.exists():
        return folder
    unique = root / "unique"
    if not unique.exists():
        unique.mkdir()
        rng = np.random.default_rng(0)
        for i in range(UNIQUE):
            pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(unique / f"{i:04d}.png")
    for c in classes:
        (folder / c).mkdir(parents=True)
    for i in range(count):
        os.link(unique / f"{i % UNIQUE:04d}.png", folder / classes[i % len(classes)] / f"{i:06d}.png")
    return folder


def whole_process(command: list[str]) -> dict:
    """Wall time and peak RSS of one process (its own rusage, from wait4)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    assert process.stderr is not None  # stderr=PIPE
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise RuntimeError(f"{command[0]} exited {code}: {stderr[-2000:]}")
    return {"wall_s": wall, "peak_rss_mb": usage.ru_maxrss / 1024, "cpu_s": usage.ru_utime + usage.ru_stime,
            "summary": next((line for line in stderr.splitlines() if "images/s" in line), "")}


def bounds(model: Path, folder: Path, batch: int = 16, sample: int = 500) -> dict:
    """Core-seconds per image of decoding alone and of inference alone (pre-decoded batches), in this process."""
    from gap_deploy import runtime
    from gap_deploy.runtime.classify import image_loader
    from gap_deploy.runtime.images import collect_images

    files = sorted(p for d in sorted(folder.iterdir()) for p in collect_images([d]))[:sample]

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    with runtime.load(model, "ort-cpu") as session:
        t0 = cpu()
        load = image_loader(session)  # the model's preprocessing contract, as gap-run makes its tensors
        images = [load(p) for p in files]
        decode = (cpu() - t0) / len(files)
        session.run_many(images[:batch], max_batch=batch)  # warm
        t0 = cpu()
        for _ in range(3):
            session.run_many(images, max_batch=batch)
        infer = (cpu() - t0) / (3 * len(files))
    cores = os.cpu_count() or 1
    return {"decode_core_s_per_image": decode, "infer_core_s_per_image": infer, "cores": cores,
            "decode_only_ips": cores / decode, "infer_only_ips": cores / infer,
            "cpu_work_bound_ips": cores / (decode + infer)}


def int8_latency(model_path: Path, calibration: np.ndarray) -> list[dict]:
    """INT8 (both layouts) against FP32 at 1x3x224x224 for the model and every family of tests/support/families.py."""
    import onnx
    import torch

    import tests.support.families as fam
    from gap_deploy.exporter import export_onnx, load_model
    from gap_deploy.exporter.precision import make_variant, measure_latency
    from gap_deploy.runtime.parity import ort_cpu_infer

    rows = []
    with tempfile.TemporaryDirectory(prefix="gap-bench-int8-") as tmp:
        models = {"demo model": onnx.load(str(model_path))}
        for name in fam.FAMILIES:
            torch.manual_seed(0)
            torch.save(getattr(fam, name)().state_dict(), Path(tmp) / f"{name}.pt")
            export_onnx(load_model(Path(tmp) / f"{name}.pt", arch=f"tests.support.families:{name}"),
                        Path(tmp) / f"{name}.onnx", dynamic=True, imgsz=(64, 64), verify=False)
            models[name] = onnx.load(str(Path(tmp) / f"{name}.onnx"))
        for name, fp32 in models.items():
            reference = ort_cpu_infer(fp32)(calibration)
            for layout in ("tensorrt", "cpu"):
                # as gap-export makes them: the float layers by position (tensorrt) or by measurement (cpu)
                int8 = make_variant(fp32, "int8", [tuple(calibration[:1].shape)], calibration=calibration,
                                    int8_layout=layout).model
                agree = float(np.mean(ort_cpu_infer(int8)(calibration).argmax(1) == reference.argmax(1)))
                lat = measure_latency(fp32, int8, (1, 3, 224, 224), seconds=1.5)
                rows.append({"model": name, "layout": layout, "fp32_ms": lat["fp32_ms"], "int8_ms": lat["variant_ms"],
                             "speedup": lat["speedup"], "top1_agreement": agree})
                print(f"  {name:>15} {layout:>8}: FP32 {lat['fp32_ms']:7.3f} ms  INT8 {lat['variant_ms']:7.3f} ms  "
                      f"{lat['speedup']:.2f}x  top-1 agreement {agree:.0%}", flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, default=ROOT / "demo" / "gapcnn.onnx")
    parser.add_argument("--counts", default="1000,10000,50000")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--skip-int8", action="store_true")
    parser.add_argument("--skip-stream", action="store_true", help="only the INT8 latency table")
    parser.add_argument("--work", type=Path, help="folder for the image sets (default: a temporary one)")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"bench_stream: {args.model} does not exist; run `make demo` first or pass a model.", file=sys.stderr)
        return 2
    from gap_deploy import runtime

    with runtime.load(args.model, "ort-cpu") as session:
        classes = list(session.metadata.class_names or [str(i) for i in range(session.metadata.num_classes or 10)])
    counts = [int(c) for c in args.counts.split(",")]
    work = args.work or Path(tempfile.mkdtemp(prefix="gap-bench-stream-"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {"model": str(args.model), "runs": []}
    print(f"images in {work}; model {args.model}", flush=True)
    folders = {} if args.skip_stream else {n: make_folder(work, n, classes) for n in counts}
    counts = [] if args.skip_stream else counts
    b = results["bounds"] = bounds(args.model, folders[counts[0]]) if counts else {}
    if counts:
        print(f"bounds on {b['cores']} cores: decoding alone {b['decode_only_ips']:.0f} images/s, inference alone "
              f"{b['infer_only_ips']:.0f} images/s, CPU-work bound {b['cpu_work_bound_ips']:.0f} images/s", flush=True)
    for n in counts:
        class_folders = [str(d) for d in sorted(folders[n].iterdir())]
        for tool, command in (("gap-run", [str(BIN / "gap-run"), str(args.model), *class_folders]),
                              ("gap-eval", [str(BIN / "gap-eval"), str(args.model), "--data", str(folders[n])])):
            row = whole_process(command)
            row.update(tool=tool, images=n, images_per_s=n / row["wall_s"],
                       share_of_bound=n / row["wall_s"] / b["cpu_work_bound_ips"])
            results["runs"].append(row)
            print(f"{tool:>8} {n:>6} images: {row['wall_s']:7.1f} s  {row['images_per_s']:6.0f} images/s "
                  f"({row['share_of_bound']:.0%} of the CPU-work bound)  peak RSS {row['peak_rss_mb']:6.0f} MB",
                  flush=True)
    for tool in ("gap-run", "gap-eval") if counts else ():
        rows = [r for r in results["runs"] if r["tool"] == tool]
        print(f"{tool}: peak RSS at {rows[-1]['images']} images / at {rows[0]['images']}: "
              f"{rows[-1]['peak_rss_mb'] / rows[0]['peak_rss_mb']:.2f}x")
    if not args.skip_int8:
        import onnx

        from gap_deploy.exporter.precision import load_calibration
        from gap_deploy.runtime.artifact import describe

        calib_dir = args.model.parent / "calib"
        spec = describe(onnx.load(str(args.model)))
        calibration = load_calibration(calib_dir, spec, size=(224, 224))[:32] if calib_dir.is_dir() else \
            np.random.default_rng(0).standard_normal((32, 3, 224, 224)).astype(np.float32)
        print("INT8 against FP32 on ort-cpu at 1x3x224x224 (calibration: "
              f"{'the demo calibration images' if calib_dir.is_dir() else 'random inputs'}):", flush=True)
        results["int8"] = int8_latency(args.model, calibration)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
