"""The TensorRT backend against spec'd doubles of the real TensorRT and CUDA APIs (no GPU needed)."""

import threading
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from gap_deploy.runtime.backends.cuda import Cuda, CudaError  # noqa: E402
from gap_deploy.runtime.backends.trt import TrtRunner  # noqa: E402
from gap_deploy.runtime.errors import ArtifactError, GapError, InputError, ManifestMismatchError, UntrustedCodeError  # noqa: E402
from gap_deploy.runtime.files import sha256_bytes  # noqa: E402
from gap_deploy.runtime.manifest import EngineManifest, manifest_path  # noqa: E402
from gap_deploy.runtime.metadata import ModelMetadata  # noqa: E402
from gap_deploy.runtime.session import Session  # noqa: E402
from tests.conftest import sign_files  # noqa: E402
from tests.support.trt_doubles import FakeDevice, expected_logits, make_engine, make_trt, trt  # noqa: F401

PLAN = b"serialized-engine-bytes" * 10


_BUILD_KEY: list[Path] = []


@pytest.fixture(autouse=True)
def _trusted_build_key(trusted):
    """Every plan here is signed by the tests' build key, whose public half this "device" trusts."""
    _BUILD_KEY[:] = [trusted[0]]


def write_plan(tmp_path, **overrides):
    plan = tmp_path / "model.plan"
    plan.write_bytes(PLAN)
    fields = dict(tensorrt_version="11.4.0.106", gpu_name="NVIDIA H100 80GB HBM3", compute_capability="9.0",
                  precision="fp16", plan_sha256=sha256_bytes(PLAN), onnx_sha256="0" * 64,
                  profiles=[{"images": [list(s) for s in p]} for p in
                            [((1, 3, 4, 4), (1, 3, 32, 32), (8, 3, 64, 64))]],
                  metadata=ModelMetadata(arch="GapCNN", in_channels=3, num_classes=10, min_height=4,
                                         min_width=4, class_names=tuple("abcdefghij")).to_props())
    fields.update(overrides)
    EngineManifest(**fields).write(plan)
    sign_files(_build_key(), plan, manifest_path(plan))  # as gap-build --sign-key signs them
    return plan


def _build_key() -> Path:
    return _BUILD_KEY[0]


@pytest.fixture
def device():
    return FakeDevice()


def open_runner(tmp_path, device, engine=None, trt_version="11.4.0.106", trt_name="tensorrt", **manifest):
    engine, context = engine or make_engine(device=device)
    module, runtime = make_trt(engine, trt_version, trt_name)
    plan = write_plan(tmp_path, **manifest)
    runner = TrtRunner(plan, trt=module, cuda=Cuda(device.rt))
    return runner, engine, context, runtime


def test_runs_through_the_tensor_name_api(tmp_path, device):
    runner, engine, context, runtime = open_runner(tmp_path, device)
    x = np.random.default_rng(0).standard_normal((2, 3, 37, 53)).astype(np.float32)
    np.testing.assert_allclose(runner.infer(x), expected_logits(x), rtol=1e-6)
    context.set_input_shape.assert_called_with("images", (2, 3, 37, 53))
    assert {c.args[0] for c in context.set_tensor_address.call_args_list} == {"images", "logits"}
    stream = context.execute_async_v3.call_args.args[0]
    assert device.stream_flags[stream] == int(device.rt.cudaStreamNonBlocking)  # never the legacy default stream
    runtime.deserialize_cuda_engine.assert_called_once_with(PLAN)
    assert not context.execute_v2.called  # the legacy bindings API is never used


def test_session_on_an_engine_reads_the_manifest_and_profiles(tmp_path, device):
    runner, *_ = open_runner(tmp_path, device)
    session = Session(runner, tmp_path / "model.plan")
    assert session.backend == "trt" and session.metadata.class_name(2) == "c"
    assert session.inputs[0].shape == ("batch", 3, "height", "width")
    assert session.inputs[0].profiles[1][2] == (4, 3, 256, 256)
    with pytest.raises(InputError, match=r"outside every optimization profile .*1x3x4x4 to 8x3x64x64; "
                                         r"1x3x65x65 to 4x3x256x256(.|\n)*gap-build"):
        session.run(np.zeros((1, 3, 100, 40), np.float32))
    with pytest.raises(InputError, match="outside every optimization profile"):
        session.run(np.zeros((9, 3, 32, 32), np.float32))


