"""The ONNX export: symbolic dims, metadata, minimum size, parity, atomic writes, GAP families."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from gap_deploy.exporter import export_model, export_onnx, load_model  # noqa: E402
from gap_deploy.exporter.onnx_export import ParityError, find_min_size  # noqa: E402
from gap_deploy.exporter.parity import default_verify_shapes, torch_infer  # noqa: E402
from gap_deploy.runtime.errors import ExportError, OutputPathError  # noqa: E402
from gap_deploy.runtime.metadata import ModelMetadata  # noqa: E402
from tests.conftest import make_reference, randomize_batchnorm  # noqa: E402
from tests.support.families import FAMILIES  # noqa: E402


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_dynamic_graph_has_named_symbolic_dims(reference_onnx):
    model = onnx.load(str(reference_onnx))
    assert _dims(model.graph.input[0]) == ["batch", 3, "height", "width"]
    assert _dims(model.graph.output[0]) == ["batch", 10]
    assert model.graph.input[0].name == "images" and model.graph.output[0].name == "logits"
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT


def test_metadata_is_recorded(reference_onnx, reference_ckpt):
    import hashlib

    props = {p.key: p.value for p in onnx.load(str(reference_onnx)).metadata_props}
    meta = ModelMetadata.from_props(props)
    assert meta.arch == "GapCNN" and meta.num_classes == 10 and meta.in_channels == 3
    assert (meta.min_height, meta.min_width) == (4, 4)
    assert meta.class_names == tuple(f"class{i}" for i in range(10))
    assert meta.mean == (0.485, 0.456, 0.406) and meta.std == (0.229, 0.224, 0.225)
    assert meta.source_sha256 == hashlib.sha256(reference_ckpt.read_bytes()).hexdigest()
    assert meta.toolkit_version


@pytest.mark.parametrize("shape", [(1, 3, 4, 4), (1, 3, 5, 4), (1, 3, 37, 53), (2, 3, 64, 64),
                                   (5, 3, 17, 129), (1, 3, 300, 7), (1, 3, 512, 512)])
def test_onnx_matches_pytorch_at_many_shapes(reference_onnx, shape):
    session = ort.InferenceSession(str(reference_onnx), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    got = session.run(None, {"images": x})[0]
    want = torch_infer(make_reference())(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_min_size_is_found_by_probing():
    assert find_min_size(make_reference(), 3) == 4


def test_default_verify_shapes_cover_min_odd_nonsquare_large_and_batch():
    shapes = default_verify_shapes(3, (224, 224), 4, dynamic=True)
    assert len(shapes) >= 6
    assert (1, 3, 4, 4) in shapes and (1, 3, 37, 53) in shapes and (1, 3, 224, 224) in shapes
    assert any(b > 1 for b, *_ in shapes) and any(h * w >= 384 * 512 for _, _, h, w in shapes)
    assert default_verify_shapes(3, (96, 80), 4, dynamic=False, batch=2) == [(2, 3, 96, 80)]


def test_static_export_is_static(tmp_path, reference_ckpt):
    out = tmp_path / "static.onnx"
    result = export_onnx(load_model(reference_ckpt), out, dynamic=False, imgsz=(32, 48), batch=2)
    assert _dims(onnx.load(str(out)).graph.input[0]) == [2, 3, 32, 48]
    assert [r.shape for r in result.parity.rows] == [(2, 3, 32, 48)]


def test_imgsz_below_minimum_is_refused(reference_ckpt):
    with pytest.raises(ExportError, match="below this model's minimum input size 4x4"):
        export_model(load_model(reference_ckpt), imgsz=(3, 3))


@pytest.mark.parametrize("kwargs, message", [
    ({"opset": 11}, "opset 11 is not supported"),
    ({"class_names": ("a", "b")}, "2 class names given but the model has 10 classes"),
    ({"mean": (0.1, 0.2)}, "mean has 2 values"),
    ({"std": (0.0,)}, "std values must be > 0"),
])
def test_bad_export_options(reference_ckpt, kwargs, message):
    with pytest.raises(ExportError, match=message):
        export_model(load_model(reference_ckpt), imgsz=(32, 32), **kwargs)


@pytest.fixture(scope="module")
def shape_branch_ckpt(tmp_path_factory):
    import torch

    from tests.support.families import ShapeBranch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("branch") / "branch.pt"
    torch.save(ShapeBranch().state_dict(), path)
    return path


def test_failed_verification_writes_nothing_and_keeps_an_existing_file(tmp_path, shape_branch_ckpt):
    """A model the trace gets wrong (a Python branch on the width) fails the default tolerance."""
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous good model")
    loaded = load_model(shape_branch_ckpt, arch="tests.support.families:ShapeBranch")
    with pytest.raises(ParityError, match="differs from PyTorch") as info:
        export_onnx(loaded, out, dynamic=True, imgsz=(32, 32))
    rows = {r.shape: r for r in info.value.report.rows}
    assert rows[(1, 3, 32, 32)].passed and not rows[(1, 3, 37, 53)].passed  # even width fine, odd width not
    assert out.read_bytes() == b"previous good model"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temp file left behind


def test_a_wrong_graph_fails_verification(tmp_path, reference_ckpt, monkeypatch):
    """The default tolerance catches a graph that differs from the model (here: another model's weights)."""
    loaded = load_model(reference_ckpt)
    exported = export_model(loaded, dynamic=True, imgsz=(32, 32))
    from gap_deploy.exporter.parity import check_parity

    other = make_reference(seed=99)
    report = check_parity(other, exported.model, default_verify_shapes(3, (32, 32), 4, dynamic=True))
    assert not report.passed and all(r.rel_err > 1e-2 for r in report.rows)


def test_output_folder_must_exist(tmp_path, reference_ckpt):
    with pytest.raises(OutputPathError, match="does not exist"):
        export_onnx(load_model(reference_ckpt), tmp_path / "nope" / "m.onnx")


def test_simplify_keeps_dims_and_parity(tmp_path, reference_ckpt):
    out = tmp_path / "slim.onnx"
    result = export_onnx(load_model(reference_ckpt), out, dynamic=True, imgsz=(32, 32), simplify=True)
    assert result.export.simplified and result.parity.passed
    assert _dims(onnx.load(str(out)).graph.input[0]) == ["batch", 3, "height", "width"]


def test_report_to_dict_is_json(reference_ckpt, tmp_path):
    result = export_onnx(load_model(reference_ckpt), tmp_path / "m.onnx", dynamic=True, imgsz=(16, 16))
    data = json.loads(json.dumps(result.parity.to_dict()))
    assert data["passed"] is True and {"shape", "max_abs_err", "rel_err", "top1_agreement", "passed"} <= set(
        data["shapes"][0])


@pytest.mark.slow
@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_gap_families_export_dynamic_and_match(tmp_path, family):
    import tests.support.families as fam

    model = randomize_batchnorm(getattr(fam, family)(num_classes=6))
    ckpt = tmp_path / f"{family}.pt"
    torch.save(model.state_dict(), ckpt)
    loaded = load_model(ckpt, arch=f"tests.support.families:{family}", num_classes=6)
    result = export_onnx(loaded, tmp_path / f"{family}.onnx", dynamic=True, imgsz=(64, 64))
    assert result.parity.passed, result.parity.format_table()
    assert result.export.input_dims == ("batch", 3, "height", "width")
    # the check is meaningful: different inputs give different logits
    infer = torch_infer(loaded.module)
    a, b = (infer(np.random.default_rng(s).standard_normal((1, 3, 40, 40)).astype(np.float32)) for s in (0, 1))
    assert not np.allclose(a, b)


@pytest.mark.slow
def test_models_above_the_protobuf_limit_use_external_data(tmp_path, reference_ckpt, monkeypatch):
    """Exercised with the 2 GiB threshold lowered to 10 kB: graph + OUTPUT.data, checked, verified, loadable."""
    import numpy as np

    from gap_deploy import runtime
    from gap_deploy.runtime import onnx_file

    monkeypatch.setattr(onnx_file, "EXTERNAL_DATA_THRESHOLD", 10_000)
    out = tmp_path / "big.onnx"
    result = export_onnx(load_model(reference_ckpt), out, dynamic=True, imgsz=(32, 32))
    assert result.parity.passed  # verified through a spilled copy: the in-memory path cannot take it
    data = tmp_path / "big.onnx.data"
    assert data.stat().st_size > 50_000 and out.stat().st_size < 20_000  # the weights live beside the graph
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]  # no staging left
    import onnx

    stored = onnx.load(str(out), load_external_data=False)
    locations = {e.value for t in stored.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"big.onnx.data"}  # relative, inside the model's folder
    x = np.random.default_rng(0).standard_normal((2, 3, 37, 53)).astype(np.float32)
    monkeypatch.setattr(onnx_file, "EXTERNAL_DATA_THRESHOLD", 1 << 40)
    small = export_onnx(load_model(reference_ckpt), tmp_path / "small.onnx", dynamic=True, imgsz=(32, 32))
    with runtime.load(out) as big, runtime.load(small.path) as plain:
        np.testing.assert_allclose(big.run(x), plain.run(x), rtol=1e-6)


