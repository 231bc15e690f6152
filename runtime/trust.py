"""What grants trust to a TensorRT plan: a signature only this user's gap-deploy can make.

A plan is executable code, and a manifest is a text file anyone can write: a hand-written manifest with the
right SHA-256 must not make a plan load. gap-build signs each manifest with an HMAC-SHA256 key kept in the
user's config folder (``$GAP_DEPLOY_HOME`` or ``~/.config/gap-deploy``, file ``engine.key``, created 0600 on
the first build); the runtime deserializes a plan only when its manifest carries a valid signature under that
key, or when the caller passes ``trust_engine=True`` (``--trust-engine``). A key file or folder that anyone
but its owner can write grants nothing. Teams that build on one machine and run on others share the key
(copy the file, or point ``GAP_DEPLOY_HOME`` at a folder only they can write).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path

from gap_deploy.runtime.errors import UntrustedCodeError

HOME_ENV = "GAP_DEPLOY_HOME"
KEY_FILE = "engine.key"


def home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".config" / "gap-deploy")


def _private(path: Path, what: str) -> None:
    """Refuse a key file or folder that another user could have written."""
    st = path.stat()
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        raise UntrustedCodeError(f"the engine signing {what} {path} can be written by other users, so it grants no "
                                 "trust.", hint=f"chmod go-w {path}, or set {HOME_ENV} to a folder only you write.")


def load_key(*, create: bool = False) -> bytes | None:
    """This user's signing key; with ``create``, made on first use. None when there is none (and not creating)."""
    folder = home()
    path = folder / KEY_FILE
    if not path.exists():
        if not create:
            return None
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _private(folder, "folder")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # made by a build running beside this one
            return load_key()
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(32))
    _private(folder, "folder")
    _private(path, "key")
    key = path.read_bytes()
    if len(key) < 32:
        raise UntrustedCodeError(f"the engine signing key {path} is too short ({len(key)} bytes).",
                                 hint="delete it and rebuild the engines with gap-build (a new key is made).")
    return key


def _message(fields: dict) -> bytes:
    body = {k: v for k, v in fields.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def sign(fields: dict, key: bytes) -> str:
    """HMAC-SHA256 over every manifest field but the signature (the plan's SHA-256 included)."""
    return hmac.new(key, _message(fields), hashlib.sha256).hexdigest()


def is_signed(fields: dict) -> bool:
    """Whether ``fields`` (a manifest as a dict) carry a valid signature under this user's key."""
    signature = fields.get("signature")
    key = load_key()
    if not signature or key is None:
        return False
    return hmac.compare_digest(str(signature), sign(fields, key))