def test_profiles_are_switched_by_shape(tmp_path, device):
    runner, engine, context, _ = open_runner(tmp_path, device)
    small = np.ones((1, 3, 16, 16), np.float32)
    large = np.full((1, 3, 100, 120), 2.0, np.float32)
    np.testing.assert_allclose(runner.infer(large), expected_logits(large), rtol=1e-5)
    assert context.set_optimization_profile_async.call_args_list[-1].args[0] == 1
    np.testing.assert_allclose(runner.infer(small), expected_logits(small), rtol=1e-5)
    assert context.set_optimization_profile_async.call_args.args[0] == 0


def test_device_buffers_are_reused_and_grown(tmp_path, device):
    runner, *_ = open_runner(tmp_path, device)
    runner.infer(np.ones((1, 3, 32, 32), np.float32))
    allocations = device.rt.cudaMalloc.call_count
    runner.infer(np.ones((1, 3, 16, 16), np.float32))
    runner.infer(np.ones((1, 3, 32, 32), np.float32))
    assert device.rt.cudaMalloc.call_count == allocations
    runner.infer(np.ones((4, 3, 64, 64), np.float32))
    assert device.rt.cudaMalloc.call_count == allocations + 2  # input and output grew
    assert device.rt.cudaFree.call_count == 2
    assert device.rt.cudaMallocHost.call_count == 4  # pinned staging: twice at first, twice when it grew
    runner.close()
    assert device.memory == {} and device.pinned == {}  # everything freed


def test_timed_inference_splits_h2d_compute_d2h_and_enqueue(tmp_path, device):
    from tests.support.trt_doubles import COMPUTE_MS, D2H_MS, H2D_MS

    runner, *_ = open_runner(tmp_path, device, engine=make_engine(device=device))
    out, timing = runner.infer_timed(np.ones((1, 3, 8, 8), np.float32))
    assert (timing.h2d_ms, timing.compute_ms, timing.d2h_ms) == (H2D_MS, COMPUTE_MS, D2H_MS)  # each pair in place
    assert timing.enqueue_ms >= 0 and device.rt.cudaEventRecord.call_count == 4
    _, no_copy = runner.infer_timed(np.ones((1, 3, 8, 8), np.float32), transfers=False)
    assert no_copy.h2d_ms == 0 and no_copy.compute_ms == COMPUTE_MS


def test_input_is_staged_through_pinned_memory(tmp_path, device):
    runner, *_ = open_runner(tmp_path, device)
    x = np.random.default_rng(5).standard_normal((2, 3, 9, 13)).astype(np.float32)
    np.testing.assert_allclose(runner.infer(x), expected_logits(x), rtol=1e-5)
    sources = [c.args[1] for c in device.rt.cudaMemcpyAsync.call_args_list
               if c.args[3] == device.rt.cudaMemcpyKind.cudaMemcpyHostToDevice]
    assert sources and all(src in device.pinned for src in sources)  # never the numpy array's own pages
    targets = [c.args[0] for c in device.rt.cudaMemcpyAsync.call_args_list
               if c.args[3] == device.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost]
    assert targets and all(dst in device.pinned for dst in targets)


def test_outputs_are_never_stale_or_transposed(tmp_path, device):
    runner, *_ = open_runner(tmp_path, device)
    rng = np.random.default_rng(6)
    a = rng.standard_normal((1, 3, 20, 30)).astype(np.float32)
    first = runner.infer(a)
    swapped = np.ascontiguousarray(a.transpose(0, 1, 3, 2))
    second = runner.infer(swapped)
    np.testing.assert_allclose(second, expected_logits(swapped), rtol=1e-5)
    assert not np.allclose(first, second, rtol=1e-3)  # the reference model is position-sensitive
    np.testing.assert_allclose(runner.infer(a[:, :, :7, :5].copy()), expected_logits(a[:, :, :7, :5]), rtol=1e-5)


def test_cuda_graph_is_captured_once_per_shape_and_replays_the_same_outputs(tmp_path, device):
    runner, engine, context, _ = open_runner(tmp_path, device)
    x = np.random.default_rng(1).standard_normal((2, 3, 20, 30)).astype(np.float32)
    assert runner.check_cuda_graph(x) == 0.0
    assert device.rt.cudaStreamBeginCapture.call_count == 1
    runner.infer_timed(x, cuda_graph=True)
    assert device.rt.cudaStreamBeginCapture.call_count == 1
    assert device.rt.cudaGraphLaunch.call_count == 2
    small = np.random.default_rng(3).standard_normal((1, 3, 8, 8)).astype(np.float32)
    out, _ = runner.infer_timed(small, cuda_graph=True)  # a new shape is captured anew and computes right
    np.testing.assert_allclose(out, expected_logits(small), rtol=1e-5)
    assert device.rt.cudaStreamBeginCapture.call_count == 2
    device.broken_replay = True
    y = np.random.default_rng(2).standard_normal((2, 3, 20, 30)).astype(np.float32)
    assert runner.check_cuda_graph(y) > 1e-3  # a replay that does not recompute is caught


