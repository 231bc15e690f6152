"""gap-deploy's exporter: PyTorch GAP CNNs -> ONNX (FP32/FP16/INT8) -> TensorRT engines.

    from exporter import load_model, export_onnx
    loaded = load_model("model.pt")                          # weights_only=True, always
    result = export_onnx(loaded, "model.onnx", dynamic=True)  # verified against PyTorch, then written
    print(result.parity.format_table())

Names resolve lazily so that the torch-free parts (precision variants, the TensorRT builder) can be
used where torch is not installed.
"""

from __future__ import annotations

from runtime._lazy import require

_EXPORTS = {
    "GapCNN": "exporter.model",
    "LoadedModel": "exporter.checkpoint",
    "load_model": "exporter.checkpoint",
    "export_model": "exporter.onnx_export",
    "export_onnx": "exporter.onnx_export",
    "ExportResult": "exporter.onnx_export",
    "ParityError": "runtime.errors",
    "export_verified": "exporter.onnx_export",
    "run_export": "exporter.pipeline",
    "ExportJob": "exporter.pipeline",
    "check_parity": "exporter.parity",
    "default_verify_shapes": "exporter.parity",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(require(_EXPORTS[name], purpose=f"for exporter.{name}"), name)
    raise AttributeError(f"module 'exporter' has no attribute {name!r}")
