"""File helpers shared by every command: atomic writes, hashing, up-front path checks."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from runtime.errors import ArtifactError, OutputPathError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_input_file(path: str | os.PathLike, kind: str) -> Path:
    """Return ``path`` as a Path if it is a readable, non-empty regular file; else raise ArtifactError."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{kind} {p} does not exist.", hint="check the path and the current folder.")
    if p.is_dir():
        raise ArtifactError(f"{kind} {p} is a directory, not a file.", hint=f"pass the {kind} file itself.")
    if not p.is_file():
        raise ArtifactError(f"{kind} {p} is not a regular file.")
    if p.stat().st_size == 0:
        raise ArtifactError(f"{kind} {p} is empty (0 bytes).", hint="the file was probably not written fully; "
                            "write it again.")
    if not os.access(p, os.R_OK):
        raise ArtifactError(f"{kind} {p} cannot be read (permission denied).")
    return p


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, before long work, when ``path`` cannot be written."""
    p = Path(path)
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise OutputPathError(f"output path {p} is a directory.", hint="give a file name, e.g. "
                              f"{p / 'model.onnx'}.")
    if not folder.exists():
        raise OutputPathError(f"output folder {folder} does not exist.",
                              hint=f"create it first (mkdir -p {folder}) or choose another path.")
    if not folder.is_dir():
        raise OutputPathError(f"output folder {folder} is not a directory.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"output folder {folder} is not writable.",
                              hint="choose a folder you can write to with -o/--output.")
    return p


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one step.

    On any exception the temporary file is removed, so a failed run leaves no partial artifact and
    never clobbers a good one.
    """
    target = check_output_path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_output(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    with atomic_output(path, "w") as handle:
        handle.write(text)
    return Path(path)