def test_the_device_is_set_in_every_inference_thread(tmp_path):
    device = FakeDevice(count=2)
    engine, context = make_engine()
    module, _ = make_trt(engine)
    runner = TrtRunner(write_plan(tmp_path), device=1, trt=module, cuda=Cuda(device.rt))
    seen = []

    def work():
        runner.infer(np.ones((1, 3, 8, 8), np.float32))
        seen.append(device.current_device[threading.get_ident()])

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert seen == [1]  # a new host thread starts on device 0: the call itself must select device 1
    assert runner.device["index"] == 1 and runner.device["gpu"] == device.name


def test_a_profile_switch_that_raises_becomes_a_backend_error(tmp_path, device):
    from gap_deploy.runtime.errors import BackendError

    runner, _, context, _ = open_runner(tmp_path, device)
    context.set_optimization_profile_async.side_effect = RuntimeError("profile switch failed")
    with pytest.raises(BackendError, match="optimization profile 1: profile switch failed"):
        runner.infer(np.ones((1, 3, 100, 100), np.float32))


def test_a_refused_tensor_address_is_an_error(tmp_path, device):
    from gap_deploy.runtime.errors import BackendError

    runner, _, context, _ = open_runner(tmp_path, device)
    context.set_tensor_address.side_effect = lambda n, p: False
    with pytest.raises(BackendError, match="refused the device address of tensor 'images'"):
        runner.infer(np.ones((1, 3, 8, 8), np.float32))


def test_eight_threads_get_serial_results(tmp_path, device):
    runner, *_ = open_runner(tmp_path, device)
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((1, 3, 4 + i % 5, 9 + i % 3)).astype(np.float32) for i in range(64)]
    results = [None] * 64

    def work(k):
        for i in range(k, 64, 8):
            results[i] = runner.infer(inputs[i])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    for x, got in zip(inputs, results):
        np.testing.assert_allclose(got, expected_logits(x), rtol=1e-6)


def test_doubles_are_spec_d_from_the_real_classes():
    engine, context = make_engine()
    with pytest.raises(AttributeError):
        context.execute_async_v4(0)
    with pytest.raises(AttributeError):
        engine.get_binding_shape(0)  # removed in TensorRT 10
    with pytest.raises(TypeError):
        FakeDevice().rt.cudaMemcpyAsync(1, 2, 3)  # real signature: 5 arguments


@pytest.mark.parametrize("call, message", [
    (lambda ctx, eng, rt: ctx.execute_async_v3(), "missing argument"),                     # wrong arity
    (lambda ctx, eng, rt: ctx.execute_async_v3(1, 2), "takes 1 argument"),                 # wrong arity
    (lambda ctx, eng, rt: ctx.execute_async_v3(stream=1), "unexpected keyword argument 'stream'"),
    (lambda ctx, eng, rt: ctx.execute_async_v3("stream"), "must be typing.SupportsInt, got str"),
    (lambda ctx, eng, rt: ctx.set_tensor_address(0, 1), "'name' must be str"),
    (lambda ctx, eng, rt: ctx.set_optimization_profile_async(0), "missing argument"),
    (lambda ctx, eng, rt: eng.get_tensor_profile_shape("images"), "missing argument"),
    (lambda ctx, eng, rt: rt.cudaMemcpyAsync(1, 2, 3.5, rt.cudaMemcpyKind.cudaMemcpyHostToDevice, 7),
     "'count' must be size_t"),
    (lambda ctx, eng, rt: rt.cudaMemcpyAsync(1, 2, 3, 1, 7), "'kind' must be cudaMemcpyKind"),
    (lambda ctx, eng, rt: rt.cudaStreamCreateWithFlags(), "missing argument"),
    (lambda ctx, eng, rt: rt.cudaMallocHost(size=8), "unexpected keyword argument 'size'"),
])
def test_doubles_check_arity_keywords_and_types_like_the_bindings(call, message):
    """create_autospec alone accepts all of these: pybind11/Cython signatures are invisible to it."""
    engine, context = make_engine()
    with pytest.raises(TypeError, match=message):
        call(context, engine, FakeDevice().rt)


