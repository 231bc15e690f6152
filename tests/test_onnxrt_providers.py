"""ONNX Runtime's GPU providers: order, no per-node CPU fallback, TensorRT caches and profiles.

This machine's onnxruntime has only the CPU provider, so the GPU sessions are checked where they are
made: the providers and config entries handed to onnxruntime, and what the Session reads back. A real
ort-cuda/ort-trt start is scripts/gpu_check.sh's job.
"""

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

import runtime  # noqa: E402
from runtime.backends import onnxrt  # noqa: E402
from runtime.backends.onnxrt import DISABLE_CPU_FALLBACK, session_setup  # noqa: E402
from runtime.errors import BackendUnavailableError  # noqa: E402
from runtime.metadata import ModelMetadata  # noqa: E402
from runtime.profiles import Profile  # noqa: E402

REAL_SESSION = onnxrt._ort().InferenceSession
META = ModelMetadata(in_channels=3, min_height=4, min_width=4)
DIMS = ("batch", 3, "height", "width")


def test_ort_trt_registers_tensorrt_then_cuda_then_cpu_and_forbids_cpu_fallback(tmp_path):
    providers, config = session_setup("ort-trt", tmp_path / "m.onnx", input_name="images", dims=DIMS, meta=META)
    assert [p for p, _ in providers] == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert config == {DISABLE_CPU_FALLBACK: "1"}
    trt = providers[0][1]
    assert trt["trt_engine_cache_enable"] == "True" and trt["trt_timing_cache_enable"] == "True"
    assert trt["trt_engine_cache_path"] == str(tmp_path.resolve() / ".gap-trt-cache")  # beside the model
    assert (trt["trt_profile_min_shapes"], trt["trt_profile_opt_shapes"], trt["trt_profile_max_shapes"]) == (
        "images:1x3x4x4", "images:1x3x224x224", "images:16x3x1024x1024")  # gap-build's default profile


def test_ort_cuda_forbids_cpu_fallback_unless_allowed(tmp_path):
    providers, config = session_setup("ort-cuda", tmp_path / "m.onnx", input_name="x", dims=DIMS, meta=META)
    assert [p for p, _ in providers] == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert config == {DISABLE_CPU_FALLBACK: "1"}
    _, relaxed = session_setup("ort-cuda", tmp_path / "m.onnx", input_name="x", dims=DIMS, meta=META,
                               allow_cpu_fallback=True)
    assert relaxed == {}
    _, cpu = session_setup("ort-cpu", tmp_path / "m.onnx", input_name="x", dims=DIMS, meta=META)
    assert cpu == {}


def test_user_profile_cache_and_options_override_the_defaults(tmp_path):
    providers, _ = session_setup("ort-trt", tmp_path / "m.onnx", input_name="input", dims=DIMS, meta=META,
                                 cache_dir=tmp_path / "cache", profile=Profile.parse("1x3x32x32:2x3x64x64:4x3x96x96"),
                                 provider_options={"trt_fp16_enable": True, "trt_engine_cache_enable": "False"})
    options = providers[0][1]
    assert options["trt_profile_min_shapes"] == "input:1x3x32x32"
    assert options["trt_profile_max_shapes"] == "input:4x3x96x96"
    assert options["trt_engine_cache_path"] == str(tmp_path / "cache")
    assert options["trt_fp16_enable"] == "True" and options["trt_engine_cache_enable"] == "False"


class FakeInferenceSession:
    """Stands in for onnxruntime.InferenceSession where the GPU providers do not exist: records what it got."""

    made: list = []

    def __init__(self, path, options=None, providers=()):
        self.args = (path, options, providers)
        if options is not None:  # the runtime's own CPU read of the model's input is not a GPU session
            FakeInferenceSession.made.append(self)
        self._real = REAL_SESSION(path, providers=["CPUExecutionProvider"])
        self._providers = [p[0] if isinstance(p, tuple) else p for p in providers]

    def get_providers(self):
        return self._providers

    def get_provider_options(self):
        return {name: {k: str(v) for k, v in opts.items()} for name, opts in self.args[2] if isinstance(opts, dict)}

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_load_passes_provider_options_through_and_reads_them_back(reference_onnx, tmp_path, monkeypatch):
    monkeypatch.setattr(onnxrt, "provider_works", lambda backend: (True, ""))
    monkeypatch.setattr(onnxrt._ort(), "InferenceSession", FakeInferenceSession)
    FakeInferenceSession.made.clear()
    with runtime.load(reference_onnx, "ort-trt", provider_options={"trt_max_workspace_size": 1 << 30},
                      cache_dir=tmp_path / "engines", trt_profile="1x3x8x8:1x3x64x64:2x3x128x128") as session:
        applied = session.provider_options["TensorrtExecutionProvider"]
        assert applied["trt_max_workspace_size"] == str(1 << 30)
        assert applied["trt_profile_opt_shapes"] == "images:1x3x64x64"
        assert applied["trt_engine_cache_path"] == str(tmp_path / "engines")
    _, options, _ = FakeInferenceSession.made[0].args
    assert options.get_session_config_entry(DISABLE_CPU_FALLBACK) == "1"
    assert (tmp_path / "engines").is_dir()  # made before onnxruntime writes its first engine


def test_a_node_falling_back_to_the_cpu_fails_loudly(reference_onnx, monkeypatch):
    class Refusing:
        def __init__(self, path, options, providers):
            raise RuntimeError("This session contains graph nodes that are assigned to the default CPU EP, but "
                               "fallback to CPU EP has been explicitly disabled by the user.")

    monkeypatch.setattr(onnxrt, "provider_works", lambda backend: (True, ""))
    monkeypatch.setattr(onnxrt._ort(), "InferenceSession", Refusing)
    with pytest.raises(BackendUnavailableError, match=r"some would fall back to the CPU(.|\n)*allow_cpu_fallback"):
        runtime.load(reference_onnx, "ort-cuda")


def test_the_default_cache_folder_is_beside_the_model(reference_onnx):
    providers, _ = session_setup("ort-trt", Path(reference_onnx), input_name="images", dims=DIMS, meta=META)
    assert Path(providers[0][1]["trt_engine_cache_path"]).parent == Path(reference_onnx).resolve().parent
