"""Replay a stream through gap-tune's bucket plan and measure it against the prediction, whole process.

    python scripts/replay_buckets.py MODEL.onnx --data val/ --traffic stream/ --imgsz 32,48,64,96 \\
        --buckets 2 --min-top1 0.5 [--threads 1] [--json FILE]

1. gap-tune MODEL --data --imgsz --traffic --buckets --min-top1 --json (its own process): the plan, the
   one-size choice, and their predicted mean latency: the serving prediction (each bucket's time per image
   through gap-run's own pipeline on a sample of the traffic, weighted by the traffic's share), beside the
   model's medians alone.
2. gap-run MODEL STREAM --format jsonl in its own process, in this one run: with the plan's `--buckets`, with the
   one-size choice's `--imgsz`, and at native sizes, alternating, --repeats times each (median pass). Each
   summary line says how long inference took (gap-run's own clock around the model) for how many images; with
   --batch-size 1 that is the per-image latency the plan predicts. Both tools get the same --threads.
3. When STREAM holds one sub-folder per class (named like the model's classes), each image's top-1 is scored
   and compared, bucket by bucket, with the interval gap-tune predicted: the labelled images reweighted to the
   traffic's sizes; "inside" when the replay's top-1 is in it, "consistent" when the replay's own Wilson
   interval overlaps it (a replay of a hundred images is itself known only to about +-10%).

Prints the measured/predicted ratio of each (the issue's acceptance: within +-15%) and the accuracies.

`--make-data DIR` first writes a reproducible case from the demo's procedural classes (scripts/demo_data.py):
DIR/val, labelled images of sides uniform in 40-320 px; DIR/plan and DIR/stream, two independent draws of a
skewed traffic unlike it (70% small images around 48 px, 30% large ones around 224 px, aspect 3:4 to 4:3). gap-tune
plans from DIR/plan's headers; DIR/stream, never seen by gap-tune, is replayed. Then --data, --traffic and the
stream default to those folders.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from checkout import use_checkout  # noqa: E402

use_checkout()
from gap_deploy.runtime.intervals import wilson  # noqa: E402


def write_case(root: Path, seed: int = 7) -> None:
    """The --make-data case: a labelled set and two draws of one skewed stream, in class folders."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from demo_data import CLASSES, make_image

    rng = np.random.default_rng(seed)

    def write(folder: Path, count: int, side) -> None:
        for i in range(count):
            label = i % len(CLASSES)
            short = int(side())
            aspect = rng.uniform(0.75, 4 / 3)
            h, w = (short, round(short * aspect)) if aspect >= 1 else (round(short / aspect), short)
            pixels = make_image(label, h, w, rng)
            out = folder / CLASSES[label]
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray((pixels.transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(out / f"{i:04d}.png")

    def skewed():
        small = rng.random() < 0.7
        return np.clip(rng.normal(48, 8) if small else rng.normal(224, 40), 24, 400)

    write(root / "val", 400, lambda: rng.uniform(40, 320))
    write(root / "plan", 300, skewed)
    write(root / "stream", 300, skewed)


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
    parser.add_argument("--data", help="labelled images for gap-tune (class folders)")
    parser.add_argument("--traffic", help="images whose sizes plan the buckets")
    parser.add_argument("--stream", help="the images replayed (default: --traffic); in class folders to score them")
    parser.add_argument("--make-data", type=Path, metavar="DIR", help="write the skewed demo case first and use it")
    parser.add_argument("--imgsz", required=True, help="the sizes gap-tune sweeps")
    parser.add_argument("--buckets", default="2")
    parser.add_argument("--min-top1", default="0")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--duration", default="0.5")
    parser.add_argument("--repeats", type=int, default=3, help="gap-run passes per configuration, alternating; "
                        "the median pass is compared")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.make_data:
        if args.make_data and not (args.make_data / "stream").is_dir():
            write_case(args.make_data)
        args.data = args.data or str(args.make_data / "val")
        args.traffic = args.traffic or str(args.make_data / "plan")
        args.stream = args.stream or str(args.make_data / "stream")
    if not (args.data and args.traffic):
        parser.error("give --data and --traffic, or --make-data DIR")
    args.stream = args.stream or args.traffic
    with tempfile.TemporaryDirectory(prefix="gap-replay-") as tmp:
        tune_json = Path(tmp) / "tune.json"
        gap("gap-tune", args.model, "--data", args.data, "--imgsz", args.imgsz, "--traffic", args.traffic,
            "--buckets", args.buckets, "--min-top1", args.min_top1, "--threads", str(args.threads), "--duration",
            args.duration, "--batch-size", "1", "--json", str(tune_json))
        tune = json.loads(tune_json.read_text())
    plan, single = tune["buckets"]["chosen"], tune["buckets"]["single"]
    sizes = ",".join("x".join(map(str, b["size"])) for b in plan["buckets"])
    one = "x".join(map(str, single["buckets"][0]["size"]))
    configs = {"buckets": ["--buckets", sizes], "one size": ["--imgsz", one], "native": []}
    passes: dict[str, list[dict]] = {name: [] for name in configs}
    for _ in range(args.repeats):  # alternating, so a slow spell of the machine falls on all three alike
        for name, size_args in configs.items():
            passes[name].append(replay(args.model, args.stream, args.threads, 1, size_args))
    runs = {}
    for name, done in passes.items():
        middle = sorted(done, key=lambda r: r["ms_per_image"])[len(done) // 2]
        runs[name] = middle | {"passes_ms": [r["ms_per_image"] for r in done]}
    # the serving prediction (gap-run's pipeline on a traffic sample at each size) where gap-tune measured it,
    # else the model's medians alone
    predicted = {"buckets": plan["stream_mean_ms"] or plan["mean_ms"],
                 "one size": single["stream_mean_ms"] or single["mean_ms"], "native": None}
    model_only = {"buckets": plan["mean_ms"], "one size": single["mean_ms"], "native": None}
    report = {"plan": plan, "single": single, "runs": {}}
    print(f"plan [{sizes}] against one size {one} and native sizes, {runs['buckets']['images']} image(s), "
          f"--threads {args.threads}, batch 1:")
    for name, run in runs.items():
        want = predicted[name]
        ratio = run["ms_per_image"] / want if want else None
        alone = model_only[name]
        print(f"  {name:>8}: measured {run['ms_per_image']:.3f} ms/image"
              + (f", predicted {want:.3f} ms: {ratio:.2f}x (the model's medians alone: {alone:.3f} ms, "
                 f"{run['ms_per_image'] / alone:.2f}x)" if ratio and alone else "")
              + f" ({run['wall_s']:.1f} s wall; passes {', '.join(f'{m:.3f}' for m in run['passes_ms'])})")
        report["runs"][name] = {k: v for k, v in run.items() if k != "rows"} | {
            "predicted_ms": want, "ratio": ratio, "model_only_ms": alone}
    accuracy = scored(runs["buckets"]["rows"], Path(args.stream))
    if accuracy and any(Path(r["file"]).parent != Path(args.stream) for r in runs["buckets"]["rows"]):
        print("  top-1 on the stream, per bucket, against gap-tune's interval from the labelled images:")
        for bucket in plan["buckets"]:
            label = "x".join(map(str, bucket["size"])) if bucket["size"][0] != bucket["size"][1] \
                else str(bucket["size"][0])
            right, n = accuracy.get(label, (0, 0))
            low, high = bucket["top1_on_traffic_interval"] or bucket["top1_interval"]
            mine = wilson(right, n)
            inside = n and low <= right / n <= high
            overlap = n and mine[0] <= high and low <= mine[1]
            print(f"    {label:>7}: {right}/{n} = {right / max(n, 1):.1%} ({mine[0]:.1%}-{mine[1]:.1%}); predicted "
                  f"{low:.1%}-{high:.1%} on the traffic's sizes (labelled images as routed: "
                  f"{bucket['top1_interval'][0]:.1%}-{bucket['top1_interval'][1]:.1%})"
                  + ("" if not n else " inside" if inside else " consistent (the intervals overlap)" if overlap
                     else " OUTSIDE"))
        report["accuracy"] = accuracy
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
