"""gap-pack bundles: ORT files that run and match, fixed variants, the accelerator report, the operator
config, model.json, and the runtime loading a bundle; and a runtime that runs without the onnx package."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")

from gap_deploy import runtime  # noqa: E402
from gap_deploy.exporter.cli.pack import main  # noqa: E402
from gap_deploy.exporter.pack import pack  # noqa: E402
from gap_deploy.runtime.errors import InputError, UsageError  # noqa: E402
from tests.conftest import assert_clean_failure  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, reference_onnx):
    folder = tmp_path_factory.mktemp("packs") / "bundle"
    result = pack(reference_onnx, folder, fixed=[(1, 3, 224, 224), (2, 3, 32, 48)])
    return folder, result


def test_bundle_files_and_model_json(bundle, reference_onnx):
    folder, result = bundle
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "labels.txt", "model.json", "model.onnx", "model.ort", "model_1x3x224x224.onnx",
                     "model_1x3x224x224.ort", "model_2x3x32x48.onnx", "model_2x3x32x48.ort",
                     "required_operators_and_types.config", "usability.txt"]
    info = json.loads((folder / "model.json").read_text())
    assert info["input"] == "images" and info["layout"] == "NCHW" and info["channel_order"] == "RGB"
    assert info["min_height"] == 4 and info["class_names"][3] == "class3" and len(info["mean"]) == 3
    assert info["files"]["model_1x3x224x224.ort"]["shape"] == [1, 3, 224, 224]
    import hashlib

    for name, entry in info["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == entry["sha256"]
    assert (folder / "labels.txt").read_text().split() == [f"class{i}" for i in range(10)]
    readme = (folder / "README.md").read_text()
    assert "addNnapi" in readme and "appendCoreMLExecutionProvider" in readme and "--include_ops_by_config" in readme


def test_every_model_file_runs_and_matches_the_source(bundle, reference_onnx):
    folder, result = bundle
    assert set(result.parity) == {n for n in result.files}
    assert all(r.passed for r in result.parity.values())
    with runtime.load(reference_onnx) as source:
        for name in ("model.ort", "model.onnx"):
            with runtime.load(folder / name) as session:
                for shape in [(1, 3, 4, 4), (1, 3, 37, 53), (3, 3, 64, 20)]:
                    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
                    np.testing.assert_allclose(session.run(x), source.run(x), rtol=1e-5, atol=1e-6)


def test_usability_dynamic_versus_fixed(bundle):
    folder, result = bundle
    rows = {(u.file, u.accelerator): u for u in result.usability}
    dynamic, fixed = rows[("model.onnx", "NNAPI")], rows[("model_1x3x224x224.onnx", "NNAPI")]
    assert dynamic.supported_nodes == 0 and dynamic.verdict == "NO" and "dynamic input shapes" in dynamic.reasons[-1]
    assert fixed.supported_nodes == fixed.nodes > 0 and fixed.partitions == 1 and fixed.verdict == "YES"
    assert rows[("model.onnx", "XNNPACK")].verdict == "NOT CHECKED"
    assert "NNAPI" in (folder / "usability.txt").read_text()


def test_the_operator_config_lists_the_models_operators(bundle, reference_onnx):
    import onnx

    folder, _ = bundle
    config = (folder / "required_operators_and_types.config").read_text()
    ops = {n.op_type for n in onnx.load(str(reference_onnx)).graph.node} - {"Flatten", "Reshape", "Constant"}
    assert ops and all(op in config for op in ops)


def test_runtime_loads_a_bundle_and_its_fixed_variants(bundle):
    folder, _ = bundle
    with runtime.load(folder) as dynamic:
        assert dynamic.path.name == "model.ort"
        assert dynamic.run(np.zeros((1, 3, 50, 70), np.float32)).shape == (1, 10)
    with runtime.load(folder, shape=(1, 3, 224, 224)) as fixed:
        assert fixed.path.name == "model_1x3x224x224.ort"
        assert fixed.run(np.zeros((1, 3, 224, 224), np.float32)).shape == (1, 10)
        with pytest.raises(InputError, match="height 100; this static model takes only 224"):
            fixed.run(np.zeros((1, 3, 100, 224), np.float32))
    with pytest.raises(UsageError, match="no variant fixed to 1x3x64x64; it has 1x3x224x224, 2x3x32x48"):
        runtime.load(folder, shape=(1, 3, 64, 64))


@pytest.mark.slow
def test_a_family_member_packs_too(tmp_path):
    import torch

    import tests.support.families as fam
    from gap_deploy.exporter import export_onnx, load_model
    from tests.conftest import randomize_batchnorm

    torch.manual_seed(0)
    torch.save(randomize_batchnorm(fam.MobileNetish(num_classes=6)).state_dict(), tmp_path / "m.pt")
    onnx_path = export_onnx(load_model(tmp_path / "m.pt", arch="tests.support.families:MobileNetish", num_classes=6),
                            tmp_path / "m.onnx", dynamic=True, imgsz=(64, 64)).path
    result = CliRunner().invoke(main, [str(onnx_path), "-o", str(tmp_path / "b"), "--fixed", "1x3x96x96"])
    assert result.exit_code == 0, result.output
    assert "model_1x3x96x96.onnx                 NNAPI" in result.stdout
    with runtime.load(tmp_path / "b", shape=(1, 3, 96, 96)) as s, runtime.load(onnx_path) as src:
        x = np.random.default_rng(1).standard_normal((1, 3, 96, 96)).astype(np.float32)
        np.testing.assert_allclose(s.run(x), src.run(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("args, code, message", [
    (["-o", "{tmp}/full", "--fixed", "1x3x224x224"], 1, "exists and is not empty"),
    (["-o", "{tmp}/b", "--fixed", "1x1x224x224"], 2, "has 1 channels"),
    (["-o", "{tmp}/b", "--fixed", "1x3x2x2"], 2, "below the model's minimum"),
    (["-o", "{tmp}/b", "--fixed", "1x3x224"], 2, "not of the form"),
    (["-o", "{tmp}/no/such/b"], 1, "does not exist"),
])
def test_bad_input_writes_no_bundle(tmp_path, reference_onnx, args, code, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    result = CliRunner().invoke(main, [str(reference_onnx), *[a.format(tmp=tmp_path) for a in args]])
    assert_clean_failure(result, message, code=code)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine" and not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_the_runtime_runs_without_the_onnx_package(bundle, reference_onnx, tmp_path):
    """An edge install has no onnx: loading, checking inputs and metadata, bundles, and ONNX Runtime's own
    refusal of external data outside the model's folder all work without it."""
    import onnx
    from onnx import TensorProto, helper

    folder, _ = bundle
    evil = tmp_path / "evil"
    evil.mkdir()
    (tmp_path / "secret.bin").write_bytes(b"1234")
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    weight.data_location = TensorProto.EXTERNAL
    del weight.float_data[:]
    weight.external_data.add(key="location", value="../secret.bin")
    graph = helper.make_graph([helper.make_node("Mul", ["images", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 4, 4])], [weight])
    onnx.save(helper.make_model(graph), str(evil / "model.onnx"))
    code = f"""
        import sys
        for name in ("onnx", "onnxconverter_common", "torch"):
            sys.modules[name] = None  # any import of them now fails
        import importlib, pkgutil, numpy as np, runtime
        from gap_deploy.runtime.errors import ArtifactError
        for m in pkgutil.walk_packages(runtime.__path__, "gap_deploy.runtime."):
            importlib.import_module(m.name)
        x = np.random.default_rng(0).standard_normal((1, 3, 37, 53)).astype(np.float32)
        with runtime.load({str(reference_onnx)!r}) as a, runtime.load({str(folder)!r}) as b:
            assert a.metadata.min_height == 4 and b.metadata.class_name(2) == "class2"
            np.testing.assert_allclose(a.run(x), b.run(x), rtol=1e-5, atol=1e-6)
        try:
            runtime.load({str(evil / "model.onnx")!r})
        except ArtifactError as exc:
            assert "escapes model directory" in str(exc), exc
        else:
            raise SystemExit("external data outside the folder was loaded")
        print("ok")
    """
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_gap_run_takes_a_bundle_folder(bundle, tmp_path):
    from PIL import Image

    from gap_deploy.runtime.cli.run import main as gap_run

    folder, _ = bundle
    Image.fromarray(np.full((40, 30, 3), 99, np.uint8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(gap_run, [str(folder), str(tmp_path / "a.png"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["artifact"].endswith("model.ort")


def test_a_swapped_or_escaping_bundle_file_is_refused(bundle, tmp_path, reference_onnx):
    """Failed before: model.json's SHA-256s were never checked (a swapped model.ort ran), and its file names
    could point outside the bundle."""
    import json
    import shutil

    from gap_deploy import runtime
    from gap_deploy.runtime.errors import ArtifactError

    bundle = bundle[0]
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "model.ort").write_bytes((copy / "model_2x3x32x48.ort").read_bytes())  # another model, same name
    with pytest.raises(ArtifactError, match="does not match the SHA-256"):
        runtime.load(copy)
    shutil.rmtree(copy)
    shutil.copytree(bundle, copy)
    described = json.loads((copy / "model.json").read_text())
    entry = described["files"].pop("model.ort")
    shutil.copy(copy / "model.ort", tmp_path / "outside.ort")
    described["files"]["../outside.ort"] = entry
    (copy / "model.json").write_text(json.dumps(described))
    with pytest.raises(ArtifactError, match="no plain file name in the bundle"):
        runtime.load(copy)
    with runtime.load(bundle) as session:  # the untouched bundle still loads
        assert session.backend == "ort-cpu"
