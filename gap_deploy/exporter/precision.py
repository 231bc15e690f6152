"""FP16 and INT8 variants of an FP32 ONNX model, verified on the CPU before any engine is built.

TensorRT 11 builds strongly typed networks only (no FP16/INT8 builder flags, no calibrators): the
precision of each layer is whatever the ONNX says. So precision is decided here, where ONNX Runtime
can check it against the FP32 model on any machine. torch is not needed.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from gap_deploy.runtime.artifact import ArtifactSpec, describe
from gap_deploy.runtime.errors import ArtifactError, ExportError, UsageError, first_line
from gap_deploy.runtime.layers import FLOAT16_MAX, activations, consumers_of, layer_error
from gap_deploy.runtime.metadata import ModelMetadata
from gap_deploy.runtime.onnx_file import save_onnx
from gap_deploy.runtime.parity import INT8, ParityReport, Tolerance, compare, random_input
from gap_deploy.runtime.shapes import Shape

#: Kept in FP32 in the FP16 model: the global average sums H*W values (overflows float16 beyond 65504
#: on large images), and softmax/normalizations need the range.
FP16_KEEP_FP32 = ["ReduceMean", "GlobalAveragePool", "Softmax", "LogSoftmax", "ReduceSum", "Exp", "Pow"]


@dataclass(frozen=True)
class VariantResult:
    model: onnx.ModelProto
    precision: str
    #: against the FP32 model on the parity sweep (random inputs, every shape)
    sweep: ParityReport
    #: INT8 only: against the FP32 model on the calibration images (top-1 agreement on real data)
    real_data: ParityReport | None = None
    #: FP16: the layers kept in FP32 (by hand with keep_fp32, or by the automatic fallback)
    fp32_layers: tuple[str, ...] = ()
    #: FP16: the sweep before the fallback kept any layer in FP32 (None when no fallback was needed)
    before_fallback: ParityReport | None = None
    #: FP16: what the fallback tried, step by step
    fallback_steps: tuple[str, ...] = ()
    #: INT8: measured median latency of FP32 and of the variant (see measure_latency)
    latency: dict | None = None

    @property
    def top1_agreement(self) -> float:
        """Share of the sweep's images whose top-1 class is the FP32 model's."""
        images = sum(r.shape[0] for r in self.sweep.rows)
        return sum(r.top1_agreement * r.shape[0] for r in self.sweep.rows) / max(images, 1)

    @property
    def passed(self) -> bool:
        top1 = self.precision != "fp16" or self.top1_agreement >= FP16_MIN_TOP1
        return self.sweep.passed and top1 and (self.real_data is None or self.real_data.passed)


def metadata_of(model: onnx.ModelProto) -> ModelMetadata:
    return describe(model).metadata


def _with_precision(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    from gap_deploy.runtime.onnx_file import set_metadata

    set_metadata(model, metadata_of(model).replace(precision=precision))
    return model


def to_fp16(model: onnx.ModelProto, keep_fp32: Sequence[str] = ()) -> onnx.ModelProto:
    """Weights and compute in float16, float32 I/O; the nodes named in ``keep_fp32`` stay float32."""
    from gap_deploy.runtime._lazy import require

    float16 = require("onnxconverter_common.float16", purpose="for FP16 variants")
    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "the float32 number ... will be truncated": judged below instead
            # max_finite_val: onnxconverter-common clamps weights to 1e4 by default, well inside float16's
            # range; that silently changes large weights and biases, so clamp only at float16's own limit.
            converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block,
                                                         node_block_list=list(keep_fp32) or None,
                                                         max_finite_val=FLOAT16_MAX)
    except Exception as exc:
        raise ExportError(f"FP16 conversion failed: {first_line(exc)}") from None
    converted = _with_precision(converted, "fp16")
    if keep_fp32:
        _restore_fp32_weights(model, converted, keep_fp32)
        from gap_deploy.runtime.onnx_file import set_metadata

        set_metadata(converted, metadata_of(converted).replace(fp32_layers=tuple(keep_fp32)))
    return converted


def _restore_fp32_weights(fp32: onnx.ModelProto, converted: onnx.ModelProto, keep: Sequence[str]) -> None:
    """Give the nodes kept in FP32 their original FP32 weights.

    onnxconverter-common blocks the node's compute but still stores its weights as float16 and casts them
    back, so the digits float16 cannot hold are lost anyway (tiny or huge weights). The cast is replaced
    by the original FP32 initializer.
    """
    originals = {i.name: i for i in fp32.graph.initializer}
    stored = {i.name for i in converted.graph.initializer}
    producers = {out: node for node in converted.graph.node for out in node.output}
    graph = converted.graph
    restored: dict[str, str] = {}
    for node in graph.node:
        if node.name not in keep:
            continue
        for index, name in enumerate(node.input):
            cast = producers.get(name)
            if cast is None or cast.op_type != "Cast" or cast.input[0] not in stored or cast.input[0] not in originals:
                continue
            source = cast.input[0]
            if source not in restored:
                restored[source] = f"{source}__fp32"
                copy = onnx.TensorProto()
                copy.CopyFrom(originals[source])
                copy.name = restored[source]
                graph.initializer.append(copy)
            node.input[index] = restored[source]
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    dead = [n for n in graph.node if n.op_type == "Cast" and not any(o in used for o in n.output)]
    for node in dead:
        graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


# ---- FP16 gate: derived from float16's precision and the model's depth -----------------------------------

FLOAT16_UNIT_ROUNDOFF = 2.0 ** -11  # 4.9e-4: half the spacing of float16 numbers near 1
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: FP16 must keep the FP32 model's top-1 on at least this share of the sweep's images (random inputs can
#: nearly tie, so one flip in ten is allowed; a broken conversion flips most of them)
FP16_MIN_TOP1 = 0.8


def model_depth(model: onnx.ModelProto) -> int:
    """The number of weighted layers a signal crosses (convolutions and matrix products)."""
    return max(1, sum(1 for n in model.graph.node if n.op_type in COMPUTE_OPS))


def fp16_tolerance(model: onnx.ModelProto) -> Tolerance:
    """The FP16 gate for ``model``.

    Each weighted layer rounds its inputs and weights to float16 (relative error u = 2^-11) and the
    errors of independent layers add up roughly like a random walk, so the relative error of the logits
    grows like u * sqrt(depth). The gate allows 4 u sqrt(depth) (at least 2e-3): above every GAP family
    in tests/support/families.py (worst 5.3e-4) and the relative errors reported for MobileNetV4 (up to 1.02e-3),
    far below a broken conversion (a layer 5% off, an overflow). The absolute limit scales with the
    logits (10 x rtol x max|logit|) instead of a fixed 0.05.
    """
    rtol = max(2e-3, 4 * FLOAT16_UNIT_ROUNDOFF * math.sqrt(model_depth(model)))
    return Tolerance(atol=10 * rtol, rtol=rtol, atol_relative=True)


def load_calibration(source: str | Path | None, spec: ArtifactSpec, *, size: tuple[int, int],
                     limit: int = 256) -> np.ndarray:
    """Calibration batch (N, C, H, W) float32, normalized as the model ``spec`` describes expects.

    ``source`` is a folder of images (made by the model's preprocessing contract at ``size``) or a ``.npy``
    array already in NCHW float32.
    """
    from gap_deploy.runtime.images import collect_images

    if source is None:
        raise UsageError("--precision int8 needs calibration data.",
                         hint="pass --calib DIR (image files) or --calib FILE.npy (NCHW float32, normalized).")
    source = Path(source)
    channels, metadata = spec.channels, spec.metadata
    if not source.exists():
        raise ArtifactError(f"calibration data {source} does not exist.",
                            hint="give a folder of images or an .npy NCHW array.")
    if source.suffix == ".npy":
        try:
            data = np.load(source, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            # numpy's advice for object arrays (load with allow_pickle=True) is never passed on: that runs code
            why = ("it is not an .npy array of numbers (it holds pickled Python objects, or is no .npy file at all); "
                   "it was not loaded" if "pickle" in str(exc) else first_line(exc))
            raise ArtifactError(f"cannot read calibration array {source}: {why}.",
                                hint="save the batch with numpy.save(path, array), float32 NCHW.") from None
        if not isinstance(data, np.ndarray):  # an .npz archive named .npy
            data.close()
            raise ArtifactError(f"calibration array {source} is an .npz archive, not one .npy array.",
                                hint="save one array with numpy.save, or pass a folder of images.")
        if data.ndim != 4 or data.shape[1] != channels or not np.issubdtype(data.dtype, np.floating):
            raise ArtifactError(f"calibration array {source} has shape {data.shape} dtype {data.dtype}; "
                                f"expected float (N, {channels}, H, W), normalized like the model's input.")
        if data.shape[2] < metadata.min_height or data.shape[3] < metadata.min_width or len(data) == 0:
            raise ArtifactError(f"calibration array {source} holds {len(data)} image(s) of {data.shape[2]}x"
                                f"{data.shape[3]}; this model's minimum input is {metadata.min_height}x"
                                f"{metadata.min_width}.", hint="calibrate at the size you deploy.")
        data = np.ascontiguousarray(data[:limit], dtype=np.float32)
        if not np.isfinite(data).all():
            raise ArtifactError(f"calibration array {source} contains NaN or infinite values.")
        return data
    if not source.is_dir():
        raise ArtifactError(f"calibration data {source} is neither a folder of images nor a .npy file.")
    if size[0] < metadata.min_height or size[1] < metadata.min_width:
        raise ArtifactError(f"calibration size {size[0]}x{size[1]} is below this model's minimum input "
                            f"{metadata.min_height}x{metadata.min_width}.", hint="calibrate at the size you deploy.")
    files = collect_images([source])[:limit]
    if not files:
        raise ArtifactError(f"calibration folder {source} holds no image files.")
    contract = metadata.preprocessing(size, channels)  # the model's own preprocessing, at the size
    batch = [contract.load(f, channels) for f in files]
    return np.stack(batch).astype(np.float32)


def float_ends(model: onnx.ModelProto) -> list[str]:
    """The first convolution and the classifier: the layers INT8 hurts most, kept in float.

    The first conv sees raw normalized pixels; the classifier maps the small differences between global
    averages to logits. On the demo model, quantizing them drops top-1 agreement with FP32 from 100%
    to about 70% (relative error 0.02 -> 0.28); every other layer costs little.
    """
    nodes = list(model.graph.node)
    convs = [n for n in nodes if n.op_type == "Conv"]
    heads = [n for n in nodes if n.op_type in ("Gemm", "MatMul")] or convs[-1:]
    names = [n.name for n in (convs[:1] + heads[-1:]) if n.name]
    return list(dict.fromkeys(names))


#: INT8 graph layouts. Both have explicit QuantizeLinear/DequantizeLinear, INT8 weights per channel on axis 0
#: (symmetric) and float biases. "tensorrt": symmetric INT8 activations (zero points 0), what TensorRT builds.
#: "cpu": asymmetric UINT8 activations (ONNX Runtime's U8S8 format for x86 and ARM CPUs), so a Relu is folded
#: into the quantized range of the op before it and ONNX Runtime runs integer kernels (QLinearConv); TensorRT
#: cannot build it (non-zero zero points).
INT8_LAYOUTS = ("tensorrt", "cpu")


def to_int8(model: onnx.ModelProto, calibration: np.ndarray, *, keep_float_ends: bool = True,
            keep_float: Sequence[str] = (), layout: str = "tensorrt") -> onnx.ModelProto:
    """Explicit QuantizeLinear/DequantizeLinear in ``layout`` (INT8_LAYOUTS).

    ``keep_float_ends`` leaves the first convolution and the classifier in float (see float_ends);
    ``keep_float`` names more nodes to leave unquantized.
    """
    if layout not in INT8_LAYOUTS:
        raise UsageError(f"INT8 layout {layout!r}; choose one of {', '.join(INT8_LAYOUTS)}.")
    from gap_deploy.runtime._lazy import require

    quant = require("onnxruntime.quantization", purpose="for INT8 quantization")
    input_name = describe(model).input_name

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self._items = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {input_name: item}

    with tempfile.TemporaryDirectory(prefix="gap-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        save_onnx(model, src)
        from gap_deploy.exporter._quiet import quiet_loggers

        try:
            with quiet_loggers(""):
                cpu = layout == "cpu"
                quant.quantize_static(
                    str(src), str(dst), Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=True,
                    activation_type=quant.QuantType.QUInt8 if cpu else quant.QuantType.QInt8,
                    weight_type=quant.QuantType.QInt8,
                    calibrate_method=quant.CalibrationMethod.MinMax,
                    nodes_to_exclude=list(dict.fromkeys([*(float_ends(model) if keep_float_ends else []),
                                                         *keep_float])),
                    extra_options={"ActivationSymmetric": not cpu, "WeightSymmetric": True,
                                   # TensorRT dequantizes INT8 only: an INT32 bias DQ does not build.
                                   "QuantizeBias": False})
        except Exception as exc:
            raise ExportError(f"INT8 quantization failed: {first_line(exc)}") from None
        quantized = onnx.load(str(dst))
    quantized = _with_precision(quantized, "int8")
    if layout == "cpu":
        pools_before_relus(quantized)
    from gap_deploy.runtime.onnx_file import set_metadata

    meta = metadata_of(quantized)
    set_metadata(quantized, meta.replace(fp32_layers=tuple(keep_float) or meta.fp32_layers, int8_layout=layout))
    return quantized


def pools_before_relus(model: onnx.ModelProto) -> list[str]:
    """Float ``Relu -> MaxPool -> QuantizeLinear`` becomes ``MaxPool -> Relu -> QuantizeLinear``, in place; the
    pools moved are returned by name.

    The two orders give the same numbers (both are monotonic and MaxPool pads with -inf), but onnxruntime reads
    them differently. Its QDQPropagationTransformer, on in every session with onnxruntime's defaults, moves a
    QuantizeLinear backwards across a MaxPool whose input is not a DequantizeLinear (onnxruntime's
    core/optimizer/qdq_transformer/qdq_propagation.cc); after a layer kept in float (an INT8 model's first
    convolution, and the ResNet stem's pool after it) that makes a slow NCHW UINT8 pool out of a fast float one
    fused into the convolution's blocked layout (ResNetish, 1x3x224x224, 1 thread: 1.97 ms against 0.93 ms). A
    Relu between the pool and the quantization stops the propagation, so the artifact is as fast in a plain
    ``InferenceSession`` as in gap-deploy's own (which turns the transformer off for INT8 models made before).
    """
    graph = model.graph
    producers = {out: n for n in graph.node for out in n.output}
    consumers = consumers_of(graph)
    outputs = {o.name for o in graph.output}
    moved = []
    for pool in [n for n in graph.node if n.op_type == "MaxPool" and len(n.output) == 1]:
        relu = producers.get(pool.input[0])
        after = consumers.get(pool.output[0], [])
        if (relu is None or relu.op_type != "Relu" or len(consumers.get(relu.output[0], [])) != 1
                or relu.output[0] in outputs or not after or any(n.op_type != "QuantizeLinear" for n in after)):
            continue
        gone, pooled = relu.output[0], f"{pool.output[0]}_before_relu"
        pool.input[0], relu.input[0] = relu.input[0], pooled
        relu.output[0], pool.output[0] = pool.output[0], pooled
        for info in [v for v in graph.value_info if v.name == gone]:
            graph.value_info.remove(info)
        nodes = list(graph.node)  # the pool now runs first: keep the node list topologically sorted
        i, j = nodes.index(relu), nodes.index(pool)
        nodes[i], nodes[j] = pool, relu
        del graph.node[:]
        graph.node.extend(nodes)
        moved.append(pool.name)
    return moved


def in_turns(calls: Sequence, seconds: float, min_turns: int = 5) -> list[list[float]]:
    """Each call's latencies in ms, timed in turns (A B C A B C ...) within one process for ``seconds`` and at
    least ``min_turns`` turns, after one warm-up call each, so a drifting machine affects them alike."""
    import time

    for call in calls:
        call()
    samples: list[list[float]] = [[] for _ in calls]
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples[-1]) < min_turns:
        for i, call in enumerate(calls):
            t0 = time.perf_counter()
            call()
            samples[i].append((time.perf_counter() - t0) * 1e3)
    return samples


def paired_speedup(reference: Sequence[float], candidate: Sequence[float]) -> float:
    """The median of the turn-by-turn ratios of two in_turns series: drift cancels pair by pair."""
    return float(np.median(np.asarray(reference) / np.maximum(np.asarray(candidate), 1e-9)))


def measure_latency(fp32: onnx.ModelProto, variant: onnx.ModelProto, shape: Shape, *,
                    seconds: float = 0.5) -> dict:
    """Median latency of ``fp32`` and ``variant`` on ONNX Runtime's CPU provider at ``shape``, measured in
    turns (A B C A B C ...) within one process, the speed-up as the median of the pairs' ratios, so a drifting
    machine affects both alike. The variant runs twice: in a session made as runtime.backends.onnxrt makes
    them (with its session options, ``variant_ms``), and in a plain ``onnxruntime.InferenceSession`` with
    onnxruntime's defaults, as an app that embeds the .onnx runs it (``plain_ms``, ``plain_speedup``)."""
    from gap_deploy.runtime._lazy import require
    from gap_deploy.runtime.backends.onnxrt import cpu_session
    from gap_deploy.runtime.parity import random_input

    ort = require("onnxruntime", purpose="to time the INT8 model")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    plain = ort.InferenceSession(variant.SerializeToString(), options, providers=["CPUExecutionProvider"])
    sessions = [cpu_session(m.SerializeToString()) for m in (fp32, variant)] + [plain]
    x = random_input(shape, 0)
    feed = {sessions[0].get_inputs()[0].name: x}
    samples = in_turns([lambda s=s: s.run(None, feed) for s in sessions], seconds)
    fp32_ms, variant_ms, plain_ms = (float(np.median(v)) for v in samples)
    return {"backend": "ort-cpu", "shape": list(shape), "fp32_ms": fp32_ms, "variant_ms": variant_ms,
            "speedup": paired_speedup(samples[0], samples[1]), "plain_ms": plain_ms,
            "plain_speedup": paired_speedup(samples[0], samples[2])}


#: the variant is said to be slower in plain onnxruntime when its speed-up there is more than this fraction below
#: the one in gap-deploy's session (the turns of one run on this 2-core machine vary by a few per cent)
PLAIN_SLOWER = 0.10


def plain_differs(latency: dict) -> bool:
    """The variant runs slower in a plain onnxruntime session than in gap-deploy's (faster costs an app
    nothing and is not said)."""
    plain = latency.get("plain_speedup")
    return plain is not None and 1 - plain / latency["speedup"] > PLAIN_SLOWER


# ---- FP16 with an automatic FP32 fallback ------------------------------------------------------------------

def resolve_layers(model: onnx.ModelProto, patterns: Sequence[str]) -> list[str]:
    """Node names matching each NAME_OR_PATTERN (fnmatch); a pattern that matches nothing is an error."""
    names = [n.name for n in model.graph.node if n.name]
    chosen: list[str] = []
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            sample = ", ".join(n for n in names if any(op in n for op in ("conv", "Conv", "gemm", "Gemm")))[:300]
            raise UsageError(f"keep_fp32 {pattern!r} matches no layer of the model.",
                             note=f"layers include: {sample or ', '.join(names[:10])}", hint="give a node name or a "
                             "pattern such as '*conv3*'.")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def overflowing_layers(fp32: onnx.ModelProto, inputs: Sequence[np.ndarray]) -> list[tuple[str, float]]:
    """Nodes that produce or read values beyond float16's range (65504) in the FP32 model on ``inputs``:
    (node name, max |value|). A node reading such a value must stay FP32 too, or its input overflows."""
    nodes = [n for n in fp32.graph.node if n.name and n.output]
    stored = {i.name for i in fp32.graph.initializer}
    tensors = sorted({t for n in nodes for t in [*n.output, *n.input] if t and t not in stored})
    values = activations(fp32, tensors, inputs)
    peaks = {name: max((float(np.max(np.abs(v))) for v in vs if v.size), default=0.0) for name, vs in values.items()}
    found = []
    for node in nodes:
        peak = max((peaks.get(t, 0.0) for t in [*node.output, *node.input] if t), default=0.0)
        if peak > FLOAT16_MAX:
            found.append((node.name, peak))
    return found


#: activations a quantizer may fold into the range of the op before them
FOLDABLE_ACTIVATIONS = ("Relu", "Clip")


def sensitive_layers(fp32: onnx.ModelProto, fp16: onnx.ModelProto, inputs: Sequence[np.ndarray],
                     exclude: Sequence[str] = ()) -> list[tuple[str, float]]:
    """Weighted layers ranked by how much relative error they add in FP16 (their output's error minus the
    error of their input, each runtime.layers.layer_error as gap-debug reports it), most harmful first."""
    nodes = [n for n in fp32.graph.node if n.op_type in COMPUTE_OPS and n.name and n.name not in exclude]
    produced = {t for n in fp16.graph.node for t in n.output} | {i.name for i in fp16.graph.input}
    consumers = consumers_of(fp32.graph)

    def comparable(tensor: str) -> str:
        """``tensor``, or, where the variant folded it away (a Relu folded into an INT8 op's range), the output
        of the activation chain that follows it."""
        while tensor not in produced and len(consumers.get(tensor, [])) == 1 \
                and consumers[tensor][0].op_type in FOLDABLE_ACTIVATIONS:
            tensor = consumers[tensor][0].output[0]
        return tensor

    ends = {n.name: (comparable(n.output[0]), comparable(n.input[0])) for n in nodes}
    tensors = sorted({t for pair in ends.values() for t in pair})
    ref, got = activations(fp32, tensors, inputs), activations(fp16, tensors, inputs)

    def error(name: str) -> float:  # the measurement gap-debug reports (runtime.layers.layer_error)
        if name not in ref or name not in got:
            return 0.0
        return layer_error(ref[name], got[name]).rel_err

    ranked = [(n.name, error(ends[n.name][0]) - error(ends[n.name][1])) for n in nodes]
    return sorted(ranked, key=lambda item: -item[1])


def fp16_with_fallback(fp32: onnx.ModelProto, shapes: Sequence[Shape], tolerance: Tolerance, *,
                       keep_fp32: Sequence[str] = (), fallback: bool = True) -> VariantResult:
    """FP16 that passes its gate: first as asked, then with the overflowing layers in FP32, then with the
    most error-sensitive layers in FP32, in growing groups. Raises ExportError naming the layers tried."""
    from gap_deploy.runtime.parity import ort_cpu_infer

    reference = ort_cpu_infer(fp32)

    def attempt(layers: Sequence[str]) -> VariantResult:
        model = to_fp16(fp32, layers)
        sweep = compare(reference, ort_cpu_infer(model), shapes, tolerance, reference_name="FP32 ONNX",
                        candidate_name="FP16 ONNX" + (f" ({len(layers)} layer(s) FP32)" if layers else ""),
                        inputs=random_input)
        return VariantResult(model, "fp16", sweep, fp32_layers=tuple(layers))

    layers = resolve_layers(fp32, keep_fp32)
    inputs = [random_input(s, i) for i, s in enumerate(shapes)]
    # ONNX Runtime's CPU kernels compute float16 nodes in float32, so an activation beyond 65504 that would
    # be inf on a GPU passes the CPU sweep: the FP32 activations are checked against float16's range instead.
    over = [(name, peak) for name, peak in overflowing_layers(fp32, inputs) if name not in layers]
    first = attempt(layers)
    if (first.passed and not over) or not fallback:
        if over:
            raise ExportError(
                "FP16 misses its gate: these layers reach values beyond float16's largest (65504) on the sweep: "
                + ", ".join(f"{name} (|x| up to {peak:.3g})" for name, peak in over) + "; no FP16 model was written.",
                note="they would overflow to inf in float16 on a GPU (ONNX Runtime's CPU kernels compute float16 in "
                     "float32, so the CPU parity alone cannot show it).",
                hint="keep them in FP32 (--keep-fp32 NAME), or allow the automatic FP32 fallback.")
        return first
    steps: list[str] = []
    result = first
    if over:
        layers = layers + [name for name, _ in over]
        steps.append(f"kept {len(over)} layer(s) in FP32 whose activations exceed 65504: "
                     + ", ".join(f"{name} (|x| up to {peak:.3g})" for name, peak in over))
        result = attempt(layers)
    result, layers = keep_sensitive_layers(fp32, attempt, inputs, layers, result, steps)
    if not result.passed:
        raise ExportError("FP16 misses its gate even with these layers kept in FP32: "
                          f"{', '.join(layers) or '(none)'}; no FP16 model was written.",
                          note="\n".join(steps + [result.sweep.format_table()]),
                          hint="keep more layers with --keep-fp32 PATTERN, or ship the FP32 model.")
    return VariantResult(result.model, "fp16", result.sweep, fp32_layers=tuple(layers),
                         before_fallback=first.sweep, fallback_steps=tuple(steps))


def keep_sensitive_layers(fp32: onnx.ModelProto, attempt, inputs: Sequence[np.ndarray], layers: list[str],
                          result: VariantResult, steps: list[str]) -> tuple[VariantResult, list[str]]:
    """Keep the most error-sensitive layers in float, in groups of 1, 2, 4, ... until ``attempt`` passes."""
    ranked = [name for name, growth in sensitive_layers(fp32, result.model, inputs, exclude=layers) if growth > 0]
    group = 1
    while ranked and not result.passed:
        add, ranked = ranked[:group], ranked[group:]
        layers = layers + add
        result = attempt(layers)
        judged = result.real_data or result.sweep
        steps.append(f"kept the {len(add)} most error-sensitive layer(s) in float: {', '.join(add)} -> worst "
                     f"relative error {max(r.rel_err for r in judged.rows):.2e}, top-1 "
                     f"{min(r.top1_agreement for r in judged.rows):.1%}")
        group *= 2
    return result, layers


def _gate_score(result: VariantResult) -> tuple[float, float]:
    judged = result.real_data or result.sweep
    return (min(r.top1_agreement for r in judged.rows), -max(r.rel_err for r in judged.rows))


def keep_layers_by_measure(fp32: onnx.ModelProto, attempt, inputs: Sequence[np.ndarray], layers: list[str],
                           result: VariantResult, steps: list[str], *, candidates: int = 4) -> tuple[VariantResult,
                                                                                                   list[str]]:
    """Keep layers in float one at a time until ``attempt`` passes: at each step the ``candidates`` most
    error-sensitive remaining layers are each tried, and the one that gains the most on the gate (top-1
    agreement, then relative error) is kept. Fewer float layers than a growing group: each costs speed."""
    while not result.passed:
        ranked = [name for name, growth in sensitive_layers(fp32, result.model, inputs, exclude=layers)
                  if growth > 0][:candidates]
        if not ranked:
            break
        tried = {name: attempt(layers + [name]) for name in ranked}
        best = max(ranked, key=lambda name: _gate_score(tried[name]))
        layers, result = layers + [best], tried[best]
        top1, neg_err = _gate_score(result)
        steps.append(f"kept {best} in float (best of {', '.join(ranked)} by measurement) -> worst relative error "
                     f"{-neg_err:.2e}, top-1 {top1:.1%}")
    return result, layers


def int8_with_fallback(fp32: onnx.ModelProto, shapes: Sequence[Shape], calibration: np.ndarray,
                       tolerance: Tolerance, *, keep_float_ends: bool = True, keep_fp32: Sequence[str] = (),
                       fallback: bool = True, layout: str = "tensorrt") -> VariantResult:
    """INT8 judged on the calibration images; when it misses its top-1 gate, the most error-sensitive layers
    stay in float (unquantized) until it passes. Raises ExportError naming the layers when nothing works."""
    from gap_deploy.runtime.parity import ort_cpu_infer

    reference = ort_cpu_infer(fp32)

    if layout == "cpu":  # the float layers are chosen by measured accuracy (keep_layers_by_measure), not position
        keep_float_ends = False

    def attempt(layers: Sequence[str]) -> VariantResult:
        model = to_int8(fp32, calibration, keep_float_ends=keep_float_ends, keep_float=layers, layout=layout)
        candidate = ort_cpu_infer(model)
        # Judged on real images: on random noise the logits of a trained model nearly tie, and top-1
        # agreement there says nothing. The random sweep still proves every shape runs.
        real = compare(reference, candidate, [tuple(calibration.shape)], tolerance, reference_name="FP32 ONNX",
                       candidate_name="INT8 ONNX (calibration images)" + (f", {len(layers)} layer(s) float"
                                                                         if layers else ""),
                       inputs=lambda s, i: calibration)
        sweep = compare(reference, candidate, shapes, Tolerance(atol=math.inf, rtol=math.inf),
                        reference_name="FP32 ONNX", candidate_name="INT8 ONNX", inputs=random_input)
        return VariantResult(model, "int8", sweep, real, fp32_layers=tuple(layers))

    layers = resolve_layers(fp32, keep_fp32)
    latency_shape = (1, *calibration.shape[1:])
    first = attempt(layers)
    if first.passed or not fallback:
        return dataclasses.replace(first, latency=measure_latency(fp32, first.model, latency_shape))
    steps: list[str] = []
    if layout == "cpu":  # every float layer costs integer kernels here: choose them one by one, by measurement
        result, layers = keep_layers_by_measure(fp32, attempt, [calibration], layers, first, steps)
    else:
        result, layers = keep_sensitive_layers(fp32, attempt, [calibration], layers, first, steps)
    if not result.passed:
        raise ExportError("INT8 misses its gate even with these layers left in float: "
                          f"{', '.join(layers) or '(none)'}; no INT8 model was written.",
                          note="\n".join(steps + [(result.real_data or result.sweep).format_table()]),
                          hint="use more or more representative --calib images, keep more layers with --keep-fp32, "
                               "or lower --min-top1.")
    return VariantResult(result.model, "int8", result.sweep, result.real_data, fp32_layers=tuple(layers),
                         before_fallback=first.real_data, fallback_steps=tuple(steps),
                         latency=measure_latency(fp32, result.model, latency_shape))


def make_variant(fp32: onnx.ModelProto, precision: str, shapes: Sequence[Shape], *,
                 calibration: np.ndarray | None = None, tolerance: Tolerance | None = None,
                 keep_float_ends: bool = True, keep_fp32: Sequence[str] = (),
                 fallback: bool = True, int8_layout: str = "tensorrt") -> VariantResult:
    """Convert and verify against the FP32 model with ONNX Runtime (CPU)."""

    check_variant_request(precision, calibration if calibration is None or len(calibration) else None)
    if precision == "int8":
        assert calibration is not None  # check_variant_request refused INT8 without it
        return int8_with_fallback(fp32, shapes, calibration, tolerance or INT8, keep_float_ends=keep_float_ends,
                                  keep_fp32=keep_fp32, fallback=fallback, layout=int8_layout)
    return fp16_with_fallback(fp32, shapes, tolerance or fp16_tolerance(fp32), keep_fp32=keep_fp32,
                              fallback=fallback)


def check_variant_request(precision: str, calibration) -> None:
    """The one check of a variant request: fp16 or int8, and INT8 with calibration data (a folder, an .npy file
    or an array); UsageError otherwise."""
    if precision not in ("fp16", "int8"):
        raise UsageError(f"precision {precision!r} has no variant; choose fp16 or int8.")
    if precision == "int8" and calibration is None:
        raise UsageError("--precision int8 needs calibration data.",
                         hint="pass --calib DIR (image files) or --calib FILE.npy (NCHW float32, normalized).")


@dataclass(frozen=True)
class VariantOptions:
    """What a precision variant is made and judged with: one definition for gap-export and gap-build."""

    precision: str
    calib: Path | None = None
    calib_size: tuple[int, int] = (224, 224)
    #: INT8: top-1 agreement with FP32 on the calibration images that the variant must reach
    min_top1: float = INT8.min_top1
    #: INT8: leave the first convolution and the classifier in float (see float_ends)
    keep_float_ends: bool = True
    #: node names or fnmatch patterns to keep in FP32 (not converted to FP16, not quantized)
    keep_fp32: tuple[str, ...] = ()
    #: when the gate is missed, keep the layers that cause it in FP32 automatically
    fp32_fallback: bool = True
    #: INT8 graph layout: "tensorrt" (symmetric, what gap-build takes) or "cpu" (fast on ONNX Runtime's CPU)
    int8_layout: str = "tensorrt"

    def __post_init__(self):
        check_variant_request(self.precision, self.calib)
        if self.int8_layout not in INT8_LAYOUTS:
            raise UsageError(f"INT8 layout {self.int8_layout!r}; choose one of {', '.join(INT8_LAYOUTS)}.")

    def tolerance(self, fp32: onnx.ModelProto) -> Tolerance:
        return fp16_tolerance(fp32) if self.precision == "fp16" else Tolerance(INT8.atol, INT8.rtol, self.min_top1)


def convert_verified(fp32: onnx.ModelProto, options: VariantOptions, shapes: Sequence[Shape]) -> VariantResult:
    """Make the variant, verify it against the FP32 model on the CPU, and raise when it fails its gate."""
    data = load_calibration(options.calib, describe(fp32), size=options.calib_size) \
        if options.precision == "int8" else None
    variant = make_variant(fp32, options.precision, shapes, calibration=data, tolerance=options.tolerance(fp32),
                           keep_float_ends=options.keep_float_ends, keep_fp32=options.keep_fp32,
                           fallback=options.fp32_fallback, int8_layout=options.int8_layout)
    if not variant.passed:
        hint = ("use more or more representative --calib images, or lower --min-top1."
                if options.precision == "int8" else None)
        raise ExportError(f"the {options.precision} model differs too much from the FP32 model; nothing was written.",
                          note="\n".join(r.format_table() for r in (variant.real_data, variant.sweep) if r),
                          hint=hint)
    return variant
