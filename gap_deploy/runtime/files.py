"""File helpers shared by every command: hashing, up-front path checks, names (writing: runtime.publish)."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from gap_deploy.runtime.errors import ArtifactError, InputTypeError, OutputPathError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_input_file(path: str | os.PathLike, kind: str) -> Path:
    """Return ``path`` as a Path if it is a readable, non-empty regular file; else raise ArtifactError.

    Only regular files: a FIFO or a device would block or never end when read."""
    if path is None or not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"the {kind} path must be a str or os.PathLike, got {type(path).__name__}.")
    if "\x00" in str(path):
        raise ArtifactError(f"{kind} path {str(path)!r} contains a NUL byte.")
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"{kind} {p} does not exist.", hint="check the path and the current folder.")
    if p.is_dir():
        raise ArtifactError(f"{kind} {p} is a directory, not a file.", hint=f"pass the {kind} file itself.")
    if not p.is_file():
        raise ArtifactError(f"{kind} {p} is not a regular file (a pipe, device or socket).",
                            hint=f"pass the {kind} file itself.")
    if p.stat().st_size == 0:
        raise ArtifactError(f"{kind} {p} is empty (0 bytes).", hint="the file was probably not written fully; "
                            "write it again.")
    if not os.access(p, os.R_OK):
        raise ArtifactError(f"{kind} {p} cannot be read (permission denied).")
    return p


def check_output_path(path: str | os.PathLike) -> Path:
    """Fail early, before long work, when ``path`` cannot be written.

    A symbolic link is written through (its target is what gets replaced); anything else that is not a
    regular file (a device, a pipe, a socket) is refused: replacing it would destroy it, and streaming an
    artifact into it is never what was meant.
    """
    if path is None or not isinstance(path, (str, os.PathLike)):
        raise OutputPathError(f"an output path must be a file name, got {type(path).__name__}.")
    p = Path(path)
    if "\x00" in str(p):
        raise OutputPathError(f"output path {str(p)!r} contains a NUL byte.")
    if p.is_symlink():
        p = Path(os.path.realpath(p))
    folder = p.parent if str(p.parent) else Path(".")
    if p.is_dir():
        raise OutputPathError(f"output path {p} is a directory.", hint="give a file name, e.g. "
                              f"{p / 'model.onnx'}.")
    if p.exists() and not stat.S_ISREG(p.stat().st_mode):
        raise OutputPathError(f"output path {path} is not a regular file (a device, pipe or socket); it is left "
                              "alone.", hint="give the path of a file to create or replace.")
    if not folder.exists():
        raise OutputPathError(f"output folder {folder} does not exist.",
                              hint=f"create it first (mkdir -p {folder}) or choose another path.")
    if not folder.is_dir():
        raise OutputPathError(f"output folder {folder} is not a directory.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"output folder {folder} is not writable.",
                              hint="choose a folder you can write to with -o/--output.")
    return p


#: what a name that becomes one path component may hold
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def safe_name(text: str, what: str) -> str:
    """``text`` when it can be one file or folder name inside an output (letters, digits, ``_ . -``, not starting
    with a dot, at most 128 characters); else OutputPathError. Every name built from user input or from a
    model's metadata goes through here before it becomes part of a path."""
    text = str(text)
    if not text or len(text) > 128 or text[0] == "." or not set(text) <= _NAME_CHARS:
        shown = text if len(text) <= 60 else text[:57] + "..."
        raise OutputPathError(f"{what} {shown!r} cannot be a file or folder name here.",
                              note="names may hold letters, digits, '_', '.' and '-', may not start with '.', and "
                                   "have at most 128 characters: no '/', '..' or other path syntax.",
                              hint=f"give a plain {what}.")
    return text


