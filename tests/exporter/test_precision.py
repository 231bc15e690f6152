"""FP16 and INT8 ONNX variants, verified against the FP32 model on the CPU."""

import collections
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

pytest.importorskip("onnxruntime")

from gap_deploy.exporter.parity import default_verify_shapes  # noqa: E402
from gap_deploy.exporter.precision import load_calibration, make_variant, metadata_of  # noqa: E402
from gap_deploy.runtime.artifact import for_metadata  # noqa: E402
from gap_deploy.runtime.errors import ArtifactError, ExportError  # noqa: E402
from gap_deploy.runtime.parity import Tolerance  # noqa: E402
from tests.conftest import assert_clean_failure  # noqa: E402

SHAPES = default_verify_shapes(3, (64, 64), 4, dynamic=True)


@pytest.fixture(scope="module")
def fp32(reference_onnx):
    return onnx.load(str(reference_onnx))


@pytest.fixture(scope="module")
def calibration():
    return np.random.default_rng(0).standard_normal((32, 3, 32, 32)).astype(np.float32)


def test_fp16_keeps_float32_io_and_gap_in_float32(fp32):
    result = make_variant(fp32, "fp16", SHAPES)
    graph = result.model.graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_weight = next(i for i in graph.initializer if len(i.dims) == 4)
    assert conv_weight.data_type == onnx.TensorProto.FLOAT16
    assert metadata_of(result.model).precision == "fp16"
    reduce = next(n for n in graph.node if n.op_type == "ReduceMean")
    cast_before = [n for n in graph.node if n.output and n.output[0] == reduce.input[0]]
    assert cast_before and cast_before[0].op_type == "Cast"  # GAP is computed in float32


def test_fp16_matches_fp32_within_1e_3_on_the_whole_sweep(fp32):
    result = make_variant(fp32, "fp16", SHAPES)
    assert result.passed, result.sweep.format_table()
    assert all(r.rel_err <= 1e-3 for r in result.sweep.rows)
    assert {(1, 3, 4, 4), (1, 3, 37, 53)} <= {r.shape for r in result.sweep.rows}


def test_int8_is_qdq_per_channel_and_symmetric(fp32, calibration):
    from onnx import numpy_helper

    result = make_variant(fp32, "int8", SHAPES, calibration=calibration, tolerance=Tolerance(np.inf, 1.0, 0.0))
    graph = result.model.graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") >= 4 and ops.count("DequantizeLinear") >= 4
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "DequantizeLinear" and len(n.input) > 2]
    assert zero_points and all(np.all(z == 0) for z in zero_points)  # symmetric, as TensorRT requires
    per_channel = [n for n in graph.node if n.op_type == "DequantizeLinear" and inits.get(n.input[1]) is not None
                   and inits[n.input[1]].size > 1]
    assert per_channel  # weight scales per output channel
    assert result.real_data.rows[0].shape == (32, 3, 32, 32)
    assert len(result.sweep.rows) == len(SHAPES) and all(np.isfinite(r.rel_err) for r in result.sweep.rows)
    assert metadata_of(result.model).precision == "int8"


def test_int8_keeps_the_first_conv_and_the_classifier_in_float(fp32, calibration):
    from gap_deploy.exporter.precision import float_ends

    ends = float_ends(fp32)
    assert [n.op_type for n in fp32.graph.node if n.name in ends] == ["Conv", "Gemm"]

    def quantized_weight_inputs(model):
        dq_outputs = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
        return {n.op_type + str(i) for i, n in enumerate(n for n in model.graph.node if n.op_type in ("Conv", "Gemm"))
                if len(n.input) > 1 and n.input[1] in dq_outputs}

    kept = make_variant(fp32, "int8", SHAPES[:1], calibration=calibration, tolerance=Tolerance(np.inf, np.inf, 0))
    everything = make_variant(fp32, "int8", SHAPES[:1], calibration=calibration, keep_float_ends=False,
                              tolerance=Tolerance(np.inf, np.inf, 0))
    assert quantized_weight_inputs(kept.model) == {"Conv1"}  # only the middle conv has int8 weights
    assert quantized_weight_inputs(everything.model) == {"Conv0", "Conv1", "Gemm2"}


