"""The toolkit's error hierarchy.

Every error a user can cause derives from :class:`GapError`; the CLIs print its message and exit 1
without a traceback. Messages say what failed (file, expected and actual values), then an optional
``Note:`` with context and a ``Hint:`` with the fix.
"""

from __future__ import annotations

import contextlib
import re


class GapError(Exception):
    """Base class of every error the toolkit raises on purpose."""

    def __init__(self, message: str, *, note: str | None = None, hint: str | None = None):
        self.message = message
        self.note = note
        self.hint = hint
        super().__init__(self._compose())

    def with_hint(self, hint: str) -> GapError:
        """This error with ``hint`` added to its own (the message is composed again)."""
        self.hint = f"{self.hint}\n{hint}" if self.hint else hint
        self.args = (self._compose(),)
        return self

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


#: onnxruntime's C++ framing: "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ", and source locations such as
#: "/onnxruntime_src/onnxruntime/core/providers/cpu/nn/conv.cc:123 onnxruntime::Conv<float>::Compute(...) "
_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")
_CPP_LOCATION = re.compile(r"(/[\w./+-]+\.(?:cc|cpp|cxx|h|hpp|cu)):\d+\s+(?:[\w:<>~,* ]+\([^()]*\)\s*(?:const\s*)?)?")


def plain_text(text: str) -> str:
    """A library's message as a user can read it: onnxruntime's C++ framing and source locations removed."""
    text = _ORT_PREFIX.sub("", text)
    text = _CPP_LOCATION.sub("", text)
    return re.sub(r"\s{2,}", " ", text).strip()


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (library framing removed: plain_text), or its class
    name when the message is empty."""
    for line in str(exc).splitlines():
        if line.strip():
            return plain_text(line) or type(exc).__name__
    return type(exc).__name__


def interrupted(exc: BaseException) -> bool:
    """Whether a KeyboardInterrupt is anywhere in ``exc``'s chain (a library that wraps Ctrl-C in its own error,
    as exporters do, must still end as an interruption)."""
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in seen:
        if isinstance(link, KeyboardInterrupt):
            return True
        seen.append(link)
        link = link.__cause__ or link.__context__
    return False


@contextlib.contextmanager
def ctrl_c_kept(what: str = "a third-party call"):
    """Ctrl-C inside third-party code stays Ctrl-C: some converters (coremltools, torch.export) catch the
    KeyboardInterrupt that Python raises in them and go on, or turn it into their own error, so a run that was
    interrupted finished and wrote its files (exit 0). SIGINT is recorded here as well as raised; after the block
    (or from the library's own error) it becomes a KeyboardInterrupt, inside the caller's Publication, so nothing
    is published. Only in the main thread, where Python delivers signals."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit: list[int] = []
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        hit.append(signum)
        raise KeyboardInterrupt(f"interrupted during {what}")

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    except Exception:
        if hit:
            raise KeyboardInterrupt(f"interrupted during {what}") from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if hit:
        raise KeyboardInterrupt(f"interrupted during {what}")
