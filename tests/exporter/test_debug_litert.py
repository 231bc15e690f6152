"""gap-debug on LiteRT bundles (issue 35): the tensors LiteRT's own interpreter computes, named by the PyTorch
modules litert-torch records in their names; planted faults found as the fused group, or its block where the
converter fused the group into a later operation."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

pytest.importorskip("ai_edge_litert")
pytest.importorskip("litert_torch")
torch = pytest.importorskip("torch")

from gap_deploy.exporter.checkpoint import from_module  # noqa: E402
from gap_deploy.exporter.debug import attribute  # noqa: E402
from gap_deploy.exporter.debug_litert import debug_litert, locations  # noqa: E402
from gap_deploy.exporter.pack import pack  # noqa: E402
from gap_deploy.runtime.onnx_file import save_onnx  # noqa: E402
from tests.conftest import assert_clean_failure  # noqa: E402
from tests.exporter.test_debug import _export, _inputs, _with_batchnorm, planted_faults  # noqa: E402

#: ResNetDish's average-pool shortcut keeps torch.export from one dynamic program: a static one at 32x32
FIXED = {"ResNetDish": (1, 3, 32, 32)}


def _module(family):
    from tests.conftest import randomize_batchnorm
    from tests.support import families

    torch.manual_seed(0)
    return randomize_batchnorm(getattr(families, family)()) if family == "ResNetDish" else _with_batchnorm(family)


def _bundle(tmp_path, module, tag, fixed=None):
    save_onnx(_export(module), tmp_path / f"{tag}.onnx")
    pack(tmp_path / f"{tag}.onnx", tmp_path / f"{tag}_litert", target="litert", checkpoint=from_module(module),
         fixed=[fixed] if fixed else ())
    return tmp_path / f"{tag}_litert" / "model.tflite"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ResNetish", "MobileNetish", "ResNetDish"])
def test_litert_planted_faults_are_named_first(tmp_path, family):
    """A convolution's weights x1.05 and, separately, its BatchNorm's running mean shifted, in copies of the
    checkpoint's model packed for LiteRT: the conv + BatchNorm group is the first layer over the tolerance, or,
    where LiteRT computes it in one operation with the activation after it, that operation (named by the
    activation, the note naming the group); the fault-free program has none."""
    module = _module(family)
    fp32 = _export(module)
    fixed = FIXED.get(family)
    inputs = _inputs(fixed) if fixed else _inputs((1, 3, 40, 48), (2, 3, 33, 57))
    clean = debug_litert(module, fp32, _bundle(tmp_path, module, "clean", fixed), "clean", inputs)
    assert clean.first_over is None, clean.format()
    compared = [r for r in clean.layers if r.error is not None]
    assert len(compared) >= len(clean.layers) // 2, clean.format()
    target = [layer for layer in attribute(module, fp32, fp32)[0] if layer.fused][2]
    for tag, faulty, _ in planted_faults(module, target):
        report = debug_litert(module, fp32, _bundle(tmp_path, faulty, tag, fixed), tag, inputs)
        first = report.first_over
        assert first is not None, report.format()
        # the group itself, or the one LiteRT operation that computes it with the activation after it
        assert first.layer.name == target.name or (
            f"one LiteRT operation with {target.fused[0]} + {target.path}" in first.note), report.format()
        assert "LiteRT's interpreter with every intermediate tensor kept" in report.format()


def test_litert_locations_name_every_module():
    from tests.support.families import ResNetish

    where = locations(ResNetish())
    assert where["tests.support.families.ResNetish"] == ""
    assert where["tests.support.families.ResNetish/torch.nn.modules.container.Sequential_stem/"
                 "torch.nn.modules.pooling.MaxPool2d_1"] == "stem.1"


def test_gap_debug_takes_a_litert_bundle_and_a_static_one_says_its_shape(tmp_path, reference_ckpt):
    from gap_deploy.exporter import load_model
    from gap_deploy.exporter.cli.debug import main

    module = load_model(reference_ckpt).module
    _bundle(tmp_path, module, "m")
    result = CliRunner().invoke(main, [str(reference_ckpt), str(tmp_path / "m_litert"), "--shape", "1x3x32x40",
                                       "--json", str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    assert "(LiteRT, fp32, converted from the checkpoint)" in result.output
    assert "No layer is over the tolerance." in result.output
    report = json.loads((tmp_path / "d.json").read_text())["reports"][0]
    assert report["first_over_tolerance"] is None and report["seconds"] > 0
    _bundle(tmp_path, module, "s", fixed=(1, 3, 32, 32))
    result = CliRunner().invoke(main, [str(reference_ckpt), str(tmp_path / "s_litert"), "--shape", "1x3x40x40"])
    assert_clean_failure(result, "this LiteRT program is static: it takes 1x3x32x32 only",
                         "give gap-debug --shape 1x3x32x32", code=2)