def test_a_plain_autospec_would_have_accepted_them():

    loose = mock.create_autospec(trt.IExecutionContext, instance=True)
    loose.execute_async_v3()  # no stream at all: accepted, so the strict checker is what catches it
    loose.execute_async_v3(stream=1)


@pytest.mark.parametrize("overrides, trt_version, trt_name, message", [
    ({"plan_sha256": "f" * 64}, "11.4.0.106", "tensorrt", "SHA-256 differs"),
    ({}, "10.16.0.1", "tensorrt", "built with TensorRT 11.4.0.106; this machine runs 10.16.0.1"),
    ({"compute_capability": "8.6"}, "11.4.0.106", "tensorrt", "compute capability 8.6"),
    ({"gpu_name": "NVIDIA H200"}, "11.4.0.106", "tensorrt", "built on a NVIDIA H200"),
    ({}, "11.4.0.106", "tensorrt_lean", "not version-compatible"),
    ({"version_compatible": True, "tensorrt_version": "11.5.0"}, "11.4.0.106", "tensorrt", "cannot load it"),
])
def test_manifest_mismatch_is_refused_before_deserializing(tmp_path, device, overrides, trt_version, trt_name, message):
    engine, context = make_engine()
    module, runtime = make_trt(engine, trt_version, trt_name)
    plan = write_plan(tmp_path, **overrides)
    with pytest.raises(ManifestMismatchError, match=message) as info:
        TrtRunner(plan, trt=module, cuda=Cuda(device.rt))
    assert "gap-build" in str(info.value)
    runtime.deserialize_cuda_engine.assert_not_called()


@pytest.mark.parametrize("name", ["tensorrt", "tensorrt_lean"])
@pytest.mark.parametrize("built, here, runs", [
    ("10.16.1", "11.4.0.106", "full"),  # TensorRT 10 version-compatible engines run on TensorRT 11 (full runtime)
    ("10.0.1", "11.4.0.106", "full"),
    ("11.1.0", "11.4.0.106", True),
    ("11.4.0.106", "11.4.0.106", True),
    ("11.5.0", "11.4.0.106", False),    # never on an older runtime
    ("10.16.1", "10.3.0", False),
    ("8.6.1", "11.4.0.106", False),     # only 10 -> 11 crosses a major version
    ("11.4.0", "12.0.0", False),        # not promised (yet) by NVIDIA
])
def test_version_compatibility_allows_exactly_what_nvidia_supports(tmp_path, device, built, here, runs, name):
    """NVIDIA's 11.x support matrix: "TensorRT 10 version-compatible engines can run with a TensorRT 11 runtime";
    it does not name the lean runtime, so across majors the lean runtime refuses (gpu-review-4, risk 3)."""
    engine, _ = make_engine()
    module, runtime = make_trt(engine, here, name)
    plan = write_plan(tmp_path, version_compatible=True, tensorrt_version=built)
    if runs == "full" and name == "tensorrt_lean":
        with pytest.raises(ManifestMismatchError, match="lean runtime 11.4.0.106 is not known to load"):
            TrtRunner(plan, trt=module, cuda=Cuda(device.rt))
        runtime.deserialize_cuda_engine.assert_not_called()
    elif runs:
        TrtRunner(plan, trt=module, cuda=Cuda(device.rt))
        runtime.deserialize_cuda_engine.assert_called_once()
    else:
        with pytest.raises(ManifestMismatchError, match="cannot load it"):
            TrtRunner(plan, trt=module, cuda=Cuda(device.rt))
        runtime.deserialize_cuda_engine.assert_not_called()


def test_compatible_engines_are_accepted(tmp_path, device):
    runner, _, _, runtime = open_runner(tmp_path, device, trt_name="tensorrt_lean", version_compatible=True,
                                        tensorrt_version="11.1.0", hardware_compatibility="ampere+",
                                        compute_capability="8.0", gpu_name="NVIDIA A100")
    assert runtime.engine_host_code_allowed is True  # set for our own version-compatible plans only
    assert runner.infer(np.ones((1, 3, 4, 4), np.float32)).shape == (1, 10)


