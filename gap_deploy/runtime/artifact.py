"""What an artifact is, read in one place: input and output names, dims, channels, static batch, metadata and
(for engines) optimization profiles.

Every module that needs to know an artifact's input asks :func:`describe` (a file, a bundle folder or an
in-memory ``onnx.ModelProto``) or :func:`from_tensors` (what a backend reports), and nothing else parses
``graph.input``. A symbolic dim is ``None`` in ``dims``; its name, if it has one, is in ``dim_names``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gap_deploy.runtime.errors import ArtifactError
from gap_deploy.runtime.metadata import ModelMetadata
from gap_deploy.runtime.profiles import DEFAULT_MAX_BATCH, DEFAULT_MAX_SIDE, DEFAULT_OPT_SIDE, Profile

Dim = int | None


@dataclass(frozen=True)
class ArtifactSpec:
    input_name: str
    output_name: str
    #: input dims (NCHW), None where symbolic
    dims: tuple[Dim, ...]
    output_dims: tuple[Dim, ...]
    metadata: ModelMetadata
    dtype: np.dtype = np.dtype(np.float32)
    #: the symbolic dims' names as the artifact writes them ("batch", "height", ...); None for fixed dims
    dim_names: tuple[str | None, ...] = ()
    #: TensorRT engines: the optimization profiles the engine was built with
    profiles: tuple[Profile, ...] = ()
    path: Path | None = None
    output_dim_names: tuple[str | None, ...] = ()

    def fixed(self, axis: int) -> int | None:
        """The fixed size of input ``axis``; None when it is symbolic (or the input has no such axis)."""
        dim = self.dims[axis] if axis < len(self.dims) else None
        return dim if isinstance(dim, int) and dim > 0 else None

    @property
    def channels(self) -> int:
        """The input's channels: the fixed dim, else the metadata's, else 3 (an RGB model)."""
        return self.fixed(1) or self.metadata.in_channels or 3

    @property
    def declared_channels(self) -> int | None:
        """The channels the artifact itself declares (dim or metadata); None for a foreign model that says neither."""
        return self.fixed(1) or self.metadata.in_channels

    @property
    def static_batch(self) -> int | None:
        return self.fixed(0)

    @property
    def static_size(self) -> tuple[int, int] | None:
        """(H, W) of a model whose height and width are both fixed; None otherwise."""
        h, w = self.fixed(2), self.fixed(3)
        return (h, w) if h and w else None

    @property
    def num_classes(self) -> int | None:
        out = self.output_dims[-1] if self.output_dims else None
        return out if isinstance(out, int) and out > 0 else self.metadata.num_classes

    @property
    def written_dims(self) -> tuple[int | str, ...]:
        """The input dims as the artifact writes them: ints, and a symbolic dim's name (or "?")."""
        return _written(self.dims, self.dim_names)

    @property
    def written_output_dims(self) -> tuple[int | str, ...]:
        return _written(self.output_dims, self.output_dim_names)

    def default_profile(self) -> Profile:
        """gap-build's, ort-trt's and gap-triton's default range: min 1 x C x the model's minimum, opt 1 x C x
        224x224, max 16 x C x 1024x1024, a static model's fixed dims kept."""
        meta = self.metadata

        def pick(axis: int, dynamic_value: int) -> int:
            return self.fixed(axis) or dynamic_value

        c = self.channels
        lo = (pick(0, 1), c, pick(2, meta.min_height), pick(3, meta.min_width))
        opt = (pick(0, 1), c, pick(2, max(DEFAULT_OPT_SIDE, meta.min_height)),
               pick(3, max(DEFAULT_OPT_SIDE, meta.min_width)))
        hi = (pick(0, DEFAULT_MAX_BATCH), c, pick(2, DEFAULT_MAX_SIDE), pick(3, DEFAULT_MAX_SIDE))
        return Profile(lo, opt, hi)

    @property
    def max_batch(self) -> int:
        """The largest batch the artifact runs: its static batch, else the smallest profile maximum, else the
        default profile's."""
        if self.static_batch:
            return self.static_batch
        if self.profiles:
            return min(p.max[0] for p in self.profiles)
        return DEFAULT_MAX_BATCH


def _written(dims, names) -> tuple[int | str, ...]:
    names = names or (None,) * len(dims)
    return tuple(d if d is not None else (n or "?") for d, n in zip(dims, names))


def _dim(value) -> tuple[Dim, str | None]:
    """A dim as (size or None, symbolic name or None), from onnx's TensorShapeProto.Dimension or a backend's
    int / str / None."""
    if hasattr(value, "HasField"):
        if value.HasField("dim_value") and value.dim_value > 0:
            return value.dim_value, None
        return None, value.dim_param or None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0:
        return int(value), None
    return None, value if isinstance(value, str) and value and value != "?" else None


def _dims(values) -> tuple[tuple[Dim, ...], tuple[str | None, ...]]:
    pairs = [_dim(v) for v in values]
    return tuple(d for d, _ in pairs), tuple(n for _, n in pairs)


def _one_each(inputs: int, outputs: int, where: str) -> None:
    if inputs != 1 or outputs != 1:
        raise ArtifactError(f"{where} has {inputs} inputs and {outputs} outputs; gap-deploy runs image classifiers "
                            "with one input and one output.", hint="export the model with gap-export.")


def from_model(model, path: Path | None = None) -> ArtifactSpec:
    """The spec of an in-memory ``onnx.ModelProto``."""
    graph = model.graph
    _one_each(len(graph.input), len(graph.output), str(path or "the model"))
    value, out = graph.input[0], graph.output[0]
    dims, names = _dims(value.type.tensor_type.shape.dim)
    out_dims, out_names = _dims(out.type.tensor_type.shape.dim)
    from onnx import helper

    elem = value.type.tensor_type.elem_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(elem)) if elem else np.dtype(np.float32)
    meta = ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    return ArtifactSpec(value.name, out.name, dims, out_dims, meta, dtype, names, (), path, out_names)