def test_the_minimum_probe_accepts_any_failure_as_too_small():
    """A model that asserts on small inputs (or raises KeyError) still gets its minimum found."""
    import torch

    from gap_deploy.exporter.onnx_export import find_min_size

    class Picky(torch.nn.Module):
        def forward(self, x):
            assert x.shape[-1] >= 13, "too small"
            if x.shape[-1] < 15:
                raise KeyError("needs 15")
            return x.mean((2, 3))

    assert find_min_size(Picky(), 3) == 15

    class Large(torch.nn.Module):
        def forward(self, x):
            if x.shape[-1] < 300:
                raise RuntimeError("too small")
            return x.mean((2, 3))

    assert find_min_size(Large(), 3) == 300  # found by doubling and bisection, not 300 forward passes


@pytest.mark.slow
def test_no_artifact_carries_the_exporting_machine_s_paths(tmp_path, reference_ckpt):
    """Failed before: the dynamo exporter's per-node stack traces put 23 absolute paths into the seed model's 9
    nodes. Every file gap-export, gap-pack and gap-triton write is searched for the source folders' paths."""
    from pathlib import Path

    import onnx
    import torch
    from click.testing import CliRunner

    from gap_deploy.exporter.cli.export import main as export
    from gap_deploy.exporter.cli.pack import main as pack
    from gap_deploy.exporter.cli.triton import main as triton

    out = tmp_path / "m.onnx"
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    for extra in (["--precision", "fp16"], ["--precision", "int8", "--calib", str(calib), "--min-top1", "0"]):
        result = CliRunner().invoke(export, [str(reference_ckpt), "--dynamic", "--imgsz", "32", "-o", str(out), *extra])
        assert result.exit_code == 0, result.output
    assert CliRunner().invoke(pack, [str(out), "-o", str(tmp_path / "bundle")]).exit_code == 0
    assert CliRunner().invoke(triton, [str(out), "-o", str(tmp_path / "repo")]).exit_code == 0
    private = [str(Path(__file__).resolve().parents[2]).encode(), str(Path(torch.__file__).parent).encode()]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".onnx", ".ort", ".json", ".pbtxt")]
    assert len(written) >= 6
    leaks = {str(p.relative_to(tmp_path)): [s.decode() for s in private if s in p.read_bytes()] for p in written}
    assert {k: v for k, v in leaks.items() if v} == {}
    scopes = [p.key for n in onnx.load(str(out)).graph.node for p in n.metadata_props]
    assert "pkg.torch.onnx.name_scopes" in scopes and "pkg.torch.onnx.stack_trace" not in scopes
    kept = tmp_path / "kept.onnx"
    result = CliRunner().invoke(export, [str(reference_ckpt), "--dynamic", "--imgsz", "32", "-o", str(kept),
                                         "--keep-stack-traces"])
    assert result.exit_code == 0 and private[0] in kept.read_bytes()  # kept when asked: the test can fail