def test_plan_without_manifest_needs_trust(tmp_path, device):
    engine, _ = make_engine()
    module, runtime = make_trt(engine)
    plan = write_plan(tmp_path)
    manifest_path(plan).unlink()
    with pytest.raises(UntrustedCodeError, match="has no manifest(.|\n)*--trust-engine"):
        TrtRunner(plan, trt=module, cuda=Cuda(device.rt))
    runtime.deserialize_cuda_engine.assert_not_called()
    runner = TrtRunner(plan, trust_engine=True, trt=module, cuda=Cuda(device.rt))
    assert runner.props == {}


def test_corrupt_manifest(tmp_path, device):
    engine, _ = make_engine()
    module, _ = make_trt(engine)
    plan = write_plan(tmp_path)
    manifest_path(plan).write_text("{not json")
    with pytest.raises(ArtifactError, match="cannot read engine manifest"):
        TrtRunner(plan, trt=module, cuda=Cuda(device.rt))


def test_undeserializable_plan(tmp_path, device):
    engine, _ = make_engine()
    module, runtime = make_trt(engine)
    runtime.deserialize_cuda_engine.return_value = None
    with pytest.raises(ArtifactError, match=r"could not deserialize(.|\n)*gap-build"):
        TrtRunner(write_plan(tmp_path), trt=module, cuda=Cuda(device.rt))


def test_failed_enqueue_is_an_error(tmp_path, device):
    runner, _, context, _ = open_runner(tmp_path, device)
    context.execute_async_v3.side_effect = None
    context.execute_async_v3.return_value = False
    with pytest.raises(GapError, match="execute_async_v3 failed"):
        runner.infer(np.ones((1, 3, 8, 8), np.float32))


def test_cuda_errors_name_the_call(device):
    device.rt.cudaMalloc.side_effect = lambda n: (device.rt.cudaError_t.cudaErrorMemoryAllocation, None)
    with pytest.raises(CudaError, match="cudaMalloc failed: cudaErrorMemoryAllocation"):
        Cuda(device.rt).malloc(1024)


def test_no_driver_is_reported():
    device = FakeDevice()
    device.rt.cudaGetDeviceCount.side_effect = lambda: (device.rt.cudaError_t.cudaErrorInsufficientDriver, None)
    with pytest.raises(CudaError, match="cudaErrorInsufficientDriver(.|\n)*update the driver"):
        Cuda(device.rt).device_count()


def test_missing_tensorrt_names_the_extra(monkeypatch):
    import sys

    from gap_deploy.runtime.backends import trt as trt_backend
    from gap_deploy.runtime.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # None in sys.modules: the import fails
    assert trt_backend.import_tensorrt().__name__ == "tensorrt_lean"  # the lean runtime is the fallback
    monkeypatch.setitem(sys.modules, "tensorrt_lean", None)
    with pytest.raises(MissingDependencyError, match=r"'tensorrt' or 'tensorrt_lean'(.|\n)*gap-deploy\[lean\]"):
        trt_backend.import_tensorrt()


def timed_runner(tmp_path, device, **kwargs):
    """A runner whose host clock is the simulated one, so the enqueue time and the events share one timeline."""
    engine, _ = make_engine(device=device)
    module, _ = make_trt(engine)
    return TrtRunner(write_plan(tmp_path, **kwargs), trt=module, cuda=Cuda(device.rt), clock=device.clock)


def test_h2d_is_timed_from_after_the_host_copy_into_pinned_memory(tmp_path, device):
    # Failed before: the H2D start event was recorded before the host-to-pinned memcpy, so "H2D" held it.
    runner = timed_runner(tmp_path, device)
    x = np.random.default_rng(8).standard_normal((1, 3, 8, 8)).astype(np.float32)
    staged_at_record = []

    def on_record(event):
        pinned = [np.frombuffer(buf, np.float32, x.size) for buf in device.pinned.values()
                  if len(buf) >= x.nbytes]
        staged_at_record.append(any(np.array_equal(p, x.ravel()) for p in pinned))

    device.on_record = on_record
    runner.infer_timed(x)
    assert staged_at_record[0] is True  # the first event (H2D start) sees the input already in pinned memory
    staged_at_record.clear()
    with runner.timed_loop(x) as loop:
        loop.step()
        loop.finish()
    assert staged_at_record and all(staged_at_record)


