"""One helper for heavy optional imports, so a missing package names the extra that brings it."""

from __future__ import annotations

import importlib
from types import ModuleType

from runtime.errors import MissingDependencyError

_EXTRA_FOR = {
    "torch": "cpu",
    "onnxruntime": "cpu",
    "onnxscript": "cpu",
    "torchinfo": "cpu",
    "onnxslim": "cpu",
    "safetensors": "cpu",
    "tensorrt": "gpu",
    "tensorrt_lean": "lean",
    "cuda": "gpu",
    "matplotlib": "plot",
}


def require(module: str, *, purpose: str) -> ModuleType:
    """Import ``module`` or raise MissingDependencyError naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        extra = _EXTRA_FOR.get(top, "cpu")
        raise MissingDependencyError(
            f"module '{module}' is required {purpose} but could not be imported ({exc}).",
            hint=f"pip install 'gap-deploy[{extra}]'",
        ) from None