def test_an_in_memory_module_exports_as_a_notebook_has_it(tmp_path):
    """export_onnx(module, ...) with an nn.Module, no checkpoint file: verified against PyTorch and written; a
    thing that is no module is one clear error."""
    import onnxruntime as ort

    from gap_deploy.exporter import export_onnx
    from gap_deploy.runtime.errors import CheckpointError
    from tests.conftest import make_reference

    module = make_reference(seed=5).train()  # left in training mode, as a notebook often leaves it
    result = export_onnx(module, tmp_path / "m.onnx", dynamic=True, imgsz=(32, 32))
    assert result.parity is not None and result.parity.passed and not module.training
    x = np.random.default_rng(0).standard_normal((1, 3, 40, 56)).astype(np.float32)
    session = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    import torch

    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: x})[0], want, rtol=1e-4, atol=1e-5)
    with pytest.raises(CheckpointError, match="give an nn.Module"):
        export_onnx({"weight": 1}, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


class _FixedGridHead(torch.nn.Module):
    """VGG's head in small: a 4x4 adaptive pool, Flatten, Linear."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU())
        self.pool = torch.nn.AdaptiveAvgPool2d(4)
        self.fc = torch.nn.Linear(8 * 16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def test_a_fixed_grid_head_is_refused_for_dynamic_sizes_and_exports_static(tmp_path, monkeypatch):
    """--dynamic on a head that pools to a fixed grid (its window is fixed at export) failed with onnxruntime's
    traceback at the first other size; now one message with the fix, and the static export works. Any other
    failure of ONNX Runtime during the check is one message too."""
    import gap_deploy.exporter.parity as parity

    module = _FixedGridHead().eval()
    with pytest.raises(ExportError, match=r"pool \(AdaptiveAvgPool2d\(4\)\) pools to a fixed 4x4 grid") as caught:
        export_onnx(module, tmp_path / "d.onnx", dynamic=True, imgsz=(32, 32))
    assert "without --dynamic" in caught.value.hint and not (tmp_path / "d.onnx").exists()
    assert export_onnx(module, tmp_path / "s.onnx", dynamic=False, imgsz=(32, 32)).parity.passed

    def broken(*args, **kwargs):
        raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : Non-zero status code returned while running Reshape")
    monkeypatch.setattr(parity, "check_parity", broken)
    with pytest.raises(ExportError, match="does not run at every verify shape"):
        export_onnx(make_reference(), tmp_path / "r.onnx", dynamic=True, imgsz=(32, 32))
    assert not (tmp_path / "r.onnx").exists()