def test_gpu_compute_excludes_the_enqueue_when_work_is_queued(tmp_path, device):
    from tests.support.trt_doubles import COMPUTE_MS, H2D_MS, KERNELS

    device.enqueue_ms = 1.0  # the host takes 1 ms to launch the kernels; the GPU needs 2.5 ms for them
    runner = timed_runner(tmp_path, device)
    x = np.ones((1, 3, 8, 8), np.float32)
    runner.infer_timed(x)
    _, idle = runner.infer_timed(x, transfers=False)  # idle stream, no copy in front: the GPU waits for launches
    assert idle.compute_ms == pytest.approx(COMPUTE_MS + 1.0 / KERNELS)
    with runner.timed_loop(x) as loop:
        timings = [t for t in (loop.step() for _ in range(10)) if t] + loop.finish()
    assert len(timings) == 10
    steady = timings[2:]  # from the third on, the previous inference is still on the GPU at each enqueue
    assert all(t.compute_ms == pytest.approx(COMPUTE_MS) for t in steady)
    assert all(t.h2d_ms == pytest.approx(H2D_MS) for t in steady)
    assert all(t.enqueue_ms == pytest.approx(1.0) for t in steady)
    np.testing.assert_allclose(loop.output(), expected_logits(x), rtol=1e-5)


def test_a_graph_is_replayed_only_for_the_shape_and_profile_it_was_captured_for(tmp_path, device):
    # TensorRT's developer guide ("CUDA Graphs"): recapture after the input shape or the profile changes. The
    # double makes work captured before such a change stale (NaN). Failed before: A -> B -> A replayed A's graph.
    runner, *_ = open_runner(tmp_path, device)
    rng = np.random.default_rng(4)
    a = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    b = rng.standard_normal((1, 3, 8, 12)).astype(np.float32)
    large = rng.standard_normal((1, 3, 70, 70)).astype(np.float32)  # profile 1
    for x in (a, b, a, large, a):
        out, _ = runner.infer_timed(x, cuda_graph=True)
        np.testing.assert_allclose(out, expected_logits(x), rtol=1e-5)
    assert device.rt.cudaStreamBeginCapture.call_count == 5
    for _ in range(3):  # the same shape again: replayed, not recaptured
        np.testing.assert_allclose(runner.infer_timed(a, cuda_graph=True)[0], expected_logits(a), rtol=1e-5)
    assert device.rt.cudaStreamBeginCapture.call_count == 5
    assert device.rt.cudaGraphExecDestroy.call_count == 4  # one graph alive at a time, the others destroyed


def test_a_failed_capture_destroys_nothing_twice_clears_the_error_and_runs_normally(tmp_path, device):
    runner, *_ = open_runner(tmp_path, device)
    device.failing_capture = True
    x = np.random.default_rng(9).standard_normal((2, 3, 12, 10)).astype(np.float32)
    out, _ = runner.infer_timed(x, cuda_graph=True)
    np.testing.assert_allclose(out, expected_logits(x), rtol=1e-5)
    assert "cudaErrorStreamCaptureInvalidated" in runner.graph_failure
    assert device.rt.cudaGetLastError.called and device.sticky_error == device.rt.cudaError_t.cudaSuccess
    assert runner.check_cuda_graph(x) is None
    tries = device.rt.cudaStreamBeginCapture.call_count
    runner.infer_timed(x, cuda_graph=True)  # the same shape, profile and buffers: not captured again
    assert device.rt.cudaStreamBeginCapture.call_count == tries
    device.failing_capture = False
    y = np.random.default_rng(10).standard_normal((1, 3, 12, 10)).astype(np.float32)
    assert runner.check_cuda_graph(y) == 0.0 and runner.graph_failure is None  # another shape captures


def test_close_sets_the_device_first(tmp_path):
    # cudaSetDevice is per host thread: closing from another thread must free on the runner's GPU
    device = FakeDevice(count=2)
    engine, _ = make_engine()
    module, _ = make_trt(engine)
    runner = TrtRunner(write_plan(tmp_path), device=1, trt=module, cuda=Cuda(device.rt))
    runner.infer(np.ones((1, 3, 8, 8), np.float32))
    freed_on = []
    free = device.rt.cudaFree.side_effect
    device.rt.cudaFree.side_effect = lambda p: (freed_on.append(device.current_device.get(threading.get_ident(), 0)),
                                                free(p))[1]
    thread = threading.Thread(target=runner.close)
    thread.start()
    thread.join()
    assert freed_on == [1, 1] and device.memory == {}
    runner.close()  # a second close is harmless


