"""Ray Data against single-process gap-run on the same folder, in one run: images/s and their ratios.

    python scripts/bench_ray.py [MODEL.onnx] [--images 15000] [--size 128] [--rounds 2]

Makes a folder of PNGs in four sizes (or uses --folder), then alternates, round after round: local
gap-run (runtime.classify, one process), Ray with 1 worker and Ray with 2 workers (half a CPU each, a
local Ray with every CPU of this machine). The Ray figures include reading and writing Parquet; the Ray
cluster's start is paid once before the rounds. Reports median images/s and the ratio to gap-run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from checkout import use_checkout  # noqa: E402

use_checkout()


def make_folder(folder: Path, count: int, side: int) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    sizes = [(side, side), (side, side * 3 // 4), (side * 3 // 4, side), (side // 2, side // 2)]
    for i in range(count):
        h, w = sizes[i % len(sizes)]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, default=ROOT / "demo" / "gapcnn.onnx")
    parser.add_argument("--folder", type=Path, help="images to classify (default: generated)")
    parser.add_argument("--images", type=int, default=15000)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    from gap_deploy import runtime
    from gap_deploy.runtime.batch import BatchJob, connect, run_batch
    from gap_deploy.runtime.classify import classify
    from gap_deploy.runtime.images import collect_images

    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    folder = args.folder
    if folder is None:
        folder = work / "images"
        folder.mkdir()
        make_folder(folder, args.images, args.size)
    files = collect_images([folder])
    ray = connect("auto")
    print(f"{len(files)} images from {folder}; Ray {ray.__version__} with {ray.cluster_resources().get('CPU')} CPUs",
          flush=True)
    times: dict[str, list[float]] = {"gap-run": [], "ray x1": [], "ray x2": []}
    for round_ in range(args.rounds):
        started = time.perf_counter()
        with runtime.load(args.model, "ort-cpu") as session:
            classify(session, files, batch_size=32)
        times["gap-run"].append(time.perf_counter() - started)
        for workers in (1, 2):
            job = BatchJob(args.model, (str(folder),), work / f"out{workers}-{round_}.parquet", backend="ort-cpu",
                           workers=workers, cpus_per_worker=0.5)
            started = time.perf_counter()
            run_batch(job)
            times[f"ray x{workers}"].append(time.perf_counter() - started)
        print(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
    base = len(files) / statistics.median(times["gap-run"])
    print(f"\n{'':>8}  {'images/s':>9}  {'vs gap-run':>10}")
    for name, values in times.items():
        rate = len(files) / statistics.median(values)
        print(f"{name:>8}  {rate:9.1f}  {rate / base:9.2f}x")
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
