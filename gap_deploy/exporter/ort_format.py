"""ONNX Runtime's own mobile tools, as functions: the ORT format (``convert_onnx_models_to_ort``, with the operator
config of a reduced build), fixed input shapes (``onnx_model_utils``) and the mobile usability checker's
partitioning (NNAPI, CoreML NeuralNetwork, CoreML MLProgram). Used by gap-pack's ORT bundles (exporter.pack), its
app-ready models (exporter.pack_app) and gap-tune's emitted deployments. torch is not needed.

The ORT files are saved with ONNX Runtime's *basic* graph optimizations only (constant folding, redundant-node
removal): the *extended*/*all* levels fuse operators into CPU-only kernels (FusedConv, NCHWc layouts) that NNAPI,
CoreML and XNNPACK cannot take.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from gap_deploy.exporter._quiet import quiet_loggers
from gap_deploy.runtime.artifact import describe
from gap_deploy.runtime.errors import ExportError, first_line
from gap_deploy.runtime.shapes import Shape


@dataclass
class Usability:
    file: str
    accelerator: str
    nodes: int
    supported_nodes: int
    partitions: int
    verdict: str  # onnxruntime's: YES, MAYBE, NO
    reasons: list[str] = field(default_factory=list)



def _ort_tools():
    from gap_deploy.runtime._lazy import require

    convert = require("onnxruntime.tools.convert_onnx_models_to_ort", purpose="to write ORT-format models")
    checker = require("onnxruntime.tools.mobile_helpers.usability_checker", purpose="to check mobile usability")
    utils = require("onnxruntime.tools.onnx_model_utils", purpose="to fix input shapes")
    return convert, checker, utils


def fixed_variant(model: onnx.ModelProto, shape: Shape) -> onnx.ModelProto:
    """The model with its input fixed to ``shape`` (static-shape accelerators need it), output shapes fixed too."""
    _, _, utils = _ort_tools()
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    utils.make_input_shape_fixed(fixed.graph, describe(fixed).input_name, list(shape))
    utils.fix_output_shapes(fixed)
    return fixed


def to_ort(onnx_path: Path, folder: Path) -> tuple[Path, Path]:
    """ORT format with basic (portable) optimizations, and the operator/type config for a reduced build."""
    convert, _, _ = _ort_tools()
    previous = os.environ.get("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL")
    os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = "basic"
    try:
        with contextlib.redirect_stdout(io.StringIO()), quiet_loggers("ort_format_model.utils", "ort_format_model"):
            convert.convert_onnx_models_to_ort(onnx_path, folder, [convert.OptimizationStyle.Fixed],
                                               enable_type_reduction=True)
    except Exception as exc:
        raise ExportError(f"ONNX Runtime could not convert {onnx_path.name} to ORT format: {first_line(exc)}") from None
    finally:
        if previous is None:
            os.environ.pop("ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL", None)
        else:
            os.environ["ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL"] = previous
    stem = onnx_path.stem
    return folder / f"{stem}.basic.ort", folder / f"{stem}.required_operators_and_types.basic.config"


def usability(path: Path, name: str) -> list[Usability]:
    """onnxruntime's partitioning estimate for each mobile accelerator, plus what it says of XNNPACK."""
    _, checker, _ = _ort_tools()
    model = checker.ModelProtoWithShapeInfo(Path(path)).model_with_shape_info
    checks = {"NNAPI": checker.check_nnapi_partitions,
              "CoreML NeuralNetwork": lambda m, r: checker.check_coreml_partitions(
                  m, r, "coreml_supported_neuralnetwork_ops.md"),
              "CoreML MLProgram": lambda m, r: checker.check_coreml_partitions(
                  m, r, "coreml_supported_mlprogram_ops.md")}
    rows = []
    for accelerator, check in checks.items():
        with contextlib.redirect_stdout(io.StringIO()):
            info = check(model, True)
        reasons = [f"unsupported operator {op}" for op in sorted(info.unsupported_ops)]
        if info.nodes_unsupported_due_to_dynamic_input:
            reasons.append(f"{info.nodes_unsupported_due_to_dynamic_input} node(s) have dynamic input shapes "
                           f"({accelerator} needs fixed shapes: use a --fixed variant)")
        rows.append(Usability(name, accelerator, info.num_nodes, info.num_supported_nodes, info.num_partitions,
                              info.suitability().name, reasons))
    rows.append(Usability(name, "XNNPACK", len(model.graph.node), -1, -1, "NOT CHECKED",
                          ["onnxruntime's tools have no XNNPACK checker; XNNPACK takes dynamic shapes and runs the "
                           "float Conv/Gemm/pooling ops it supports, leaving the rest to the CPU"]))
    return rows


def format_usability(rows: Sequence[Usability]) -> str:
    head = f"{'file':>28}  {'accelerator':>20}  {'nodes':>5}  {'supported':>9}  {'partitions':>10}  verdict"
    lines = [head, "-" * len(head)]
    for r in rows:
        supported = "-" if r.supported_nodes < 0 else str(r.supported_nodes)
        partitions = "-" if r.partitions < 0 else str(r.partitions)
        lines.append(f"{r.file:>28}  {r.accelerator:>20}  {r.nodes:5d}  {supported:>9}  {partitions:>10}  {r.verdict}")
        lines += [f"{'':>30}{reason}" for reason in r.reasons]
    return "\n".join(lines)
