"""Prove the GPU path on a machine with an NVIDIA GPU, the full TensorRT, cuda-python and PyTorch CUDA.

    pip install -e '.[gpu-cu13,test]'    (or gpu-cu12,test; never together with the [cpu] extra)
    scripts/gpu_check.sh [CHECKPOINT] [--json FILE] [--out DIR]
    scripts/gpu_check.sh --cuda-only [--json FILE]   (a GPU with PyTorch CUDA, CuPy and cuda-bindings but no
                                                       TensorRT: scripts/gpu_check_cuda.py)

Every step must pass; the exit code is 0 only then. Steps: FP32, FP16 and INT8 engines (INT8 calibrated
on the demo's calibration images), each checked against ONNX Runtime (CPU) and PyTorch on the GPU (TF32
off) at the profile's min/opt/max and at odd sizes, and by top-1 on held-out images; a two-profile engine
with switches between them; 8 threads on one engine and on two engines at once against serial results; a
version-compatible engine run in a process that has only tensorrt_lean; CUDA-graph replay against normal
execution; ort-cuda and ort-trt sessions judged by their GPU tolerances against ONNX Runtime CPU (the second
ort-trt start must reuse the engine cache, with both start times); gap-run on real images; gap-bench of the
FP16 engine against PyTorch CUDA with H2D/compute/D2H/enqueue. One summary table at the end; --json for
machines.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from checkout import use_checkout  # noqa: E402

use_checkout()
from gap_deploy.runtime.shapes import format_shape  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
from gpu_check_cuda import Steps, missing_modules, torch_cuda_problem  # noqa: E402

PROFILE = ((1, 3, 4, 4), (1, 3, 64, 64), (8, 3, 512, 512))
ODD_SHAPES = [(1, 3, 37, 53), (3, 3, 61, 45), (1, 3, 5, 11), (2, 3, 224, 160)]
#: Top-1 agreement with PyTorch each engine must reach on 24 held-out images, never used for calibration
#: (random inputs nearly tie on a trained model, so they are judged by the GPU tolerances of runtime/parity.py)
TOP1_FLOOR = {"fp32": 0.95, "fp16": 0.95, "int8": 0.85}
REAL_SHAPES = [(8, 3, 64, 64), (8, 3, 37, 53), (8, 3, 96, 128)]


def preflight() -> str | None:
    """None when this machine can run the check, else what is missing."""
    missing = missing_modules({"tensorrt": "tensorrt", "torch": "torch", "onnxruntime": "onnxruntime",
                               "cuda.bindings.runtime": "cuda-python"})
    if missing:
        return f"missing {', '.join(missing)} (pip install -e '.[gpu-cu13,test]', or gpu-cu12,test)"
    from gap_deploy.runtime.backends.trt import trt_works

    works, why = trt_works()
    if not works:
        return f"no usable GPU: {why}"
    return torch_cuda_problem()


class Check(Steps):
    def __init__(self, out: Path):
        super().__init__()
        self.out = out

    def summary(self) -> str:
        width = max(len(r["step"]) for r in self.rows)
        lines = [f"{'step':<{width}}  result  seconds  detail", "-" * (width + 40)]
        lines += [f"{r['step']:<{width}}  {'pass' if r['passed'] else 'FAIL':<6}  {r['seconds']:7.1f}  {r['detail']}"
                  for r in self.rows]
        return "\n".join(lines)


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """(max abs, relative ||a-b||/||b||, top-1 agreement) of candidate ``a`` against reference ``b``."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    rel = float(np.linalg.norm(a64 - b64) / max(np.linalg.norm(b64), 1e-30))
    return float(np.max(np.abs(a64 - b64))), rel, float(np.mean(a.argmax(1) == b.argmax(1)))