def from_tensors(inputs: Sequence, outputs: Sequence, props: dict[str, str], *, path: Path | None = None,
                 profiles: Sequence[Profile] = ()) -> ArtifactSpec:
    """The spec from what a backend reports: TensorInfo-like objects (name, dtype, shape)."""
    _one_each(len(inputs), len(outputs), str(path or "the model"))
    dims, names = _dims(inputs[0].shape)
    out_dims, out_names = _dims(outputs[0].shape)
    return ArtifactSpec(inputs[0].name, outputs[0].name, dims, out_dims, ModelMetadata.from_props(props),
                        np.dtype(inputs[0].dtype), names, tuple(profiles), path, out_names)


def for_metadata(meta: ModelMetadata) -> ArtifactSpec:
    """The spec of a dynamic model known only by its metadata (a PyTorch model not exported yet)."""
    return ArtifactSpec("images", "logits", (None,) * 4, (None, meta.num_classes), meta,
                        dim_names=("batch", None, "height", "width"))


def _from_onnxruntime(path: Path) -> ArtifactSpec:
    """An .ort file, or an .onnx where the onnx package is not installed (an edge install): read by ONNX Runtime."""
    from gap_deploy.runtime.backends.onnxrt import cpu_session, tensor_info

    session = cpu_session(path)
    return from_tensors([tensor_info(a) for a in session.get_inputs()],
                        [tensor_info(a) for a in session.get_outputs()],
                        dict(session.get_modelmeta().custom_metadata_map), path=path)


def _from_openvino(path: Path) -> ArtifactSpec:
    """An OpenVINO IR: read (not compiled) by OpenVINO; its gap.* metadata from the IR's rt_info."""
    from gap_deploy.runtime.backends.openvino import read_ir

    _, inputs, outputs, props = read_ir(path)
    return from_tensors(inputs, outputs, props, path=path)


def _from_bundle(folder: Path, model: Path) -> ArtifactSpec:
    """An ncnn, LiteRT or ExecuTorch bundle: its model.json's metadata and input description (the files hold none)."""
    from gap_deploy.runtime.bundle import bundle_props

    props, (input_name, output_name) = bundle_props(folder)
    meta = ModelMetadata.from_props(props)
    return ArtifactSpec(input_name, output_name, (None, meta.in_channels, None, None), (None, meta.num_classes), meta,
                        np.dtype(np.float32), ("batch", None, "height", "width"), (), model)


def _from_manifest(path: Path) -> ArtifactSpec:
    from gap_deploy.runtime.manifest import EngineManifest, manifest_path

    if not manifest_path(path).is_file():
        raise ArtifactError(f"{path} has no gap-build manifest ({manifest_path(path).name}), so its input is unknown.",
                            hint="build it with gap-build.")
    manifest = EngineManifest.read(path)
    try:
        (input_name, _), = manifest.profiles[0].items()
        profiles = tuple(Profile(*(tuple(int(v) for v in s) for s in next(iter(p.values()))))
                         for p in manifest.profiles)
    except (IndexError, ValueError, TypeError, AttributeError) as exc:
        raise ArtifactError(f"the manifest of {path} lists no readable optimization profile ({exc}).",
                            hint="build the engine again with gap-build.") from None
    lo, hi = profiles[0].min, profiles[0].max
    dims = tuple(a if a == b and all(p.min[i] == p.max[i] == a for p in profiles) else None
                 for i, (a, b) in enumerate(zip(lo, hi)))
    meta = ModelMetadata.from_props(manifest.metadata)
    names = tuple(None if d is not None else n for d, n in zip(dims, ("batch", None, "height", "width")))
    return ArtifactSpec(input_name, "logits", dims, (None, meta.num_classes), meta, np.dtype(np.float32), names,
                        profiles, path)


def describe(source) -> ArtifactSpec:
    """The spec of an artifact: an ``onnx.ModelProto``, or the path of an .onnx / .ort file, an engine (.plan,
    .engine, .trt: from its manifest) or a gap-pack bundle folder (its dynamic model)."""
    if hasattr(source, "graph") and hasattr(source, "metadata_props"):
        return from_model(source)
    if source is None or not isinstance(source, (str, os.PathLike)):
        raise ArtifactError(f"an artifact is a path or an onnx.ModelProto, got {type(source).__name__}.")
    path = Path(source)
    from gap_deploy.runtime.backends.table import BUNDLE_ONLY_KINDS, artifact_kind
    from gap_deploy.runtime.bundle import bundle_model, is_bundle

    if is_bundle(path):
        model = bundle_model(path, None)
        return _from_bundle(path, model) if artifact_kind(model) in BUNDLE_ONLY_KINDS else describe(model)
    if artifact_kind(path) in BUNDLE_ONLY_KINDS:
        raise ArtifactError(f"{path} carries no description of its input: it is read from the gap-pack bundle "
                            "folder that holds it (model.json).", hint="pass the bundle folder.")
    kind = artifact_kind(path)  # the suffix, as every other reader of it sees it (m.PLAN is an engine everywhere)
    if kind == "engine":
        return _from_manifest(path)
    if kind == "openvino":
        return _from_openvino(path)
    if path.suffix.lower() == ".ort":
        return _from_onnxruntime(path)
    from gap_deploy.runtime.onnx_file import check_onnx_file

    check_onnx_file(path)
    try:
        import onnx
    except ImportError:
        return _from_onnxruntime(path)
    return from_model(onnx.load(str(path), load_external_data=False), path)
