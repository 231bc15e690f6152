"""gap-deploy's exporter: PyTorch GAP CNNs -> ONNX (FP32/FP16/INT8) -> TensorRT engines.

    from gap_deploy.exporter import load_model, export_onnx
    loaded = load_model("model.pt")                          # weights_only=True, always
    result = export_onnx(loaded, "model.onnx", dynamic=True)  # verified against PyTorch, then written
    print(result.parity.format_table())

    export_onnx(model, "model.onnx")                          # an nn.Module in memory (a notebook's) too

Names resolve lazily so that the torch-free parts (precision variants, the TensorRT builder) can be
used where torch is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gap_deploy.runtime._lazy import require

if TYPE_CHECKING:  # the same names, for type checkers and editors; at run time they load when first used
    from gap_deploy.exporter.checkpoint import LoadedModel, from_module, load_model
    from gap_deploy.exporter.model import GapCNN
    from gap_deploy.exporter.onnx_export import ExportResult, export_model, export_onnx, export_verified
    from gap_deploy.exporter.parity import check_parity, default_verify_shapes
    from gap_deploy.exporter.pipeline import ExportJob, run_export
    from gap_deploy.runtime.errors import ParityError

_EXPORTS = {
    "GapCNN": "gap_deploy.exporter.model",
    "LoadedModel": "gap_deploy.exporter.checkpoint",
    "from_module": "gap_deploy.exporter.checkpoint",
    "load_model": "gap_deploy.exporter.checkpoint",
    "export_model": "gap_deploy.exporter.onnx_export",
    "export_onnx": "gap_deploy.exporter.onnx_export",
    "ExportResult": "gap_deploy.exporter.onnx_export",
    "ParityError": "gap_deploy.runtime.errors",
    "export_verified": "gap_deploy.exporter.onnx_export",
    "run_export": "gap_deploy.exporter.pipeline",
    "ExportJob": "gap_deploy.exporter.pipeline",
    "check_parity": "gap_deploy.exporter.parity",
    "default_verify_shapes": "gap_deploy.exporter.parity",
}

__all__ = ["ExportJob", "ExportResult", "GapCNN", "LoadedModel", "ParityError", "check_parity", "from_module",
           "default_verify_shapes", "export_model", "export_onnx", "export_verified", "load_model", "run_export"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(require(_EXPORTS[name], purpose=f"for gap_deploy.exporter.{name}"), name)
    raise AttributeError(f"module 'gap_deploy.exporter' has no attribute {name!r}")
