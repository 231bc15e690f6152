"""The toolkit's error hierarchy.

Every error a user can cause derives from :class:`GapError`; the CLIs print its message and exit 1
without a traceback. Messages say what failed (file, expected and actual values), then an optional
``Note:`` with context and a ``Hint:`` with the fix.
"""

from __future__ import annotations


class GapError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    def __init__(self, message: str, *, note: str | None = None, hint: str | None = None):
        self.message = message
        self.note = note
        self.hint = hint
        super().__init__(self._compose())

    def _compose(self) -> str:
        parts = [self.message]
        if self.note:
            parts.append(f"Note: {self.note}")
        if self.hint:
            parts.append(f"Hint: {self.hint}")
        return "\n".join(parts)


class ArtifactError(GapError):
    """A file (checkpoint, ONNX model, engine, manifest, image) cannot be read or is not what it claims."""


class MetadataError(ArtifactError):
    """A model's stored metadata (gap.* keys) is malformed."""


class CheckpointError(ArtifactError):
    """A PyTorch checkpoint cannot be loaded into the requested architecture."""


class UntrustedCodeError(ArtifactError):
    """Loading the file would run code (pickled module, TorchScript, engine without manifest)."""


class ManifestMismatchError(ArtifactError):
    """An engine's manifest does not match this machine or the plan file."""


class ExportError(GapError):
    """The ONNX export, its checks or a precision conversion failed."""


class ParityError(ExportError):
    """An artifact does not match its reference (PyTorch, or the FP32 model); ``report`` says where."""

    def __init__(self, message: str, report=None, **kwargs):
        self.report = report
        super().__init__(message, **kwargs)


class BuildError(GapError):
    """TensorRT could not build an engine."""


class BackendUnavailableError(GapError):
    """The requested backend (or a module it needs) is not available on this machine."""


class MissingDependencyError(BackendUnavailableError, ImportError):
    """A Python package needed for this feature is not installed."""


class InputError(GapError, ValueError):
    """An input array has the wrong shape or values for the model."""


class InputTypeError(GapError, TypeError):
    """An input has the wrong type or dtype for the model."""


class UsageError(GapError, ValueError):
    """Arguments that cannot go together (a backend that cannot run this artifact, an option it lacks)."""


class BackendError(GapError):
    """A backend failed while running a model that passed the input checks (not the caller's input error)."""


class CudaError(BackendError):
    """A CUDA runtime call failed."""


class ResourceError(GapError):
    """A request would need more memory (or another resource) than this machine has."""


class OutputPathError(GapError):
    """An output file cannot be written where the user asked."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message, or its class name when the message is empty."""
    for line in str(exc).splitlines():
        if line.strip():
            return line.strip()
    return type(exc).__name__
