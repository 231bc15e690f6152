"""OpenVINO INT8 for gap-pack: NNCF's post-training quantization of the FP32 IR, judged by gap-export's INT8 gate.

The gate is the one gap-export's INT8 ONNX passes: top-1 agreement with the FP32 model on the calibration images,
at least ``min_top1`` (0.9 by default), the FP32 IR compiled by the same OpenVINO as the reference. A first pass
is NNCF's plain ``nncf.quantize`` (with the layers asked for left out by its ``IgnoredScope``, the ONNX node names:
OpenVINO's converter keeps them as the operations' names); when it misses the gate, NNCF's accuracy-control mode
(``nncf.quantize_with_accuracy_control``) puts the layers that cost most agreement back in FP32, one at a time,
until the drop is within ``1 - min_top1``: the per-layer FP32 fallback of gap-export, done by NNCF's own ranking.
A result with every layer back in FP32 is refused: it would be the FP32 model under an INT8 name.
The layers that stay in FP32 are read back from the quantized model (a weighted layer whose weights are not
8-bit), not taken from NNCF's log.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gap_deploy.runtime.backends.openvino import CPU_CONFIG
from gap_deploy.runtime.errors import ExportError, UsageError, first_line

#: the operations whose weights NNCF quantizes (and whose inputs it quantizes with them)
WEIGHTED = ("Convolution", "GroupConvolution", "MatMul")
HINT = "pip install 'gap-deploy[openvino-int8]' (OpenVINO with NNCF)"


@dataclass
class OvInt8Result:
    model: Any  # the quantized openvino.Model
    agreement: float  # top-1 agreement with the FP32 IR on the calibration images
    images: int
    min_top1: float
    mode: str  # "quantize" or "accuracy control"
    fp32_layers: tuple[str, ...] = ()
    #: the first pass's agreement when accuracy control followed it
    first_agreement: float | None = None
    steps: list[str] = field(default_factory=list)

    #: the weighted layers of the model (convolutions and MatMuls), INT8 or not
    layers: int = 0
    #: FP32 and INT8 IRs timed in turns at the calibration size (measure_latency)
    latency: dict | None = None

    @property
    def passed(self) -> bool:
        return self.agreement >= self.min_top1

    @property
    def all_float(self) -> bool:
        """No layer is INT8: the model is the FP32 one in an INT8 bundle's name (and no faster)."""
        return self.layers > 0 and len(self.fp32_layers) >= self.layers

    def to_dict(self) -> dict:
        return {"agreement": self.agreement, "images": self.images, "min_top1": self.min_top1, "mode": self.mode,
                "fp32_layers": list(self.fp32_layers), "first_agreement": self.first_agreement,
                "latency": self.latency}


def _nncf():
    from gap_deploy.runtime._lazy import require

    nncf = require("nncf", purpose="for gap-pack --target openvino --precision int8", hint=HINT)
    nncf.set_log_level(logging.ERROR)
    return nncf


#: OpenVINO's ONNX frontend names a convolution or MatMul with a bias "NODE/WithoutBiases" (the Add after it is NODE)
NO_BIAS = "/WithoutBiases"


def _op_names(model, layers: Sequence[str]) -> list[str]:
    """The OpenVINO operations of ``layers`` (ONNX node names, as gap-debug lists them); an unknown one is refused
    with the names there are."""
    weighted = [op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() in WEIGHTED]
    names = []
    for layer in layers:
        match = next((n for n in (layer, layer + NO_BIAS) if n in weighted), None)
        if match is None:
            shown = ", ".join(n.removesuffix(NO_BIAS) for n in weighted[:8])
            raise UsageError(f"--keep-fp32 {layer}: the model has no convolution or MatMul of that name.",
                             hint=f"give an ONNX node name; the model's weighted layers are {shown}"
                                  + (f" and {len(weighted) - 8} more" if len(weighted) > 8 else "") + ".")
        names.append(match)
    return names


def float_layers(model) -> tuple[str, ...]:
    """The weighted operations of a quantized OpenVINO model whose weights are not INT8 (NNCF stores a quantized
    layer's weights as an 8-bit Constant, converted and scaled back before the operation): the layers that run in
    FP32, by their ONNX node names."""
    return tuple(op.get_friendly_name().removesuffix(NO_BIAS) for op in model.get_ordered_ops()
                 if op.get_type_name() in WEIGHTED and not _int8_weights(op.input_value(1).get_node()))


def _int8_weights(node, depth: int = 5) -> bool:
    for _ in range(depth):
        if node.get_type_name() == "Constant":
            return node.get_element_type().get_type_name() in ("i8", "u8", "i4", "u4")
        if node.get_input_size() == 0:
            return False
        node = node.input_value(0).get_node()
    return False


