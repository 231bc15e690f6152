"""Latency and throughput of a Session (and of any reference callable), the way trtexec reports them.

torch-free: a PyTorch reference is passed in as a plain callable (see exporter.reference).
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from gap_deploy.runtime.parity import Tolerance, compare_outputs, random_input, tolerance_for
from gap_deploy.runtime.shapes import Shape, format_shape

CV_WARN = 0.025  # trtexec warns when GPU compute time varies by more than 2.5%
ENQUEUE_BOUND = 0.8  # trtexec's enqueueBoundReportingThreshold


@dataclass(frozen=True)
class BenchSettings:
    """trtexec's defaults: 200 ms warm-up, 3 s of measurement, at least 10 iterations."""

    warmup_s: float = 0.2
    duration_s: float = 3.0
    iterations: int | None = None  # a fixed count instead of a duration
    min_iterations: int = 10
    cuda_graph: bool = False
    transfers: bool = True
    seed: int = 0


@dataclass(frozen=True)
class Stats:
    min: float
    mean: float
    median: float
    p90: float
    p95: float
    p99: float
    max: float

    @classmethod
    def of(cls, values_ms: Sequence[float]) -> Stats:
        a = np.asarray(values_ms, dtype=np.float64)
        p = np.percentile(a, [50, 90, 95, 99])
        return cls(float(a.min()), float(a.mean()), float(p[0]), float(p[1]), float(p[2]), float(p[3]),
                   float(a.max()))


@dataclass
class BenchResult:
    backend: str
    shape: Shape
    latency_ms: Stats
    throughput_ips: float
    iterations: int
    wall_s: float
    cv: float
    warnings: list[str] = field(default_factory=list)
    cold_start_ms: dict[str, float] | None = None
    gpu_ms: dict[str, Stats] | None = None
    parity: dict | None = None
    speedup_vs_torch: float | None = None
    #: gap-bench --compare: the artifact this row ran, and its median latency over the first artifact's
    artifact: str | None = None
    latency_vs_first: float | None = None
    #: --cuda-graph: max abs difference between the replay and a normal execution, checked before timing
    cuda_graph_max_abs_diff: float | None = None
    #: --cuda-graph on TensorRT: whether graphs were really replayed (False: the capture failed; see warnings)
    cuda_graph_used: bool | None = None
    interrupted: bool = False

    def to_dict(self) -> dict:
        data = asdict(self)
        data["shape"] = list(self.shape)
        return data


def _loop(step: Callable[[], object], settings: BenchSettings) -> tuple[list[float], float, bool]:
    """Warm up, then time ``step``; returns per-iteration seconds, the wall time, and whether Ctrl-C cut it."""
    interrupted = False
    try:
        warm_end = time.perf_counter() + settings.warmup_s
        step()
        while time.perf_counter() < warm_end:
            step()
    except KeyboardInterrupt:
        return [], 0.0, True
    samples: list[float] = []
    started = time.perf_counter()
    deadline = started + settings.duration_s
    try:
        while True:
            t0 = time.perf_counter()
            step()
            samples.append(time.perf_counter() - t0)
            if settings.iterations is not None:
                if len(samples) >= settings.iterations:
                    break
            elif len(samples) >= settings.min_iterations and time.perf_counter() >= deadline:
                break
    except KeyboardInterrupt:
        interrupted = True
    return samples, time.perf_counter() - started, interrupted


def _result(backend: str, shape: Shape, samples: list[float], wall: float, interrupted: bool) -> BenchResult:
    ms = [s * 1e3 for s in samples]
    stats = Stats.of(ms)
    cv = float(np.std(ms) / np.mean(ms)) if len(ms) > 1 and np.mean(ms) > 0 else 0.0
    warnings = []
    if cv > CV_WARN:
        warnings.append(f"latency varies: coefficient of variation {cv:.1%} > {CV_WARN:.1%}; the machine may be "
                        "busy or throttling: rerun, or pin threads with --threads.")
    if interrupted:
        warnings.append("interrupted: fewer iterations than asked.")
    throughput = shape[0] * len(samples) / sum(samples) if samples else 0.0
    return BenchResult(backend, tuple(shape), stats, throughput, len(samples), wall, cv, warnings,
                       interrupted=interrupted)


