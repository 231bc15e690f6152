"""Benchmark: from photo files to the model's input -- --decode fast against exact, threads against processes, and
gap-run against the CPU-work bound.

    python scripts/bench_decode.py [--model demo/gapcnn.onnx] [--per-class 6] [--small 2000] [--json FILE]

1. Photos: the demo's held-out images (make demo) upscaled with bicubic to 4000x3000 JPEGs (quality 90), one folder
   per class. gap-eval --imgsz 224 with --decode exact and with --decode fast, each a whole process: images/s and
   their ratio; then gap-eval --decode both: the top-1 of each, their top-1 agreement and the largest difference in
   the probability given to the true class. gap-run on the same photos, both ways, as whole processes.
2. Small JPEGs: 2,000 files of 500x375 (100 distinct, hard-linked under further names). gap-run --imgsz 224 as a
   whole process (images/s, peak RSS) against the CPU-work bound measured in the same run: cores / (decoding +
   inference core-seconds per image). Peak RSS of gap-run on 500 and on 2,000 of them. Decoding alone on all cores
   with a thread pool and with a process pool (what the stream could use).
Figures are ratios within one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_stream import whole_process  # noqa: E402
from checkout import use_checkout  # noqa: E402

use_checkout()
BIN = Path(sys.executable).parent


def make_photos(heldout: Path, root: Path, per_class: int) -> Path:
    """The held-out images of each class, upscaled to 4000x3000 JPEGs."""
    from PIL import Image

    folder = root / "photos"
    for sub in sorted(p for p in heldout.iterdir() if p.is_dir()):
        (folder / sub.name).mkdir(parents=True)
        for path in sorted(sub.iterdir())[:per_class]:
            with Image.open(path) as image:
                big = image.convert("RGB").resize((4000, 3000), Image.Resampling.BICUBIC)
            big.save(folder / sub.name / (path.stem + ".jpg"), quality=90)
    return folder


def make_small(root: Path, count: int) -> Path:
    from PIL import Image

    from gap_deploy.exporter.preprocess import natural_image

    unique, folder = root / "unique", root / f"small_{count}"
    if folder.exists():
        return folder
    if not unique.exists():
        unique.mkdir()
        rng = __import__("numpy").random.default_rng(0)
        for i in range(100):
            Image.fromarray(natural_image(500, 375, rng)).save(unique / f"{i:03d}.jpg", quality=90)
    folder.mkdir()
    for i in range(count):
        os.link(unique / f"{i % 100:03d}.jpg", folder / f"{i:05d}.jpg")
    return folder


def ips(result: dict, count: int) -> float:
    return count / result["wall_s"]


def decode_pools(model: Path, files: list[Path]) -> dict:
    """Decoding alone (the model's contract at 224), on all cores: a thread pool against a process pool."""
    from gap_deploy import runtime

    with runtime.load(model, "ort-cpu") as session:
        contract = session.metadata.preprocessing((224, 224))
    cores = os.cpu_count() or 1
    out = {}
    for name, pool in (("threads", ThreadPoolExecutor), ("processes", ProcessPoolExecutor)):
        with pool(cores) as workers:
            list(workers.map(contract.load, files[:cores]))  # start the workers
            started = time.perf_counter()
            for _ in workers.map(contract.load, files, chunksize=8 if name == "processes" else 1):
                pass
            out[f"{name}_ips"] = len(files) / (time.perf_counter() - started)
    return out


def cpu_bound(model: Path, files: list[Path], batch: int = 16) -> dict:
    """Core-seconds per image of decoding alone and of inference alone, in this process (bench_stream's bound)."""
    from gap_deploy import runtime
    from gap_deploy.runtime.classify import image_loader
    from gap_deploy.runtime.stream import inference_threads

    def cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    with runtime.load(model, "ort-cpu", threads=inference_threads()) as session:  # as gap-run runs it
        load = image_loader(session, (224, 224))
        t0 = cpu()
        images = [load(p) for p in files]
        decode = (cpu() - t0) / len(files)
        session.run_many(images[:batch], max_batch=batch)
        t0 = cpu()
        session.run_many(images, max_batch=batch)
        infer = (cpu() - t0) / len(files)
    cores = os.cpu_count() or 1
    return {"decode_core_s": decode, "infer_core_s": infer, "cores": cores, "bound_ips": cores / (decode + infer)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "demo" / "gapcnn.onnx")
    parser.add_argument("--heldout", type=Path, default=ROOT / "demo" / "heldout")
    parser.add_argument("--per-class", type=int, default=6)
    parser.add_argument("--small", type=int, default=2000)
    parser.add_argument("--size", default="224", help="--imgsz of the photo runs (the small JPEGs run at 224)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    size = args.size
    if not args.model.exists() or not args.heldout.is_dir():
        print(f"{args.model} or {args.heldout} is missing: run `make demo` first.", file=sys.stderr)
        return 2
    report: dict = {"cores": os.cpu_count()}
    root = Path(tempfile.mkdtemp(prefix="gap-bench-decode-"))
    try:
        photos = make_photos(args.heldout, root, args.per_class)
        count = sum(1 for _ in photos.glob("*/*.jpg"))
        runs = {}
        for decode in ("exact", "fast"):
            runs[decode] = whole_process([str(BIN / "gap-eval"), str(args.model), "--data", str(photos),
                                          "--imgsz", size, "--decode", decode])
            print(f"gap-eval --decode {decode}: {count} photos of 4000x3000 in {runs[decode]['wall_s']:.1f} s = "
                  f"{ips(runs[decode], count):.2f} images/s", flush=True)
        both = root / "both.json"
        whole_process([str(BIN / "gap-eval"), str(args.model), "--data", str(photos), "--imgsz", size,
                       "--decode", "both", "--json", str(both)])
        result = json.loads(both.read_text())
        name = Path(args.model).stem
        pair = f"{name} (exact) vs {name} (fast)"
        photo = {"size": size, "images": count, "exact_ips": ips(runs["exact"], count),
                 "fast_ips": ips(runs["fast"], count),
                 "top1_exact": result["accuracy"][f"{name} (exact)"][size]["top1"],
                 "top1_fast": result["accuracy"][f"{name} (fast)"][size]["top1"],
                 "top1_agreement": result["agreement"][size][pair],
                 "true_class_probability_difference": result["probability_difference"][size][pair]}
        photo["speedup"] = photo["fast_ips"] / photo["exact_ips"]
        folders = [str(p) for p in sorted(photos.iterdir())]
        for decode in ("exact", "fast"):
            run = whole_process([str(BIN / "gap-run"), str(args.model), *folders, "--imgsz", size, "--decode",
                                 decode, "--format", "json"])
            photo[f"gap_run_{decode}_ips"] = ips(run, count)
        photo["gap_run_speedup"] = photo["gap_run_fast_ips"] / photo["gap_run_exact_ips"]
        report["photos"] = photo
        print(f"photos: --decode fast is {photo['speedup']:.1f}x exact in gap-eval ({photo['gap_run_speedup']:.1f}x "
              f"in gap-run); top-1 {photo['top1_exact']:.1%} exact, {photo['top1_fast']:.1%} fast, agreement "
              f"{photo['top1_agreement']:.1%}, true-class probability differs by "
              f"{photo['true_class_probability_difference']['max']:.3g} at most", flush=True)
        shutil.rmtree(photos)

        small = make_small(root, args.small)
        files = sorted(small.iterdir())
        bound = cpu_bound(args.model, files[:500])
        run = whole_process([str(BIN / "gap-run"), str(args.model), str(small), "--imgsz", "224", "--format", "json"])
        fewer = make_small(root, 500)
        run_500 = whole_process([str(BIN / "gap-run"), str(args.model), str(fewer), "--imgsz", "224",
                                 "--format", "json"])
        pools = decode_pools(args.model, files[:1000])
        small_report = {"images": len(files), "gap_run_ips": ips(run, len(files)), **bound,
                        "fraction_of_bound": ips(run, len(files)) / bound["bound_ips"],
                        "peak_rss_mb_500": run_500["peak_rss_mb"], "peak_rss_mb": run["peak_rss_mb"], **pools}
        report["small_jpegs"] = small_report
        print(f"{len(files)} JPEGs of 500x375: gap-run {small_report['gap_run_ips']:.1f} images/s, CPU-work bound "
              f"{bound['bound_ips']:.1f} (decode {bound['decode_core_s'] * 1e3:.2f} + inference "
              f"{bound['infer_core_s'] * 1e3:.2f} core-ms per image on {bound['cores']} cores): "
              f"{small_report['fraction_of_bound']:.0%} of the bound; peak RSS {run_500['peak_rss_mb']:.0f} MB at 500 "
              f"images, {run['peak_rss_mb']:.0f} MB at {len(files)}; decoding alone {pools['threads_ips']:.0f} "
              f"images/s on threads, {pools['processes_ips']:.0f} on processes", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