def check_new_folder(folder: str | os.PathLike, what: str) -> Path:
    """A folder that is written whole (staged beside it, then moved into place): it must not exist, or be an
    empty folder, and its parent must exist."""
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise OutputPathError(f"{what} {folder} exists and is not empty.",
                              hint="choose a new folder; it is written whole, never over another.")
    if not folder.parent.is_dir():
        raise OutputPathError(f"output folder {folder.parent} does not exist.", hint=f"mkdir -p {folder.parent}")
    return folder


def _identity(path: Path) -> tuple:
    """What makes two paths the same file: (device, inode) when it exists, else the resolved path."""
    try:
        st = path.stat()
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", os.path.realpath(path))


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` (resolved) or lies below it: where the path itself stands (its folder
    resolved, its last name as given) and where it leads (resolved through a final link). A link planted inside
    an input folder that points outside it is still inside: writing through it is writing from inside."""
    outer = Path(os.path.realpath(folder))
    standing = Path(os.path.realpath(path.parent if str(path.parent) else ".")) / path.name
    return any(inner == outer or outer in inner.parents for inner in (standing, Path(os.path.realpath(path))))


def check_distinct(inputs: dict[str, str | os.PathLike | None], outputs: dict[str, str | os.PathLike | None], *,
                   output_folders: tuple[str, ...] = ()) -> None:
    """Refuse an output that is the same file as an input, or as another output of the same command, or that
    lies inside an input folder (an image folder, a labelled data set, a bundle: every file in it is an input),
    or an output folder that holds an input, or (``output_folders``: the outputs that are folders written whole)
    an output inside such a folder.

    Compared by resolved path and by inode, so links, ``./x`` and ``../dir/x`` cannot sneak past; a link is
    judged where it stands as well as where it leads. The names are the user's (flag names in a CLI, parameter
    names in the library).
    """
    folders = {name: Path(p) for name, p in inputs.items() if p is not None and Path(p).is_dir()}
    for out_name, out in outputs.items():
        if out is None:
            continue
        for in_name, folder in folders.items():
            if _inside(Path(out), folder):
                raise OutputPathError(f"{out_name} {out} is inside {in_name} {folder}; writing it could replace "
                                      "one of its files.", hint=f"choose a path outside {folder} for {out_name}.")
        for folder_name in output_folders:
            folder = outputs.get(folder_name)
            if folder_name != out_name and folder is not None and _inside(Path(out), Path(folder)):
                raise OutputPathError(f"{out_name} {out} is inside {folder_name} {folder}, which is written whole; "
                                      "the two would replace each other's files.",
                                      hint=f"choose a path outside {folder} for {out_name}.")
        for in_name, path in inputs.items():
            if path is not None and Path(out).is_dir() and _inside(Path(path), Path(out)):
                raise OutputPathError(f"{in_name} {path} is inside {out_name} {out}; writing that folder could "
                                      "destroy it.", hint=f"choose another folder for {out_name}.")
    seen: dict[tuple, str] = {}
    for name, path in inputs.items():
        if path is not None:
            seen.setdefault(_identity(Path(path)), name)
    for name, path in outputs.items():
        if path is None:
            continue
        ident = _identity(Path(path))
        resolved = ("path", os.path.realpath(path))
        other = seen.get(ident) or seen.get(resolved)
        if other is not None:
            raise OutputPathError(f"{name} {path} is the same file as {other}; writing it would destroy that.",
                                  hint=f"choose another path for {name}.")
        seen[ident] = seen[resolved] = name


def folder_entries(folder: Path, what: str = "folder") -> list[Path]:
    """The entries of ``folder``, sorted; an ArtifactError naming it when it cannot be listed (no read permission,
    removed meanwhile), never an OSError traceback."""
    from gap_deploy.runtime.errors import ArtifactError

    try:
        return sorted(Path(folder).iterdir())
    except OSError as exc:
        raise ArtifactError(f"cannot read {what} {folder}: {exc.strerror or exc}.",
                            hint="give a folder you can read (chmod, or run as its owner).") from None
