"""ONNX files: the checks before a backend opens one, the metadata writer, and the one writer of ONNX files."""

from __future__ import annotations

import os
from pathlib import Path

from gap_deploy.runtime.errors import ArtifactError, first_line
from gap_deploy.runtime.files import check_input_file
from gap_deploy.runtime.metadata import ModelMetadata
from gap_deploy.runtime.version import __version__


def check_onnx_file(path: str | os.PathLike) -> Path:
    """Readable, parseable, and every external-data location stays inside the model's folder.

    onnx >= 1.21 fixes the known traversal CVEs, but a model from elsewhere is refused here too,
    before ONNX Runtime follows any path: absolute locations, ``..`` escapes and symlinks. Without the
    onnx package (an edge install) only the file checks run here, and ONNX Runtime's own validation of
    external-data paths (escapes, absolute paths and symlinks: tested) refuses the rest when it loads.
    """
    path = check_input_file(path, "ONNX model")
    try:
        import onnx
    except ImportError:
        return path
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise not_onnx(path, first_line(exc)) from None
    if not model.graph.node and not model.graph.input:
        raise ArtifactError(f"cannot read ONNX model {path}: it holds no graph.",
                            hint="the file is not an ONNX model; export it again.")
    folder = path.resolve().parent
    for tensor in _tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if "\x00" in location or not location:
            raise ArtifactError(f"ONNX model {path}: tensor '{tensor.name}' has an invalid external-data location "
                                f"{location!r}.", hint="only load models from sources you trust.")
        candidate = folder / location
        if os.path.isabs(location) or not candidate.resolve().is_relative_to(folder):
            raise ArtifactError(f"ONNX model {path}: tensor '{tensor.name}' points outside the model's folder "
                                f"({location!r}).", hint="only load models from sources you trust.")
        if candidate.is_symlink():
            raise ArtifactError(f"ONNX model {path}: external data {location!r} is a symbolic link; refused.")
    return path


def _tensors(graph):
    """Every tensor stored in the graph: initializers, constant attributes, and those of subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


#: Above this size a model cannot travel as one protobuf (2 GiB limit): it is saved with external data.
EXTERNAL_DATA_THRESHOLD = (1 << 31) - (1 << 26)


def fits_one_protobuf(model) -> bool:
    return model.ByteSize() <= EXTERNAL_DATA_THRESHOLD


def save_onnx(model, path: str | os.PathLike) -> list[Path]:
    """Write ``model`` to ``path``: one file, or, when one protobuf cannot hold it, the graph plus all weights
    in PATH.data beside it (a relative location, so the pair can move together). The model is not changed.
    Returns the files written (the weights first)."""
    from gap_deploy.runtime._lazy import require
    from gap_deploy.runtime.naming import external_data_path

    path = Path(path)
    if fits_one_protobuf(model):
        path.write_bytes(model.SerializeToString())
        return [path]
    onnx = require("onnx", purpose="to write ONNX models above 2 GiB")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # save_model rewrites the tensors it externalizes
    data = external_data_path(path)
    onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data.name,
                    size_threshold=1024)
    return [data, path]


def set_metadata(proto, meta: ModelMetadata) -> None:
    """Replace the toolkit's metadata_props (keys ``gap.*``), keeping anyone else's."""
    merged = {p.key: p.value for p in proto.metadata_props if not p.key.startswith("gap.")}
    merged.update(meta.to_props())  # one entry per key: ONNX's checker refuses duplicates
    del proto.metadata_props[:]
    for key, value in merged.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "gap-deploy"
    proto.producer_version = __version__


def not_onnx(path: Path, reason: str) -> ArtifactError:
    """The error for a file ONNX cannot parse: a PyTorch checkpoint (a torch.save zip archive or a pickle) is
    named as one, with the export to run; anything else is truncated or not a model."""
    if torch_checkpoint(path):
        return ArtifactError(f"{path} is a PyTorch checkpoint, not an ONNX model: gap-deploy's runtime runs exported "
                             "artifacts.", hint=f"export it first: gap-export {path} --dynamic")
    return ArtifactError(f"cannot read ONNX model {path}: {reason}",
                         hint="the file is truncated or not an ONNX model; export it again.")


def torch_checkpoint(path: Path) -> bool:
    """Whether ``path`` looks like what torch.save writes (a zip archive holding ``<name>/data.pkl``, or a
    pickle from before that format), read without torch and without unpickling anything."""
    import zipfile

    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head == b"PK":
            with zipfile.ZipFile(path) as archive:
                return any(name.endswith("/data.pkl") or name == "data.pkl" for name in archive.namelist())
        return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # pickle protocol 2-5
    except (OSError, zipfile.BadZipFile):
        return False
