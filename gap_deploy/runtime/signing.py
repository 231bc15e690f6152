"""Signatures a device can verify with a public key: OpenSSF model signing (the ``model-signing`` package).

Build machines sign with a private EC key; devices hold only public keys and verify. A signature is
``<file>.sig`` beside the file it signs, or ``<folder>.sig`` beside a bundle folder or a Triton repository: a
Sigstore bundle holding an in-toto statement of every file's SHA-256, in model-signing's own format, so the
upstream ``model_signing verify key --signature X.sig --public_key PUB.pem X`` verifies gap-deploy's artifacts
unchanged. Nothing here goes to the network (key mode records no transparency-log entry).

Where keys come from: the private key from ``--sign-key`` or ``$GAP_DEPLOY_SIGN_KEY``; the trusted public keys from
``--verify-key`` (a file or a folder of ``*.pem``) or ``$GAP_DEPLOY_TRUSTED_KEYS``. A private key that anyone but
its owner can read or write is refused (another user could sign with it), and so is any key, signature or
description that is not a regular file (checked on the opened descriptor, so a FIFO cannot block the read).
"""

from __future__ import annotations

import contextvars
import errno
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gap_deploy.runtime._lazy import require
from gap_deploy.runtime.errors import UntrustedCodeError, UsageError, first_line

SIGN_KEY_ENV = "GAP_DEPLOY_SIGN_KEY"
TRUSTED_KEYS_ENV = "GAP_DEPLOY_TRUSTED_KEYS"
#: the most a key or signature file may hold before it is read (a real one is a few kB)
MAX_KEY_BYTES = 1 << 20


def signature_path(path: str | os.PathLike) -> Path:
    """Where the signature of ``path`` (a file or a folder) lives: beside it, named ``<name>.sig``."""
    path = Path(path)
    return path.with_name(path.name + ".sig")


def _model_signing():
    return require("model_signing", purpose="to sign or verify artifacts",
                   hint="pip install 'gap-deploy[sign]' (model-signing and pyOpenSSL).")


def read_regular(path: Path, what: str, *, private: bool = False, limit: int = MAX_KEY_BYTES) -> bytes:
    """The bytes of a small regular file, checked on the opened descriptor (never blocks on a FIFO or device);
    with ``private``, refused when its mode lets group or others read or write it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        reason = "it is a symbolic link" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
        raise UntrustedCodeError(f"cannot open the {what} {path}: {reason}.",
                                 hint=f"give the {what} as a regular file.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UntrustedCodeError(f"the {what} {path} is not a regular file.", hint=f"give the {what} as a file.")
        if private and info.st_mode & 0o077:
            raise UntrustedCodeError(
                f"the {what} {path} can be read or written by other users (mode {stat.S_IMODE(info.st_mode):o}), so "
                "anyone who can read it can sign as you.", hint=f"chmod 600 {path}, and make a new key if others "
                                                               "may have copied it.")
        if info.st_size > limit:
            raise UntrustedCodeError(f"the {what} {path} is larger than {limit >> 20} MiB; no real one is.")
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            data = handle.read(limit + 1)
        if len(data) > limit:  # grew since the check
            raise UntrustedCodeError(f"the {what} {path} is larger than {limit >> 20} MiB; no real one is.")
        return data
    finally:
        if fd >= 0:
            os.close(fd)


#: the key a command was given (--sign-key), for the Publications it makes; set and reset by the CLI
ACTIVE_SIGN_KEY: contextvars.ContextVar[Path | None] = contextvars.ContextVar("gap_deploy_sign_key", default=None)


def sign_key_from_env() -> Path | None:
    """The signing key in force: the command's --sign-key, else $GAP_DEPLOY_SIGN_KEY, else None (no signing)."""
    active = ACTIVE_SIGN_KEY.get()
    if active is not None:
        return active
    value = os.environ.get(SIGN_KEY_ENV, "").strip()
    return Path(value) if value else None


def trusted_keys(given: Sequence[str | os.PathLike] | str | os.PathLike | None = None) -> list[Path]:
    """The public keys that grant trust: ``given`` (files, or folders of ``*.pem``), else $GAP_DEPLOY_TRUSTED_KEYS."""
    if given is None:
        env = os.environ.get(TRUSTED_KEYS_ENV, "").strip()
        given = [p for p in env.split(os.pathsep) if p] if env else []
    elif isinstance(given, (str, os.PathLike)):
        given = [given]
    keys: list[Path] = []
    for entry in map(Path, given):
        if entry.is_dir():
            keys += sorted(p for p in entry.iterdir() if p.suffix == ".pem")
        else:
            keys.append(entry)
    return keys


