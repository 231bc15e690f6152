"""The TensorRT builder against spec'd doubles: the calls it makes, and what it writes."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner  # noqa: E402

from gap_deploy.exporter.builder import (  # noqa: E402
    BuildConfig,
    Profile,
    build_engine,
    build_with_precision,
    layer_precisions,
    read_onnx_input,
)
from gap_deploy.exporter.precision import VariantOptions
from gap_deploy.runtime.backends.cuda import Cuda  # noqa: E402
from gap_deploy.runtime.errors import BuildError, MissingDependencyError  # noqa: E402
from gap_deploy.runtime.files import sha256_file  # noqa: E402
from gap_deploy.runtime.manifest import EngineManifest, manifest_path  # noqa: E402
from tests.conftest import assert_clean_failure  # noqa: E402
from tests.support.trt_builder_api import FakeBuild, IParserError
from tests.support.trt_doubles import FakeDevice


@pytest.fixture
def cuda():
    return Cuda(FakeDevice().rt)


def test_default_profile_from_metadata(reference_onnx):
    profile = read_onnx_input(reference_onnx).default_profile()
    assert profile == Profile((1, 3, 4, 4), (1, 3, 224, 224), (16, 3, 1024, 1024))


def test_single_profile_workspace_and_strong_typing_on_11(tmp_path, reference_onnx, cuda):
    fake = FakeBuild("11.4.0.106")
    plan = tmp_path / "m.plan"
    cfg = BuildConfig(profiles=(Profile((1, 3, 8, 8), (1, 3, 64, 64), (4, 3, 128, 128)),), workspace_gib=2)
    result = build_engine(reference_onnx, plan, cfg, trt=fake.module, cuda=cuda)
    fake.builder.create_network.assert_called_once_with(0)  # TensorRT 11: always strongly typed, no flags
    fake.parser.parse_from_file.assert_called_once_with(str(reference_onnx))
    fake.config.set_memory_pool_limit.assert_called_once_with(fake.module.MemoryPoolType.WORKSPACE, 2 << 30)
    assert len(fake.profiles) == 1
    fake.profiles[0].set_shape.assert_called_once_with("images", (1, 3, 8, 8), (1, 3, 64, 64), (4, 3, 128, 128))
    fake.config.add_optimization_profile.assert_called_once_with(fake.profiles[0])
    assert plan.read_bytes() == b"PLAN" * 64
    manifest = EngineManifest.read(plan)
    assert manifest.precision == "fp16" and result.layer_precisions == {"fp16": 2, "fp32": 1}
    assert manifest.profiles == [{"images": [[1, 3, 8, 8], [1, 3, 64, 64], [4, 3, 128, 128]]}]
    assert manifest.gpu_name == "NVIDIA H100 80GB HBM3" and manifest.compute_capability == "9.0"
    assert manifest.metadata["gap.min_height"] == "4" and manifest.tensorrt_version == "11.4.0.106"


def test_strongly_typed_flag_on_tensorrt_10(tmp_path, reference_onnx, cuda):
    fake = FakeBuild("10.16.1")
    build_engine(reference_onnx, tmp_path / "m.plan", trt=fake.module, cuda=cuda)
    fake.builder.create_network.assert_called_once_with(1 << 1)  # STRONGLY_TYPED is 1 on TensorRT 10.x
    assert EngineManifest.read(tmp_path / "m.plan").precision == "fp16"  # read from the 10.x inspector schema


def test_several_profiles(tmp_path, reference_onnx, cuda):
    fake = FakeBuild()
    profiles = (Profile((1, 3, 4, 4), (1, 3, 32, 32), (8, 3, 64, 64)),
                Profile((1, 3, 65, 65), (1, 3, 224, 224), (2, 3, 512, 512)))
    build_engine(reference_onnx, tmp_path / "m.plan", BuildConfig(profiles=profiles), trt=fake.module, cuda=cuda)
    assert [p.set_shape.call_args.args[1:] for p in fake.profiles] == [
        ((1, 3, 4, 4), (1, 3, 32, 32), (8, 3, 64, 64)), ((1, 3, 65, 65), (1, 3, 224, 224), (2, 3, 512, 512))]
    assert fake.config.add_optimization_profile.call_count == 2


def test_a_profile_tensorrt_refuses_is_said_before_the_build(tmp_path, reference_onnx, cuda):
    """IBuilderConfig::addOptimizationProfile returns -1 for an invalid profile (NvInfer.h). Failed before
    (gpu-review-4, risk 10): the -1 was ignored and the build went on to fail later, less directly."""
    fake = FakeBuild()
    fake.invalid_profile = True
    with pytest.raises(BuildError, match="TensorRT refused the optimization profile"):
        build_engine(reference_onnx, tmp_path / "m.plan", trt=fake.module, cuda=cuda)
    fake.builder.build_serialized_network.assert_not_called()
    assert not list(tmp_path.iterdir())


def test_timing_cache_round_trip(tmp_path, reference_onnx, cuda):
    cache = tmp_path / "timing.cache"
    fake = FakeBuild()
    build_engine(reference_onnx, tmp_path / "a.plan", BuildConfig(timing_cache=cache), trt=fake.module, cuda=cuda)
    fake.config.create_timing_cache.assert_called_once_with(b"")
    fake.config.set_timing_cache.assert_called_once_with(fake.cache, ignore_mismatch=False)
    assert cache.read_bytes() == b"timing-cache-v2"
    again = FakeBuild()
    build_engine(reference_onnx, tmp_path / "b.plan", BuildConfig(timing_cache=cache), trt=again.module, cuda=cuda)
    again.config.create_timing_cache.assert_called_once_with(b"timing-cache-v2")


def test_compatibility_flags(tmp_path, reference_onnx, cuda):
    fake = FakeBuild()
    build_engine(reference_onnx, tmp_path / "m.plan", BuildConfig(version_compatible=True, hardware_compat="ampere+"),
                 trt=fake.module, cuda=cuda)
    fake.config.set_flag.assert_called_once_with(fake.module.BuilderFlag.VERSION_COMPATIBLE)
    assert fake.config.hardware_compatibility_level == fake.module.HardwareCompatibilityLevel.AMPERE_PLUS
    assert fake.runtime.engine_host_code_allowed is True
    manifest = EngineManifest.read(tmp_path / "m.plan")
    assert manifest.version_compatible and manifest.hardware_compatibility == "ampere+"


def test_int8_engine_precision_is_read_back(tmp_path, reference_onnx, cuda):
    fake = FakeBuild(datatype="Int8")
    build_engine(reference_onnx, tmp_path / "m.plan", trt=fake.module, cuda=cuda)
    assert EngineManifest.read(tmp_path / "m.plan").precision == "int8"


@pytest.mark.parametrize("schema", [10, 11])
@pytest.mark.parametrize("datatype, counts", [("Half", {"fp16": 2, "fp32": 1}), ("Int8", {"int8": 2, "fp32": 1}),
                                              ("Float", {"fp32": 3})])
def test_layer_precision_parsing_reads_both_inspector_schemas(schema, datatype, counts):
    from tests.support.trt_builder_api import inspector_json

    assert layer_precisions(inspector_json(datatype, schema)) == counts


def test_layer_precision_parsing_of_names_only_or_garbage():
    assert layer_precisions('{"Layers": ["conv1", "conv2"]}') == {}  # verbosity too low: names only
    assert layer_precisions("not json") == {}
    assert layer_precisions('{"Layers": [{"Outputs": [{"Format/Datatype": "Row major linear Int32 format"}]}]}') == {}
    # a per-layer "DataType" key is no TensorRT schema (10.x and 11.x both write Format/Datatype): not read
    assert layer_precisions('{"Layers": [{"Outputs": [{"Format": "kLINEAR", "DataType": "Half"}]}]}') == {}


def test_an_unreadable_precision_is_an_error_and_writes_nothing(tmp_path, reference_onnx, cuda):
    from gap_deploy.runtime.parity import tolerance_for

    fake = FakeBuild()
    fake.inspector.get_engine_information.return_value = '{"Layers": ["conv1", "conv2"]}'
    with pytest.raises(BuildError, match="precision really built is unknown"):
        build_engine(reference_onnx, tmp_path / "m.plan", trt=fake.module, cuda=cuda)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="no tolerance for precision 'unknown'"):
        tolerance_for("unknown", "trt")


@pytest.mark.parametrize("version, choice, ok", [("10.8.0", "same-cc", False), ("10.8.0", "ampere+", True),
                                                 ("10.9.0", "same-cc", True), ("11.4.0.106", "same-cc", True)])
def test_hardware_compatibility_is_looked_up_alone(tmp_path, reference_onnx, cuda, version, choice, ok):
    fake = FakeBuild(version)
    config = BuildConfig(hardware_compat=choice)
    if ok:
        build_engine(reference_onnx, tmp_path / "m.plan", config, trt=fake.module, cuda=cuda)
        member = {"same-cc": "SAME_COMPUTE_CAPABILITY", "ampere+": "AMPERE_PLUS"}[choice]
        assert fake.config.hardware_compatibility_level == getattr(fake.module.HardwareCompatibilityLevel, member)
    else:
        with pytest.raises(BuildError, match=r"'same-cc' needs TensorRT 10.9 or newer; this is TensorRT 10.8.0"):
            build_engine(reference_onnx, tmp_path / "m.plan", config, trt=fake.module, cuda=cuda)
        fake.builder.build_serialized_network.assert_not_called()


def test_a_rejected_timing_cache_is_replaced_by_a_new_one(tmp_path, reference_onnx, cuda):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"cache-from-another-gpu")
    fake = FakeBuild()
    fake.config.set_timing_cache.side_effect = [False, True]
    notes = []
    build_engine(reference_onnx, tmp_path / "m.plan", BuildConfig(timing_cache=cache), trt=fake.module, cuda=cuda,
                 log=notes.append)
    assert [c.args[0] for c in fake.config.create_timing_cache.call_args_list] == [b"cache-from-another-gpu", b""]
    assert any("rejected the timing cache" in n for n in notes)
    assert cache.read_bytes() == b"timing-cache-v2"


def test_no_timing_cache_back_leaves_the_file_alone(tmp_path, reference_onnx, cuda):
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    fake = FakeBuild()
    fake.config.get_timing_cache.return_value = None
    build_engine(reference_onnx, tmp_path / "m.plan", BuildConfig(timing_cache=cache), trt=fake.module, cuda=cuda)
    assert cache.read_bytes() == b"old"


def test_unsupported_tensorrt_is_refused(tmp_path, reference_onnx, cuda):
    fake = FakeBuild("10.16.1")
    fake.module.__version__ = "8.6.1"
    with pytest.raises(BuildError, match="TensorRT 8.6.1 is not supported"):
        build_engine(reference_onnx, tmp_path / "m.plan", trt=fake.module, cuda=cuda)


def test_parser_errors_are_listed_with_node_names(tmp_path, reference_onnx, cuda):
    from unittest import mock

    fake = FakeBuild()
    fake.parser.parse_from_file.return_value = False
    fake.parser.num_errors = 1
    error = mock.create_autospec(IParserError, instance=True)
    error.node_name.return_value, error.node_operator.return_value = "node_ReduceMean_7", "ReduceMean"
    error.desc.return_value = "unsupported attribute"
    fake.parser.get_error.return_value = error
    with pytest.raises(BuildError, match=r"rejected .* 1 error(.|\n)*node 'node_ReduceMean_7' \(ReduceMean\): "
                                         r"unsupported attribute"):
        build_engine(reference_onnx, tmp_path / "m.plan", trt=fake.module, cuda=cuda)
    assert not list(tmp_path.iterdir())


def test_failed_build_is_a_clear_error_and_writes_nothing(tmp_path, reference_onnx, cuda):
    fake = FakeBuild()
    fake.builder.build_serialized_network.return_value = None
    with pytest.raises(BuildError, match="failed to build an engine(.|\n)*--workspace"):
        build_engine(reference_onnx, tmp_path / "m.plan", trt=fake.module, cuda=cuda)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("profile, message", [
    (Profile((1, 3, 64, 64), (1, 3, 32, 32), (1, 3, 128, 128)), "not ordered"),
    (Profile((1, 3, 2, 2), (1, 3, 32, 32), (1, 3, 64, 64)), "below the model's minimum input size 4x4"),
    (Profile((1, 1, 8, 8), (1, 1, 32, 32), (1, 1, 64, 64)), "static channels of 3"),
])
def test_bad_profiles(tmp_path, reference_onnx, cuda, profile, message):
    with pytest.raises(BuildError, match=message):
        build_engine(reference_onnx, tmp_path / "m.plan", BuildConfig(profiles=(profile,)), trt=FakeBuild().module,
                     cuda=cuda)


def test_static_onnx_with_a_dynamic_profile_says_re_export(tmp_path, reference_ckpt, cuda):
    pytest.importorskip("torch")
    from gap_deploy.exporter import export_onnx, load_model

    static = tmp_path / "static.onnx"
    export_onnx(load_model(reference_ckpt), static, dynamic=False, imgsz=(32, 32), verify=False)
    dynamic = BuildConfig(profiles=(Profile((1, 3, 8, 8), (1, 3, 32, 32), (1, 3, 64, 64)),))
    with pytest.raises(BuildError, match=r"static height of 32(.|\n)*gap-export --dynamic"):
        build_engine(static, tmp_path / "m.plan", dynamic, trt=FakeBuild().module, cuda=cuda)
    build_engine(static, tmp_path / "m.plan", trt=FakeBuild().module, cuda=cuda)  # default: the static shape
    assert EngineManifest.read(tmp_path / "m.plan").profiles == [{"images": [[1, 3, 32, 32]] * 3}]


def _ort_compute(onnx_path):
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {"images": x})[0]


def test_build_verifies_the_engine_against_onnxruntime(tmp_path, reference_onnx, cuda):
    """The whole gap-build path: the fake engine computes with the real model, so parity must pass."""
    profile = Profile((1, 3, 4, 4), (1, 3, 32, 32), (2, 3, 64, 48))
    fake = FakeBuild(datatype="Float", compute=_ort_compute(reference_onnx),
                     profiles=[(profile.min, profile.opt, profile.max)])
    result = build_with_precision(reference_onnx, tmp_path / "m.plan", config=BuildConfig(profiles=(profile,)),
                                  trt=fake.module, cuda=cuda)
    assert result.engine_parity.passed
    assert [r.shape for r in result.engine_parity.rows] == [(1, 3, 4, 4), (1, 3, 32, 32), (2, 3, 64, 48)]
    assert (tmp_path / "m.plan").exists() and manifest_path(tmp_path / "m.plan").exists()


def test_an_engine_that_disagrees_is_not_written(tmp_path, reference_onnx, cuda):
    profile = Profile((1, 3, 4, 4), (1, 3, 32, 32), (2, 3, 64, 48))
    wrong = FakeBuild(datatype="Float", compute=lambda x: np.zeros((len(x), 10), np.float32),
                      profiles=[(profile.min, profile.opt, profile.max)])
    with pytest.raises(BuildError, match=r"differ from ONNX Runtime's(.|\n)*FAIL"):
        build_with_precision(reference_onnx, tmp_path / "m.plan", config=BuildConfig(profiles=(profile,)),
                             trt=wrong.module, cuda=cuda)
    assert [p.name for p in tmp_path.iterdir()] == []


def test_fp16_conversion_before_the_build(tmp_path, reference_onnx, cuda):
    src = tmp_path / "m.onnx"
    src.write_bytes(reference_onnx.read_bytes())
    fake = FakeBuild()
    result = build_with_precision(src, tmp_path / "m.fp16.plan", variant=VariantOptions("fp16", calib_size=(32, 32)),
                                  verify=False, trt=fake.module, cuda=cuda)
    assert result.source == tmp_path / "m.fp16.onnx" and result.variant.sweep.passed
    parsed = Path(fake.parser.parse_from_file.call_args.args[0])  # the staged variant, beside its target
    assert parsed.parent.parent == tmp_path and parsed.parent.name.startswith(".m.fp16.onnx.") and not parsed.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fp16.onnx", "m.fp16.plan", "m.fp16.plan.json", "m.onnx"]
    assert EngineManifest.read(tmp_path / "m.fp16.plan").onnx_sha256 == sha256_file(tmp_path / "m.fp16.onnx")


@pytest.mark.parametrize("failure", ["build", "verify", "interrupt"])
def test_variant_plan_and_manifest_appear_together_or_not_at_all(tmp_path, reference_onnx, cuda, failure):
    # Failed before: the variant ONNX was written before the engine was built, so a failed build left it.
    src = tmp_path / "m.onnx"
    src.write_bytes(reference_onnx.read_bytes())
    old = {name: f"old {name}".encode() for name in ("m.fp16.onnx", "m.fp16.plan", "m.fp16.plan.json")}
    for name, data in old.items():
        (tmp_path / name).write_bytes(data)
    profile = Profile((1, 3, 4, 4), (1, 3, 32, 32), (2, 3, 64, 48))
    shapes = [(profile.min, profile.opt, profile.max)]
    fake = FakeBuild(datatype="Half", profiles=shapes)
    expected: type[BaseException] = BuildError
    if failure == "build":
        fake.builder.build_serialized_network.return_value = None  # TensorRT's own failure signal
    elif failure == "verify":
        fake = FakeBuild(datatype="Half", compute=lambda x: np.zeros((len(x), 10), np.float32), profiles=shapes)
    else:
        fake.builder.build_serialized_network.side_effect = KeyboardInterrupt  # Ctrl-C during the build
        expected = KeyboardInterrupt
    with pytest.raises(expected):
        build_with_precision(src, tmp_path / "m.fp16.plan", variant=VariantOptions("fp16", calib_size=(32, 32)),
                             config=BuildConfig(profiles=(profile,)), trt=fake.module, cuda=cuda)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*old, "m.onnx"])  # no staged or temp file
    assert all((tmp_path / name).read_bytes() == data for name, data in old.items())  # the old trio intact


def test_gap_build_without_tensorrt(tmp_path, reference_onnx):
    from gap_deploy.exporter.cli.build import main

    result = CliRunner().invoke(main, [str(reference_onnx), "-o", str(tmp_path / "m.plan")])
    assert_clean_failure(result, "needs the full TensorRT", "pip install 'gap-deploy[gpu]'")
    assert not list(tmp_path.iterdir())


def test_gap_export_engine_without_tensorrt_fails_before_exporting(tmp_path, reference_ckpt):
    pytest.importorskip("torch")
    from gap_deploy.exporter.cli.export import main

    result = CliRunner().invoke(main, [str(reference_ckpt), "--dynamic", "--engine", "-o", str(tmp_path / "m.onnx")])
    assert_clean_failure(result, "needs the full TensorRT")
    assert not list(tmp_path.iterdir())


def test_import_builder_names_the_extra(monkeypatch):
    import sys

    from gap_deploy.exporter.builder import import_builder

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(MissingDependencyError, match=r"gap-deploy\[gpu\]"):
        import_builder()


@pytest.mark.parametrize("args, message", [
    (["--min", "1x3x4x4"], "give --min, --opt and --max together"),
    (["--profile", "1x3x4x4:1x3x8x8"], "is not MIN:OPT:MAX"),
    (["--precision", "int8"], "needs calibration data"),
])
def test_gap_build_usage_errors(reference_onnx, args, message):
    from gap_deploy.exporter.cli.build import main

    result = CliRunner().invoke(main, [str(reference_onnx), *args])
    assert_clean_failure(result, message, code=2)


def test_manifest_json_is_readable(tmp_path, reference_onnx, cuda):
    build_engine(reference_onnx, tmp_path / "m.plan", trt=FakeBuild().module, cuda=cuda)
    data = json.loads((tmp_path / "m.plan.json").read_text())
    assert {"tensorrt_version", "gpu_name", "compute_capability", "profiles", "precision", "plan_sha256",
            "onnx_sha256", "version_compatible", "hardware_compatibility", "metadata"} <= set(data)


def test_no_gpu_is_a_clear_error_before_anything_is_written(tmp_path, reference_onnx):
    from gap_deploy.runtime.errors import BackendUnavailableError

    device = FakeDevice()
    device.rt.cudaGetDeviceCount.side_effect = lambda: (device.rt.cudaError_t.cudaErrorNoDevice, None)
    src = tmp_path / "m.onnx"
    src.write_bytes(reference_onnx.read_bytes())
    with pytest.raises(BackendUnavailableError, match=r"no usable CUDA device(.|\n)*gap-deploy\[gpu\]"):
        build_with_precision(src, tmp_path / "m.plan", variant=VariantOptions("fp16"), trt=FakeBuild().module,
                             cuda=Cuda(device.rt))
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no FP16 variant, no plan


def test_static_batch_2_onnx_gets_a_variant_at_its_own_batch(tmp_path, reference_ckpt, cuda):
    pytest.importorskip("torch")
    from gap_deploy.exporter import export_onnx, load_model

    static = tmp_path / "static.onnx"
    export_onnx(load_model(reference_ckpt), static, dynamic=False, imgsz=(32, 40), batch=2, verify=False)
    result = build_with_precision(static, tmp_path / "m.fp16.plan", variant=VariantOptions("fp16"), verify=False,
                                  trt=FakeBuild().module, cuda=cuda)
    assert [r.shape for r in result.variant.sweep.rows] == [(2, 3, 32, 40)]


def test_gap_export_engine_int8_forwards_every_variant_option(tmp_path, reference_ckpt, monkeypatch):
    """gap-export --engine goes through the one variant pipeline, so --min-top1 and --int8-all-layers arrive."""
    pytest.importorskip("torch")
    import gap_deploy.exporter.builder as builder
    import gap_deploy.exporter.pipeline as pipeline
    from gap_deploy.exporter.cli.export import main

    seen = {}

    def fake_convert(model, variant, shapes):
        seen["variant"] = variant
        raise BuildError("stop here")

    real_device = builder.build_device
    monkeypatch.setattr(builder, "import_builder", lambda: FakeBuild().module)
    monkeypatch.setattr(builder, "build_device", lambda cuda=None: real_device(Cuda(FakeDevice().rt)))
    monkeypatch.setattr(pipeline, "convert_verified", fake_convert)
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    args = [str(reference_ckpt), "--dynamic", "--imgsz", "32", "-o", str(tmp_path / "m.onnx"), "--engine",
            "--precision", "int8", "--calib", str(calib), "--min-top1", "0.42", "--int8-all-layers", "--no-verify"]
    result = CliRunner().invoke(main, args)
    assert_clean_failure(result, "stop here")
    assert seen["variant"] == VariantOptions("int8", calib=calib, calib_size=(32, 32), min_top1=0.42,
                                             keep_float_ends=False)


def test_fp32_means_fp32_tensorrt_s_tf32_default_is_cleared(tmp_path, reference_onnx, cuda):
    # TensorRT enables BuilderFlag.TF32 by default (NvInfer.h: "Enabled by default"): gap-build clears it
    fake = FakeBuild(datatype="Float")
    build_engine(reference_onnx, tmp_path / "m.plan", trt=fake.module, cuda=cuda)
    fake.config.clear_flag.assert_called_once_with(fake.module.BuilderFlag.TF32)
    manifest = EngineManifest.read(tmp_path / "m.plan")
    assert (manifest.precision, manifest.tf32) == ("fp32", False)


def test_tf32_when_asked_is_recorded_as_its_own_precision(tmp_path, reference_onnx, cuda):
    from gap_deploy.runtime.parity import tolerance_for

    fake = FakeBuild(datatype="Float")
    build_engine(reference_onnx, tmp_path / "m.plan", BuildConfig(tf32=True), trt=fake.module, cuda=cuda)
    assert not fake.config.clear_flag.called
    manifest = EngineManifest.read(tmp_path / "m.plan")
    assert (manifest.precision, manifest.tf32) == ("tf32", True)
    assert tolerance_for("tf32", "trt").rtol > tolerance_for("fp32", "trt").rtol
    half = FakeBuild(datatype="Half")  # an FP16 engine stays fp16 (its FP32 layers may use TF32: recorded)
    build_engine(reference_onnx, tmp_path / "h.plan", BuildConfig(tf32=True), trt=half.module, cuda=cuda)
    assert EngineManifest.read(tmp_path / "h.plan").precision == "fp16"
    assert EngineManifest.read(tmp_path / "h.plan").tf32 is True


def test_a_timing_cache_tensorrt_cannot_read_is_treated_like_a_rejected_one(tmp_path, reference_onnx, cuda):
    # ITimingCache creation returns None for bytes TensorRT cannot read; it must never reach set_timing_cache
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"truncated")
    fake = FakeBuild()
    fake.config.create_timing_cache.side_effect = [None, fake.cache]
    notes = []
    build_engine(reference_onnx, tmp_path / "m.plan", BuildConfig(timing_cache=cache), trt=fake.module, cuda=cuda,
                 log=notes.append)
    assert [c.args[0] for c in fake.config.create_timing_cache.call_args_list] == [b"truncated", b""]
    fake.config.set_timing_cache.assert_called_once_with(fake.cache, ignore_mismatch=False)
    assert any("rejected the timing cache" in n for n in notes)
    assert cache.read_bytes() == b"timing-cache-v2"


def test_gap_build_signs_the_plan_and_its_manifest_in_the_same_publication(tmp_path, reference_onnx, cuda,
                                                                           build_keys, monkeypatch):
    """The build machine holds the private key; the plan and its manifest appear with their signatures, which a
    device verifies with the public key alone (runtime.signing)."""
    from gap_deploy.runtime.naming import manifest_path
    from gap_deploy.runtime.signing import signature_path, verify_path

    private, public = build_keys
    monkeypatch.setenv("GAP_DEPLOY_SIGN_KEY", str(private))
    fake = FakeBuild()
    plan = tmp_path / "m.plan"
    build_engine(reference_onnx, plan, trt=fake.module, cuda=cuda)
    for path in (plan, manifest_path(plan)):
        assert signature_path(path).is_file() and verify_path(path, public).key == public
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.plan", "m.plan.json", "m.plan.json.sig", "m.plan.sig"]
    fake.builder.build_serialized_network.return_value = None  # a failed build leaves no signature behind
    with pytest.raises(BuildError):
        build_engine(reference_onnx, tmp_path / "n.plan", trt=fake.module, cuda=cuda)
    assert not list(tmp_path.glob("n.plan*"))


def test_gap_build_calibrates_at_the_export_size_and_writes_json(tmp_path, reference_onnx, monkeypatch):
    """gap-build's calibration size defaults to the export size in the model's metadata (64 here), not 224;
    --calib-imgsz overrides it (and its old name --calib-size still does, with a note); --json writes what was
    built. The GPU parts are the strict doubles; the FP16 conversion stops at a fake to read its options."""
    from gap_deploy.exporter import builder, precision
    from gap_deploy.exporter.cli.build import main

    seen = []

    def fake_convert(model, variant, shapes):
        seen.append(variant.calib_size)
        raise BuildError("stop here")

    monkeypatch.setattr(precision, "convert_verified", fake_convert)  # imported by the builder when it converts
    real_device = builder.build_device
    monkeypatch.setattr(builder, "import_builder", lambda: FakeBuild().module)
    monkeypatch.setattr(builder, "build_device", lambda cuda=None: real_device(Cuda(FakeDevice().rt)))
    for extra, size in [([], (64, 64)), (["--calib-imgsz", "48x40"], (48, 40)), (["--calib-size", "32"], (32, 32))]:
        result = CliRunner().invoke(main, [str(reference_onnx), "--precision", "fp16", "-o", str(tmp_path / "m.plan"),
                                           *extra])
        assert_clean_failure(result, "stop here")
        assert seen[-1] == size
        assert ("--calib-size is now --calib-imgsz" in result.stderr) == ("--calib-size" in extra)

    result = CliRunner().invoke(main, [str(reference_onnx), "-o", str(tmp_path / "m.plan"), "--no-verify",
                                       "--json", str(tmp_path / "build.json")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "build.json").read_text())
    manifest = EngineManifest.read(tmp_path / "m.plan")
    assert data["engine"] == str(tmp_path / "m.plan") and data["model"] == str(reference_onnx)
    assert (data["manifest"]["plan_sha256"], data["manifest"]["precision"]) == (manifest.plan_sha256,
                                                                                manifest.precision)


def test_gap_tunes_bucket_profiles_build_one_profile_per_bucket(tmp_path, reference_onnx, monkeypatch):
    """The gap-build line gap-tune --buckets --emit writes, run through gap-build with the TensorRT builder double
    (tests/support/trt_builder_api.py, from TensorRT's IOptimizationProfile API): the engine's manifest holds one
    profile per bucket, min batch 1, opt at the bucket, max batch 8."""
    import shlex

    from gap_deploy.exporter import builder
    from gap_deploy.exporter.cli.build import main
    from gap_deploy.exporter.emit import emit_buckets
    from gap_deploy.runtime.buckets import Bucket, BucketPlan, Planning, Traffic
    from gap_deploy.runtime.tune import TuneResult

    plan = BucketPlan("a", "ort-cpu", (Bucket((24, 24), 0.6, 1.0, 5, 5), Bucket((48, 40), 0.4, 2.0, 5, 5)), 1.4, 2.0)
    planning = Planning(plan, {2: plan}, plan, Traffic("t", np.zeros((1, 2), int), 1), 0.5)
    emit_buckets(TuneResult("val", ("x",), 1, 10), planning, {"a": reference_onnx}, tmp_path / "deploy")
    line = (tmp_path / "deploy" / "gap-build.sh").read_text().splitlines()[-1]
    words = shlex.split(line.replace('"$here"', str(tmp_path / "deploy")))
    assert words[0] == "gap-build"
    real_device = builder.build_device
    monkeypatch.setattr(builder, "import_builder", lambda: FakeBuild().module)
    monkeypatch.setattr(builder, "build_device", lambda cuda=None: real_device(Cuda(FakeDevice().rt)))
    result = CliRunner().invoke(main, [*words[1:], "--no-verify"])
    assert result.exit_code == 0, result.output
    profiles = EngineManifest.read(tmp_path / "deploy" / f"{reference_onnx.stem}.buckets.plan").profiles
    assert [p["images"] for p in profiles] == [[[1, 3, 24, 24], [1, 3, 24, 24], [8, 3, 24, 24]],
                                               [[1, 3, 48, 40], [1, 3, 48, 40], [8, 3, 48, 40]]]