def test_int8_threshold_fails_when_agreement_drops(fp32, calibration):
    strict = Tolerance(atol=np.inf, rtol=np.inf, min_top1=1.01)  # unreachable: must fail
    assert not make_variant(fp32, "int8", SHAPES[:2], calibration=calibration, tolerance=strict,
                            fallback=False).passed
    with pytest.raises(ExportError, match="INT8 misses its gate even with these layers left in float"):
        make_variant(fp32, "int8", SHAPES[:2], calibration=calibration, tolerance=strict)


def test_int8_needs_calibration(fp32):
    from gap_deploy.runtime.errors import UsageError

    with pytest.raises(UsageError, match="needs calibration data"):
        make_variant(fp32, "int8", SHAPES)


def test_calibration_from_images_and_npy(tmp_path, reference_onnx):
    from PIL import Image

    meta = metadata_of(onnx.load(str(reference_onnx)))
    for i in range(5):
        Image.fromarray(np.full((20 + i, 30, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    batch = load_calibration(tmp_path, for_metadata(meta), size=(16, 24))
    assert batch.shape == (5, 3, 16, 24) and batch.dtype == np.float32
    expected = (0.0 - 0.485) / 0.229  # black pixel, normalized with the stored ImageNet mean/std
    assert batch[0, 0, 0, 0] == pytest.approx(expected)
    npy = tmp_path / "c.npy"
    np.save(npy, np.zeros((4, 3, 8, 8), np.float32))
    assert load_calibration(npy, for_metadata(meta), size=(8, 8)).shape == (4, 3, 8, 8)
    np.save(npy, np.zeros((4, 8, 8), np.float32))
    with pytest.raises(ArtifactError, match="expected float"):
        load_calibration(npy, for_metadata(meta), size=(8, 8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="holds no image files"):
        load_calibration(tmp_path / "empty", for_metadata(meta), size=(8, 8))
    with pytest.raises(ArtifactError, match="missing does not exist"):
        load_calibration(tmp_path / "missing", for_metadata(meta), size=(8, 8))


@pytest.mark.slow
def test_gap_export_int8_cli(tmp_path, reference_ckpt, calibration):
    pytest.importorskip("torch")
    from gap_deploy.exporter.cli.export import main

    npy = tmp_path / "calib.npy"
    np.save(npy, calibration)
    out = tmp_path / "m.onnx"
    result = CliRunner().invoke(main, [str(reference_ckpt), "--dynamic", "-o", str(out), "--imgsz", "32",
                                       "--precision", "int8", "--calib", str(npy), "--min-top1", "0"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.int8.onnx").is_file() and out.is_file()
    assert "INT8 ONNX (calibration images)" in result.output
    failing = CliRunner().invoke(main, [str(reference_ckpt), "--dynamic", "-o", str(tmp_path / "n.onnx"),
                                        "--imgsz", "32", "--precision", "int8", "--calib", str(npy),
                                        "--min-top1", "1.0", "--verify-shapes", "8x8"])
    if failing.exit_code != 0:  # random weights rarely agree on every one of 32 images
        assert_clean_failure(failing, "differs too much", "--min-top1")
        assert not (tmp_path / "n.int8.onnx").exists()


def test_int8_graph_is_what_tensorrt_can_build(fp32, calibration):
    """TensorRT's IDequantizeLayer takes INT8 (FP8/INT4/FP4) input only: an INT32 bias DequantizeLinear does
    not build. Walk every DequantizeLinear: weights INT8, per-channel on axis 0; activations per-tensor; every
    zero point 0; biases stay float."""
    from onnx import numpy_helper

    result = make_variant(fp32, "int8", SHAPES[:1], calibration=calibration, tolerance=Tolerance(np.inf, np.inf, 0))
    graph = result.model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    init_types = {i.name: i.data_type for i in graph.initializer}
    producers = {out: n for n in graph.node for out in n.output}
    weights, activations = 0, 0
    for node in (n for n in graph.node if n.op_type == "DequantizeLinear"):
        source = node.input[0]
        zero_point = inits[node.input[2]] if len(node.input) > 2 else np.zeros(1)
        assert np.all(zero_point == 0), node.name
        if source in init_types:  # a stored (weight) tensor
            assert init_types[source] == onnx.TensorProto.INT8, f"{node.name} dequantizes {source} of type " \
                f"{onnx.TensorProto.DataType.Name(init_types[source])}"
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            assert inits[node.input[1]].ndim == 1 and axis == 0, node.name
            weights += 1
        else:
            assert producers[source].op_type == "QuantizeLinear", node.name
            assert inits[node.input[1]].size == 1, node.name  # per-tensor activation scale
            activations += 1
    assert weights >= 1 and activations >= 2  # conv2 (conv1 and the classifier stay float by default)
    for node in (n for n in graph.node if n.op_type == "Conv" and len(n.input) > 2):
        assert node.input[2] in init_types and init_types[node.input[2]] == onnx.TensorProto.FLOAT, node.name


def _export_arch(tmp_path, name, imgsz=(32, 32)):
    import torch

    from gap_deploy.exporter import export_onnx, load_model

    torch.manual_seed(0)
    import tests.support.families as fam

    torch.save(getattr(fam, name)().state_dict(), tmp_path / f"{name}.pt")
    result = export_onnx(load_model(tmp_path / f"{name}.pt", arch=f"tests.support.families:{name}"),
                         tmp_path / f"{name}.onnx", dynamic=True, imgsz=imgsz)
    return onnx.load(str(result.path)), [r.shape for r in result.parity.rows]


def test_fp16_overflow_is_caught_and_the_layers_are_kept_in_fp32(tmp_path):
    """OverflowNet's boost layer reaches ~1e5 in FP32: inf in float16 on a GPU, invisible to the CPU sweep."""
    fp32, shapes = _export_arch(tmp_path, "OverflowNet")
    with pytest.raises(ExportError, match=r"beyond float16's largest \(65504\)(.|\n)*node_conv2d_1 \(\|x\| up to"):
        make_variant(fp32, "fp16", shapes, fallback=False)
    result = make_variant(fp32, "fp16", shapes)
    assert result.passed and {"node_conv2d_1", "node_relu_1", "node_conv2d_2"} <= set(result.fp32_layers)
    assert "node_conv2d" not in result.fp32_layers  # the rest stays FP16
    assert metadata_of(result.model).fp32_layers == result.fp32_layers
    assert result.before_fallback is not None and any("exceed 65504" in s for s in result.fallback_steps)


@pytest.mark.slow
def test_fp16_fallback_finds_an_underflowing_layer_by_sensitivity(tmp_path):
    fp32, shapes = _export_arch(tmp_path, "UnderflowNet")
    plain = make_variant(fp32, "fp16", shapes, fallback=False)
    assert not plain.passed and max(r.rel_err for r in plain.sweep.rows) > 0.1
    result = make_variant(fp32, "fp16", shapes)
    assert result.passed and len(result.fp32_layers) == 1
    tiny = next(n for n in fp32.graph.node if n.op_type == "Conv" and "tiny.weight" in n.input)
    assert result.fp32_layers == (tiny.name,)
    assert max(r.rel_err for r in result.sweep.rows) < 1e-3 < max(r.rel_err for r in result.before_fallback.rows)
    # the kept layer got its FP32 weights back (not float16 ones cast up)
    weights = {i.name: i.data_type for i in result.model.graph.initializer}
    assert weights.get("tiny.weight__fp32") == onnx.TensorProto.FLOAT


def test_keep_fp32_by_hand_and_a_pattern_that_matches_nothing(fp32):
    result = make_variant(fp32, "fp16", SHAPES[:2], keep_fp32=["node_conv2d*"], fallback=False)
    kept = [n.name for n in fp32.graph.node if n.name.startswith("node_conv2d")]
    assert result.fp32_layers == tuple(kept) and metadata_of(result.model).fp32_layers == tuple(kept)
    from gap_deploy.runtime.errors import UsageError

    with pytest.raises(UsageError, match="'nothing_like_this' matches no layer"):
        make_variant(fp32, "fp16", SHAPES[:2], keep_fp32=["nothing_like_this"])


def test_the_fp16_gate_fails_a_broken_conversion(fp32):
    """A conversion that gets one layer's weights 5% wrong: the depth-derived gate must refuse it."""
    from onnx import numpy_helper

    from gap_deploy.exporter.precision import fp16_tolerance, to_fp16
    from gap_deploy.runtime.parity import compare, ort_cpu_infer, random_input

    broken = to_fp16(fp32)
    weight = next(i for i in broken.graph.initializer if len(i.dims) == 4)
    values = numpy_helper.to_array(weight) * np.float16(1.05)
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    report = compare(ort_cpu_infer(fp32), ort_cpu_infer(broken), SHAPES, fp16_tolerance(fp32),
                     reference_name="FP32", candidate_name="broken FP16", inputs=random_input)
    assert not report.passed
    fine = compare(ort_cpu_infer(fp32), ort_cpu_infer(to_fp16(fp32)), SHAPES, fp16_tolerance(fp32),
                   reference_name="FP32", candidate_name="FP16", inputs=random_input)
    assert fine.passed


def test_the_fp16_gate_grows_with_depth():
    from onnx import helper

    from gap_deploy.exporter.precision import FLOAT16_UNIT_ROUNDOFF, fp16_tolerance

    def chain(depth):
        nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"y{i - 1}", "w"], [f"y{i}"]) for i in range(depth)]
        return helper.make_model(helper.make_graph(nodes, "g", [], []))

    assert fp16_tolerance(chain(1)).rtol == 2e-3  # the floor
    assert fp16_tolerance(chain(100)).rtol == pytest.approx(4 * FLOAT16_UNIT_ROUNDOFF * 10)
    assert fp16_tolerance(chain(100)).atol_relative


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ResNetish", "MobileNetish", "EfficientNetish", "DenseNetish", "ShuffleNetish",
                                    "SqueezeNetish"])
def test_every_family_exports_in_fp16_with_the_default_gate(tmp_path, family):
    import torch

    import tests.support.families as fam
    from gap_deploy.exporter import export_onnx, load_model
    from tests.conftest import randomize_batchnorm

    torch.manual_seed(0)
    torch.save(randomize_batchnorm(getattr(fam, family)(num_classes=6)).state_dict(), tmp_path / "m.pt")
    result = export_onnx(load_model(tmp_path / "m.pt", arch=f"tests.support.families:{family}", num_classes=6),
                         tmp_path / "m.onnx", dynamic=True, imgsz=(64, 64))
    variant = make_variant(onnx.load(str(result.path)), "fp16", [r.shape for r in result.parity.rows])
    assert variant.passed and variant.fp32_layers == ()  # no fallback needed for a normal model
    assert variant.top1_agreement == 1.0


def test_cpu_int8_chooses_its_float_layers_by_measurement_not_position(fp32, calibration):
    """The cpu layout starts from every layer quantized; when the gate is missed, each step tries the most
    sensitive remaining layers and keeps the one that gains most. A planted gate the first layer alone cannot
    meet shows the steps; the result passes, with fewer float layers than layers tried.

    The gate is planted from the all-INT8 model's own error (0.3x of it): a top-1 gate alone is met without any
    fallback on CPUs with VNNI (u8s8 without saturation), so the test depended on the machine."""
    plain = make_variant(fp32, "int8", SHAPES[:1], calibration=calibration, int8_layout="cpu",
                         tolerance=Tolerance(np.inf, np.inf, 0.99), fallback=False)
    gate = Tolerance(np.inf, 0.3 * plain.real_data.rows[0].rel_err, 0.99)
    result = make_variant(fp32, "int8", SHAPES[:1], calibration=calibration, int8_layout="cpu", tolerance=gate)
    assert result.passed and result.real_data.rows[0].top1_agreement >= 0.99
    assert result.real_data.rows[0].rel_err <= gate.rtol
    assert not result.before_fallback.passed and result.fallback_steps  # it had to choose
    for step in result.fallback_steps:
        assert "by measurement" in step
    assert len(result.fp32_layers) == len(result.fallback_steps)  # one layer per step, never a group


def test_int8_fallback_leaves_sensitive_layers_in_float_until_the_gate_passes(fp32, calibration):
    """All layers INT8 cannot reach a relative error of 1e-3 on the calibration images; the fallback leaves
    the most sensitive layers unquantized, records them, and passes."""
    strict = Tolerance(np.inf, 1e-3, 0.0)
    plain = make_variant(fp32, "int8", SHAPES[:1], calibration=calibration, keep_float_ends=False, fallback=False,
                         tolerance=strict)
    assert not plain.passed and plain.real_data.rows[0].rel_err > 1e-3
    result = make_variant(fp32, "int8", SHAPES[:1], calibration=calibration, keep_float_ends=False, tolerance=strict)
    assert result.passed and result.fp32_layers and result.before_fallback is not None
    assert metadata_of(result.model).fp32_layers == result.fp32_layers
    assert all("most error-sensitive" in step for step in result.fallback_steps)
    with pytest.raises(ExportError, match="INT8 misses its gate even with these layers left in float"):
        make_variant(fp32, "int8", SHAPES[:1], calibration=calibration, keep_float_ends=False,
                     tolerance=Tolerance(np.inf, -1.0, 0.0))  # a gate nothing can pass


def test_the_cpu_int8_layout_is_u8s8_with_relu_folded(fp32, calibration):
    """ONNX Runtime's CPU format: UINT8 activations with their zero points, INT8 weights per channel (zero points
    0, axis 0), float biases; the Relu after a quantized convolution is folded into its output's range."""
    from onnx import numpy_helper

    from gap_deploy.exporter.precision import metadata_of

    result = make_variant(fp32, "int8", SHAPES[:1], calibration=calibration, tolerance=Tolerance(np.inf, np.inf, 0),
                          int8_layout="cpu")
    graph = result.model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    init_types = {i.name: i.data_type for i in graph.initializer}
    activation_types = set()
    for node in (n for n in graph.node if n.op_type == "DequantizeLinear"):
        if node.input[0] in init_types:  # weights
            assert init_types[node.input[0]] == onnx.TensorProto.INT8 and np.all(inits[node.input[2]] == 0)
        else:
            activation_types.add(inits[node.input[2]].dtype)
    assert activation_types == {np.dtype(np.uint8)}
    producers = {out: n for n in graph.node for out in n.output}
    for relu in (n for n in graph.node if n.op_type == "Relu"):  # only where the convolution stays float
        assert producers[relu.input[0]].name in ("node_conv2d",), relu.name
    assert metadata_of(result.model).int8_layout == "cpu" and result.latency["backend"] == "ort-cpu"
    keys = [p.key for p in result.model.metadata_props]
    assert len(keys) == len(set(keys))  # onnx's checker (and so gap-pack, gap-tune --emit) refuses duplicates
    onnx.checker.check_model(result.model)
    tensorrt = make_variant(fp32, "int8", SHAPES[:1], calibration=calibration, tolerance=Tolerance(np.inf, np.inf, 0))
    assert metadata_of(tensorrt.model).int8_layout == "tensorrt"


def _kernels(model: onnx.ModelProto, tmp_path, *, level, disabled=()) -> collections.Counter:
    """The operators onnxruntime runs for ``model``: its optimized graph's (domain, op type) counts, from a plain
    ``InferenceSession`` with only the optimization level set (and ``disabled`` optimizers, as gap-deploy's
    sessions disable them)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = level
    options.log_severity_level = 3
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"],
                         disabled_optimizers=list(disabled))
    return collections.Counter((n.domain, n.op_type) for n in onnx.load(options.optimized_model_filepath).graph.node)


def _int8_models(fp32):
    """The CPU-layout INT8 models a user gets: every layer quantized (the gate's start), and the float ends kept
    (the first convolution and its pool in float, the case that was slow), for the reference CNN and two families
    whose stems end in a MaxPool (ResNet's) or not (MobileNetV3's)."""
    import torch

    from gap_deploy.exporter import export_model
    from gap_deploy.exporter.checkpoint import from_module
    from gap_deploy.exporter.precision import to_int8
    from tests.support.families import MobileNetV3ish, ResNetish

    torch.manual_seed(0)
    models = {"reference": fp32}
    for family in (ResNetish, MobileNetV3ish):
        models[family.__name__] = export_model(from_module(family()), dynamic=True, imgsz=(64, 64)).model
    data = np.random.default_rng(0).standard_normal((8, 3, 64, 64)).astype(np.float32)
    return {f"{name}, float ends {ends}": to_int8(model, data, keep_float_ends=ends, layout="cpu")
            for name, model in models.items() for ends in (True, False)}


def test_the_cpu_int8_graph_runs_the_same_kernels_in_plain_onnxruntime(fp32, tmp_path):
    """Issue 37: an app that loads the INT8 .onnx in plain onnxruntime (Triton's onnxruntime backend, a service of
    its own) gets the same kernels as gap-deploy's session, which turns QDQPropagationTransformer off: the
    decision behind the speed, read from onnxruntime's own optimized graph at the levels that run CPU kernels
    (extended, and all: InferenceSession's default)."""
    import onnxruntime as ort

    from gap_deploy.runtime.backends.onnxrt import DISABLED_OPTIMIZERS

    for name, model in _int8_models(fp32).items():
        for level in (ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
            plain = _kernels(model, tmp_path, level=level)
            assert plain == _kernels(model, tmp_path, level=level, disabled=DISABLED_OPTIMIZERS), (name, level)


def test_the_slow_order_is_what_the_check_above_catches(fp32, tmp_path):
    """The check can fail: with the pool moved back behind its Relu (the order quantize_static writes),
    onnxruntime's default optimizations quantize the pool after the float first layer (a UINT8 pool), and the
    kernels differ from gap-deploy's session's."""
    import onnxruntime as ort

    from gap_deploy.runtime.backends.onnxrt import DISABLED_OPTIMIZERS

    model = _int8_models(fp32)["ResNetish, float ends True"]
    graph = model.graph
    producers = {out: n for n in graph.node for out in n.output}
    pool = next(n for n in graph.node if n.op_type == "MaxPool")
    relu = next(n for n in graph.node if pool.output[0] in n.input)
    assert relu.op_type == "Relu" and producers[pool.input[0]].op_type == "Conv"
    pool.input[0], relu.input[0] = relu.input[0], pool.input[0]  # Conv -> Relu -> MaxPool -> QuantizeLinear
    relu.output[0], pool.output[0] = pool.output[0], relu.output[0]
    nodes = list(graph.node)
    i, j = nodes.index(relu), nodes.index(pool)
    nodes[i], nodes[j] = pool, relu
    del graph.node[:]
    graph.node.extend(nodes)
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    plain = _kernels(model, tmp_path, level=level)
    assert plain != _kernels(model, tmp_path, level=level, disabled=DISABLED_OPTIMIZERS)
    optimized = onnx.load(str(tmp_path / "optimized.onnx")).graph  # the session's, the pool in float
    assert "QuantizeLinear" not in _pool_inputs(optimized)
    _kernels(model, tmp_path, level=level)
    assert "QuantizeLinear" in _pool_inputs(onnx.load(str(tmp_path / "optimized.onnx")).graph)  # a UINT8 pool


def _pool_inputs(graph) -> set[str]:
    producers = {out: n for n in graph.node for out in n.output}
    return {producers[n.input[0]].op_type for n in graph.node if n.op_type == "MaxPool"}


def test_gap_build_refuses_the_cpu_layout(tmp_path, fp32, calibration):
    from gap_deploy.exporter.builder import build_with_precision
    from gap_deploy.runtime.errors import UsageError

    model = make_variant(fp32, "int8", SHAPES[:1], calibration=calibration, tolerance=Tolerance(np.inf, np.inf, 0),
                         int8_layout="cpu").model
    path = tmp_path / "m.int8.onnx"
    onnx.save(model, str(path))
    with pytest.raises(UsageError, match="'cpu' layout .* cannot be built by TensorRT: .*m.int8.onnx has it"):
        build_with_precision(path, tmp_path / "m.plan")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.int8.onnx"]


@pytest.mark.parametrize("speedup, plain, warned, plain_warned",
                         [(0.8, 0.8, True, False), (1.3, 1.28, False, False), (1.3, 0.6, False, True),
                          (1.0, 1.5, False, False)])
def test_gap_export_reports_int8_latency_and_warns_when_slower(tmp_path, reference_ckpt, calibration, monkeypatch,
                                                               speedup, plain, warned, plain_warned):
    import gap_deploy.exporter.precision as precision
    from gap_deploy.exporter.cli.export import main

    # the measurement itself is a benchmark (scripts/bench_int8.py); here only what is done with its figures
    monkeypatch.setattr(precision, "measure_latency", lambda fp32, variant, shape, **kw: {
        "backend": "ort-cpu", "shape": list(shape), "fp32_ms": 1.0, "variant_ms": 1.0 / speedup, "speedup": speedup,
        "plain_ms": 1.0 / plain, "plain_speedup": plain})
    np.save(tmp_path / "calib.npy", calibration)
    result = CliRunner().invoke(main, [str(reference_ckpt), "--dynamic", "--imgsz", "32", "-o",
                                       str(tmp_path / "m.onnx"), "--precision", "int8", "--calib",
                                       str(tmp_path / "calib.npy"), "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert f"({speedup:.2f}x); in a plain onnxruntime session {1 / plain:.3f} ms ({plain:.2f}x)" in result.output
    advice = "slower than FP32 on ort-cpu; for a CPU deployment export with --int8-layout cpu"
    assert (advice in result.output) is warned
    assert (f"the INT8 model runs at {plain:.2f}x FP32, not {speedup:.2f}x" in result.output) is plain_warned
    report = json.loads((tmp_path / "r.json").read_text())["precision_variant"]
    assert report["latency"]["speedup"] == speedup and report["int8_layout"] == "tensorrt"
    assert report["latency"]["plain_speedup"] == plain


def test_a_missing_fp16_converter_names_its_extra(fp32, monkeypatch):
    """Failed before: a raw ModuleNotFoundError traceback for onnxconverter_common without the [convert] extra."""
    import sys

    from gap_deploy.exporter.precision import to_fp16
    from gap_deploy.runtime.errors import MissingDependencyError

    monkeypatch.setitem(sys.modules, "onnxconverter_common", None)
    monkeypatch.delitem(sys.modules, "onnxconverter_common.float16", raising=False)
    with pytest.raises(MissingDependencyError, match=r"gap-deploy\[convert\]"):
        to_fp16(fp32)
