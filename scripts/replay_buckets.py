"""Replay a stream through gap-tune's bucket plan and measure it against the prediction, whole process.

    python scripts/replay_buckets.py MODEL.onnx --data val/ --traffic stream/ --imgsz 32,48,64,96 \\
        --buckets 2 --min-top1 0.5 [--threads 1] [--json FILE]

1. gap-tune MODEL --data --imgsz --traffic --buckets --min-top1 --json (its own process): the plan, the
   one-size choice, and their predicted mean latency (each bucket's median at the sweep's batch size, weighted
   by the traffic's share).
2. gap-run MODEL STREAM --format jsonl in its own process three times, in this one run: with the plan's
   `--buckets`, with the one-size choice's `--imgsz`, and at native sizes. Each summary line says how long
   inference took (gap-run's own clock around the model) for how many images; with --batch-size 1 that is the
   per-image latency the plan predicts. Both tools get the same --threads.
3. When STREAM holds one sub-folder per class (named like the model's classes), each image's top-1 is scored
   and compared, bucket by bucket, with the interval gap-tune predicted from the labelled images.

Prints the measured/predicted ratio of each (the issue's acceptance: within +-15%) and the accuracies.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent


def gap(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=3600)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done


def replay(model: str, stream: str, threads: int, batch: int, size_args: list[str]) -> dict:
    """One gap-run over the stream: measured ms per image (inference only), and per-image rows."""
    done = gap("gap-run", model, stream, "-r", "--format", "jsonl", "-k", "1", "--threads", str(threads),
               "--batch-size", str(batch), *size_args)
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    summary = lines[-1]["summary"]
    stats = summary["stats"]
    return {"args": size_args, "ms_per_image": 1000 * stats["infer_s"] / max(stats["images"], 1),
            "wall_s": stats["wall_s"], "images": stats["images"], "rows": lines[:-1]}


def scored(rows: list[dict], stream: Path) -> dict[str, tuple[int, int]]:
    """(right, images) per input size, when the stream's files sit in class folders; empty otherwise."""
    by_size: dict[str, list[int]] = {}
    for row in rows:
        if "error" in row:
            continue
        truth = Path(row["file"]).parent.name
        label = f"{row['size'][0]}" if row["size"][0] == row["size"][1] else "x".join(map(str, row["size"]))
        by_size.setdefault(label, [0, 0])
        by_size[label][0] += row["top"][0]["name"] == truth
        by_size[label][1] += 1
    return {k: (v[0], v[1]) for k, v in by_size.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Replay a stream through gap-tune's bucket plan.")
    parser.add_argument("model")
    parser.add_argument("--data", required=True, help="labelled images for gap-tune (class folders)")
    parser.add_argument("--traffic", required=True, help="the stream: its sizes plan the buckets, then it is replayed")
    parser.add_argument("--imgsz", required=True, help="the sizes gap-tune sweeps")
    parser.add_argument("--buckets", default="2")
    parser.add_argument("--min-top1", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--duration", default="0.5")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="gap-replay-") as tmp:
        tune_json = Path(tmp) / "tune.json"
        gap("gap-tune", args.model, "--data", args.data, "--imgsz", args.imgsz, "--traffic", args.traffic,
            "--buckets", args.buckets, "--min-top1", args.min_top1, "--threads", str(args.threads), "--duration",
            args.duration, "--batch-size", "1", "--json", str(tune_json))
        tune = json.loads(tune_json.read_text())
    plan, single = tune["buckets"]["chosen"], tune["buckets"]["single"]
    sizes = ",".join("x".join(map(str, b["size"])) for b in plan["buckets"])
    one = "x".join(map(str, single["buckets"][0]["size"]))
    runs = {"buckets": replay(args.model, args.traffic, args.threads, 1, ["--buckets", sizes]),
            "one size": replay(args.model, args.traffic, args.threads, 1, ["--imgsz", one]),
            "native": replay(args.model, args.traffic, args.threads, 1, [])}
    predicted = {"buckets": plan["mean_ms"], "one size": single["mean_ms"], "native": None}
    report = {"plan": plan, "single": single, "runs": {}}
    print(f"plan [{sizes}] against one size {one} and native sizes, {runs['buckets']['images']} image(s), "
          f"--threads {args.threads}, batch 1:")
    for name, run in runs.items():
        want = predicted[name]
        ratio = run["ms_per_image"] / want if want else None
        print(f"  {name:>8}: measured {run['ms_per_image']:.3f} ms/image"
              + (f", predicted {want:.3f} ms: {ratio:.2f}x" if ratio else "") + f" ({run['wall_s']:.1f} s wall)")
        report["runs"][name] = {k: v for k, v in run.items() if k != "rows"} | {"predicted_ms": want, "ratio": ratio}
    accuracy = scored(runs["buckets"]["rows"], Path(args.traffic))
    if accuracy and any(Path(r["file"]).parent != Path(args.traffic) for r in runs["buckets"]["rows"]):
        print("  top-1 on the stream, per bucket, against gap-tune's interval from the labelled images:")
        for bucket in plan["buckets"]:
            label = "x".join(map(str, bucket["size"])) if bucket["size"][0] != bucket["size"][1] \
                else str(bucket["size"][0])
            right, n = accuracy.get(label, (0, 0))
            low, high = bucket["top1_interval"]
            inside = n and low <= right / n <= high
            print(f"    {label:>7}: {right}/{n} = {right / max(n, 1):.1%}; predicted {low:.1%}-{high:.1%}"
                  f"{'' if not n else ' (inside)' if inside else ' (OUTSIDE)'}")
        report["accuracy"] = accuracy
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
