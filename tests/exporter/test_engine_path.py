"""gap-export --engine: the FP32 model, the variant, the plan and the manifest appear together or not at all, and
the variant is verified on the same sweep with or without --engine.

TensorRT's builder is the spec'd double of tests/support/trt_builder_api.py: ``build_serialized_network`` returns None
when the build fails (TensorRT's Python API, IBuilder.build_serialized_network: "returns None on failure"), and
the double raises KeyboardInterrupt to stand for Ctrl-C during the build.
"""

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import assert_clean_failure
from tests.support.trt_builder_api import FakeBuild
from tests.support.trt_doubles import FakeDevice

pytest.importorskip("torch")


@pytest.fixture
def fake_tensorrt(monkeypatch):
    import gap_deploy.exporter.builder as builder
    from gap_deploy.runtime.backends.cuda import Cuda

    fake = FakeBuild()
    real_device = builder.build_device
    monkeypatch.setattr(builder, "import_builder", lambda: fake.module)
    monkeypatch.setattr(builder, "build_device", lambda cuda=None: real_device(Cuda(FakeDevice().rt)))
    return fake


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _export(ckpt, out, *extra):
    from gap_deploy.exporter.cli.export import main

    args = [str(ckpt), "--dynamic", "--imgsz", "32", "-o", str(out), "--precision", "fp16", "--engine",
            "--no-verify", *extra]
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize("failure", ["build fails", "ctrl-c"])
def test_a_failed_or_interrupted_build_leaves_no_file_and_the_old_pair_intact(tmp_path, reference_ckpt,
                                                                             fake_tensorrt, failure):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old fp32")
    (tmp_path / "m.fp16.onnx").write_bytes(b"old fp16")
    before = _snapshot(tmp_path)
    if failure == "build fails":
        fake_tensorrt.builder.build_serialized_network.return_value = None
    else:
        fake_tensorrt.builder.build_serialized_network.side_effect = KeyboardInterrupt
    result = _export(reference_ckpt, out)
    if failure == "build fails":
        assert_clean_failure(result, "TensorRT failed to build an engine")
    else:
        assert_clean_failure(result, "Interrupted", code=130)
    assert fake_tensorrt.builder.build_serialized_network.called  # it got as far as the build
    assert _snapshot(tmp_path) == before  # no plan, no manifest, no staging, the old pair as it was


def test_a_finished_build_publishes_all_four_files(tmp_path, reference_ckpt, fake_tensorrt):
    import onnx

    from gap_deploy.runtime.files import sha256_file
    from gap_deploy.runtime.manifest import EngineManifest

    out = tmp_path / "m.onnx"
    result = _export(reference_ckpt, out)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.fp16.onnx", "m.fp16.plan", "m.fp16.plan.json", "m.onnx"]
    parsed = Path(fake_tensorrt.parser.parse_from_file.call_args.args[0])
    assert not parsed.exists()  # TensorRT parsed the staged variant, which then moved into place
    manifest = EngineManifest.read(tmp_path / "m.fp16.plan")
    assert manifest.onnx_sha256 == sha256_file(tmp_path / "m.fp16.onnx")  # the engine's source is the variant
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.fp16.onnx")).metadata_props}
    assert meta["gap.precision"] == "fp16"


def test_the_variant_is_verified_on_one_sweep_with_or_without_the_engine(tmp_path, reference_ckpt, fake_tensorrt,
                                                                         monkeypatch):
    import gap_deploy.exporter.builder as builder
    from gap_deploy.exporter.builder import BuildConfig

    monkeypatch.setattr(builder, "engine_verifier", lambda *a, **k: None)  # the fake engine's logits are no model's
    from gap_deploy.exporter.onnx_export import ExportOptions
    from gap_deploy.exporter.pipeline import ExportJob, run_export
    from gap_deploy.exporter.precision import VariantOptions

    sweeps = []
    for name, engine in (("plain", None), ("engine", BuildConfig())):
        folder = tmp_path / name
        folder.mkdir()
        job = ExportJob(reference_ckpt, folder / "m.onnx", options=ExportOptions(imgsz=(32, 32)),
                        variant=VariantOptions("fp16", calib_size=(32, 32)), engine=engine)
        outcome = run_export(job)
        sweeps.append([r.shape for r in outcome.variant.sweep.rows])
        assert [r.shape for r in outcome.variant.sweep.rows] == [r.shape for r in outcome.parity.rows]
    assert sweeps[0] == sweeps[1] and len(sweeps[0]) >= 5
