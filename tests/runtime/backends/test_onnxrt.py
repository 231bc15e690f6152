"""ONNX Runtime's GPU providers: sessions that start, no silent CPU compute, TensorRT caches and profiles.

This machine's onnxruntime is the CPU build. It still validates every session option and config entry
before any provider loads (the "Conflicting session configuration" check is in
onnxruntime/core/session/inference_session.cc, run for every build), and it writes the same profiling
output as the GPU builds (a Chrome-trace event per node with ``args.provider``, ``args.op_name`` and
``args.output_type_shape``; onnxruntime/core/framework/sequential_executor.cc). So the option sets of
every backend are created here as real sessions, and the placement rule is checked on real profiles.
A real ort-cuda/ort-trt start is scripts/gpu_check.sh's job.
"""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from gap_deploy import runtime  # noqa: E402
from gap_deploy.runtime.backends import onnxrt  # noqa: E402
from gap_deploy.runtime.backends.onnxrt import (  # noqa: E402
    ACCELERATORS,
    PROVIDER_CHAIN,
    profiled_placement,
    session_setup,
)
from gap_deploy.runtime.backends.placement import NodePlacement, check_placement, read_profile  # noqa: E402
from gap_deploy.runtime.errors import BackendUnavailableError  # noqa: E402
from gap_deploy.runtime.metadata import ModelMetadata  # noqa: E402
from gap_deploy.runtime.profiles import Profile  # noqa: E402

ORT = onnxrt._ort()
META = ModelMetadata(in_channels=3, min_height=4, min_width=4)
DIMS = ("batch", 3, "height", "width")


def _spec(input_name: str):
    """What runtime.artifact.describe reads from a model with these dims and this metadata."""
    from gap_deploy.runtime.artifact import from_tensors
    from gap_deploy.runtime.backends.base import TensorInfo

    return from_tensors([TensorInfo(input_name, np.dtype(np.float32), DIMS)],
                        [TensorInfo("logits", np.dtype(np.float32), ("batch", 10))], META.to_props())
CUDA, TRT, CPU = "CUDAExecutionProvider", "TensorrtExecutionProvider", "CPUExecutionProvider"


