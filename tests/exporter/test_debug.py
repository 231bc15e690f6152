"""gap-debug: the first layer where an artifact departs from PyTorch, named by the module that made it.

Real PyTorch, real exports, real onnxruntime throughout; faults are planted by editing the exported ONNX with the
onnx package, as a broken converter would.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import onnx  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

from gap_deploy.exporter.checkpoint import LoadedModel  # noqa: E402
from gap_deploy.exporter.debug import attribute, debug_artifact, node_scopes  # noqa: E402
from gap_deploy.exporter.onnx_export import export_model  # noqa: E402
from tests import families  # noqa: E402
from tests.conftest import assert_clean_failure, make_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _loaded(module: nn.Module, channels: int = 3) -> LoadedModel:
    return LoadedModel(module.eval(), type(module).__name__, channels, Path("model.pt"), "0")


def _export(module: nn.Module, imgsz=(32, 32)) -> onnx.ModelProto:
    return export_model(_loaded(module), dynamic=True, imgsz=imgsz).model


def _inputs(*shapes):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s).astype(np.float32) for s in shapes]


def _scale_weight(model: onnx.ModelProto, name: str, factor: float) -> onnx.ModelProto:
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    for init in edited.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(init) * factor).astype(np.float32), name))
            return edited
    raise AssertionError(f"no initializer {name}")


@pytest.mark.parametrize("module_path", ["conv1.0", "conv2.0", "fcn"])
def test_a_planted_fault_is_named_first_and_no_earlier_layer(module_path):
    """One layer's weights changed by 5% in the exported ONNX: that module is the first over the tolerance, no
    earlier layer is, and it adds the most error by itself (the later layers inherit it)."""
    module = make_reference(seed=3)
    fp32 = _export(module)
    faulty = _scale_weight(fp32, f"{module_path}.weight", 1.05)
    report = debug_artifact(module, fp32, faulty, "faulty", _inputs((1, 3, 32, 32), (2, 3, 37, 53)))
    first = report.first_over
    assert first is not None and first.layer.path == module_path
    earlier = [r for r in report.layers if r.layer.order < first.layer.order and r.error]
    assert all(r.error.rel_err < report.tolerance for r in earlier)
    assert len(earlier) == {"conv1.0": 0, "conv2.0": 4, "fcn": 9}[module_path]  # the layers before it, all checked
    assert report.top_added(1)[0].layer.path == module_path
    later = [r for r in report.layers if r.layer.order > first.layer.order and r.layer.leaf and r.added is not None]
    assert all(r.added < report.tolerance for r in later)  # inherited error is not blamed on them
    assert "Conv" in first.layer.label or "Linear" in first.layer.label
    assert any(n.startswith("node_") for n in first.layer.nodes)  # the ONNX node names beside it


def test_an_unchanged_export_has_no_layer_over_the_tolerance():
    module = make_reference(seed=3)
    fp32 = _export(module)
    report = debug_artifact(module, fp32, fp32, "fp32", _inputs((1, 3, 32, 32)))
    assert report.first_over is None and len(report.layers) >= 8
    assert all(r.error.rel_err < 1e-5 and r.error.cosine > 0.99999 for r in report.layers)


def test_the_fp16_overflow_layer_is_named():
    """OverflowNet's boost leaves float16's range in FP32 already; its FP16 conversion (no fallback) turns it inf."""
    from gap_deploy.exporter.precision import to_fp16

    torch.manual_seed(0)
    module = families.OverflowNet()
    fp32 = _export(module, (16, 16))
    x = _inputs((1, 3, 16, 16))
    assert debug_artifact(module, fp32, fp32, "fp32", x).first_beyond_fp16.layer.path == "boost"
    report = debug_artifact(module, fp32, to_fp16(fp32), "fp16", x, tolerance=1e-2)
    assert report.first_over.layer.path == "boost" and report.first_over.error.nonfinite > 0
    earlier = [r for r in report.layers if r.layer.order < report.first_over.layer.order]
    assert earlier and all(r.error.nonfinite == 0 for r in earlier)


class SensitiveNet(nn.Module):
    """One layer INT8 cannot hold: ``s``'s largest weights read a channel that is always 0, so per-channel weight
    scales round every other weight of ``s`` to zero. The layers around it quantize well."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.s = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)
        with torch.no_grad():
            self.a.weight[0] = 0.0
            self.a.bias[0] = -1.0
            self.s.weight[:, 0] *= 1000.0

    def forward(self, x):
        x = torch.relu(self.a(x))
        x = torch.relu(self.s(x))
        x = torch.relu(self.b(x))
        return self.fc(x.mean((2, 3)))


