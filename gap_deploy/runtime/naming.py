"""Every path gap-deploy derives from another one, in one place.

    model.pt            -> model.onnx                       (gap-export's default output)
    model.onnx          -> model.fp16.onnx, model.int8.onnx, model.int8-cpu.onnx   (precision variants)
    model.onnx          -> model.plan, model.fp16.plan      (engines; the variant's tag, if any)
    model.plan          -> model.plan.json                  (the engine's manifest)
    model.onnx          -> model.onnx.data                  (external data above protobuf's 2 GiB)
    model.onnx          -> model_bundle/                    (gap-pack's default bundle folder)
"""

from __future__ import annotations

from pathlib import Path


def precision_tag(precision: str | None, int8_layout: str | None = "tensorrt") -> str:
    """The file-name tag of a precision: "" for FP32, "fp16", "int8" (TensorRT's layout) or "int8-cpu"."""
    if precision in (None, "fp32"):
        return ""
    return "int8-cpu" if precision == "int8" and int8_layout == "cpu" else precision


def onnx_for_checkpoint(checkpoint: str | Path) -> Path:
    return Path(checkpoint).with_suffix(".onnx")


def variant_path(fp32_path: str | Path, precision: str, int8_layout: str | None = "tensorrt") -> Path:
    """MODEL.fp16.onnx, MODEL.int8.onnx (TensorRT's layout) or MODEL.int8-cpu.onnx (the CPU layout)."""
    fp32_path = Path(fp32_path)
    return fp32_path.with_name(f"{fp32_path.stem}.{precision_tag(precision, int8_layout)}.onnx")


def engine_path(onnx_path: str | Path, precision: str | None = None) -> Path:
    """MODEL.plan for an FP32 build, MODEL.PRECISION.plan for a variant's."""
    onnx_path = Path(onnx_path)
    tag = precision_tag(precision)
    return onnx_path.with_name(f"{onnx_path.stem}{'.' + tag if tag else ''}.plan")


def manifest_path(plan: str | Path) -> Path:
    plan = Path(plan)
    return plan.with_name(plan.name + ".json")


def external_data_path(onnx_path: str | Path) -> Path:
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".data")


def bundle_folder(onnx_path: str | Path) -> Path:
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(f"{onnx_path.stem}_bundle")