def console(name: str) -> list[str]:
    """The command line of a gap-deploy console script: the installed one, or (a plain checkout) the same
    entry point through scripts/checkout.py."""
    script = Path(sys.executable).parent / name
    if script.is_file():
        return [str(script)]
    module = {"gap-run": "gap_deploy.runtime.cli.run", "gap-bench": "gap_deploy.runtime.cli.bench"}[name]
    return [sys.executable, "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'scripts')!r}); "
            f"from checkout import use_checkout; use_checkout(); sys.argv[0] = {name!r}; "
            f"from {module} import main; main()"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("checkpoint", nargs="?", type=Path, default=ROOT / "demo" / "gapcnn.pt")
    parser.add_argument("--out", type=Path, default=ROOT / "gpu_check")
    parser.add_argument("--json", type=Path, help="write the summary as JSON")
    parser.add_argument("--cuda-only", action="store_true",
                        help="the CUDA proof for a GPU machine without TensorRT (scripts/gpu_check_cuda.py)")
    args = parser.parse_args(argv)
    if args.cuda_only:
        sys.path.insert(0, str(ROOT / "scripts"))
        from gpu_check_cuda import main as cuda_only

        return cuda_only(["--json", str(args.json)] if args.json else [])

    problem = preflight()
    if problem:
        print(f"gpu_check: needs an NVIDIA GPU and TensorRT: {problem}.", file=sys.stderr)
        return 2

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out)
    steps = TrtSteps(out, args.checkpoint, args.checkpoint.parent)
    if check.step("export and PyTorch CUDA reference", steps.prepare):
        for precision in ("fp32", "fp16", "int8"):
            check.step(f"{precision} engine vs ONNX Runtime and PyTorch", steps.engine_step(precision))
        check.step("two profiles with switches", steps.two_profiles)
        if "fp16" in steps.state:
            check.step("8 threads on one engine", steps.threads)
            check.step("CUDA-graph replay = normal execution", steps.graphs)
            check.step("gap-run on real images", steps.gap_run)
            check.step("gap-bench FP16 engine vs PyTorch CUDA", steps.bench)
        check.step("version-compatible engine on tensorrt_lean alone", steps.lean)
        check.step("ort-cuda and ort-trt sessions (engine cache reused)", steps.ort_sessions)
    print("\n=== gpu_check summary\n" + check.summary())
    passed = all(r["passed"] for r in check.rows)
    if args.json:
        args.json.write_text(json.dumps({"passed": passed, "steps": check.rows}, indent=2) + "\n")
    return 0 if passed else 1