def test_int8_the_sensitive_layer_adds_the_most_error():
    from gap_deploy.exporter.precision import to_int8

    torch.manual_seed(1)
    module = SensitiveNet()
    fp32 = _export(module, (16, 16))
    calib = np.random.default_rng(1).standard_normal((16, 3, 16, 16)).astype(np.float32)
    int8 = to_int8(fp32, calib, keep_float_ends=False)
    report = debug_artifact(module, fp32, int8, "int8", [calib[:4]], tolerance=0.1)
    ranked = report.top_added(4)
    assert ranked[0].layer.path == "s" and ranked[0].added > 10 * ranked[1].added
    b = next(r for r in report.layers if r.layer.path == "b")
    assert b.error.rel_err > 0.1 and b.added < 0.1  # b inherits s's error; it is not blamed for it


@pytest.mark.slow
@pytest.mark.parametrize("family", families.FAMILIES)
def test_attribution_is_complete_on_every_family(family):
    """Every node of the export belongs to a module (the model's own forward included), or is listed as
    unattributed with the reason; every convolution and matrix product is inside some compared layer."""
    torch.manual_seed(0)
    module = getattr(families, family)()
    fp32 = _export(module)
    layers, unattributed = attribute(module, fp32, fp32)
    scopes = node_scopes(fp32)
    listed = {u["node"] for u in unattributed}
    assert all(u["reason"] for u in unattributed)
    for node in fp32.graph.node:
        assert scopes[node.name] is not None or node.name in listed or node.op_type == "Constant", node.name
    bodies = {n for layer in layers if layer.path for n in layer.nodes}
    compute = [n.name for n in fp32.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    assert compute and all(name in bodies for name in compute)
    report = debug_artifact(module, fp32, fp32, family, _inputs((1, 3, 40, 48)))
    assert report.first_over is None, report.format()


def test_a_node_without_metadata_is_listed_as_unattributed():
    module = make_reference(seed=3)
    fp32 = _export(module)
    stripped = onnx.ModelProto()
    stripped.CopyFrom(fp32)
    victim = stripped.graph.node[0]
    del victim.metadata_props[:]
    victim.name = "renamed_by_an_optimizer"
    layers, unattributed = attribute(module, fp32, stripped)
    assert [u["node"] for u in unattributed] == ["renamed_by_an_optimizer"]
    assert "no pkg.torch.onnx.name_scopes" in unattributed[0]["reason"]
    assert "conv1.0" not in {layer.path for layer in layers}


@pytest.mark.slow
def test_memory_is_bounded_by_the_chunk():
    """Peak RSS of a whole process: gap-debug on DenseNetish (the family with most layers) at 1x3x224x224 with
    4 layers per pass stays within 1.5x of a process that loads, exports and runs one inference on each side,
    and never above holding every layer at once (measured here: 459, 610 and 739 MB)."""
    script = ROOT / "tests" / "exporter" / "debug_memory.py"

    def peak(*args) -> int:
        out = subprocess.run([sys.executable, str(script), "DenseNetish", *args], capture_output=True, text=True,
                             timeout=600, cwd=ROOT)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.split()[-1])

    one_inference, chunked, everything = peak("infer", "0"), peak("debug", "4"), peak("debug", "100000")
    assert chunked <= 1.5 * one_inference, (one_inference, chunked)
    assert chunked <= everything, (chunked, everything)


