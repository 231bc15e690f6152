"""gap-debug on ncnn bundles (issue 35): the blobs ncnn's own extractor computes, mapped to the ONNX pnnx
converted by the structure of both graphs (pnnx keeps no names); planted faults found as the fused group."""

from __future__ import annotations

import json

import onnx
import pytest
from click.testing import CliRunner

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")
torch = pytest.importorskip("torch")

from gap_deploy.exporter.debug import attribute  # noqa: E402
from gap_deploy.exporter.debug_ncnn import debug_ncnn, map_blobs, open_bundle  # noqa: E402
from gap_deploy.exporter.pack import pack  # noqa: E402
from gap_deploy.runtime.backends.edge import NcnnLayer, ncnn_layers  # noqa: E402
from gap_deploy.runtime.onnx_file import save_onnx  # noqa: E402
from tests.conftest import assert_clean_failure  # noqa: E402
from tests.exporter.test_debug import _export, _inputs, _with_batchnorm, planted_faults  # noqa: E402

#: ResNetDish's average-pool shortcut gives nothing at the smallest sizes: its bundle starts at side 9
MIN_SIDE = {"ResNetDish": 9}


def _module(family):
    from tests.conftest import randomize_batchnorm
    from tests.support import families

    torch.manual_seed(0)
    return randomize_batchnorm(getattr(families, family)()) if family == "ResNetDish" else _with_batchnorm(family)


def _bundle(tmp_path, module, tag, **options):
    folder = tmp_path / tag
    folder.mkdir()
    save_onnx(_export(module), folder / "m.onnx")
    pack(folder / "m.onnx", folder / "m_ncnn", target="ncnn", **options)
    return folder / "m_ncnn", onnx.load(str(folder / "m.onnx"))


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ResNetish", "MobileNetish", "ResNetDish"])
def test_ncnn_planted_faults_are_named_first_as_the_fused_group(tmp_path, family):
    """A convolution's weights x1.05 and, separately, its BatchNorm's running mean shifted, in copies of the
    model packed for ncnn: the first layer over the tolerance is that conv + BatchNorm group (with the activation
    pnnx fused into the same ncnn layer, where it did) and it adds the most error by itself; the fault-free
    bundle has nothing over the tolerance and no layer adds more than it."""
    module = _module(family)
    fp32 = _export(module)
    inputs = _inputs((1, 3, 40, 48), (2, 3, 33, 57))
    min_side = MIN_SIDE.get(family)
    folder, source = _bundle(tmp_path, module, "clean", min_side=min_side)
    runner, layers = open_bundle(folder)
    clean = debug_ncnn(module, fp32, source, runner, layers, "clean", inputs)
    assert clean.first_over is None, clean.format()
    assert all(r.added < clean.tolerance for r in clean.top_added()), clean.format()
    compared = [r for r in clean.layers if r.error is not None]
    assert len(compared) >= len(clean.layers) * 2 // 3, clean.format()
    target = [layer for layer in attribute(module, fp32, fp32)[0] if layer.fused][2]
    for tag, faulty, _ in planted_faults(module, target):
        folder, source = _bundle(tmp_path, faulty, tag, min_side=min_side)
        runner, layers = open_bundle(folder)
        report = debug_ncnn(module, fp32, source, runner, layers, tag, inputs)
        first = report.first_over
        assert first is not None, report.format()
        # the group itself, or the one ncnn layer computing it with the activation after it
        assert first.layer.name in (target.name, f"{target.name} + {first.layer.path}"), report.format()
        assert report.top_added()[0].layer.name == first.layer.name, report.format()
        assert "ncnn's extractor on the bundle's own .param/.bin" in report.format()


def test_fused_activations_are_reported_with_their_convolution(tmp_path):
    """pnnx writes Conv + BatchNorm + ReLU as one ncnn layer (activation_type 9=1): the ReLU's blob is that layer's
    output, the convolution group has none, and the ReLU is reported as the whole group."""
    module = _module("ResNetish")
    fp32 = _export(module)
    folder, source = _bundle(tmp_path, module, "m")
    mapping = map_blobs(source, ncnn_layers(folder / "model.param"))
    assert mapping.fused and not mapping.unmapped
    runner, layers = open_bundle(folder)
    report = debug_ncnn(module, fp32, source, runner, layers, "m", _inputs((1, 3, 32, 32)))
    stem = {r.layer.path: r for r in report.layers}
    assert stem["stem.0.1"].error is None and "no blob of its own: pnnx fused it" in stem["stem.0.1"].note
    relu = stem["stem.0.2"]
    assert relu.layer.name == "stem.0.0 + stem.0.1 + stem.0.2" and relu.error is not None
    assert relu.added is not None and relu.note.startswith("ncnn layer convrelu_")