def bench_session(session, shape: Shape, settings: BenchSettings = BenchSettings(), *,
                  cold_start_ms: float | None = None) -> tuple[BenchResult | None, np.ndarray]:
    """Time ``session.run`` at ``shape``; returns the result (None if interrupted before measuring) and one output.

    With ``settings.cuda_graph`` the replay's outputs are first compared with a normal execution's on the
    same input; a replay that differs is an error, never a timed result.
    """
    from gap_deploy.runtime.errors import UsageError

    if (settings.cuda_graph or not settings.transfers) and not session.gpu_timing:
        option = "--cuda-graph" if settings.cuda_graph else "--no-transfers"
        raise UsageError(f"{option} applies to TensorRT engines only; backend '{session.backend}' has no "
                         "CUDA graphs or separate transfers.", hint=f"drop {option}, or benchmark a .plan.")
    x = random_input(shape, settings.seed)
    started = time.perf_counter()
    first = session.run(x)
    first_ms = (time.perf_counter() - started) * 1e3
    parts: list = []
    graph_diff = graph_note = None
    if session.gpu_timing:  # TensorRT: H2D, GPU compute, D2H and enqueue from CUDA events, trtexec's way
        samples, wall, interrupted, graph_diff, graph_note = _time_on_gpu(session, x, first, settings, parts)
    else:
        def step():
            session.run(x)

        samples, wall, interrupted = _loop(step, settings)
    if not samples:
        return None, first
    result = _result(session.backend, shape, samples, wall, interrupted)
    if cold_start_ms is not None:
        result.cold_start_ms = {"session_create_ms": cold_start_ms, "first_inference_ms": first_ms}
    if graph_diff is not None:
        result.cuda_graph_max_abs_diff = graph_diff
    if settings.cuda_graph and session.gpu_timing:
        result.cuda_graph_used = graph_note is None
        if graph_note:
            result.warnings.append(graph_note)
    if parts:
        _gpu_phases(result, parts[-len(samples):])
    return result, first


def _time_on_gpu(session, x: np.ndarray, first: np.ndarray, settings: BenchSettings, parts: list):
    """The timed loop of a TensorRT session, each step's GPU phases into ``parts``; with ``settings.cuda_graph``
    the replay is first checked against a normal execution. (samples, wall, interrupted, graph_diff, note)."""
    from gap_deploy.runtime.errors import BackendError
    from gap_deploy.runtime.validation import prepare

    cuda_graph, graph_diff, graph_note = settings.cuda_graph, None, None
    if cuda_graph:
        graph_diff = session.check_cuda_graph(x)
        if graph_diff is None:  # the capture failed: time without graphs, and say so
            cuda_graph = False
            graph_note = (f"CUDA graphs were not used: the capture failed ({session.runner.graph_failure}); "
                          "timed with normal enqueues.")
        elif not replay_agrees(graph_diff, first, session.metadata.precision, session.backend):
            raise BackendError(f"the CUDA-graph replay at {format_shape(x.shape)} differs from a normal execution "
                               f"(max abs difference {graph_diff:.3g}, beyond the engine's GPU tolerance); "
                               "nothing was timed.", hint="benchmark without --cuda-graph and report this engine.")
    prepared = prepare(x, session.input_spec)  # checked once: the loop times the GPU's phases alone
    with session.runner.timed_loop(prepared, cuda_graph=cuda_graph, transfers=settings.transfers) as timed:
        def step():
            done = timed.step()
            if done is not None:
                parts.append(done)

        samples, wall, interrupted = _loop(step, settings)
        parts.extend(timed.finish())
    return samples, wall, interrupted, graph_diff, graph_note


