"""gap-debug on ExecuTorch bundles (issue 35): every module's output from ExecuTorch's own run of the bundle's debug
program (model.debug.pte: the same module lowered to XNNPACK with every module's output returned), against
PyTorch's; the model's output from the deployed model.pte."""

from __future__ import annotations

import copy
import json

import pytest
from click.testing import CliRunner

pytest.importorskip("executorch.exir")
torch = pytest.importorskip("torch")

from gap_deploy.exporter.checkpoint import from_module  # noqa: E402
from gap_deploy.exporter.debug import attribute  # noqa: E402
from gap_deploy.exporter.debug_executorch import debug_executorch, debug_unpacked  # noqa: E402
from gap_deploy.exporter.pack import pack  # noqa: E402
from gap_deploy.runtime.bundle import bundle_model, read_description  # noqa: E402
from gap_deploy.runtime.errors import ArtifactError, UsageError  # noqa: E402
from gap_deploy.runtime.onnx_file import save_onnx  # noqa: E402
from tests.conftest import assert_clean_failure  # noqa: E402
from tests.exporter.test_debug import _export, _inputs, _with_batchnorm, planted_faults  # noqa: E402

#: ResNetDish's average-pool shortcut keeps torch.export from one dynamic program: a static one at 32x32
FIXED = {"ResNetDish": (1, 3, 32, 32)}


def _module(family):
    from tests.conftest import randomize_batchnorm
    from tests.support import families

    torch.manual_seed(0)
    module = randomize_batchnorm(getattr(families, family)()) if family == "ResNetDish" else _with_batchnorm(family)
    return module.eval()


def _bundle(tmp_path, module, tag, fixed=None, precision="fp32"):
    save_onnx(_export(module), tmp_path / f"{tag}.onnx")
    pack(tmp_path / f"{tag}.onnx", tmp_path / f"{tag}_et", target="executorch", checkpoint=from_module(module),
         fixed=[fixed] if fixed else (), precision=precision)
    return tmp_path / f"{tag}_et"


def _debug(module, folder, tag, inputs, **options):
    return debug_executorch(module, folder, read_description(folder), tag, inputs, **options)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ResNetish", "MobileNetish", "ResNetDish"])
def test_executorch_planted_faults_are_named_first(tmp_path, family):
    """A convolution's weights x1.05 and, separately, its BatchNorm's running mean shifted, in copies of the model
    packed for ExecuTorch: ExecuTorch's run of the debug program names that convolution (the weights) or that
    BatchNorm (the mean) first, each at its own output (returned outputs are not fused); the fault-free bundle
    has nothing over the tolerance, and its model output (model.pte's) matches."""
    module = _module(family)
    fp32 = _export(module)
    fixed = FIXED.get(family)
    inputs = _inputs(fixed) if fixed else _inputs((1, 3, 40, 48), (2, 3, 33, 57))
    clean = _debug(module, _bundle(tmp_path, module, "clean", fixed), "clean", inputs)
    assert clean.first_over is None, clean.format()
    compared = [r for r in clean.layers if r.error is not None]
    assert len(compared) >= len(clean.layers) * 2 // 3, clean.format()
    assert "model.pte itself" in next(r.note for r in clean.layers if r.layer.path == "")
    target = [layer for layer in attribute(module, fp32, fp32)[0] if layer.fused][2]
    for tag, faulty, expected in planted_faults(module, target):
        report = _debug(module, _bundle(tmp_path, faulty, tag, fixed), tag, inputs)
        first = report.first_over
        assert first is not None and first.layer.path == expected, report.format()
        assert "ExecuTorch's run of the bundle's model.debug.pte" in report.format()
        assert report.seconds is None or report.seconds > 0


def test_the_debug_program_is_never_the_model_a_runner_loads(tmp_path):
    """model.debug.pte is listed (with its SHA-256) as role "debug": the bundle's runnable file stays model.pte,
    and the record names the module of each output; the program's sides are bounded (every output is planned)."""
    module = _module("ResNetish")
    folder = _bundle(tmp_path, module, "m")
    description = read_description(folder)
    assert description["files"]["model.debug.pte"]["role"] == "debug"
    assert bundle_model(folder, None).name == "model.pte"
    record = description["debug_program"]
    assert record["outputs"] == [p for p, _ in module.named_modules() if p]
    assert record["max_side"] == 256
    with pytest.raises(UsageError, match="takes sides up to 256"):
        _debug(module, folder, "m", _inputs((1, 3, 300, 64)))


