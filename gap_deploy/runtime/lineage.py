"""What an artifact was made from, recorded inside what its signature covers, and the walk back along it.

Each artifact names its parent by file name and SHA-256, inside bytes its signature covers: an ONNX model in its
metadata (``gap_deploy.lineage``: the parent, the toolkit and converter versions, the options and the
verification evidence), a TensorRT plan in its manifest (``onnx_sha256``, the plan's ONNX), a gap-pack bundle in
its model.json (``source``, ``source_sha256``). :func:`walk` verifies an artifact's signature, finds its parent
beside it, checks the parent is the very file recorded (a swapped parent is refused, naming it), and goes on
until a parent is absent or is the PyTorch checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from gap_deploy.runtime.backends.table import artifact_kind
from gap_deploy.runtime.errors import ArtifactError, UntrustedCodeError

KEY = "gap_deploy.lineage"


@dataclass(frozen=True)
class Lineage:
    parent_name: str
    parent_sha256: str
    #: what the parent is: "checkpoint" (PyTorch), "onnx" (the FP32 model a variant was converted from)
    parent_role: str
    toolkit_version: str | None = None
    converters: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    #: what the artifact was checked with when it was made: parity rows, layers kept in FP32, gate results
    evidence: dict = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str, where: str) -> Lineage:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            return cls(**data)
        except (ValueError, TypeError) as exc:
            raise ArtifactError(f"{where}: the lineage record is not readable ({exc}).") from None


def record(props: dict[str, str], lineage: Lineage) -> dict[str, str]:
    """``props`` (metadata_props as a dict) with ``lineage`` recorded."""
    return {**props, KEY: lineage.to_json()}


@dataclass(frozen=True)
class Link:
    path: Path
    kind: str
    #: the public key its signature verified under; None for a checkpoint (gap-deploy does not sign those)
    key: Path | None
    parent: str | None = None  # "NAME (sha256 ...)" as recorded
    note: str = ""
    lineage: Lineage | None = None

    def describe(self) -> str:
        who = f"signature verified ({self.key.name})" if self.key else "SHA-256 matches"
        parent = f"; made from {self.parent}" if self.parent else ""
        return f"{self.path} [{self.kind}]: {who}{parent}" + (f". {self.note}" if self.note else "")


def _sha256(path: Path) -> str:
    from gap_deploy.runtime.files import sha256_file

    return sha256_file(path)


def parent_of(path: Path) -> tuple[str, Path | None, str, str | None, Lineage | None]:
    """(kind, the parent's path or None when not found, its recorded SHA-256, its role, the lineage record) of an
    artifact; the recorded SHA-256 is "" when the artifact records no parent."""
    from gap_deploy.runtime.bundle import is_bundle

    path = Path(path)
    if path.is_dir() and is_bundle(path):
        data = _model_json(path)
        name, digest = data.get("source"), data.get("source_sha256")
        if not isinstance(name, str) or not isinstance(digest, str):
            return "bundle", None, "", None, None
        return "bundle", _beside(path, name), digest, "onnx", None
    if artifact_kind(path) == "engine":  # the registry's suffixes (runtime.backends.table)
        from gap_deploy.runtime.manifest import EngineManifest

        return "plan", plan_source(path), EngineManifest.read(path).onnx_sha256, "onnx", None
    if path.suffix in (".onnx", ".ort"):
        from gap_deploy.runtime.artifact import describe

        text = describe(path).metadata.extra.get(KEY)
        if not text:
            return "onnx", None, "", None, None
        lineage = Lineage.from_json(text, str(path))
        return "onnx", _beside(path, lineage.parent_name), lineage.parent_sha256, lineage.parent_role, lineage
    raise ArtifactError(f"{path}: not an artifact gap-verify knows (ONNX, ORT, plan, gap-pack bundle, Triton "
                        "repository).")


def plan_source(plan: Path) -> Path | None:
    """The .onnx beside a gap-build plan whose SHA-256 its manifest records (the ONNX it was built from), or None."""
    from gap_deploy.runtime.manifest import EngineManifest

    recorded = EngineManifest.read(plan).onnx_sha256
    return next((p for p in sorted(plan.parent.glob("*.onnx")) if _sha256(p) == recorded), None)


def _beside(path: Path, name: str) -> Path | None:
    from gap_deploy.runtime.files import safe_name

    try:
        safe_name(name, "parent name")
    except Exception:
        raise UntrustedCodeError(f"{path}: its lineage names its parent {name!r}, which is not a plain file name.") \
            from None
    candidate = path.parent / name
    return candidate if candidate.exists() else None


def _model_json(folder: Path) -> dict:
    from gap_deploy.runtime.bundle import read_description

    return read_description(folder)  # a dict, or ArtifactError saying why not


def is_triton_repository(path: Path) -> bool:
    return path.is_dir() and any((p / "config.pbtxt").is_file() for p in path.iterdir() if p.is_dir())


def walk(path: str | os.PathLike, keys: Sequence[str | os.PathLike] | str | os.PathLike | None = None, *,
         log: Callable[[str], None] = lambda _: None) -> list[Link]:
    """Every link from ``path`` back along its recorded parents, each signature verified under ``keys``.

    Raises UntrustedCodeError, naming the file, at the first link that fails: a missing or foreign signature, a
    changed, added or missing file, or a parent beside it that is not the file recorded (a swapped parent)."""
    from gap_deploy.runtime.signing import verify_path

    path = Path(path)
    links: list[Link] = []
    seen: set[Path] = set()
    while True:
        if path.resolve() in seen:
            raise UntrustedCodeError(f"{path}: its lineage loops back to itself.")
        seen.add(path.resolve())
        verified = verify_path(path, keys)
        if is_triton_repository(path):
            links.append(Link(path, "triton repository", verified.key,
                              note="Every model folder in it is covered by this one signature"))
            return links
        if artifact_kind(path) == "engine":  # the registry's suffixes (runtime.backends.table)
            from gap_deploy.runtime.naming import manifest_path

            verify_path(manifest_path(path), keys)
        kind, parent, digest, role, lineage = parent_of(path)
        recorded = f"{parent.name if parent else '?'} (sha256 {digest[:12]}...)" if digest else None
        if not digest:
            links.append(Link(path, kind, verified.key, note="It records no parent", lineage=lineage))
            return links
        if parent is None:
            name = lineage.parent_name if lineage else "its source"
            links.append(Link(path, kind, verified.key, f"{name} (sha256 {digest[:12]}...)",
                              note="The parent is not beside it: the chain ends here", lineage=lineage))
            return links
        actual = _sha256(parent) if parent.is_file() else ""
        if actual != digest:
            raise UntrustedCodeError(
                f"{parent} is not the file {path.name} was made from: its SHA-256 ({actual[:12] or 'a folder'}...) "
                f"differs from the one recorded in {path.name}'s signed lineage ({digest[:12]}...); the parent was "
                "replaced.", hint="put the original parent back, or re-make and re-sign the chain from it.")
        links.append(Link(path, kind, verified.key, recorded, lineage=lineage))
        log(links[-1].describe())
        if role == "checkpoint":  # a PyTorch checkpoint: its digest matches; gap-deploy signs no checkpoint
            links.append(Link(parent, "checkpoint", None, note="The PyTorch checkpoint the chain starts from"))
            return links
        path = parent


def record_in_model(proto, lineage: Lineage) -> None:
    """Record ``lineage`` in an ``onnx.ModelProto``'s metadata_props (replacing an earlier record, as a variant
    inherits its parent's props)."""
    for prop in proto.metadata_props:
        if prop.key == KEY:
            prop.value = lineage.to_json()
            return
    proto.metadata_props.add(key=KEY, value=lineage.to_json())


def versions(*names: str) -> dict[str, str]:
    """The installed versions of the named distributions (the converters an artifact was made with)."""
    from importlib import metadata

    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def variant_lineage(parent_name: str, parent_sha256: str, variant, options: dict) -> Lineage:
    """A precision variant's record: its FP32 parent, the options, and the gate it passed (exporter.precision's
    VariantResult: the sweep against the FP32 model, the layers kept in FP32, top-1 agreement)."""
    from gap_deploy.runtime.version import __version__

    evidence = {"parity_vs_parent": variant.sweep.to_dict(), "top1_agreement": variant.top1_agreement,
                "gate_passed": bool(variant.passed)}
    return Lineage(parent_name, parent_sha256, "onnx", __version__,
                   versions("onnx", "onnxruntime", "onnxconverter-common"), options, evidence)
