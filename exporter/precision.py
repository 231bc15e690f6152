"""FP16 and INT8 variants of an FP32 ONNX model, verified on the CPU before any engine is built.

TensorRT 11 builds strongly typed networks only (no FP16/INT8 builder flags, no calibrators): the
precision of each layer is whatever the ONNX says. So precision is decided here, where ONNX Runtime
can check it against the FP32 model on any machine. torch is not needed.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from runtime.errors import ArtifactError, ExportError, UsageError, first_line
from runtime.metadata import ModelMetadata
from runtime.parity import FP16, INT8, ParityReport, Tolerance, compare, random_input
from runtime.shapes import Shape

PRECISIONS = ("fp32", "fp16", "int8")
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

    @property
    def passed(self) -> bool:
        return self.sweep.passed and (self.real_data is None or self.real_data.passed)


def metadata_of(model: onnx.ModelProto) -> ModelMetadata:
    return ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})


def _with_precision(model: onnx.ModelProto, precision: str) -> onnx.ModelProto:
    from runtime.onnx_file import set_metadata

    set_metadata(model, metadata_of(model).replace(precision=precision))
    return model


def to_fp16(model: onnx.ModelProto) -> onnx.ModelProto:
    from onnxconverter_common import float16

    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(FP16_KEEP_FP32))
    try:
        converted = float16.convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    except Exception as exc:
        raise ExportError(f"FP16 conversion failed: {exc}") from None
    return _with_precision(converted, "fp16")


def load_calibration(source: str | Path, metadata: ModelMetadata, *, size: tuple[int, int],
                     limit: int = 256) -> np.ndarray:
    """Calibration batch (N, C, H, W) float32, normalized as the model expects.

    ``source`` is a folder of images (resized to ``size``) or a ``.npy`` array already in NCHW float32.
    """
    from runtime.images import collect_images, load_image, normalize

    source = Path(source)
    channels = metadata.in_channels or 3
    if not source.exists():
        raise ArtifactError(f"calibration data {source} does not exist.",
                            hint="give a folder of images or an .npy NCHW array.")
    if source.suffix == ".npy":
        try:
            data = np.load(source, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"cannot read calibration array {source}: {exc}") from None
        if not isinstance(data, np.ndarray):  # an .npz archive named .npy
            data.close()
            raise ArtifactError(f"calibration array {source} is an .npz archive, not one .npy array.",
                                hint="save one array with numpy.save, or pass a folder of images.")
        if data.ndim != 4 or data.shape[1] != channels or not np.issubdtype(data.dtype, np.floating):
            raise ArtifactError(f"calibration array {source} has shape {data.shape} dtype {data.dtype}; "
                                f"expected float (N, {channels}, H, W), normalized like the model's input.")
        data = np.ascontiguousarray(data[:limit], dtype=np.float32)
        if not np.isfinite(data).all():
            raise ArtifactError(f"calibration array {source} contains NaN or infinite values.")
        return data
    if not source.is_dir():
        raise ArtifactError(f"calibration data {source} is neither a folder of images nor a .npy file.")
    files = collect_images([source])[:limit]
    if not files:
        raise ArtifactError(f"calibration folder {source} holds no image files.")
    batch = [normalize(load_image(f, channels, size), metadata) for f in files]
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


def to_int8(model: onnx.ModelProto, calibration: np.ndarray, *, keep_float_ends: bool = True) -> onnx.ModelProto:
    """Explicit QuantizeLinear/DequantizeLinear, per-channel weights, symmetric int8 (what TensorRT takes).

    ``keep_float_ends`` leaves the first convolution and the classifier in float (see float_ends).
    """
    from runtime._lazy import require

    quant = require("onnxruntime.quantization", purpose="for INT8 quantization")
    input_name = model.graph.input[0].name

    class Reader(quant.CalibrationDataReader):
        def __init__(self):
            self._items = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self):
            item = next(self._items, None)
            return None if item is None else {input_name: item}

    with tempfile.TemporaryDirectory(prefix="gap-int8-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        from exporter._quiet import quiet_loggers

        try:
            with quiet_loggers(""):
                quant.quantize_static(
                    str(src), str(dst), Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=True,
                    activation_type=quant.QuantType.QInt8, weight_type=quant.QuantType.QInt8,
                    calibrate_method=quant.CalibrationMethod.MinMax,
                    nodes_to_exclude=float_ends(model) if keep_float_ends else [],
                    extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                   # TensorRT dequantizes INT8 only: an INT32 bias DQ does not build.
                                   "QuantizeBias": False})
        except Exception as exc:
            raise ExportError(f"INT8 quantization failed: {first_line(exc)}") from None
        quantized = onnx.load(str(dst))
    return _with_precision(quantized, "int8")


def make_variant(fp32: onnx.ModelProto, precision: str, shapes: Sequence[Shape], *,
                 calibration: np.ndarray | None = None, tolerance: Tolerance | None = None,
                 keep_float_ends: bool = True) -> VariantResult:
    """Convert and verify against the FP32 model with ONNX Runtime (CPU)."""
    from runtime.parity import ort_cpu_infer

    if precision not in ("fp16", "int8"):
        raise ExportError(f"precision {precision!r} has no variant; choose fp16 or int8.")
    if precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise ExportError("INT8 needs calibration data.",
                              hint="pass --calib DIR (image files) or --calib FILE.npy.")
        variant = to_int8(fp32, calibration, keep_float_ends=keep_float_ends)
    else:
        variant = to_fp16(fp32)
    reference, candidate = ort_cpu_infer(fp32), ort_cpu_infer(variant)
    tol = tolerance or (FP16 if precision == "fp16" else INT8)
    real = None
    if precision == "int8":
        # Judged on real images: on random noise the logits of a trained model nearly tie, and top-1
        # agreement there says nothing. The random sweep still proves every shape runs.
        shape = tuple(calibration.shape)
        real = compare(reference, candidate, [shape], tol, reference_name="FP32 ONNX",
                       candidate_name="INT8 ONNX (calibration images)", inputs=lambda s, i: calibration)
        sweep_tol = Tolerance(atol=float("inf"), rtol=float("inf"))
    else:
        sweep_tol = tol
    sweep = compare(reference, candidate, shapes, sweep_tol, reference_name="FP32 ONNX",
                    candidate_name=f"{precision.upper()} ONNX", inputs=random_input)
    return VariantResult(variant, precision, sweep, real)


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

    def __post_init__(self):
        if self.precision not in ("fp16", "int8"):
            raise UsageError(f"precision {self.precision!r} has no variant; choose fp16 or int8.")
        if self.precision == "int8" and self.calib is None:
            raise UsageError("INT8 needs calibration data.", hint="pass --calib DIR (image files) or --calib FILE.npy.")

    @property
    def tolerance(self) -> Tolerance:
        return FP16 if self.precision == "fp16" else Tolerance(INT8.atol, INT8.rtol, self.min_top1)


def convert_verified(fp32: onnx.ModelProto, options: VariantOptions, shapes: Sequence[Shape]) -> VariantResult:
    """Make the variant, verify it against the FP32 model on the CPU, and raise when it fails its gate."""
    data = load_calibration(options.calib, metadata_of(fp32), size=options.calib_size) \
        if options.precision == "int8" else None
    variant = make_variant(fp32, options.precision, shapes, calibration=data, tolerance=options.tolerance,
                           keep_float_ends=options.keep_float_ends)
    if not variant.passed:
        hint = ("use more or more representative --calib images, or lower --min-top1."
                if options.precision == "int8" else None)
        raise ExportError(f"the {options.precision} model differs too much from the FP32 model; nothing was written.",
                          note="\n".join(r.format_table() for r in (variant.real_data, variant.sweep) if r),
                          hint=hint)
    return variant


def variant_path(fp32_path: Path, precision: str) -> Path:
    return fp32_path.with_name(f"{fp32_path.stem}.{precision}.onnx")
