"""gap-run's streamed results, whole process: peak memory against the number of images, and how soon the first
result reaches disk.

    python scripts/bench_results_stream.py [MODEL.onnx] [--counts 1000,10000,100000] [--format jsonl] [--json FILE]

MODEL defaults to demo/gapcnn.onnx (run `make demo` first). For each count, a folder of that many small PNGs
(hard links to 64 distinct 32x32 images, so making 100,000 costs seconds) is classified by the gap-run console
script in a process of its own, stdout to a file. Reported per count: the process's peak RSS (wait4's
ru_maxrss), its wall time, and when the first result line was on disk (the file polled every 5 ms), beside when
the process had printed its start line (model loaded, images listed: inference starts right after). The ratios
of the largest count's peak to the others' say whether memory grows with the images; a run of 1,000 ends before
the decoding window and the threads' allocators reach their steady size, so the ratio to 10,000 is the one that
shows growth.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def make_folder(root: Path, count: int) -> Path:
    folder = root / f"n{count}"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sources = []
    for i in range(64):
        path = root / f"src{count}_{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        sources.append(path)
    for i in range(count):
        os.link(sources[i % len(sources)], folder / f"{i:07d}.png")
    return folder


def run(model: Path, folder: Path, fmt: str, out: Path) -> dict:
    """One gap-run process: peak RSS, wall time, first line on disk, start line on stderr (seconds from start)."""
    started = time.perf_counter()
    with open(out, "wb") as sink:
        process = subprocess.Popen([str(BIN / "gap-run"), str(model), str(folder), "--format", fmt, "-k", "1"],
                                   stdout=sink, stderr=subprocess.PIPE)
        assert process.stderr is not None  # stderr=PIPE
        os.set_blocking(process.stderr.fileno(), False)
        first_line = start_line = None
        err = b""
        while process.poll() is None:
            now = time.perf_counter() - started
            if first_line is None and out.stat().st_size > 0:
                first_line = now
            chunk = process.stderr.read() or b""
            err += chunk
            if start_line is None and b"image(s)\n" in err:
                start_line = now
            time.sleep(0.005)
        status = process.returncode
    wall = time.perf_counter() - started
    if first_line is None and out.stat().st_size > 0:
        first_line = wall
    return {"returncode": status, "wall_s": wall, "first_line_s": first_line, "start_line_s": start_line,
            "lines": sum(1 for _ in open(out, "rb"))}


def peak_rss_mb(model: Path, folder: Path, fmt: str, out: Path) -> tuple[float, dict]:
    """The same run under wait4, for the child's own peak RSS (the polling run above cannot reap it itself)."""
    with open(out, "wb") as sink:
        process = subprocess.Popen([str(BIN / "gap-run"), str(model), str(folder), "--format", fmt, "-k", "1"],
                                   stdout=sink, stderr=subprocess.DEVNULL)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_maxrss / 1024, {"returncode": process.returncode}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="gap-run's streamed results: peak memory, first result on disk.")
    parser.add_argument("model", nargs="?", type=Path, default=ROOT / "demo" / "gapcnn.onnx")
    parser.add_argument("--counts", default="1000,10000,100000")
    parser.add_argument("--format", default="jsonl", choices=["jsonl", "csv", "text"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"bench_results_stream: {args.model} does not exist; run `make demo` first or pass a model.",
              file=sys.stderr)
        return 2
    counts = [int(c) for c in args.counts.split(",")]
    results = {"model": str(args.model), "format": args.format, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="gap-bench-results-") as tmp:
        work = Path(tmp)
        for n in counts:
            folder = make_folder(work, n)
            timing = run(args.model, folder, args.format, work / f"out{n}")
            peak, status = peak_rss_mb(args.model, folder, args.format, work / f"peak{n}")
            results["runs"][n] = {**timing, "peak_rss_mb": peak, "peak_run_returncode": status["returncode"]}
            row = results["runs"][n]
            print(f"{n:>7} images: peak RSS {peak:.0f} MB, {row['wall_s']:.1f} s, {row['lines']} lines; start line "
                  f"at {row['start_line_s'] or float('nan'):.2f} s, first result on disk at "
                  f"{row['first_line_s'] or float('nan'):.2f} s", flush=True)
    large = results["runs"][counts[-1]]
    results["peak_ratios"] = {n: large["peak_rss_mb"] / results["runs"][n]["peak_rss_mb"] for n in counts[:-1]}
    for n, ratio in results["peak_ratios"].items():
        print(f"peak RSS {counts[-1]} / {n} images: {ratio:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