def flatten_model() -> bytes:
    """Conv -> Relu -> GlobalAveragePool -> Flatten, times a ones tensor whose shape is computed from the
    input's batch (Shape->Gather->Unsqueeze->Concat->Expand): a shape chain onnxruntime's optimizer cannot
    fold (the batch is symbolic), the kind the CUDA provider leaves on the CPU."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
             numpy_helper.from_array(np.array([0], dtype=np.int64), "zero_axes"),
             numpy_helper.from_array(np.array([4], dtype=np.int64), "classes"),
             numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one")]
    nodes = [helper.make_node("Conv", ["images", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Shape", ["images"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0, name="gather"),
             helper.make_node("Unsqueeze", ["n", "zero_axes"], ["n1"], name="unsqueeze"),
             helper.make_node("Concat", ["n1", "classes"], ["target"], axis=0, name="concat"),
             helper.make_node("Expand", ["one", "target"], ["ones"], name="expand"),
             helper.make_node("Mul", ["f", "ones"], ["logits"], name="mul")]
    graph = helper.make_graph(nodes, "flatten", [helper.make_tensor_value_info("images", TensorProto.FLOAT, DIMS)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def shape_only_model() -> bytes:
    """A model made of shape arithmetic alone (its output is the input's shape)."""
    nodes = [helper.make_node("Shape", ["images"], ["s"], name="shape"),
             helper.make_node("Cast", ["s"], ["dims"], to=TensorProto.INT32, name="cast")]
    graph = helper.make_graph(nodes, "shapes", [helper.make_tensor_value_info("images", TensorProto.FLOAT, DIMS)],
                              [helper.make_tensor_value_info("dims", TensorProto.INT32, [4])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def real_session(model: bytes, backend: str, tmp_path: Path, *, profiling: bool = False, **setup):
    """A real onnxruntime session with exactly the providers and config entries ``backend`` uses."""
    providers, entries = session_setup(backend, tmp_path / "m.onnx", spec=_spec("images"),
                                       **setup)
    options = ORT.SessionOptions()
    options.log_severity_level = 4
    for key, value in entries.items():
        options.add_session_config_entry(key, value)
    if profiling:
        options.enable_profiling = True
        options.profile_file_prefix = str(tmp_path / "profile")
    with pytest.warns(UserWarning) if backend != "ort-cpu" else _nothing():  # GPU providers absent here
        return ORT.InferenceSession(model, options, providers=providers), providers, entries


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("backend", ["ort-cpu", "ort-cuda", "ort-trt"])
def test_every_backends_option_set_creates_a_real_session(backend, tmp_path):
    # Failed before: ort-cuda/ort-trt listed the CPU provider *and* set session.disable_cpu_ep_fallback,
    # which onnxruntime refuses at creation ("Conflicting session configuration"), on every build.
    session, providers, entries = real_session(flatten_model(), backend, tmp_path)
    assert [p for p, _ in providers] == list(PROVIDER_CHAIN[backend])
    assert "session.disable_cpu_ep_fallback" not in entries
    out = session.run(None, {"images": np.ones((2, 3, 5, 7), np.float32)})[0]
    assert out.shape == (2, 4) and np.isfinite(out).all()


def test_the_fallback_switch_with_a_listed_cpu_provider_is_what_onnxruntime_refuses(tmp_path):
    # The fact the fix rests on, from the real library: keep it proven.
    options = ORT.SessionOptions()
    options.log_severity_level = 4
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    with pytest.raises(Exception, match="Conflicting session configuration"):
        ORT.InferenceSession(flatten_model(), options, providers=[CPU])


def test_a_real_profile_names_every_node_and_its_provider(tmp_path):
    session, _, _ = real_session(flatten_model(), "ort-cpu", tmp_path, profiling=True)
    nodes = profiled_placement(session, "images", np.float32, (1, 3, 4, 4))
    assert not list(tmp_path.glob("profile*.json"))  # the profile file is removed once read
    ops = {n.op_type for n in nodes}
    assert {"Shape", "Gather", "Unsqueeze", "Concat", "Expand", "GlobalAveragePool"} <= ops
    assert all(n.provider == CPU for n in nodes)
    shapes = {n.op_type for n in nodes if n.computes_shapes_only}
    assert shapes == {"Shape", "Gather", "Unsqueeze", "Concat"}  # int64 outputs only
    # Everything ran on the CPU here: as an ort-cuda session this is CPU compute, and it must fail.
    with pytest.raises(BackendUnavailableError, match=r"compute node\(s\) of m.onnx on the CPU(.|\n)*Expand"):
        check_placement(nodes, ACCELERATORS["ort-cuda"], backend="ort-cuda", path="m.onnx")
    allowed = check_placement(nodes, ACCELERATORS["ort-cuda"], backend="ort-cuda", path="m.onnx",
                              allow_cpu_fallback=True)
    assert len(allowed) == len(nodes)


def test_shape_nodes_on_the_cpu_are_allowed_and_listed(tmp_path):
    session, _, _ = real_session(shape_only_model(), "ort-cpu", tmp_path, profiling=True)
    nodes = profiled_placement(session, "images", np.float32, (1, 3, 4, 4))
    listed = check_placement(nodes, ACCELERATORS["ort-cuda"], backend="ort-cuda", path="m.onnx")
    assert {n.op_type for n in listed} == {"Shape", "Cast"}


def test_a_mixed_gpu_profile_fails_only_on_cpu_compute(tmp_path):
    # A profile as the CUDA build writes it (same event format as the CPU build's above): Conv on CUDA,
    # the Shape chain on the CPU (onnxruntime issue 17930), and in the second case a Relu left on the CPU.
    def event(name, op, provider, out):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ph": "X", "dur": 1, "ts": 0,
                "args": {"op_name": op, "provider": provider, "output_type_shape": [{out: [1]}]}}

    good = [event("conv", "Conv", CUDA, "float"), event("shape", "Shape", CPU, "int64"),
            event("concat", "Concat", CPU, "int64"), event("reshape", "Reshape", CUDA, "float"),
            {"cat": "Session", "name": "model_run", "args": {}}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(good))
    listed = check_placement(read_profile(path), ACCELERATORS["ort-cuda"], backend="ort-cuda", path="m.onnx")
    assert [n.describe() for n in listed] == ["shape (Shape)", "concat (Concat)"]
    path.write_text(json.dumps(good + [event("relu", "Relu", CPU, "float")]))
    with pytest.raises(BackendUnavailableError, match=r"1 compute node\(s\).*relu \(Relu\)"):
        check_placement(read_profile(path), ACCELERATORS["ort-cuda"], backend="ort-cuda", path="m.onnx")
    # TensorRT's fused subgraph and CUDA nodes are both the GPU for ort-trt, but not for ort-cuda
    trt = [event("TRTKernel_graph_0", "TRTKernel", TRT, "float")]
    assert check_placement([NodePlacement("x", "TRTKernel", TRT, ("float",))] + read_profile(path)[:0],
                           ACCELERATORS["ort-trt"], backend="ort-trt", path="m") == ()
    path.write_text(json.dumps(trt))
    with pytest.raises(BackendUnavailableError, match="TensorrtExecutionProvider, which it does not use"):
        check_placement(read_profile(path), ACCELERATORS["ort-cuda"], backend="ort-cuda", path="m.onnx")


def test_ort_trt_registers_tensorrt_then_cuda_then_cpu_with_caches_and_profile(tmp_path):
    providers, config = session_setup("ort-trt", tmp_path / "m.onnx", spec=_spec("images"))
    assert [p for p, _ in providers] == [TRT, CUDA, CPU]
    assert config == {}
    trt = providers[0][1]
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_timing_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path.resolve() / ".gap-trt-cache")  # beside the model
    assert (trt["trt_profile_min_shapes"], trt["trt_profile_opt_shapes"], trt["trt_profile_max_shapes"]) == (
        "images:1x3x4x4", "images:1x3x224x224", "images:16x3x1024x1024")  # gap-build's default profile


def test_user_profile_cache_and_options_override_the_defaults(tmp_path):
    providers, _ = session_setup("ort-trt", tmp_path / "m.onnx", spec=_spec("input"),
                                 cache_dir=tmp_path / "cache", profile=Profile.parse("1x3x32x32:2x3x64x64:4x3x96x96"),
                                 provider_options={"trt_fp16_enable": True, "trt_engine_cache_enable": "False"})
    options = providers[0][1]
    assert options["trt_profile_min_shapes"] == "input:1x3x32x32"
    assert options["trt_profile_max_shapes"] == "input:4x3x96x96"
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert options["trt_fp16_enable"] == "True" and options["trt_engine_cache_enable"] == "False"


def test_the_ort_trt_options_are_accepted_by_a_real_session(tmp_path):
    # The TensorRT provider is absent here, so onnxruntime warns and drops it; the session must still start
    # with the full option set and the CPU provider that takes the rest.
    session, providers, _ = real_session(flatten_model(), "ort-trt", tmp_path, cache_dir=tmp_path / "cache",
                                         profile=Profile.parse("1x3x8x8:1x3x32x32:2x3x64x64"))
    assert session.get_providers() == [CPU]
    assert providers[0][1]["trt_profile_opt_shapes"] == "images:1x3x32x32"


def test_a_gpu_backend_that_runs_only_on_the_cpu_is_refused(reference_onnx, monkeypatch):
    # provider_works says yes (as onnxruntime-gpu's listing does when its libraries are missing); the real
    # session then runs on the CPU only: never a silent fallback.
    monkeypatch.setattr(onnxrt, "provider_works", lambda backend: (True, ""))
    with pytest.raises(BackendUnavailableError, match="did not start"), pytest.warns(UserWarning):
        runtime.load(reference_onnx, "ort-cuda")


def test_the_gpu_runner_checks_placement_on_a_real_profiled_session(reference_onnx, monkeypatch):
    # The real OrtRunner path on a real session: the only thing stood in for is the provider list onnxruntime
    # reports (the CPU build cannot start CUDA); the profile is the real one, where every node ran on the CPU.
    real = ORT.InferenceSession

    class ReportsCuda(real):
        def get_providers(self):
            return [CUDA, CPU]

    monkeypatch.setattr(onnxrt, "provider_works", lambda backend: (True, ""))
    monkeypatch.setattr(ORT, "InferenceSession", ReportsCuda)
    with pytest.raises(BackendUnavailableError, match=r"compute node\(s\)(.|\n)*Conv(.|\n)*allow_cpu_fallback"), \
            pytest.warns(UserWarning):
        runtime.load(reference_onnx, "ort-cuda")
    with pytest.warns(UserWarning):
        session = runtime.load(reference_onnx, "ort-cuda", allow_cpu_fallback=True)
    with session:
        assert session.cpu_nodes and all(n.provider == CPU for n in session.cpu_nodes)
        assert session.device["ort_cpu_nodes"]
        assert session.run(np.ones((1, 3, 9, 13), np.float32)).shape[0] == 1


def test_the_default_cache_folder_is_beside_the_model(reference_onnx):
    providers, _ = session_setup("ort-trt", Path(reference_onnx), spec=_spec("images"))
    assert Path(providers[0][1]["trt_engine_cache_path"]).parent == Path(reference_onnx).resolve().parent


def test_an_ort_trt_session_that_ran_nothing_on_tensorrt_is_refused(tmp_path):
    """gpu-review-4, risk 5: onnxruntime gives a graph its TensorRT provider rejects to the CUDA provider without a
    word, so "ort-trt" figures could be CUDA's. Failed before: every node on CUDA passed as ort-trt."""
    from gap_deploy.runtime.backends.onnxrt import MUST_USE

    all_cuda = [NodePlacement("conv", "Conv", CUDA, ("float",)), NodePlacement("shape", "Shape", CPU, ("int64",))]
    with pytest.raises(BackendUnavailableError, match="ran no node of m.onnx on TensorrtExecutionProvider"):
        check_placement(all_cuda, ACCELERATORS["ort-trt"], backend="ort-trt", path="m.onnx",
                        must_use=MUST_USE["ort-trt"])
    partitioned = all_cuda + [NodePlacement("TRTKernel_graph_0", "TRTKernel", TRT, ("float",))]
    assert [n.op_type for n in check_placement(partitioned, ACCELERATORS["ort-trt"], backend="ort-trt",
                                               path="m.onnx", must_use=MUST_USE["ort-trt"])] == ["Shape"]


def test_gpu_libraries_are_preloaded_before_a_gpu_provider_is_probed(monkeypatch):
    """gpu-review-4, risk 4: onnxruntime.preload_dlls() (onnxruntime/__init__.py) loads CUDA and cuDNN from the
    nvidia-* wheels; nothing called it, so a fresh process could find the providers unavailable. The real CPU
    build is used: it lists no CUDA provider, so the probe is made to see one and must preload first."""
    import onnxruntime as ort

    from gap_deploy.runtime.backends import onnxrt

    calls = []
    monkeypatch.setattr(ort, "preload_dlls", lambda **kw: calls.append(("preload", kw)), raising=False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    real_session = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: calls.append(("session",)) or real_session(
        a[0], a[1], providers=["CPUExecutionProvider"]))
    onnxrt.provider_works.cache_clear()
    onnxrt.load_gpu_libraries.cache_clear()
    try:
        works, why = onnxrt.provider_works("ort-cuda")
    finally:
        onnxrt.provider_works.cache_clear()
        onnxrt.load_gpu_libraries.cache_clear()
    assert [c[0] for c in calls] == ["preload", "session"]
    assert calls[0][1] == {"cuda": True, "cudnn": True, "msvc": False}
    assert not works and "could not be loaded" in why  # the CPU build cannot really run it, and says so