def _gpu_phases(result: BenchResult, parts: list) -> None:
    """Each GPU phase's statistics into ``result``, with trtexec's warnings about them."""
    result.gpu_ms = {name: Stats.of([getattr(p, f"{name}_ms") for p in parts])
                     for name in ("h2d", "compute", "d2h", "enqueue")}
    gpu = result.gpu_ms
    compute_cv = float(np.std([p.compute_ms for p in parts]) / max(gpu["compute"].mean, 1e-9))
    if compute_cv > CV_WARN:
        result.warnings.append(f"GPU compute time varies: coefficient of variation {compute_cv:.1%} > 2.5%.")
    # trtexec's rules (samples/common/sampleReporting.cpp): enqueue above 0.8 x compute, or either copy at
    # least as long as the compute.
    if gpu["enqueue"].median > ENQUEUE_BOUND * gpu["compute"].median:
        result.warnings.append(f"enqueue-bound: the host's enqueue ({gpu['enqueue'].median:.3f} ms) is above "
                               f"{ENQUEUE_BOUND:g}x the GPU compute ({gpu['compute'].median:.3f} ms), so the GPU "
                               "waits for the host; try --cuda-graph.")
    if max(gpu["h2d"].median, gpu["d2h"].median) >= gpu["compute"].median:
        result.warnings.append("transfer-bound: a copy takes at least as long as the compute; use larger "
                               "batches, --no-transfers to time without the input copy, or keep data on the GPU.")


@dataclass
class Compared:
    """Another artifact timed beside the first (gap-bench --compare): its path, open session and load time."""

    path: str
    session: Any  # a runtime.session.Session
    load_ms: float


def bench_shapes(session, shapes: Sequence[Shape], settings: BenchSettings, *, artifact: str,
                 create_ms: float | None = None, reference: Callable[[np.ndarray], np.ndarray] | None = None,
                 reference_name: str = "torch", others: Sequence[Compared] = (),
                 progress: Callable[[str], None] | None = None) -> tuple[list[BenchResult], bool]:
    """Every shape on ``session``, then on ``reference`` (PyTorch: speed-up and parity against it) and on each
    of ``others`` (latency over the first's, parity against its output), one after another in one run.
    The session's load time is reported with its first shape (where the backend's cold start means
    something). Returns the results and whether Ctrl-C ended the run (the results are then what was measured).
    """
    from gap_deploy.runtime.backends.table import facts

    results: list[BenchResult] = []
    total = len(shapes) * (1 + (reference is not None) + len(others))
    done = 0

    def step(label: str) -> None:
        nonlocal done
        done += 1
        if progress:
            progress(f"[{done}/{total}] {label} ...")

    for shape in shapes:
        step(f"{session.backend} {format_shape(shape)}")
        cold = create_ms if facts(session.backend).cold_start_measured and not results else None  # measured once
        result, output = bench_session(session, shape, settings, cold_start_ms=cold)
        if result is None:
            return results, True
        result.artifact = artifact
        results.append(result)
        if reference is not None:
            step(f"torch {format_shape(shape)}")
            ref_result, ref_output = bench_reference(reference_name, reference, shape, settings)
            attach_parity(result, output, ref_output, session.metadata.precision)
            if ref_result is None:
                return results, True
            result.speedup_vs_torch = ref_result.latency_ms.median / result.latency_ms.median
            results.append(ref_result)
        if result.interrupted:
            return results, True
        for other in others:
            step(f"{other.session.backend} ({other.path}) {format_shape(shape)}")
            cold = other.load_ms if facts(other.session.backend).cold_start_measured and shape == shapes[0] else None
            other_result, other_output = bench_session(other.session, shape, settings, cold_start_ms=cold)
            if other_result is None:
                return results, True
            other_result.artifact = other.path
            other_result.latency_vs_first = other_result.latency_ms.median / result.latency_ms.median
            attach_parity(other_result, other_output, output, other.session.metadata.precision,
                          reference_name=artifact)
            results.append(other_result)
            if other_result.interrupted:
                return results, True
    return results, False


def bench_reference(name: str, infer: Callable[[np.ndarray], np.ndarray], shape: Shape,
                    settings: BenchSettings = BenchSettings()) -> tuple[BenchResult | None, np.ndarray]:
    """Time a reference callable (PyTorch eager) on the same seeded input as bench_session."""
    x = random_input(shape, settings.seed)
    output = infer(x)
    samples, wall, interrupted = _loop(lambda: infer(x), settings)
    if not samples:
        return None, output
    return _result(name, shape, samples, wall, interrupted), output