def test_gap_debug_cli_reports_writes_json_and_plot(tmp_path, reference_ckpt, reference_onnx):
    from gap_deploy.exporter.cli.debug import main

    faulty = tmp_path / "faulty.onnx"
    onnx.save(_scale_weight(onnx.load(str(reference_onnx)), "conv2.0.weight", 1.05), str(faulty))
    result = CliRunner().invoke(main, [str(reference_ckpt), str(reference_onnx), str(faulty), "--imgsz", "64",
                                       "--shape", "1x3x64x64", "--shape", "1x3x37x53", "--json",
                                       str(tmp_path / "d.json"), "--plot", str(tmp_path / "d.png")])
    assert result.exit_code == 0, result.output
    assert "First layer over the tolerance: conv2.0 (Conv2d 32->64, 3x3)" in result.output
    data = json.loads((tmp_path / "d.json").read_text())
    assert [r["first_over_tolerance"] for r in data["reports"]] == [None, "conv2.0"]
    assert data["reports"][1]["layers"][0]["module"] == "conv1.0"
    assert (tmp_path / "d.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, fragment, code", [
    (["nope.pt"], "does not exist", 1),
    (["{ckpt}", "{ckpt}"], "compares ONNX artifacts", 2),
    (["{ckpt}", "--shape", "1x3x2x2"], "below the model's minimum", 2),
    (["{ckpt}", "--shape", "1x5x8x8"], "has 5 channels", 2),
    (["{ckpt}", "--precision", "int8"], "needs calibration data", 2),
    (["{ckpt}", "--json", "{ckpt}"], "same file as", 1),
])
def test_gap_debug_bad_input(tmp_path, reference_ckpt, args, fragment, code, monkeypatch):
    from gap_deploy.exporter.cli.debug import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, [a.replace("{ckpt}", str(reference_ckpt)) for a in args])
    assert_clean_failure(result, fragment, code=code)


def test_a_failed_parity_check_points_at_gap_debug_and_that_command_explains_it(tmp_path):
    """ShapeBranch negates its logits for odd widths in Python: the trace freezes the even branch. gap-export's
    message gives the gap-debug line; run as given, gap-debug says no module departs, the forward code does."""
    import shlex

    from gap_deploy.exporter.cli.debug import main as gap_debug
    from gap_deploy.exporter.cli.export import main as gap_export

    torch.manual_seed(0)
    torch.save(families.ShapeBranch().state_dict(), tmp_path / "sb.pt")
    arch = f"{ROOT / 'tests' / 'families.py'}:ShapeBranch"
    result = CliRunner().invoke(gap_export, [str(tmp_path / "sb.pt"), "--arch", arch, "--dynamic", "--imgsz", "32",
                                             "-o", str(tmp_path / "sb.onnx")])
    assert result.exit_code == 1 and "differs from PyTorch" in result.output
    line = next(li for li in result.output.splitlines() if "gap-debug " in li)
    command = shlex.split(line[line.index("gap-debug "):])
    assert command[1] == str(tmp_path / "sb.pt") and "--shape" in command and "--arch" in command
    explained = CliRunner().invoke(gap_debug, command[1:])
    assert explained.exit_code == 0, explained.output
    assert "No module departs, but the model's output does" in explained.output


def test_a_failed_fp16_gate_points_at_gap_debug(tmp_path):
    from gap_deploy.exporter.cli.export import main as gap_export

    torch.manual_seed(0)
    torch.save(families.OverflowNet().state_dict(), tmp_path / "o.pt")
    arch = f"{ROOT / 'tests' / 'families.py'}:OverflowNet"
    args = [str(tmp_path / "o.pt"), "--arch", arch, "--dynamic", "--imgsz", "16", "--precision", "fp16",
            "--no-fp32-fallback", "-o", str(tmp_path / "o.onnx")]
    result = CliRunner().invoke(gap_export, args)
    assert result.exit_code == 1, result.output
    assert "gap-debug" in result.output and "--precision fp16" in result.output
    assert not (tmp_path / "o.onnx").exists()
