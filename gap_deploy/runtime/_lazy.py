"""One helper for heavy optional imports, so a missing package names the extra that brings it."""

from __future__ import annotations

import importlib
from types import ModuleType

from gap_deploy.runtime.errors import MissingDependencyError

_EXTRA_FOR = {
    "torch": "cpu",
    "onnxruntime": "cpu",
    "onnxscript": "cpu",
    "torchinfo": "cpu",
    "onnxslim": "cpu",
    "safetensors": "cpu",
    "onnx": "convert",
    "onnxconverter_common": "convert",
    "tensorrt": "gpu",
    "tensorrt_lean": "lean",
    "cuda": "gpu",
    "gap_deploy": "cpu",
    "matplotlib": "plot",
    "ray": "ray",
    "pyarrow": "ray",
    "openvino": "openvino",
    "ncnn": "ncnn-run",
    "pnnx": "ncnn",
    "ai_edge_litert": "litert-run",
    "litert_torch": "litert",
    "executorch": "executorch",
    "coremltools": "coreml",
}


def require(module: str, *alternatives: str, purpose: str, message: str | None = None, note: str | None = None,
            hint: str | None = None) -> ModuleType:
    """Import ``module`` (or the first of ``alternatives`` that imports) or raise MissingDependencyError naming
    the pip extra that provides it. The toolkit's one way to import a heavy or optional package lazily."""
    errors = []
    for name in (module, *alternatives):
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            errors.append(f"{name}: {exc}")
    names = " or ".join(f"'{n}'" for n in (module, *alternatives))
    extra = _EXTRA_FOR.get(module.split(".")[0], "cpu")
    raise MissingDependencyError(
        message or f"module {names} is required {purpose} but could not be imported ({'; '.join(errors)}).",
        note=note, hint=hint or f"pip install 'gap-deploy[{extra}]'",
    )