def top1(compiled, items: Sequence[np.ndarray]) -> np.ndarray:
    """Each item's top-1 class by ``compiled`` (one image at a time: memory does not grow with the images)."""
    return np.asarray([int(np.argmax(compiled(x)[0].reshape(len(x), -1), axis=1)[0]) for x in items])


def quantize(ov, fp32_model, calibration: np.ndarray, *, min_top1: float = 0.9, keep_fp32: Sequence[str] = (),
             fallback: bool = True, log=lambda _: None) -> OvInt8Result:
    """``fp32_model`` (an openvino.Model) quantized to INT8 by NNCF on ``calibration`` (N, C, H, W, normalized as
    the model expects) and judged against it. The caller refuses a result that misses the gate
    (``passed``) or keeps every layer in FP32 (``all_float``)."""
    nncf = _nncf()
    core = ov.Core()
    config = CPU_CONFIG  # the reference is FP32 (bf16 on CPUs that have it otherwise)
    items = [calibration[i:i + 1] for i in range(len(calibration))]
    reference = top1(core.compile_model(fp32_model, "CPU", config), items)
    ignored = nncf.IgnoredScope(names=_op_names(fp32_model, keep_fp32)) if keep_fp32 else None
    log(f"Quantizing with NNCF on {len(items)} calibration image(s) ...")
    try:
        with _quiet():
            model = nncf.quantize(fp32_model, nncf.Dataset(items), subset_size=len(items), ignored_scope=ignored)
    except Exception as exc:  # NNCF raises its own errors (a name IgnoredScope cannot find among them)
        raise ExportError(f"NNCF could not quantize the model: {first_line(exc)}",
                          hint="check --keep-fp32's layer names (the ONNX node names), or pack FP32.") from None
    agreement = float(np.mean(top1(core.compile_model(model, "CPU", config), items) == reference))
    weighted = sum(op.get_type_name() in WEIGHTED for op in fp32_model.get_ordered_ops())
    result = OvInt8Result(model, agreement, len(items), min_top1, "quantize", float_layers(model), layers=weighted)
    result.steps.append(f"nncf.quantize: top-1 agreement {agreement:.1%} with the FP32 IR on {len(items)} images")
    if result.passed or not fallback:
        return result
    log(f"Top-1 agreement {agreement:.1%} < {min_top1:.0%}: NNCF's accuracy control puts layers back in FP32 ...")
    labelled = [(x, int(label)) for x, label in zip(items, reference)]

    def agreement_of(compiled, data) -> float:
        data = list(data)
        return float(np.mean(top1(compiled, [x for x, _ in data]) == np.asarray([label for _, label in data])))

    try:
        with _quiet():
            controlled = nncf.quantize_with_accuracy_control(
                fp32_model, nncf.Dataset(items), nncf.Dataset(labelled), agreement_of, max_drop=1 - min_top1,
                drop_type=nncf.DropType.ABSOLUTE, subset_size=len(items), ignored_scope=ignored)
    except Exception as exc:
        raise ExportError(f"NNCF's accuracy control failed: {first_line(exc)}",
                          hint="use more or more representative --calib images, or lower --min-top1.") from None
    second = float(np.mean(top1(core.compile_model(controlled, "CPU", config), items) == reference))
    result = OvInt8Result(controlled, second, len(items), min_top1, "accuracy control", float_layers(controlled),
                          first_agreement=agreement, steps=result.steps, layers=weighted)
    result.steps.append(f"nncf.quantize_with_accuracy_control: {second:.1%} with "
                        f"{len(result.fp32_layers)} layer(s) in FP32: {', '.join(result.fp32_layers) or '(none)'}")
    return result


def measure_latency(ov, fp32_model, int8_model, shape, *, seconds: float = 0.5) -> dict:
    """Median latency of the FP32 and INT8 IRs on OpenVINO's CPU plugin at ``shape``, in turns (A B A B ...) in
    one process, the speed-up as the median of the pairs' ratios (as exporter.precision.measure_latency does for
    ONNX Runtime, with its in_turns)."""
    from gap_deploy.exporter.precision import in_turns, paired_speedup
    from gap_deploy.runtime.parity import random_input

    core = ov.Core()
    compiled = [core.compile_model(m, "CPU", CPU_CONFIG) for m in (fp32_model, int8_model)]
    x = random_input(shape, 0)
    samples = in_turns([lambda c=c: c(x) for c in compiled], seconds)
    return {"backend": "ov-cpu", "shape": list(shape), "fp32_ms": float(np.median(samples[0])),
            "int8_ms": float(np.median(samples[1])), "speedup": paired_speedup(samples[0], samples[1])}


@contextlib.contextmanager
def _quiet():
    """NNCF's progress bars (rich, on stdout) and logs stay out of gap-pack's output."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield
