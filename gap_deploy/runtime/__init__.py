"""gap-deploy's runtime: run exported GAP CNNs without PyTorch.

    from gap_deploy import runtime
    with runtime.load("model.onnx") as session:      # best available backend, said in session.backend
        logits = session.run(images)                  # float32 NCHW, any size >= the model's minimum
        outs = session.run_many([img_a, img_b])       # mixed sizes, grouped into batches, input order kept

This package never imports torch (a test proves it); heavy backends are imported when first used.
"""

from gap_deploy.runtime.errors import (
    ArtifactError,
    BackendUnavailableError,
    GapError,
    InputError,
    InputTypeError,
    ManifestMismatchError,
)
from gap_deploy.runtime.metadata import ModelMetadata
from gap_deploy.runtime.session import Session, TensorInfo, available_backends, load
from gap_deploy.runtime.version import __version__

__all__ = [
    "ArtifactError",
    "BackendUnavailableError",
    "GapError",
    "InputError",
    "InputTypeError",
    "ManifestMismatchError",
    "ModelMetadata",
    "Session",
    "TensorInfo",
    "__version__",
    "available_backends",
    "load",
]