def test_a_kind_that_does_not_line_up_is_left_unmapped_not_guessed(tmp_path):
    """The mapping is by order per kind, checked: a program with one convolution fewer than its ONNX maps no
    convolution (it would pair the wrong layers), and says why."""
    module = _module("ResNetish")
    folder, source = _bundle(tmp_path, module, "m")
    layers = ncnn_layers(folder / "model.param")
    convolutions = [n for n, layer in enumerate(layers) if layer.type == "Convolution"]
    fewer = [layer for n, layer in enumerate(layers) if n != convolutions[-1]]
    mapping = map_blobs(source, fewer)
    assert "convolution" in mapping.unmapped and "ncnn program" in mapping.unmapped["convolution"]
    # the same count, but a kernel that is not the ONNX's: refused by the check, not paired by order
    first = layers[convolutions[0]]
    other = NcnnLayer(first.type, first.name, first.bottoms, first.tops, {**first.params, "1": "5", "11": "5"})
    swapped = [other if layer is first else layer for layer in layers]
    assert "not in the same order" in map_blobs(source, swapped).unmapped["convolution"]


def test_gap_debug_takes_an_ncnn_bundle(tmp_path, reference_ckpt):
    """The CLI: CHECKPOINT and the bundle folder (or its model.param); the ONNX pnnx converted found beside it."""
    from gap_deploy.exporter import export_onnx, load_model
    from gap_deploy.exporter.cli.debug import main
    from tests.exporter.test_debug import _scale_weight

    loaded = load_model(reference_ckpt)
    export_onnx(loaded, tmp_path / "m.onnx", dynamic=True, imgsz=(32, 32))
    save_onnx(_scale_weight(onnx.load(str(tmp_path / "m.onnx")), "conv2.0.weight", 1.05), tmp_path / "m.onnx")
    pack(tmp_path / "m.onnx", tmp_path / "m_ncnn", target="ncnn")
    for given in (tmp_path / "m_ncnn", tmp_path / "m_ncnn" / "model.param"):
        result = CliRunner().invoke(main, [str(reference_ckpt), str(given), "--shape", "1x3x32x40",
                                           "--json", str(tmp_path / "d.json")])
        assert result.exit_code == 0, result.output
        assert "(ncnn, fp32, from m.onnx)" in result.output
        report = json.loads((tmp_path / "d.json").read_text())["reports"][0]
        assert report["first_over_tolerance"].startswith("conv2.0"), result.output
        assert report["seconds"] > 0
        (tmp_path / "d.json").unlink()
    (tmp_path / "m.onnx").rename(tmp_path / "elsewhere.onnx.bak")
    result = CliRunner().invoke(main, [str(reference_ckpt), str(tmp_path / "m_ncnn")])
    assert_clean_failure(result, "the ONNX m_ncnn was converted from (m.onnx) is not beside it", code=2)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["EfficientNetish", "DenseNetish", "MobileNetV3ish", "ReXNetish", "SqueezeNetish"])
def test_every_kind_maps_on_other_families_and_nothing_departs(tmp_path, family):
    """SiLU (Mul(x, Sigmoid(x)), one Swish layer in ncnn), pre-activation BatchNorms (BatchNorm layers), concats,
    hard-swish and squeeze-excite: every kind of layer maps, every layer is compared (or said to be fused into the
    activation after it), and the fault-free bundle departs nowhere."""
    from tests.conftest import randomize_batchnorm
    from tests.support import families

    torch.manual_seed(0)
    module = randomize_batchnorm(getattr(families, family)()).eval()
    fp32 = _export(module)
    folder, source = _bundle(tmp_path, module, "m", min_side=13 if family == "SqueezeNetish" else None)
    runner, layers = open_bundle(folder)
    assert map_blobs(source, layers).unmapped == {}
    report = debug_ncnn(module, fp32, source, runner, layers, family, _inputs((1, 3, 40, 48)))
    assert report.first_over is None, report.format()
    for result in report.layers:
        assert result.error is not None or "pnnx fused it with the activation" in result.note, report.format()
