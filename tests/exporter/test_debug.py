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
from tests.conftest import assert_clean_failure, make_reference  # noqa: E402
from tests.support import families  # noqa: E402

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


def planted_faults(module: nn.Module, target):
    """(tag, a copy of ``module`` with one fault, the module the fault is in) for the two faults issue 35 plants in
    the conv + BatchNorm group ``target``: the convolution's weights x1.05, and the BatchNorm's running mean moved
    by half a standard deviation."""
    import copy

    conv, bn = target.fused[0], target.path
    found = []
    for tag, where in (("weights", conv), ("mean", bn)):
        faulty = copy.deepcopy(module)
        with torch.no_grad():
            if tag == "weights":
                faulty.get_submodule(conv).weight.mul_(1.05)
            else:
                norm = faulty.get_submodule(bn)
                norm.running_mean.add_(0.5 * norm.running_var.sqrt())
        found.append((tag, faulty, where))
    return found


def _with_batchnorm(family):
    from tests.conftest import randomize_batchnorm

    torch.manual_seed(0)
    module = randomize_batchnorm(getattr(families, family)())
    return module if any(isinstance(m, nn.BatchNorm2d) for m in module.modules()) else None


@pytest.mark.slow
@pytest.mark.parametrize("family", families.FAMILIES)
def test_a_fused_conv_and_batchnorm_is_one_group_that_adds_nothing_without_a_fault(family):
    """The exporter folds each BatchNorm into the convolution before it (the fused node is scoped to the
    BatchNorm and reads the convolution's weights): the two are compared as one group, from the convolution's
    PyTorch input, so an export without a fault has no layer adding error (before: every fused BatchNorm "added"
    ~1.7-2.1 relative error, measured on the convolution's output instead of its input)."""
    module = _with_batchnorm(family)
    if module is None:
        pytest.skip(f"{family} has no BatchNorm")
    fp32 = _export(module)
    report = debug_artifact(module, fp32, fp32, family, _inputs((1, 3, 40, 48)))
    groups = [r for r in report.layers if r.layer.fused]
    # DenseNet's BatchNorms come before their convolutions (BN-ReLU-conv): nothing to fold, nothing fused
    assert bool(groups) == (family != "DenseNetish"), [r.layer.name for r in report.layers]
    assert all("fused" in r.layer.label and " + " in r.layer.name for r in groups)
    assert report.first_over is None, report.format()
    measured = [r for r in report.layers if r.added is not None]
    assert measured and all(r.added < report.tolerance for r in measured), report.format()
    assert all(r.added is not None for r in groups), report.format()  # every group isolated


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ResNetish", "MobileNetish", "EfficientNetish", "ShuffleNetish"])
def test_a_fault_in_a_convolution_before_a_batchnorm_names_that_group_first_and_top(family):
    """A convolution's (fused) weights changed by 5%: its conv + BatchNorm group is the first layer over the
    tolerance and adds the most error; no layer before it departs."""
    module = _with_batchnorm(family)
    fp32 = _export(module)
    groups = [layer for layer in attribute(module, fp32, fp32)[0] if layer.fused]
    target = groups[len(groups) // 2]  # one in the middle of the network
    faulty = _scale_weight(fp32, f"{target.fused[0]}.weight", 1.05)
    report = debug_artifact(module, fp32, faulty, "faulty", _inputs((1, 3, 40, 48), (2, 3, 33, 57)))
    first = report.first_over
    assert first is not None and first.layer.name == target.name, report.format()
    assert report.top_added(1)[0].layer.name == target.name, report.format()
    assert f"First layer over the tolerance: {target.name}, fused" in report.format()
    assert report.to_dict()["first_over_tolerance"] == target.name


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


def test_gap_debug_s_default_size_is_the_artifact_s_export_size(tmp_path, reference_ckpt, reference_onnx):
    """Without --imgsz, the inputs are at the export size the ONNX records (64x64 here), as gap-bench's; with no
    ONNX artifact, 224."""
    from gap_deploy.exporter.cli.debug import main
    from gap_deploy.exporter.debug_run import DebugJob, export_size

    result = CliRunner().invoke(main, [str(reference_ckpt), str(reference_onnx), "--json", str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "d.json").read_text())["reports"][0]["shapes"] == [[1, 3, 64, 64]]
    assert export_size(DebugJob(reference_ckpt)) == (224, 224)
    assert export_size(DebugJob(reference_ckpt, (reference_onnx,), imgsz=(40, 48))) == (40, 48)


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
    arch = f"{ROOT / 'tests' / 'support' / 'families.py'}:ShapeBranch"
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
    arch = f"{ROOT / 'tests' / 'support' / 'families.py'}:OverflowNet"
    args = [str(tmp_path / "o.pt"), "--arch", arch, "--dynamic", "--imgsz", "16", "--precision", "fp16",
            "--no-fp32-fallback", "-o", str(tmp_path / "o.onnx")]
    result = CliRunner().invoke(gap_export, args)
    assert result.exit_code == 1, result.output
    assert "gap-debug" in result.output and "--precision fp16" in result.output
    assert not (tmp_path / "o.onnx").exists()


def test_a_plan_is_rebuilt_per_chunk_with_marked_outputs_and_names_the_planted_fault(monkeypatch):
    """A TensorRT plan, with TensorRT as the spec'd doubles of tests/support/trt_builder_api.py (the full builder and
    a GPU are not here). What the doubles take from TensorRT's documentation: the ONNX parser names each layer's output
    tensor after the ONNX tensor (ILayer.get_output, ITensor.name), INetworkDefinition.mark_output makes a tensor an
    engine output, and an engine built so has those outputs. The engine double computes what the faulty ONNX
    computes (onnxruntime), so the test checks the marking, the builds and the comparison, not TensorRT's kernels."""
    from gap_deploy.exporter.builder import BuildConfig
    from gap_deploy.exporter.debug import FUSION_NOTE, debug_engine
    from gap_deploy.runtime.backends.cuda import Cuda
    from gap_deploy.runtime.layers import tensor_values
    from gap_deploy.runtime.profiles import Profile
    from tests.support.trt_builder_api import FakeBuild, ILayer, ITensor, stub
    from tests.support.trt_doubles import FakeDevice

    module = make_reference(seed=3)
    fp32 = _export(module)
    faulty = _scale_weight(fp32, "conv2.0.weight", 1.05)
    names = [n.output[0] for n in faulty.graph.node]
    cache: dict[bytes, dict] = {}

    def values(x):
        key = x.tobytes() + bytes(str(x.shape), "ascii")
        if key not in cache:
            found = {}
            for part in tensor_values(faulty, names, [x], chunk=len(names)):
                found.update({k: v[0] for k, v in part.items()})
            cache[key] = found
        return cache[key]

    fake = FakeBuild(datatype="Float", compute=lambda x: values(x)["logits"],
                     extra={n: (lambda x, n=n: values(x)[n]) for n in names if n != "logits"})

    def layer(index):
        double = stub(ILayer)
        double.name, double.num_outputs = faulty.graph.node[index].name, 1
        tensor = stub(ITensor)
        tensor.name = faulty.graph.node[index].output[0]
        tensor.is_network_output = tensor.name in outputs  # the parser marks the graph's own outputs
        double.get_output.side_effect = lambda j: tensor
        return double

    outputs = {o.name for o in faulty.graph.output}

    fake.network.num_layers = len(faulty.graph.node)
    fake.network.get_layer.side_effect = layer
    config = BuildConfig(profiles=(Profile((1, 3, 4, 4), (1, 3, 32, 32), (8, 3, 64, 64)),))
    report = debug_engine(module, fp32, faulty, "m.plan", _inputs((1, 3, 32, 32), (2, 3, 37, 53)), config,
                          trt=fake.module, cuda=Cuda(FakeDevice().rt), tolerance=1e-4, chunk=4)
    assert report.first_over.layer.path == "conv2.0" and report.note == FUSION_NOTE
    marked = [c.args[0].name for c in fake.network.mark_output.call_args_list]
    compared = [r.layer.output for r in report.layers if r.layer.path]
    assert "logits" in compared and "logits" not in marked  # the graph output is never marked again
    assert set(marked) == set(compared) - outputs  # every other compared layer's tensor marked, in its chunk's build
    assert len(marked) <= len(compared)  # a tensor a block shares with its last child is marked once per build
    builds = fake.builder.build_serialized_network.call_count
    assert builds == -(-len(compared) // 4) >= 3  # one engine per chunk of 4
    caches = [c.args[0] for c in fake.config.create_timing_cache.call_args_list]
    assert caches[0] == b"" and all(c == b"timing-cache-v2" for c in caches[1:])  # the first build's cache reused
    assert all(r.added is None for r in report.layers)  # a TensorRT layer is not run alone
    assert "Note: TensorRT engines rebuilt per chunk" in report.format()


def test_a_plan_s_onnx_is_found_beside_it_by_its_sha256(tmp_path, reference_onnx):
    from gap_deploy.exporter.debug_run import engine_source
    from gap_deploy.runtime.errors import UsageError
    from gap_deploy.runtime.files import sha256_file
    from gap_deploy.runtime.manifest import EngineManifest

    (tmp_path / "other.onnx").write_bytes(b"not it")
    (tmp_path / "m.onnx").write_bytes(reference_onnx.read_bytes())
    (tmp_path / "m.plan").write_bytes(b"plan")
    EngineManifest(tensorrt_version="11.4.0.106", gpu_name="NVIDIA H100", compute_capability="9.0",
                   precision="fp32", plan_sha256="0" * 64, onnx_sha256=sha256_file(reference_onnx),
                   profiles=[{"images": [[1, 3, 4, 4], [1, 3, 32, 32], [8, 3, 64, 64]]}]).write(tmp_path / "m.plan")
    assert engine_source(tmp_path / "m.plan") == tmp_path / "m.onnx"
    (tmp_path / "m.onnx").write_bytes(b"changed")
    with pytest.raises(UsageError, match="is not beside it"):
        engine_source(tmp_path / "m.plan")


@pytest.mark.parametrize("recorded, tf32, tolerance", [(None, True, 1e-2), (True, True, 1e-2), (False, False, 1e-4)])
def test_a_plan_is_rebuilt_with_the_tf32_setting_it_ran_with(recorded, tf32, tolerance):
    """A manifest written before gap-deploy recorded TF32 (tf32 None) describes an engine built with TensorRT's
    default, TF32 on (NvInfer.h, BuilderFlag::kTF32: "Enabled by default"). Failed before (gpu-review-4 D3):
    bool(None) rebuilt it with TF32 off and judged it with the FP32 tolerance, so not the deployed engine."""
    from gap_deploy.exporter.debug_run import plan_tf32, plan_tolerance
    from gap_deploy.runtime.manifest import EngineManifest

    manifest = EngineManifest(tensorrt_version="10.8.0", gpu_name="NVIDIA H100", compute_capability="9.0",
                              precision="fp32", plan_sha256="0" * 64, onnx_sha256="0" * 64, profiles=[], tf32=recorded)
    assert plan_tf32(manifest) is tf32 and plan_tolerance(manifest) == tolerance


@pytest.mark.parametrize("value", ["5", "[1, 2]", "['a', 3]", "[" * 200 + "]" * 200, "not python"])
def test_name_scopes_that_are_no_list_of_module_paths_name_no_module(value):
    """Issue 38, class 6: name_scopes metadata holding a number (or a list of numbers) became a "module path" of
    type int, and gap-debug crashed on it (a traceback). Such a node now names no module, like a node an
    optimizer made."""
    import onnx
    from onnx import helper

    from gap_deploy.exporter.debug import SCOPE_KEY, node_scopes

    node = helper.make_node("Relu", ["x"], ["y"], name="r")
    node.metadata_props.add(key=SCOPE_KEY, value=value)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    assert node_scopes(helper.make_model(graph)) == {"r": None}


def test_the_plot_puts_a_layer_at_the_same_place_in_every_line():
    """One runtime compares conv and relu apart, another only as one fused group: the plot's axis holds each
    layer once, in graph order, the group after the layer before it, so no line is shifted against another."""
    from gap_deploy.exporter.debug import DebugReport, Layer, LayerResult, plot_axis
    from gap_deploy.runtime.layers import layer_error

    def report(*names):
        rows = []
        for depth, name in enumerate(names):
            *fused, path = name.split(" + ")
            layer = Layer(path, path, depth, f"t{depth}", (), (), fused=tuple(fused))
            rows.append(LayerResult(layer, layer_error([np.ones(3)], [np.ones(3)])))
        return DebugReport("r", 1e-4, [], rows)

    separate = report("conv", "relu", "pool", "fc", "")
    fused = report("conv + relu", "pool", "fc", "")
    for reports in ([separate, fused], [fused, separate]):
        axis = plot_axis(reports)
        assert sorted(axis) == sorted(["conv", "relu", "conv + relu", "pool", "fc", ""])  # each once
        for one in reports:  # every line in its own graph order, shared layers at one place
            xs = [axis.index(r.layer.name) for r in one.layers]
            assert xs == sorted(xs)
        assert axis[-3:] == ["pool", "fc", ""]
