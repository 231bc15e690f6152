"""The CUDA half of the GPU proof, for a machine with an NVIDIA GPU but no TensorRT (scripts/gpu_check.py --cuda-only).

Needs PyTorch with CUDA, CuPy and cuda-bindings. It drives the real CUDA wrapper (runtime/backends/cuda.py)
and the real TrtRunner (runtime/backends/trt.py) on the real GPU; only the engine is a stand-in: a small
object with TensorRT's execution-context methods whose ``execute_async_v3`` launches a deterministic,
position-sensitive CuPy kernel (a weighted, cosine-modulated global average, 10 outputs) on the stream the
runner passes. What it proves: pinned staging and buffer growth across two profiles and odd sizes, events
and streams, CUDA-graph capture and replay (A -> B -> A recaptured, a replay that computes nothing caught, a
capture that fails cleaned up and run without a graph), 8 threads on one runner and two runners at once equal
to serial results, close() giving device memory back, the PyTorch CUDA reference with and without TF32, and
the two timing fixes measured: H2D without the host copy, GPU compute without the host's enqueue. Nothing
inside TensorRT is proven here.

One JSON summary at the end (and --json FILE); exit 0 only when every step passed, 2 without a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from checkout import use_checkout  # noqa: E402

use_checkout()

CLASSES = 10
PROFILES = [((1, 3, 4, 4), (1, 3, 64, 64), (8, 3, 512, 512)), ((1, 3, 513, 513), (1, 3, 600, 600), (2, 3, 768, 768))]
SHAPES = [(1, 3, 4, 4), (2, 3, 37, 53), (3, 3, 61, 45), (1, 3, 5, 11), (8, 3, 512, 512), (1, 3, 600, 640),
          (2, 3, 768, 700)]
KERNEL_SOURCE = r"""
extern "C" __global__ void weighted_gap(const float* x, const float* w, float* out, int C, int H, int W, int K) {
  // one block per (image, output): sum over channels and pixels of x * w[k, c] * cos(0.37 h + 0.11 w) / (H W)
  int n = blockIdx.x / K, k = blockIdx.x % K;
  __shared__ float partial[256];
  long long plane = (long long)H * W, image = (long long)C * plane;
  float acc = 0.f;
  for (long long i = threadIdx.x; i < image; i += blockDim.x) {
    int c = (int)(i / plane); long long p = i % plane;
    int h = (int)(p / W), col = (int)(p % W);
    acc += x[n * image + i] * w[k * C + c] * cosf(0.37f * h + 0.11f * col);
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[n * K + k] = partial[0] / (float)plane;
}
"""


def missing_modules(modules: dict[str, str]) -> list[str]:
    """The labels of the modules (import name -> label) that cannot be imported here (shared with gpu_check.py)."""
    import importlib

    missing = []
    for name, label in modules.items():
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(label)
    return missing


def preflight() -> str | None:
    """None when this machine can run the CUDA proof, else what is missing."""
    missing = missing_modules({"cupy": "cupy", "torch": "torch",
                               "cuda.bindings.runtime": "cuda-bindings (pip install cuda-python)"})
    if missing:
        return f"missing {', '.join(missing)}"
    from gap_deploy.runtime.backends.cuda import Cuda
    from gap_deploy.runtime.errors import GapError

    try:
        if Cuda().device_count() < 1:
            return "no CUDA device found"
    except GapError as exc:
        return f"no usable GPU: {str(exc).splitlines()[0]}"
    return torch_cuda_problem()


def torch_cuda_problem() -> str | None:
    """None when PyTorch sees a CUDA device, else what is wrong (shared with gpu_check.py)."""
    import torch

    if not torch.cuda.is_available():
        return "PyTorch has no CUDA device (install a CUDA build of torch)"
    return None


class StandInContext:
    """TensorRT's IExecutionContext methods the runner calls, with a real CuPy kernel as the engine's work."""

    def __init__(self, engine: StandInEngine):
        self.engine, self.addr, self.profile = engine, {}, 0
        self.shape: tuple[int, ...] = ()  # set by set_input_shape before any enqueue
        self.host_delay_s = 0.0  # a slow host-side enqueue, before the launch
        self.fail_in_capture = False  # an enqueue that fails while its stream is being captured

    def set_optimization_profile_async(self, index, stream_handle):
        if type(stream_handle) is not int:  # TensorRT's binding takes typing.SupportsInt
            raise TypeError(f"stream_handle must be an int, got {type(stream_handle).__name__}")
        if not 0 <= index < len(self.engine.profiles):
            raise RuntimeError("profile index out of range")
        self.profile = index
        return True

    def set_input_shape(self, name, shape):
        lo, _, hi = self.engine.profiles[self.profile]
        if not all(a <= s <= b for s, a, b in zip(shape, lo, hi)):
            return False
        self.shape = tuple(int(s) for s in shape)
        return True

    def get_tensor_shape(self, name):
        return (self.shape[0], CLASSES) if name == "logits" else self.shape

    def set_tensor_address(self, name, memory):
        self.addr[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle):
        import cupy  # pyright: ignore[reportMissingImports]

        if type(stream_handle) is not int:
            raise TypeError(f"stream_handle must be an int, got {type(stream_handle).__name__}")
        if self.host_delay_s:
            time.sleep(self.host_delay_s)
        n, c, h, w = self.shape
        stream = cupy.cuda.ExternalStream(stream_handle)
        if self.fail_in_capture:
            from cuda.bindings import runtime as cudart  # pyright: ignore[reportAttributeAccessIssue]

            err, status = cudart.cudaStreamIsCapturing(cudart.cudaStream_t(stream_handle))
            if status == cudart.cudaStreamCaptureStatus.cudaStreamCaptureStatusActive:
                return False  # TensorRT reports a failed enqueue by returning False
        x = cupy.ndarray((n, c, h, w), cupy.float32, cupy.cuda.MemoryPointer(
            cupy.cuda.UnownedMemory(self.addr["images"], n * c * h * w * 4, self), 0))
        out = cupy.ndarray((n, CLASSES), cupy.float32, cupy.cuda.MemoryPointer(
            cupy.cuda.UnownedMemory(self.addr["logits"], n * CLASSES * 4, self), 0))
        with stream:
            for _ in range(self.engine.launches):  # an engine is many kernels; each launch computes the same
                self.engine.kernel((n * CLASSES,), (256,), (x, self.engine.weights, out, np.int32(c), np.int32(h),
                                                            np.int32(w), np.int32(CLASSES)))
        return True


class StandInEngine:
    def __init__(self, profiles=PROFILES):
        import cupy  # pyright: ignore[reportMissingImports]

        self.profiles, self.num_io_tensors, self.num_optimization_profiles = profiles, 2, len(profiles)
        self.kernel = cupy.RawKernel(KERNEL_SOURCE, "weighted_gap")
        self.weights_host = np.random.default_rng(1).standard_normal((CLASSES, 3)).astype(np.float32)
        self.weights = cupy.asarray(self.weights_host)
        self.contexts: list[StandInContext] = []
        self.launches = 1  # kernel launches per enqueue (more: a longer GPU compute for the timing check)

    def get_tensor_name(self, index):
        return ("images", "logits")[index]

    def get_tensor_mode(self, name):
        return "input" if name == "images" else "output"

    def get_tensor_shape(self, name):
        return (-1, 3, -1, -1) if name == "images" else (-1, CLASSES)

    def get_tensor_dtype(self, name):
        return "float"

    def get_tensor_profile_shape(self, name, index):
        return self.profiles[index]

    def create_execution_context(self):
        self.contexts.append(StandInContext(self))
        return self.contexts[-1]

    def reference(self, x: np.ndarray) -> np.ndarray:
        """The same computation in float64 on the host: what every output is judged against."""
        _, _, h, w = x.shape
        pos = np.cos(0.37 * np.arange(h)[:, None] + 0.11 * np.arange(w)[None, :])
        return np.einsum("nchw,kc,hw->nk", x.astype(np.float64), self.weights_host.astype(np.float64), pos) / (h * w)


def stand_in_tensorrt(engine: StandInEngine):
    """The few module-level names TrtRunner reads from ``tensorrt``."""
    class Runtime:
        engine_host_code_allowed = False

        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, plan):
            return engine

    class Logger:
        WARNING = 2

        def __init__(self, severity):
            self.severity = severity

    return types.SimpleNamespace(__name__="tensorrt", __version__="11.4.0.106", Logger=Logger,
                                 Runtime=Runtime, TensorIOMode=types.SimpleNamespace(INPUT="input", OUTPUT="output"),
                                 nptype=lambda dtype: np.float32)


class Steps:
    """The proof's steps: each runs once, a failure is recorded with its traceback and never hidden; ``rows`` is
    the summary (shared with gpu_check.py)."""

    def __init__(self):
        self.rows: list[dict] = []

    def step(self, name: str, work: Callable[[], object]) -> bool:
        print(f"\n=== {name}", flush=True)
        started = time.perf_counter()
        try:
            detail, ok = work(), True
        except Exception as exc:  # every failure is a failed step, reported, never hidden
            traceback.print_exc()
            detail, ok = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}", False
        seconds = round(time.perf_counter() - started, 2)
        self.rows.append({"step": name, "passed": ok, "seconds": seconds, "detail": detail})
        print(f"--- {'PASS' if ok else 'FAIL'} ({seconds} s): {json.dumps(detail, default=str)[:600]}", flush=True)
        return ok


class Proof(Steps):
    def __init__(self):
        from gap_deploy.runtime.backends.cuda import Cuda

        super().__init__()
        self.cuda = Cuda()
        self.folder = Path(tempfile.mkdtemp(prefix="gap-cuda-check-"))

    def runner(self, engine: StandInEngine | None = None):
        """A real TrtRunner on a stand-in plan whose manifest matches this GPU."""
        from gap_deploy.runtime.backends.trt import TrtRunner
        from gap_deploy.runtime.files import sha256_bytes
        from gap_deploy.runtime.manifest import EngineManifest

        engine = engine or StandInEngine()
        plan = self.folder / "stand-in.plan"
        plan.write_bytes(b"stand-in plan: the engine object is built in Python")
        gpu = self.cuda.device(0)
        EngineManifest(tensorrt_version="11.4.0.106", gpu_name=gpu.name, compute_capability=gpu.compute_capability,
                       precision="fp32", plan_sha256=sha256_bytes(plan.read_bytes()), onnx_sha256="0" * 64,
                       profiles=[{"images": [list(s) for s in p]} for p in engine.profiles], tf32=False).write(plan)
        # trusted by flag: the stand-in plan is made here (signing would make a key in the user's config folder)
        return TrtRunner(plan, trust_engine=True, trt=stand_in_tensorrt(engine), cuda=self.cuda), engine


def rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(got.astype(np.float64) - ref) / max(np.linalg.norm(ref), 1e-30))


def random_batch(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def check_environment(proof: Proof) -> dict:
    import cuda.bindings
    import cupy  # pyright: ignore[reportMissingImports]
    import torch

    from gap_deploy.runtime.backends.cuda import native_handle

    stream = proof.cuda.create_stream()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        handle = native_handle(stream)
    proof.cuda.destroy_stream(stream)
    deprecations = [str(w.message)[:160] for w in seen]
    assert type(handle) is int and not deprecations, deprecations
    gpu = proof.cuda.device(0)
    return {"gpu": gpu.name, "compute_capability": gpu.compute_capability, "torch": torch.__version__,
            "cupy": cupy.__version__, "cuda_bindings": cuda.bindings.__version__,
            "stream_handle_without_deprecation_warning": True}


def check_wrapper(proof: Proof) -> dict:
    import ctypes

    from gap_deploy.runtime.errors import CudaError

    cuda, size = proof.cuda, 1 << 22
    device, host = cuda.malloc(size), cuda.malloc_host(size)
    stream, start, end = cuda.create_stream(), cuda.create_event(), cuda.create_event()
    data = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8)
    ctypes.memmove(host, data.ctypes.data, size)
    cuda.record(start, stream)
    cuda.copy_to_device(device, host, size, stream)
    cuda.synchronize(stream)
    ctypes.memset(host, 0, size)
    cuda.copy_to_host(host, device, size, stream)
    cuda.record(end, stream)
    cuda.wait_event(end)
    back = np.frombuffer(memoryview((ctypes.c_uint8 * size).from_address(host)), dtype=np.uint8)
    same = bool(np.array_equal(back, data))
    elapsed = cuda.elapsed_ms(start, end)
    cuda.free(device)
    cuda.free_host(host)
    cuda.destroy_event(start)
    cuda.destroy_event(end)
    cuda.destroy_stream(stream)
    errors = {}
    for name, call in (("out_of_memory", lambda: cuda.malloc(1 << 60)),
                       ("bad_device", lambda: cuda.set_device(cuda.device_count()))):
        try:
            call()
        except CudaError as exc:
            errors[name] = str(exc).splitlines()[0]
    cuda.clear_error()
    assert same and elapsed > 0 and set(errors) == {"out_of_memory", "bad_device"}, (same, elapsed, errors)
    return {"pinned_round_trip_4MiB_equal": same, "events_ms": round(elapsed, 4), **errors}


def check_shapes_and_growth(proof: Proof) -> dict:
    allocations = []
    real = proof.cuda.malloc
    # counted, before the runner binds its allocator (a method replaced on purpose)
    proof.cuda.malloc = lambda n: allocations.append(n) or real(n)  # pyright: ignore[reportAttributeAccessIssue]
    runner, engine = proof.runner()
    try:
        worst, profiles = 0.0, set()
        for i, shape in enumerate(SHAPES):
            x = random_batch(shape, i)
            worst = max(worst, rel_err(runner.infer(x), engine.reference(x)))
            profiles.add(runner._active_profile)
        grew = len(allocations)
        for i, shape in enumerate(SHAPES[:4]):  # smaller again: the buffers are reused
            runner.infer(random_batch(shape, 50 + i))
        assert len(allocations) == grew, "a smaller input allocated again"
    finally:
        proof.cuda.malloc = real
        runner.close()
    assert worst < 1e-4 and profiles == {0, 1}, (worst, profiles)
    return {"shapes": len(SHAPES), "worst_rel_err": worst, "profiles_used": sorted(profiles),
            "device_allocations": grew}


def check_threads(proof: Proof) -> dict:
    inputs = [random_batch((1 + i % 3, 3, 8 + i % 7, 9 + i % 5), i) for i in range(64)]
    shared, engine = proof.runner()
    serial = [shared.infer(x) for x in inputs]
    got: list = [None] * 64

    def run_on(runner, indices):
        for i in indices:
            got[i] = runner.infer(inputs[i])

    workers = [threading.Thread(target=run_on, args=(shared, range(k, 64, 8))) for k in range(8)]
    [w.start() for w in workers]
    [w.join() for w in workers]
    shared_bad = sum(g is None or not np.array_equal(g, s) for g, s in zip(got, serial))
    other, _ = proof.runner(engine)
    got = [None] * 64
    workers = [threading.Thread(target=run_on, args=((shared, other)[k % 2], range(k, 64, 8))) for k in range(8)]
    [w.start() for w in workers]
    [w.join() for w in workers]
    two_bad = sum(g is None or not np.array_equal(g, s) for g, s in zip(got, serial))
    shared.close()
    other.close()
    assert shared_bad == 0 and two_bad == 0, (shared_bad, two_bad)
    return {"one_runner_8_threads_equal_serial": 64, "two_runners_8_threads_equal_serial": 64}


def check_graphs(proof: Proof) -> dict:
    runner, engine = proof.runner()
    begun = []
    real_begin = proof.cuda.begin_capture
    proof.cuda.begin_capture = lambda stream: begun.append(1) or real_begin(stream)
    try:
        diffs = {}
        for i, shape in enumerate([(1, 3, 64, 64), (8, 3, 128, 96), (1, 3, 4, 4), (1, 3, 600, 600)]):
            diffs["x".join(map(str, shape))] = runner.check_cuda_graph(random_batch(shape, i))
        a, b = random_batch((1, 3, 64, 64), 9), random_batch((8, 3, 128, 96), 10)
        before = len(begun)
        errors = [rel_err(runner.infer_timed(v, cuda_graph=True)[0], engine.reference(v)) for v in (a, b, a)]
        recaptured = len(begun) - before
        again = len(begun)
        runner.infer_timed(a, cuda_graph=True)
        replayed_without_capture = len(begun) == again
        real_launch = proof.cuda.launch
        # a replay that computes nothing (a method replaced on purpose)
        proof.cuda.launch = lambda graph, stream: None  # pyright: ignore[reportAttributeAccessIssue]
        broken = runner.check_cuda_graph(random_batch((2, 3, 40, 40), 11))
        proof.cuda.launch = real_launch
        engine.contexts[0].fail_in_capture = True
        failed = runner.check_cuda_graph(random_batch((3, 3, 33, 47), 12))
        reason = runner.graph_failure
        x = random_batch((3, 3, 33, 47), 13)
        after_failure = rel_err(runner.infer_timed(x, cuda_graph=True)[0], engine.reference(x))
        engine.contexts[0].fail_in_capture = False
        recovered = runner.check_cuda_graph(random_batch((2, 3, 33, 47), 14))  # not retried for the failed shape
    finally:
        proof.cuda.begin_capture = real_begin
        runner.close()
    assert all(d == 0.0 for d in diffs.values()), diffs
    assert recaptured == 3 and max(errors) < 1e-4 and replayed_without_capture, (recaptured, errors)
    assert broken == float("inf"), broken
    assert failed is None and reason and after_failure < 1e-4 and recovered == 0.0, (failed, reason, after_failure)
    return {"replay_minus_normal": diffs, "A_B_A_captures": recaptured, "A_B_A_worst_rel_err": max(errors),
            "empty_replay_caught": True, "failed_capture": reason, "after_failed_capture_rel_err": after_failure}


def check_timing(proof: Proof) -> dict:
    import cupy  # pyright: ignore[reportMissingImports]

    from gap_deploy.runtime.bench import BenchSettings, bench_session
    from gap_deploy.runtime.session import Session

    runner, engine = proof.runner()
    big = random_batch((8, 3, 512, 512), 0)
    for _ in range(3):
        _, timing = runner.infer_timed(big)
    h2d_reported = float(np.median([runner.infer_timed(big)[1].h2d_ms for _ in range(10)]))
    cuda, stream = proof.cuda, runner._stream
    start, end = cuda.create_event(), cuda.create_event()
    dma = []
    for _ in range(10):  # the device copy alone, from the same pinned buffer
        cuda.record(start, stream)
        cuda.copy_to_device(runner._in_buf.ptr, runner._in_host.ptr, big.nbytes, stream)
        cuda.record(end, stream)
        cuda.synchronize(stream)
        dma.append(cuda.elapsed_ms(start, end))
    started = time.perf_counter()
    runner._in_host.view(big.shape, big.dtype)[...] = big
    staging_ms = (time.perf_counter() - started) * 1e3
    cuda.destroy_event(start)
    cuda.destroy_event(end)
    dma_ms = float(np.median(dma))

    # GPU compute against the kernels' own time, measured by events around the same launches on this stream
    x = random_batch((8, 3, 512, 512), 1)
    runner.infer(x)  # compiled, buffers sized, input on the device
    context = engine.contexts[0]

    def enqueue_ms_by_events() -> float:
        times = []
        for _ in range(7):
            cuda.synchronize(stream)
            first, last = cuda.create_event(), cuda.create_event()
            cuda.record(first, stream)
            context.execute_async_v3(runner._stream_handle)
            cuda.record(last, stream)
            cuda.synchronize(stream)
            times.append(cuda.elapsed_ms(first, last))
            cuda.destroy_event(first)
            cuda.destroy_event(last)
        return float(np.median(times))

    # about 5 ms of GPU work per enqueue, so that a 1 ms host delay leaves the GPU the bound
    engine.launches = int(min(2000, max(1, np.ceil(5.0 / max(enqueue_ms_by_events(), 1e-3)))))
    kernel_ms = enqueue_ms_by_events()
    context.host_delay_s = 0.001  # 1 ms of host work before the launches: less than the GPU's work
    idle = float(np.median([runner.infer_timed(x, transfers=False)[1].compute_ms for _ in range(10)]))
    with runner.timed_loop(x, transfers=False) as loop:
        queued = [t.compute_ms for t in ([loop.step() for _ in range(30)] + loop.finish()) if t][5:]
    queued_ms = float(np.median(queued))
    session = Session(runner, proof.folder / "stand-in.plan")
    settings = BenchSettings(warmup_s=0.05, iterations=40)
    keeps_up, _ = bench_session(session, x.shape, settings)
    context.host_delay_s = 0.02  # 20 ms: the host is the bound
    host_bound, _ = bench_session(session, x.shape, settings)
    assert keeps_up is not None and host_bound is not None  # both timed (no Ctrl-C here)
    assert keeps_up.gpu_ms is not None and host_bound.gpu_ms is not None  # a TensorRT runner times the GPU
    context.host_delay_s = 0.0
    cupy.cuda.Device().synchronize()
    runner.close()
    warned = {name: any("enqueue-bound" in w for w in result.warnings)
              for name, result in (("host_keeps_up", keeps_up), ("host_bound", host_bound))}
    assert h2d_reported <= dma_ms * 1.25 + 0.05, (h2d_reported, dma_ms)
    assert idle >= kernel_ms + 0.8, (idle, kernel_ms)  # today's idle-stream measurement holds the host's 1 ms
    assert queued_ms <= kernel_ms * 1.1 + 0.05, (queued_ms, kernel_ms)
    assert warned == {"host_keeps_up": False, "host_bound": True}, (keeps_up.warnings, host_bound.warnings)
    return {"h2d_ms_reported": h2d_reported, "h2d_ms_device_copy_alone": dma_ms, "host_staging_ms": staging_ms,
            "kernel_launches_per_enqueue": engine.launches, "kernels_ms_by_events": kernel_ms,
            "compute_ms_idle_stream_1ms_host": idle,
            "compute_ms_queued_1ms_host": queued_ms,
            "bench_host_keeps_up": {k: keeps_up.gpu_ms[k].median for k in ("h2d", "compute", "enqueue")},
            "bench_host_bound": {k: host_bound.gpu_ms[k].median for k in ("h2d", "compute", "enqueue")},
            "enqueue_bound_warning": warned}


def check_close(proof: Proof) -> dict:
    free_before, _ = proof.cuda.memory_info()
    for _ in range(10):
        runner, _ = proof.runner()
        runner.infer(random_batch((8, 3, 512, 512), 3))  # 25 MiB in, pinned and device
        runner.close()
    free_after, _ = proof.cuda.memory_info()
    lost = (free_before - free_after) / 2**20
    assert lost < 16, f"{lost:.1f} MiB of device memory not given back after 10 runners"
    return {"device_MiB_not_returned_after_10_runners": round(lost, 2)}


def check_torch_tf32(proof: Proof) -> dict:
    import torch

    from gap_deploy.exporter.model import GapCNN
    from gap_deploy.exporter.reference import tf32_mode

    torch.manual_seed(0)
    model = GapCNN(in_channels=3, num_classes=CLASSES).eval()
    x = torch.randn(8, 3, 224, 224)
    with torch.inference_mode():
        exact = model.double()(x.double()).numpy()
        model = model.float().cuda()
        before = tf32_mode(False)
        off = model(x.cuda()).float().cpu().numpy()
        tf32_mode(True)
        on = model(x.cuda()).float().cpu().numpy()
        tf32_mode(before[0])
    err_off, err_on = rel_err(off, exact), rel_err(on, exact)
    cc = proof.cuda.device(0).major
    assert err_off < 1e-4, err_off
    if cc >= 8:  # TF32 exists from Ampere on: it must show, or the switch did nothing
        assert err_on > 3 * err_off, (err_on, err_off)
    return {"rel_err_tf32_off": err_off, "rel_err_tf32_on": err_on}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="gap-deploy's CUDA proof without TensorRT (see the module doc).")
    parser.add_argument("--json", type=Path, help="write the summary as JSON")
    args = parser.parse_args(argv)
    problem = preflight()
    if problem:
        print(f"gpu_check --cuda-only: needs an NVIDIA GPU with PyTorch CUDA, CuPy and cuda-bindings: {problem}.",
              file=sys.stderr)
        return 2
    proof = Proof()
    steps = [("environment", check_environment), ("CUDA wrapper", check_wrapper),
             ("shapes, profiles, buffer growth", check_shapes_and_growth), ("threads", check_threads),
             ("CUDA graphs", check_graphs), ("timing: H2D and GPU compute", check_timing),
             ("close() frees device memory", check_close), ("PyTorch CUDA reference, TF32", check_torch_tf32)]
    for name, work in steps:
        proof.step(name, lambda work=work: work(proof))
    passed = all(r["passed"] for r in proof.rows)
    summary = {"passed": passed, "steps": proof.rows}
    text = json.dumps(summary, indent=2, default=str)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