def test_tensorrt_gets_the_stream_as_an_int_handle(tmp_path, device):
    # cuda-bindings returns cudaStream_t objects; TensorRT's stream_handle is typing.SupportsInt, and
    # int(cuda_obj) is deprecated from cuda-bindings 12.9.1/13: the runner passes get_cuda_native_handle's int.
    runner, _, context, _ = open_runner(tmp_path, device)
    runner.infer(np.ones((1, 3, 100, 100), np.float32))  # profile 1: set_optimization_profile_async too
    for call in (context.execute_async_v3, context.set_optimization_profile_async):
        handle = call.call_args.args[-1]
        assert type(handle) is int and handle in device.stream_flags


def test_a_hand_written_manifest_grants_no_trust(tmp_path, device):
    """A manifest anyone can write (right SHA-256, version_compatible) must not make a plan load: trust comes from
    signatures made with the build key and verified with its public half (runtime.signing)."""
    from gap_deploy.runtime.signing import signature_path

    engine, _ = make_engine(device=device)
    module, runtime = make_trt(engine)
    plan = write_plan(tmp_path, version_compatible=True)
    fields = EngineManifest.read(plan).fields()
    EngineManifest(**{**fields, "precision": "int8"}).write(plan)  # a signed manifest edited afterwards
    with pytest.raises(UntrustedCodeError, match=r"model.plan.json: changed since it was signed(.|\n)*--trust-engine"):
        TrtRunner(plan, trt=module, cuda=Cuda(device.rt))
    signature_path(manifest_path(plan)).unlink()  # the manifest's signature removed
    with pytest.raises(UntrustedCodeError, match="has no signature"):
        TrtRunner(plan, trt=module, cuda=Cuda(device.rt))
    EngineManifest(**{**fields, "signature": "0" * 64}).write(plan)  # only the old HMAC field, no .sig files
    signature_path(plan).unlink()
    with pytest.raises(UntrustedCodeError, match="old shared-secret \\(HMAC\\) signature"):
        TrtRunner(plan, trt=module, cuda=Cuda(device.rt))
    assert not runtime.deserialize_cuda_engine.called and runtime.engine_host_code_allowed is not True
    trusted = TrtRunner(plan, trust_engine=True, trt=module, cuda=Cuda(device.rt))  # the explicit flag
    assert trusted.manifest.precision == "fp16" and runtime.engine_host_code_allowed is True


def test_a_plan_signed_by_the_build_key_runs_where_only_the_public_key_is(tmp_path, device, build_keys, monkeypatch):
    """The device holds the public key alone (no private key, no shared secret): the signed plan runs; the same
    plan signed by another key, or replayed signatures of other bytes, are refused before TensorRT sees it."""
    from gap_deploy.runtime.signing import signature_path
    from tests.conftest import make_key_pair

    device_folder = tmp_path / "device"
    device_folder.mkdir()
    public = device_folder / "build.pub.pem"
    public.write_bytes(build_keys[1].read_bytes())  # all the device has
    monkeypatch.setenv("GAP_DEPLOY_TRUSTED_KEYS", str(device_folder))
    runner, _, _, runtime = open_runner(tmp_path, device)
    assert runner.infer(np.ones((1, 3, 8, 8), np.float32)).shape == (1, 10)
    other_key, _ = make_key_pair(tmp_path, "other")
    plan = tmp_path / "model.plan"
    sign_files(other_key, plan, manifest_path(plan))
    engine, _ = make_engine(device=device)
    module, runtime = make_trt(engine)
    with pytest.raises(UntrustedCodeError, match="was not made by a trusted key"):
        TrtRunner(plan, trt=module, cuda=Cuda(device.rt))
    other = tmp_path / "other"
    other.mkdir()
    second = write_plan(other, precision="fp32")  # a second, genuinely signed plan of other bytes
    second.write_bytes(b"other bytes" * 10)
    sign_files(build_keys[0], second)
    signature_path(plan).write_bytes(signature_path(second).read_bytes())  # its signature replayed onto ours
    sign_files(build_keys[0], manifest_path(plan))
    with pytest.raises(UntrustedCodeError, match="model.plan: changed since it was signed"):
        TrtRunner(plan, trt=module, cuda=Cuda(device.rt))
    assert not runtime.deserialize_cuda_engine.called


@pytest.mark.parametrize("mode, message", [(0o640, "can be read or written by other users"),
                                           (0o604, "can be read or written by other users")])