def replay_agrees(max_abs_diff: float, output: np.ndarray, precision: str, backend: str) -> bool:
    """Whether a CUDA-graph replay agrees with a normal run of the same engine on the same input.

    TensorRT promises no run-to-run bitwise equality (its tactics may reduce in a different order), so the
    two are held to the engine's GPU tolerance (runtime.parity), not to 0; a replay that computed nothing,
    or on a stale shape, still fails: the output is poisoned with NaN before it, which gives an infinite
    difference."""
    if not np.isfinite(max_abs_diff):
        return False
    tol = tolerance_for(precision or "fp32", backend)
    scale = float(np.max(np.abs(output))) if tol.atol_relative and output.size else 1.0
    limit = tol.atol * scale if np.isfinite(tol.atol) else tol.rtol * max(float(np.max(np.abs(output))), 1e-30)
    return max_abs_diff <= limit


def attach_parity(result: BenchResult, output: np.ndarray, reference: np.ndarray, precision: str,
                  reference_name: str = "PyTorch") -> None:
    """The output against the reference's on the same (random) input. INT8 is gated by top-1 agreement on real
    images when it is made (gap-export, gap-pack); on one random input its logits nearly tie and top-1 says
    nothing, so here its errors are reported and only a non-finite output fails."""
    tolerance = tolerance_for(precision, result.backend)
    if precision == "int8":
        tolerance = Tolerance(atol=math.inf, rtol=math.inf)
    row = compare_outputs(reference, output, tolerance, result.shape)
    result.parity = {"reference": reference_name, "precision": precision, "max_abs_err": row.max_abs_err,
                     "rel_err": row.rel_err, "top1_agreement": row.top1_agreement, "passed": row.passed}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(session, extra_versions: dict[str, str] | None = None) -> tuple[dict, dict]:
    """(device, versions) for the report, so a result can be reproduced: where the session really runs."""
    import sys

    from gap_deploy.runtime.version import __version__

    device = {"cpu": cpu_name(), "cpu_count": os.cpu_count(), **session.device}
    versions = {"gap-deploy": __version__, "python": sys.version.split()[0], "numpy": np.__version__,
                **session.versions}
    versions.update(extra_versions or {})
    return device, versions


def format_table(results: Sequence[BenchResult]) -> str:
    head = (f"{'backend':>10} {'shape':>14} {'median ms':>10} {'mean':>8} {'p90':>8} {'p99':>8} {'min':>8} "
            f"{'max':>8} {'img/s':>9} {'cv':>6} {'iters':>6}  vs torch / vs the first artifact")
    lines = [head, "-" * len(head)]
    for r in results:
        s = r.latency_ms
        extra = ""
        if r.speedup_vs_torch is not None:
            extra = f"{r.speedup_vs_torch:5.2f}x"
        if r.latency_vs_first is not None:
            extra = f"latency {r.latency_vs_first:5.2f}x the first"
        if r.parity is not None:
            extra += (f"  max abs {r.parity['max_abs_err']:.2e} rel {r.parity['rel_err']:.2e} "
                      f"{'ok' if r.parity['passed'] else 'MISMATCH'}")
        lines.append(f"{r.backend:>10} {format_shape(r.shape):>14} {s.median:10.3f} {s.mean:8.3f} {s.p90:8.3f} "
                     f"{s.p99:8.3f} {s.min:8.3f} {s.max:8.3f} {r.throughput_ips:9.1f} {r.cv:6.1%} {r.iterations:6d}"
                     f"  {extra}")
        if r.gpu_ms:
            g = r.gpu_ms
            lines.append(f"{'':>10} GPU median ms: H2D {g['h2d'].median:.3f}  compute {g['compute'].median:.3f}  "
                         f"D2H {g['d2h'].median:.3f}  enqueue {g['enqueue'].median:.3f}")
        if r.cold_start_ms:
            c = r.cold_start_ms
            lines.append(f"{'':>10} cold start: session {c['session_create_ms']:.1f} ms, first inference "
                         f"{c['first_inference_ms']:.1f} ms")
    return "\n".join(lines)