def sign_path(path: str | os.PathLike, key: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Sign the file or folder ``path`` with the private EC key ``key``, writing the signature to ``out``.

    ``path`` may be a staged copy: the signature records file names relative to a folder and the digests,
    not the folder's own name, so it verifies once the copy is moved into place."""
    key = Path(key)
    read_regular(key, "signing key", private=True)
    signing = _model_signing().signing
    try:
        signing.Config().use_elliptic_key_signer(private_key=str(key)).sign(Path(path), Path(out))
    except Exception as exc:  # the library's errors (a key of the wrong type, a password-protected key, ...)
        raise UntrustedCodeError(f"could not sign {path} with {key}: {first_line(exc)}",
                                 hint="give an unencrypted EC private key in PEM (openssl ecparam -name prime256v1 "
                                      "-genkey -noout -out signing.pem).") from None
    return Path(out)


@dataclass(frozen=True)
class Verified:
    path: Path
    signature: Path
    key: Path


_MISMATCH = re.compile(r"Hash mismatch for \\?'([^'\\]+)\\?'")  # the library's text, sometimes inside a repr()
_EXTRA = re.compile(r"Extra files found in model '[^']*': \[?([^\]]+)\]?")
_MISSING = re.compile(r"Files in manifest are missing from the model[^:]*: \[?([^\]]+)\]?")


def _why(text: str, path: Path) -> str:
    """model-signing's refusal in the user's terms: which file differs, is new, or is gone."""
    for pattern, said in ((_MISMATCH, "changed since it was signed"), (_EXTRA, "not signed (added after signing)"),
                          (_MISSING, "signed but missing")):
        found = pattern.search(text)
        if found:
            names = [n.strip(" '\"") for n in found.group(1).split(",")]
            if names == ["."] or path.is_file():  # a single file is signed under the name "."
                return f"{path}: {said}"
            return f"{', '.join(names)} in {path}: {said}"
    return first_line(Exception(text))


def verify_path(path: str | os.PathLike, keys: Sequence[str | os.PathLike] | str | os.PathLike | None = None,
                *, signature: str | os.PathLike | None = None) -> Verified:
    """Verify ``path`` (a file or folder) against its signature under one of the trusted public ``keys``;
    UntrustedCodeError naming the file otherwise (missing signature, another key, a changed, added or missing
    file)."""
    path = Path(path)
    sig = Path(signature) if signature is not None else signature_path(path)
    keys = trusted_keys(keys)
    if not keys:
        raise UntrustedCodeError(f"no trusted public key is configured, so the signature of {path} cannot be checked.",
                                 hint=f"pass --verify-key PUB.pem (a file or a folder of .pem keys), or set "
                                      f"{TRUSTED_KEYS_ENV}.")
    if not sig.exists() and not sig.is_symlink():
        raise UntrustedCodeError(f"{path} has no signature ({sig.name} is missing beside it).",
                                 hint="sign it where it was made (--sign-key), or do not trust it.")
    read_regular(sig, "signature")
    for key in keys:
        read_regular(key, "public key")
    verifying = _model_signing().verifying
    reasons = []
    for key in keys:
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=str(key)).verify(path, sig)
            return Verified(path, sig, key)
        except Exception as exc:
            reasons.append((key, str(exc)))
    mismatch = [r for _, r in reasons if any(p.search(r) for p in (_MISMATCH, _EXTRA, _MISSING))]
    if mismatch:
        raise UntrustedCodeError(f"the signature of {path} does not match its files: {_why(mismatch[0], path)}.",
                                 hint="re-make and re-sign the artifact; do not run it.")
    names = ", ".join(str(k) for k, _ in reasons)
    raise UntrustedCodeError(f"the signature {sig} of {path} was not made by a trusted key ({names}).",
                             note=first_line(Exception(reasons[-1][1])) if reasons else None,
                             hint="verify with the public key of the machine that signed it.")


def check_sign_key(key: str | os.PathLike | None) -> Path | None:
    """A usable private key path (checked now, before any work), or None when signing was not asked for."""
    if key is None:
        return None
    key = Path(key)
    if not key.exists():
        raise UsageError(f"signing key {key} does not exist.",
                         hint="openssl ecparam -name prime256v1 -genkey -noout -out signing.pem; chmod 600 signing.pem")
    _model_signing()
    read_regular(key, "signing key", private=True)
    return key