def test_a_signing_key_others_can_read_signs_nothing(tmp_path, build_keys, mode, message):
    """Issue 38, class 5: a key other users can read lets them sign. Refused before anything is signed."""
    from gap_deploy.runtime.signing import sign_path

    key = tmp_path / "shared.pem"
    key.write_bytes(build_keys[0].read_bytes())
    key.chmod(mode)
    target = tmp_path / "m.bin"
    target.write_bytes(b"x")
    with pytest.raises(UntrustedCodeError, match=message):
        sign_path(target, key, tmp_path / "m.bin.sig")
    assert not (tmp_path / "m.bin.sig").exists()


def test_keys_and_signatures_that_are_not_regular_files_are_refused_without_blocking(tmp_path, build_keys):
    """A FIFO as a key blocked a read for ever (issue 38, class 4); a symlinked key is not followed."""
    import os

    from gap_deploy.runtime.signing import sign_path, verify_path

    target = tmp_path / "m.bin"
    target.write_bytes(b"x")
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UntrustedCodeError, match="not a regular file"):
        sign_path(target, fifo, tmp_path / "m.bin.sig")
    link = tmp_path / "link.pem"
    link.symlink_to(build_keys[0])
    with pytest.raises(UntrustedCodeError, match="symbolic link"):
        sign_path(target, link, tmp_path / "m.bin.sig")
    sign_path(target, build_keys[0], tmp_path / "m.bin.sig")
    with pytest.raises(UntrustedCodeError, match="public key .* is not a regular file"):
        verify_path(target, [fifo])
    assert verify_path(target, [build_keys[1]]).key == build_keys[1]


# ---- gpu-review-4: L3, the capture's sync, nptype, and the doubles that now refuse what TensorRT refuses ------

def test_a_graph_is_recaptured_after_a_normal_run_of_another_shape(tmp_path, device):
    """The runner's own rule (TensorRT's developer guide, "CUDA Graphs"): recapture after a shape or profile change.
    Failed before (gpu-review-4 L3): graph(A) -> a normal run of B (smaller, so no buffer moved) -> graph(A)
    replayed A's graph without recapturing, and the double's stale work gave NaN."""
    runner, *_ = open_runner(tmp_path, device)
    rng = np.random.default_rng(11)
    a = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    b = rng.standard_normal((1, 3, 8, 12)).astype(np.float32)
    runner.infer_timed(a, cuda_graph=True)
    runner.infer_timed(b)  # no graph
    out, _ = runner.infer_timed(a, cuda_graph=True)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected_logits(a), rtol=1e-5)
    assert device.rt.cudaStreamBeginCapture.call_count == 2


def test_the_stream_is_idle_when_a_capture_begins(tmp_path, device):
    """trtexec (sampleInference.cpp) and Triton's TensorRT backend synchronize the stream after the warm-up enqueue
    and before cudaStreamBeginCapture. Failed before: the capture began with the warm-up still queued."""
    runner, *_ = open_runner(tmp_path, device)
    for shape in ((1, 3, 16, 16), (2, 3, 9, 13)):
        runner.infer_timed(np.ones(shape, np.float32), cuda_graph=True)
    assert device.pending_at_capture == [False, False]


def test_an_engine_tensor_without_a_numpy_type_is_a_clear_error(tmp_path, device):
    """tensorrt_lean's nptype raises a bare TypeError for BF16, FP8 and INT4. Failed before: that TypeError."""
    engine, context = make_engine(device=device)
    engine.get_tensor_dtype.side_effect = lambda n: trt.DataType.BF16 if n == "images" else trt.DataType.FLOAT
    with pytest.raises(ArtifactError, match="tensor 'images' has data type BF16, which has no NumPy equivalent"):
        open_runner(tmp_path, device, engine=(engine, context))


def test_the_engine_double_refuses_an_output_without_an_address(tmp_path, device):
    """NvInferRuntime.h, IExecutionContext::enqueueV3: every output needs a non-null address (or an output
    allocator), else it returns false. The double did run before; the runner turns False into a BackendError."""
    from gap_deploy.runtime.errors import BackendError

    engine, _ = make_engine(device=device, extra={"mean": lambda x: x.mean(axis=(2, 3))})
    module, _ = make_trt(engine)
    runner = TrtRunner(write_plan(tmp_path), trt=module, cuda=Cuda(device.rt), marked_outputs=True)
    x = np.ones((1, 3, 8, 8), np.float32)
    with pytest.raises(BackendError, match="execute_async_v3 failed"):
        runner.infer(x)  # infer binds the logits only
    assert set(runner.infer_outputs(x)) == {"logits", "mean"}  # every output bound: runs