class TrtSteps:
    """The TensorRT steps of the check, each returning what it measured or raising AssertionError. ``state``
    holds what one step leaves for the next (the PyTorch reference, the held-out folder, the engines)."""

    def __init__(self, out: Path, ckpt: Path, data: Path):
        self.out, self.ckpt, self.data = out, ckpt, data
        self.onnx_path = out / "model.onnx"
        self.state: dict = {}
        self.exact: dict[int, int] = {}

    def prepare(self) -> str:
        from gap_deploy.exporter.reference import torch_reference

        if not self.ckpt.exists():  # the trained demo model: the INT8 gate is judged on real images
            subprocess.run([sys.executable, str(ROOT / "scripts" / "train_demo.py"), "--out", str(self.out)],
                           check=True)
            self.ckpt, self.data = self.out / "gapcnn.pt", self.out
        subprocess.run([str(Path(sys.executable).parent / "gap-export"), str(self.ckpt), "--dynamic", "--imgsz", "64",
                        "-o", str(self.onnx_path)], check=True)
        # TF32 off: the reference computes in FP32
        self.state["torch"], info = torch_reference(self.ckpt, device="cuda")
        sys.path.insert(0, str(ROOT / "scripts"))
        from demo_data import write_labelled_folder

        self.state["heldout"] = self.out / "heldout"  # drawn with the evaluation seed: never trained or calibrated on
        write_labelled_folder(self.state["heldout"], per_class=4)
        return f"{self.ckpt} exported; PyTorch {info['torch']} on {info['torch_device']} (TF32 {info['torch_tf32']})"

    def engine_step(self, precision: str) -> Callable[[], str]:
        from gap_deploy import runtime
        from gap_deploy.exporter.builder import BuildConfig, Profile, build_with_precision
        from gap_deploy.exporter.precision import VariantOptions
        from gap_deploy.runtime.parity import tolerance_for

        def work() -> str:
            variant = None if precision == "fp32" else VariantOptions(
                precision, calib=self.data / "calib" if precision == "int8" else None, calib_size=(64, 64))
            result = build_with_precision(self.onnx_path, self.out / f"model.{precision}.plan", variant=variant,
                                          config=BuildConfig(profiles=(Profile(*PROFILE),),
                                                             timing_cache=self.out / "timing.cache"))
            built = result.build.manifest.precision
            if built != precision:
                raise AssertionError(f"{precision} was asked, the engine's layers run {built}")
            parity = result.engine_parity
            if parity is None or not parity.passed:
                raise AssertionError("engine vs ONNX Runtime:\n" + (parity.format_table() if parity else "not run"))
            tol = tolerance_for(built, "trt")
            worst, agree, total = 0.0, 0, 0
            with runtime.load(result.build.plan, trust_engine=True) as engine:
                for i, shape in enumerate([*PROFILE, *ODD_SHAPES]):  # min/opt/max and odd sizes, random inputs
                    x = np.random.default_rng(i).standard_normal(shape).astype(np.float32)
                    max_abs, rel, _ = compare(engine.run(x), self.state["torch"](x))
                    if not (rel <= tol.rtol and max_abs <= tol.atol):
                        raise AssertionError(f"{shape}: max abs {max_abs:.3g}, rel {rel:.3g} against PyTorch CUDA "
                                             f"(tolerance {tol})")
                    worst = max(worst, rel)
                for shape in REAL_SHAPES:  # held-out real images: top-1 means something there
                    x = heldout_batch(self.state["heldout"], shape)
                    got, ref = engine.run(x), self.state["torch"](x)
                    agree += int(np.sum(got.argmax(1) == ref.argmax(1)))
                    total += len(x)
            if agree < TOP1_FLOOR[precision] * total:
                raise AssertionError(f"top-1 agrees with PyTorch on {agree}/{total} real images, below "
                                     f"{TOP1_FLOOR[precision]:.0%}")
            self.state[precision] = result.build.plan
            return (f"built {built}, {result.build.layer_precisions}; vs PyTorch CUDA worst rel {worst:.2e}, "
                    f"top-1 {agree}/{total} real images")
        return work

    def two_profiles(self) -> str:
        from gap_deploy import runtime
        from gap_deploy.exporter.builder import BuildConfig, Profile, build_with_precision
        from gap_deploy.runtime.parity import tolerance_for

        profiles = (Profile((1, 3, 4, 4), (1, 3, 32, 32), (4, 3, 64, 64)),
                    Profile((1, 3, 65, 65), (1, 3, 128, 128), (2, 3, 256, 256)))
        result = build_with_precision(self.onnx_path, self.out / "model.2p.plan", config=BuildConfig(
            profiles=profiles, timing_cache=self.out / "timing.cache"))
        tol = tolerance_for("fp32", "trt")
        with runtime.load(result.build.plan, trust_engine=True) as engine, \
                runtime.load(self.onnx_path, "ort-cpu") as cpu:
            for i, shape in enumerate([(1, 3, 16, 16), (2, 3, 200, 100), (4, 3, 64, 33), (1, 3, 65, 65)] * 2):
                x = np.random.default_rng(i).standard_normal(shape).astype(np.float32)
                _, rel, _ = compare(engine.run(x), cpu.run(x))
                if rel > tol.rtol:
                    raise AssertionError(f"{shape} after a profile switch: rel {rel:.3g}")
        return "8 runs alternating between 2 profiles match ONNX Runtime"

    def threads(self) -> str:
        from gap_deploy import runtime
        from gap_deploy.runtime.bench import replay_agrees

        inputs = [np.random.default_rng(i).standard_normal((1 + i % 3, 3, 8 + i % 7, 9 + i % 5)).astype(np.float32)
                  for i in range(64)]
        plan = self.state["fp16"]  # built by this check moments ago: trusted without a signature
        with runtime.load(plan, trust_engine=True) as engine, runtime.load(plan, trust_engine=True) as other:
            serial = [engine.run(x) for x in inputs]
            for sessions in ((engine,) * 8, (engine, other) * 4):  # one shared runner; two runners at once
                results: list = [None] * 64

                def work(k: int, session, results=results) -> None:
                    for i in range(k, 64, 8):
                        results[i] = session.run(inputs[i])

                workers = [threading.Thread(target=work, args=(k, s)) for k, s in enumerate(sessions)]
                [w.start() for w in workers]
                [w.join() for w in workers]
                # TensorRT promises no bitwise run-to-run equality: held to the engine's GPU tolerance, and the
                # exact count is reported (a mix-up between threads gives other images' logits, far beyond it)
                bad = [i for i in range(64) if results[i] is None
                       or not replay_agrees(float(np.max(np.abs(results[i] - serial[i]))), serial[i], "fp16", "trt")]
                self.exact[len(set(map(id, sessions)))] = sum(
                    results[i] is not None and np.array_equal(results[i], serial[i]) for i in range(64))
                if bad:
                    raise AssertionError(f"{len(bad)} of 64 results on {len(set(map(id, sessions)))} engine(s) "
                                         "differ from serial ones beyond the FP16 GPU tolerance")
        exact = self.exact
        return (f"64 inputs on 8 threads equal serial results within the FP16 GPU tolerance, on one engine and on two "
                f"at once (bitwise equal: {exact[1]}/64 and {exact[2]}/64)")

    def lean(self) -> str:
        from gap_deploy import runtime
        from gap_deploy.exporter.builder import BuildConfig, Profile, build_with_precision
        from gap_deploy.exporter.precision import VariantOptions

        plan = self.out / "model.vc.plan"
        build_with_precision(self.onnx_path, plan, variant=VariantOptions("fp16", calib_size=(64, 64)),
                             config=BuildConfig(profiles=(Profile(*PROFILE),), version_compatible=True))
        x_path, ref_path = self.out / "lean_x.npy", self.out / "lean_ref.npy"
        x = np.random.default_rng(7).standard_normal((2, 3, 37, 53)).astype(np.float32)
        np.save(x_path, x)
        with runtime.load(self.onnx_path, "ort-cpu") as cpu:
            np.save(ref_path, cpu.run(x))
        code = ("import sys, numpy as np; sys.modules['tensorrt'] = None\n"  # only tensorrt_lean may load
                f"sys.path.insert(0, {str(ROOT / 'scripts')!r}); from checkout import use_checkout; use_checkout()\n"
                "from gap_deploy import runtime\n"
                f"s = runtime.load({str(plan)!r}, trust_engine=True)\n"
                "assert 'tensorrt_lean' in s.versions['tensorrt'], s.versions\n"
                f"got, ref = s.run(np.load({str(x_path)!r})), np.load({str(ref_path)!r})\n"
                "rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)\n"
                "print(f'lean runtime rel err {rel:.2e}'); sys.exit(0 if rel < 5e-3 else 1)\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            raise AssertionError(f"lean run failed: {done.stdout}{done.stderr}")
        return done.stdout.strip() + " (process without the full tensorrt)"

    def graphs(self) -> str:
        from gap_deploy import runtime
        from gap_deploy.runtime.bench import replay_agrees

        diffs: list = []
        with runtime.load(self.state["fp16"], trust_engine=True) as engine:
            for i, shape in enumerate([(1, 3, 64, 64), (8, 3, 128, 96), (1, 3, 4, 4)]):
                x = np.random.default_rng(i).standard_normal(shape).astype(np.float32)
                diff = engine.check_cuda_graph(x)
                diffs.append(diff)
                if diff is None or not replay_agrees(diff, engine.run(x), "fp16", "trt"):
                    raise AssertionError(f"{shape}: replay differs from normal execution by {diff}")
        return f"replay equals normal execution within the FP16 GPU tolerance at 3 shapes (max abs {max(diffs):.3g})"

    def ort_sessions(self) -> str:
        from gap_deploy import runtime
        from gap_deploy.runtime.parity import tolerance_for

        notes = []
        x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
        with runtime.load(self.onnx_path, "ort-cpu") as cpu:
            ref = cpu.run(x)
        def judged(backend: str, got: np.ndarray) -> float:
            tol = tolerance_for("fp32", backend)
            max_abs, rel, _ = compare(got, ref)
            if not (rel <= tol.rtol and max_abs <= tol.atol):
                raise AssertionError(f"{backend}: max abs {max_abs:.3g}, rel {rel:.3g} against ONNX Runtime CPU "
                                     f"(tolerance {tol.describe()})")
            return rel

        with runtime.load(self.onnx_path, "ort-cuda") as cuda_session:
            rel = judged("ort-cuda", cuda_session.run(x))
            notes.append(f"ort-cuda rel {rel:.1e}, CPU shape nodes {len(cuda_session.cpu_nodes)}")
        cache = self.out / "ort-trt-cache"
        times = []
        for _ in range(2):
            started = time.perf_counter()
            with runtime.load(self.onnx_path, "ort-trt", cache_dir=cache,
                              trt_profile=":".join(format_shape(s) for s in PROFILE)) as trt_session:
                rel = judged("ort-trt", trt_session.run(x))
            times.append(time.perf_counter() - started)
        engines = list(cache.glob("*.engine"))
        if not engines:
            raise AssertionError(f"ort-trt wrote no engine cache in {cache}")
        if times[1] >= times[0]:
            raise AssertionError(f"the second ort-trt start ({times[1]:.1f} s) did not reuse the cache "
                                 f"(first {times[0]:.1f} s)")
        return f"{', '.join(notes)}; ort-trt rel {rel:.1e}, start {times[0]:.1f} s then {times[1]:.1f} s (cache)"

    def gap_run(self) -> str:
        from gap_deploy import runtime

        done = subprocess.run([*console("gap-run"), str(self.state["fp16"]), str(self.data / "samples"),
                               "--trust-engine",
                               "--json"], capture_output=True, text=True)
        if done.returncode != 0:
            raise AssertionError(done.stderr)
        report = json.loads(done.stdout)
        with runtime.load(self.onnx_path, "ort-cpu") as cpu:
            from gap_deploy.runtime.classify import classify
            from gap_deploy.runtime.images import collect_images

            cpu_report = classify(cpu, collect_images([self.data / "samples"]))
        agree = sum(a["top"][0]["index"] == b["top"][0]["index"]
                    for a, b in zip(report["results"], cpu_report["results"]))
        if agree != len(cpu_report["results"]) or not report["results"]:
            raise AssertionError(f"top-1 of {agree}/{len(cpu_report['results'])} images agree with ONNX Runtime")
        return f"{len(report['results'])} images, top-1 equal to ONNX Runtime CPU"

    def bench(self) -> str:
        path = self.out / "bench.json"
        done = subprocess.run([*console("gap-bench"), str(self.state["fp16"]), "--trust-engine", "--shape",
                               "1x3x224x224", "--shape", "8x3x128x128", "--torch", str(self.ckpt), "--cuda-graph",
                               "--json", str(path)], text=True)
        if done.returncode != 0:
            raise AssertionError(f"gap-bench exit {done.returncode}")
        rows = [r for r in json.loads(path.read_text())["results"] if r["backend"] == "trt"]
        parts = ", ".join(f"{format_shape(r['shape'])}: {r['latency_ms']['median']:.3f} ms "
                          f"(H2D {r['gpu_ms']['h2d']['median']:.3f} compute {r['gpu_ms']['compute']['median']:.3f} "
                          f"D2H {r['gpu_ms']['d2h']['median']:.3f} enqueue {r['gpu_ms']['enqueue']['median']:.3f}) "
                          f"{r['speedup_vs_torch']:.1f}x torch" for r in rows)
        return parts


def heldout_batch(folder: Path, shape) -> np.ndarray:
    """Held-out images (scripts/demo_data.py's evaluation seed, one folder per class) at ``shape``, normalized as
    the model expects; the classes interleaved, so every batch holds several."""
    from gap_deploy.runtime.images import collect_images
    from gap_deploy.runtime.metadata import ModelMetadata

    files = sorted(collect_images(sorted(p for p in folder.iterdir() if p.is_dir())),
                   key=lambda p: (p.stem, p.parent.name))
    n, c, h, w = shape
    meta = ModelMetadata(in_channels=c)
    contract = meta.preprocessing((h, w))  # the model's own preprocessing, at this size
    return np.stack([contract.load(f, c) for f in files[:n]]).astype(np.float32)


if __name__ == "__main__":
    sys.exit(main())
