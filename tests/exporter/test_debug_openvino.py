"""gap-debug on OpenVINO bundles (issue 35): every layer's tensor from OpenVINO's own execution of the IR, named by
the PyTorch modules through the ONNX the bundle was converted from; planted faults found as the fused group."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import numpy_helper

ov = pytest.importorskip("openvino")
torch = pytest.importorskip("torch")

from gap_deploy.exporter.debug import attribute  # noqa: E402
from gap_deploy.exporter.debug_openvino import debug_openvino  # noqa: E402
from gap_deploy.exporter.pack import pack  # noqa: E402
from gap_deploy.runtime.onnx_file import save_onnx  # noqa: E402
from tests.conftest import assert_clean_failure  # noqa: E402
from tests.exporter.test_debug import _export, _inputs, _scale_weight, _with_batchnorm  # noqa: E402

INPUTS = ((1, 3, 40, 48), (2, 3, 33, 57))


#: OpenVINO refuses ResNetDish below 9 px (its average-pool shortcut; gap-pack's hint says --min-side 9)
MIN_SIDE = {"ResNetDish": 9}


def _bundle(tmp_path, model: onnx.ModelProto, tag: str, precision: str = "fp32", min_side: int | None = None):
    save_onnx(model, tmp_path / f"{tag}.onnx")
    pack(tmp_path / f"{tag}.onnx", tmp_path / f"{tag}_openvino", target="openvino", precision=precision,
         min_side=min_side)
    return tmp_path / f"{tag}_openvino" / "model.xml"


def _shift_fused_bias(model: onnx.ModelProto, node_name: str, shift: float) -> onnx.ModelProto:
    """A BatchNorm's running mean moved by ``shift`` x its std, as it shows in the export: the BatchNorm is folded
    into the convolution before it, so its mean is in the fused node's bias (bias - mean * scale)."""
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    node = next(n for n in edited.graph.node if n.name == node_name)
    bias = next(i for i in edited.graph.initializer if i.name == node.input[2])
    values = numpy_helper.to_array(bias)
    bias.CopyFrom(numpy_helper.from_array((values - shift * np.abs(values).mean()).astype(np.float32), bias.name))
    return edited


def _resnet_d():
    """A timm-like ResNet-D (deep stem, average-pool downsample in the shortcut): tests.support.families' own."""
    from tests.conftest import randomize_batchnorm
    from tests.support.families import ResNetDish

    torch.manual_seed(0)
    return randomize_batchnorm(ResNetDish())


def _module(family):
    return _resnet_d() if family == "ResNetDish" else _with_batchnorm(family)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ResNetish", "MobileNetish", "ResNetDish"])
def test_openvino_planted_faults_are_named_first_as_the_fused_group(tmp_path, family):
    """A convolution's weights x1.05 and, separately, a BatchNorm mean shift (in the fused bias), each in the middle
    of the network: OpenVINO's run of the bundle names that conv + BatchNorm group first and as the top of the
    added error. The fault-free bundle: nothing over the tolerance, no layer adds more than it."""
    module = _module(family)
    fp32 = _export(module)
    inputs = _inputs(*INPUTS)
    side = MIN_SIDE.get(family)
    clean = debug_openvino(module, fp32, fp32, _bundle(tmp_path, fp32, "clean", min_side=side), "clean", inputs)
    assert clean.first_over is None, clean.format()
    measured = [r for r in clean.layers if r.added is not None]
    assert len(measured) >= len(clean.layers) - 1 and all(r.added < clean.tolerance for r in measured), clean.format()
    groups = [layer for layer in attribute(module, fp32, fp32)[0] if layer.fused]
    target = groups[len(groups) // 2]
    node = next(n for n in target.nodes if any(n == m.name and m.op_type == "Conv" for m in fp32.graph.node))
    for tag, faulty in (("weights", _scale_weight(fp32, f"{target.fused[0]}.weight", 1.05)),
                        ("mean", _shift_fused_bias(fp32, node, 0.5))):
        report = debug_openvino(module, fp32, faulty, _bundle(tmp_path, faulty, tag, min_side=side), tag, inputs)
        assert report.first_over is not None and report.first_over.layer.name == target.name, report.format()
        assert report.top_added(1)[0].layer.name == target.name, report.format()
        assert "OpenVINO IR compiled per chunk" in report.format()


def test_gap_debug_takes_an_openvino_bundle(tmp_path, reference_ckpt):
    """The CLI: CHECKPOINT and the bundle folder; the ONNX it was packed from is found beside it by SHA-256."""
    from gap_deploy.exporter import export_onnx, load_model
    from gap_deploy.exporter.cli.debug import main

    loaded = load_model(reference_ckpt)
    export_onnx(loaded, tmp_path / "m.onnx", dynamic=True, imgsz=(32, 32))
    faulty = _scale_weight(onnx.load(str(tmp_path / "m.onnx")), "conv2.0.weight", 1.05)
    save_onnx(faulty, tmp_path / "m.onnx")
    pack(tmp_path / "m.onnx", tmp_path / "m_openvino", target="openvino")
    result = CliRunner().invoke(main, [str(reference_ckpt), str(tmp_path / "m_openvino"), "--shape", "1x3x32x40",
                                       "--json", str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    assert "First layer over the tolerance: conv2.0" in result.output
    assert "(OpenVINO, fp32, from m.onnx)" in result.output
    report = json.loads((tmp_path / "d.json").read_text())["reports"][0]
    assert report["first_over_tolerance"] == "conv2.0"
    assert report["seconds"] > 0 and f"in {report['seconds']:.1f} s" in result.output  # time per runtime

    (tmp_path / "m.onnx").rename(tmp_path / "elsewhere.onnx.bak")
    result = CliRunner().invoke(main, [str(reference_ckpt), str(tmp_path / "m_openvino")])
    assert_clean_failure(result, "the ONNX m_openvino was converted from (m.onnx) is not beside it",
                         "put the model the bundle was packed from next to the bundle folder", code=2)


def test_another_bundle_kind_is_refused_with_what_is_compared(tmp_path, reference_ckpt, reference_onnx):
    from gap_deploy.exporter.cli.debug import main

    pack(reference_onnx, tmp_path / "b", target="ort")
    result = CliRunner().invoke(main, [str(reference_ckpt), str(tmp_path / "b")])
    assert_clean_failure(result, "is a ort bundle: gap-debug compares OpenVINO, ncnn, LiteRT and ExecuTorch "
                                 "bundles", code=2)


def test_fp16_openvino_bundle_names_the_first_layer_beyond_float16(tmp_path):
    """The overflow model's boost layer passes float16's range: the FP16 bundle's report names it."""
    from tests.support.families import OverflowNet

    torch.manual_seed(0)
    module = OverflowNet().eval()
    fp32 = _export(module)
    report = debug_openvino(module, fp32, fp32, _bundle(tmp_path, fp32, "fp16", precision="fp16"), "fp16",
                            _inputs((1, 3, 16, 16)), tolerance=1e-2)
    assert report.first_beyond_fp16 is not None and report.first_beyond_fp16.layer.path == "boost", report.format()
