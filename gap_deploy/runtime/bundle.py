"""gap-pack bundles as the runtime reads them: a folder with model.json naming its files, each checked (a plain
name inside the bundle, the SHA-256 model.json lists) before any backend opens it."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from gap_deploy.runtime.backends.table import KINDS
from gap_deploy.runtime.errors import ArtifactError, GapError, UsageError, first_line
from gap_deploy.runtime.files import check_input_file
from gap_deploy.runtime.shapes import format_shape

BUNDLE_FILE = "model.json"


def is_bundle(path) -> bool:
    """Whether ``path`` is a gap-pack bundle folder (a folder with model.json)."""
    return isinstance(path, (str, os.PathLike)) and Path(path).is_dir() and (Path(path) / BUNDLE_FILE).is_file()


def kind_of(path) -> str:
    """The artifact kind of ``path`` (runtime.backends.table.artifact_kind; for a bundle folder, of its model)."""
    from gap_deploy.runtime.backends.table import artifact_kind

    return artifact_kind(bundle_model(Path(path), None) if is_bundle(path) else path)


def check_artifact(path) -> Path:
    """A model file, or a gap-pack bundle folder; else the file check's clear error."""
    return Path(path) if is_bundle(path) else check_input_file(path, "artifact")


#: a bundle's runnable files, by suffix, and the file each reads beside it (checked too): runtime.backends.table
RUNNABLE_SUFFIXES = tuple(suffix for kind in KINDS.values() for suffix in kind.bundle_suffixes)
COMPANIONS = {suffix: kind.companion for kind in KINDS.values() if kind.companion for suffix in kind.bundle_suffixes}


#: the most a bundle's model.json may hold before it is read
DESCRIPTION_LIMIT = 16 << 20


def read_description(folder: Path) -> dict:
    """A bundle's model.json, with its "files" map checked to be one (file name -> entry)."""
    import json

    from gap_deploy.runtime.signing import read_regular

    where = folder / BUNDLE_FILE
    try:  # a regular file of at most 16 MiB (a real one is a few kB), read from its descriptor, nested shallowly
        description = json.loads(read_regular(where, "bundle description", limit=DESCRIPTION_LIMIT).decode("utf-8"))
    except (GapError, ValueError, RecursionError) as exc:
        reason = "it nests too deeply" if isinstance(exc, RecursionError) else first_line(exc)
        raise ArtifactError(f"cannot read bundle description {where}: {reason}",
                            hint="write the bundle again with gap-pack.") from None
    files = description.get("files") if isinstance(description, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, dict) for k, v in files.items()):
        raise ArtifactError(f"{where} is not a gap-pack bundle description: it lists no files (a JSON object of "
                            "file name -> entry).", hint="write the bundle again with gap-pack.")
    return description


def bundle_props(folder: Path) -> tuple[dict[str, str], tuple[str, str]]:
    """(gap.* metadata, (input name, output name)) from model.json, for the models whose files carry neither
    (ncnn, LiteRT, ExecuTorch)."""
    description = read_description(folder)
    props = description.get("metadata", {})
    if not isinstance(props, dict) or not all(isinstance(k, str) and k.startswith("gap.") and isinstance(v, str)
                                              for k, v in props.items()):
        raise ArtifactError(f"{folder / BUNDLE_FILE}'s \"metadata\" is no map of gap.* names to strings.",
                            hint="write the bundle again with gap-pack.")
    input_name, output_name = description.get("input"), description.get("output")
    if not (isinstance(input_name, str) and input_name and isinstance(output_name, str) and output_name):
        raise ArtifactError(f"{folder / BUNDLE_FILE} names no input and output tensor.",
                            hint="write the bundle again with gap-pack.")
    return props, (input_name, output_name)


def bundle_model(folder: Path, shape: Sequence[int] | None) -> Path:
    """The runnable file of a gap-pack bundle (ORT, OpenVINO, ncnn, LiteRT or ExecuTorch): the dynamic one, or
    the fixed variant made for ``shape``; it and the file it reads beside it match model.json's SHA-256s."""
    description = read_description(folder)
    if description.get("target") == "coreml":
        raise ArtifactError(f"bundle {folder} holds a Core ML model, which runs only on Apple's OSes (coremltools' "
                            "predict is macOS only): gap-deploy's runtime cannot run it here.",
                            hint="on a Mac: the bundle's README.md runs it against check_data.npz (inputs and the "
                                 "ONNX's logits).")
    files = description["files"]
    # an app-ready model (gap-pack --app) takes the platform's 8-bit images, not the contract's tensors: it is for
    # the platform's own API, never chosen here; nor is gap-debug's program (ExecuTorch's model.debug.pte)
    runnable = {name: entry for name, entry in files.items()
                if name.endswith(RUNNABLE_SUFFIXES) and entry.get("role") not in ("app", "debug")}
    if shape is None:
        chosen = next((name for name, entry in runnable.items() if not entry.get("shape")), None)
    else:
        from gap_deploy.runtime.validation import int_tuple

        wanted = list(int_tuple(shape, 4, "shape="))
        chosen = next((name for name, entry in runnable.items() if entry.get("shape") == wanted), None)
        if chosen is None:
            have = [format_shape(e["shape"]) for e in runnable.values() if e.get("shape")]
            raise UsageError(f"bundle {folder} has no variant fixed to {format_shape(wanted)}; it has "
                             f"{', '.join(have) or 'none'} (and model.ort for any size).",
                             hint="load the bundle without shape= for any size, or gap-pack --fixed that shape.")
    if chosen is None:
        raise ArtifactError(f"bundle {folder} lists no dynamic model ({', '.join(RUNNABLE_SUFFIXES)}).",
                            hint="write it again with gap-pack.")
    companion = COMPANIONS.get(Path(chosen).suffix)
    if companion:  # OpenVINO and ncnn read the weights beside the graph: they are checked too
        weights = Path(chosen).stem + companion
        if weights not in files:
            raise ArtifactError(f"bundle {folder} lists {chosen} without its weights {weights}.",
                                hint="write the bundle again with gap-pack.")
        checked_bundle_file(folder, weights, files[weights])
    return checked_bundle_file(folder, chosen, runnable[chosen])


def checked_bundle_file(folder: Path, name: str, entry) -> Path:
    """The bundle's file ``name``: a plain name inside the bundle (no path, no link out of it) whose bytes have
    the SHA-256 model.json lists (a swapped or damaged file is refused)."""
    from gap_deploy.runtime.files import safe_name, sha256_file

    try:
        safe_name(name, "bundle file name")
    except GapError as exc:
        raise ArtifactError(f"bundle {folder}'s model.json names a file {name!r} that is no plain file name in the "
                            f"bundle: {first_line(exc)}", hint="write the bundle again with gap-pack.") from None
    path = folder / name
    inside = Path(os.path.realpath(path)).parent == Path(os.path.realpath(folder))
    if not inside or not path.is_file():
        raise ArtifactError(f"bundle file {path} is missing, or a link out of the bundle.",
                            hint="write the bundle again with gap-pack.")
    expected = entry.get("sha256") if isinstance(entry, dict) else None
    if not isinstance(expected, str) or sha256_file(path) != expected:
        raise ArtifactError(f"bundle file {path} does not match the SHA-256 in {folder / BUNDLE_FILE}: it was "
                            "replaced or damaged after gap-pack wrote the bundle.",
                            hint="write the bundle again with gap-pack.")
    return path
