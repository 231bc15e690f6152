"""The one way gap-deploy puts its outputs in place: files and folders that appear together, or not at all.

    with Publication() as pub:
        pub.write_bytes(plan_path, plan)                 # staged beside its target
        pub.write_model(onnx_path, model)                # ONNX, with OUTPUT.data above 2 GiB
        bundle = pub.folder(bundle_path)                 # a new folder, filled in its staging twin
        ...                                              # checks on the staged files
    # leaving the block without an exception moves everything into place; an exception (Ctrl-C too)
    # removes what was staged and leaves every target as it was

Every staged file and folder lives beside its target (the same filesystem, so a move is one rename). Before
the moves, each existing target file is hard-linked aside; if a move fails, the targets already moved get
their old content back and new ones are removed. A symbolic link at a file target keeps pointing where it
did: its target is what gets replaced. A folder target must be new (or an empty folder): a folder is never
written over another.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path

from gap_deploy.runtime.errors import OutputPathError

#: the files a Publication signs when it has a signing key: models, weights, plans and their manifests
#: (reports, plots and other outputs are not artifacts)
SIGNED_SUFFIXES = (".onnx", ".data", ".ort", ".plan", ".engine", ".plan.json", ".engine.json")


class Publication:
    """``sign_key`` (default: $GAP_DEPLOY_SIGN_KEY, see runtime.signing): every staged artifact file and folder is
    signed in its staging place, and each signature (``<target>.sig``) is published with it, in the same move."""

    def __init__(self, sign_key: str | os.PathLike | None = None) -> None:
        from gap_deploy.runtime.signing import sign_key_from_env

        self._files: list[tuple[Path, Path]] = []  # (target, staged file)
        self._folders: list[tuple[Path, Path]] = []  # (target, staged folder)
        self._unsigned: set[Path] = set()  # staged folders that are not signed on their own
        self._scratch: list[Path] = []  # staging folders to remove at the end
        self._sign_key = Path(sign_key) if sign_key is not None else sign_key_from_env()

    # ---- staging -------------------------------------------------------------------------------------------

    def file(self, target: str | os.PathLike) -> Path:
        """A new empty staged file for ``target`` (checked writable now); write it, then leave the block."""
        from gap_deploy.runtime.files import check_output_path

        target = check_output_path(target)
        try:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        except OSError as exc:
            raise _write_error([target], exc) from None
        os.close(fd)
        staged = Path(name)
        self._files.append((target, staged))
        return staged

    def write_bytes(self, target: str | os.PathLike, data: bytes) -> Path:
        staged = self.file(target)
        try:
            with open(staged, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise _write_error([target], exc) from None
        return staged

    def write_text(self, target: str | os.PathLike, text: str) -> Path:
        return self.write_bytes(target, text.encode("utf-8"))

    def add(self, target: str | os.PathLike, staged: str | os.PathLike) -> None:
        """A finished file ``staged`` (in ``target``'s filesystem, e.g. a file staged by ``file``'s folder),
        moved to ``target`` with the rest."""
        from gap_deploy.runtime.files import check_output_path

        self._files.append((check_output_path(target), Path(staged)))

    def write_model(self, target: str | os.PathLike, model) -> list[Path]:
        """An ONNX model at ``target``, with its weights in TARGET.data when one protobuf cannot hold them
        (runtime.onnx_file.save_onnx); returns the staged files."""
        from gap_deploy.runtime.files import check_output_path
        from gap_deploy.runtime.naming import external_data_path
        from gap_deploy.runtime.onnx_file import save_onnx

        target = check_output_path(target)
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        self._scratch.append(scratch)
        written = save_onnx(model, scratch / target.name)
        for staged in written:
            self._files.append((target if staged.name == target.name else external_data_path(target), staged))
        return written

    def staged(self, target: str | os.PathLike) -> Path | None:
        """The staged file for ``target``, if one was staged."""
        from gap_deploy.runtime.files import check_output_path

        target = check_output_path(target)
        return next((staged for t, staged in self._files if t == target), None)

    def folder(self, target: str | os.PathLike, what: str = "output folder", *, signed: bool = True) -> Path:
        """A staged folder for ``target``, which must not exist or be empty; fill it, then leave the block.
        ``signed=False``: not signed on its own (a model folder inside a repository signed as a whole)."""
        from gap_deploy.runtime.files import check_new_folder

        target = check_new_folder(target, what)
        if target.is_symlink():  # a link to an empty folder is written through, as a link at a file target is
            target = Path(os.path.realpath(target))
        try:
            staged = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        except OSError as exc:  # a read-only or immutable parent, a full disk
            raise _write_error([target], exc) from None
        self._folders.append((target, staged))
        if not signed:
            self._unsigned.add(staged)
        return staged

    def _sign(self) -> None:
        """Sign each staged artifact where it lies; the signatures join the files to move."""
        from gap_deploy.runtime.signing import sign_path, signature_path

        if self._sign_key is None:
            return
        wanted = [(t, s) for t, s in self._files if t.name.endswith(SIGNED_SUFFIXES)]
        wanted += [(t, s) for t, s in self._folders if s not in self._unsigned]
        for target, staged in wanted:
            out = self.file(signature_path(target))
            sign_path(staged, self._sign_key, out)

    # ---- publishing ----------------------------------------------------------------------------------------

    def commit(self) -> None:
        """Move everything staged into place, all of it or (restoring what was there) none of it."""
        self._sign()
        backups: dict[Path, str] = {}
        moved: list[tuple[Path, str]] = []  # (target, "file" | "folder" | "folder-was-empty")
        try:
            for staged_target, staged in self._files:
                os.chmod(staged, 0o644)
                if staged_target.is_file():
                    backup = f"{staged_target.parent / ('.' + staged_target.name)}.{os.getpid()}.bak"
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(backup)
                    os.link(staged_target, backup)
                    backups[staged_target] = backup
            try:
                for target, staged in self._folders:
                    os.chmod(staged, 0o755)  # mkdtemp made it 0700: a published folder reads like any other
                    was_empty = target.is_dir()
                    if was_empty:
                        target.rmdir()  # empty, as checked; fails (and keeps it) if anything appeared since
                    os.replace(staged, target)
                    moved.append((target, "folder-was-empty" if was_empty else "folder"))
                for target, staged in self._files:
                    os.replace(staged, target)
                    moved.append((target, "file"))
            except BaseException:
                for target, kind in reversed(moved):
                    if kind == "file":
                        if target in backups:
                            os.replace(backups.pop(target), target)
                        else:
                            with contextlib.suppress(FileNotFoundError):
                                target.unlink()
                    else:
                        shutil.rmtree(target, ignore_errors=True)
                        if kind == "folder-was-empty":
                            target.mkdir(exist_ok=True)
                raise
        except OSError as exc:
            raise _write_error([t for t, _ in [*self._folders, *self._files]], exc) from None
        finally:
            for backup in backups.values():
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(backup)

    def discard(self) -> None:
        for _, staged in self._files:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
        for _, staged in self._folders:
            shutil.rmtree(staged, ignore_errors=True)
        for scratch in self._scratch:
            shutil.rmtree(scratch, ignore_errors=True)

    def __enter__(self) -> Publication:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        try:
            if kind is None:
                self.commit()
        finally:
            self.discard()


def _write_error(targets, exc: OSError) -> OutputPathError:
    names = ", ".join(str(t) for t in targets[:4])
    return OutputPathError(f"cannot write {names}: {exc.strerror or exc}.", note="what was there before is unchanged.",
                           hint="free some disk space, or choose another folder." if exc.errno == errno.ENOSPC
                           else None)


def publish_bytes(target: str | os.PathLike, data: bytes) -> Path:
    """One file, published alone."""
    with Publication() as pub:
        pub.write_bytes(target, data)
    return Path(target)


def publish_text(target: str | os.PathLike, text: str) -> Path:
    return publish_bytes(target, text.encode("utf-8"))