def test_a_bundle_without_or_with_a_wrong_record_is_refused_with_how_to_fix(tmp_path):
    module = _module("ResNetish")
    folder = _bundle(tmp_path, module, "m")
    path = folder / "model.json"
    description = json.loads(path.read_text())
    short = copy.deepcopy(description)
    short["debug_program"]["outputs"] = short["debug_program"]["outputs"][:-2]
    path.write_text(json.dumps(short))
    with pytest.raises(ArtifactError, match="returns .* outputs; model.json lists"):
        _debug(module, folder, "m", _inputs((1, 3, 32, 32)))
    del description["debug_program"]
    path.write_text(json.dumps(description))
    with pytest.raises(UsageError, match="no debug program") as caught:
        _debug(module, folder, "m", _inputs((1, 3, 32, 32)))
    assert "adds model.debug.pte" in str(caught.value.hint)


@pytest.mark.slow
def test_the_fp16_program_names_the_first_layer_beyond_float16():
    """The overflow model's FP16 ExecuTorch program (gap-pack refuses to write its bundle: its logits are not
    finite) made here with every module's output: the report names ``boost`` as the first layer beyond float16's
    range, and it is where the program departs first (inf); the FP32 program departs nowhere."""
    from tests.support.families import OverflowNet

    torch.manual_seed(0)
    module = OverflowNet().eval()
    report = debug_unpacked(module, "fp16", "fp16", _inputs((1, 3, 16, 16), (1, 3, 17, 23)))
    assert report.first_beyond_fp16 is not None and report.first_beyond_fp16.layer.path == "boost", report.format()
    assert report.first_over is not None and report.first_over.layer.path == "boost", report.format()
    assert "pack it in FP32" in report.format()
    fp32 = debug_unpacked(module, "fp32", "fp32", _inputs((1, 3, 16, 16)), tolerance=1e-4)
    assert fp32.first_over is None, fp32.format()


@pytest.mark.slow
def test_an_fp16_bundle_names_the_layer_beyond_float16(tmp_path):
    """An FP16 ExecuTorch bundle that gap-pack wrote (its logits match: the clamp after the overflow brings them
    back) still holds a layer beyond float16: the bundle's report names ``boost``, where ExecuTorch gives inf."""
    from tests.support.families import ClampedOverflowNet

    torch.manual_seed(0)
    module = ClampedOverflowNet().eval()
    folder = _bundle(tmp_path, module, "fp16", precision="fp16")
    report = _debug(module, folder, "fp16", _inputs((1, 3, 16, 16), (1, 3, 21, 17)), tolerance=1e-2)
    assert report.first_beyond_fp16 is not None and report.first_beyond_fp16.layer.path == "boost", report.format()
    assert report.first_over is not None and report.first_over.layer.path == "boost", report.format()
    output = next(r for r in report.layers if r.layer.path == "")
    assert output.error is not None and output.error.rel_err < 1e-2, report.format()  # model.pte itself matches


def test_gap_debug_takes_an_executorch_bundle_and_the_unpacked_program(tmp_path, reference_ckpt):
    from gap_deploy.exporter import load_model
    from gap_deploy.exporter.cli.debug import main

    module = load_model(reference_ckpt).module
    _bundle(tmp_path, module, "m")
    result = CliRunner().invoke(main, [str(reference_ckpt), str(tmp_path / "m_et"), "--shape", "1x3x32x40",
                                       "--json", str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    assert "(ExecuTorch, fp32, its debug program model.debug.pte)" in result.output
    assert "No layer is over the tolerance." in result.output
    report = json.loads((tmp_path / "d.json").read_text())["reports"][0]
    assert report["first_over_tolerance"] is None and report["seconds"] > 0
    result = CliRunner().invoke(main, [str(reference_ckpt), "--target", "executorch", "--precision", "fp16",
                                       "--shape", "1x3x32x32"])
    assert result.exit_code == 0, result.output
    assert "in-memory ExecuTorch fp16 program" in result.output and "tolerance rel err 0.01" in result.output
    result = CliRunner().invoke(main, [str(reference_ckpt), "--target", "executorch", "--precision", "int8"])
    assert_clean_failure(result, "--target executorch takes --precision fp16", code=2)
