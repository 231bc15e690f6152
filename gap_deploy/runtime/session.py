"""``runtime.load`` and ``Session``: one front for every backend, with the input checks in one place."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from gap_deploy.runtime.backends.base import LoadOptions, Runner, TensorInfo
from gap_deploy.runtime.backends.table import BACKENDS as BACKEND_FACTS
from gap_deploy.runtime.backends.table import (
    BUNDLE_ONLY_KINDS,
    KINDS,
    artifact_kind,
    backend_module,
    backends_for,
    facts,
    kind_of_backend,
)
from gap_deploy.runtime.bundle import bundle_model, bundle_props, is_bundle
from gap_deploy.runtime.errors import (
    ArtifactError,
    BackendUnavailableError,
    InputError,
    InputTypeError,
    UsageError,
)
from gap_deploy.runtime.limits import check_memory
from gap_deploy.runtime.shapes import batches_by_shape
from gap_deploy.runtime.validation import InputSpec, prepare

BACKENDS = tuple(BACKEND_FACTS)
DEFAULT_MAX_BATCH = 16


def _probe(name: str) -> tuple[bool, str]:
    """Whether backend ``name`` really works here, and why not (each probe cached by its module)."""
    return backend_module(name).probe(name)


def available_backends() -> dict[str, str | None]:
    """Every backend name with None where it really works here, else the reason it does not."""
    status: dict[str, str | None] = {}
    for name in BACKEND_FACTS:
        works, why = _probe(name)
        status[name] = None if works else why
    return status


def _choose(path: Path, backend: str | None) -> str:
    kind = artifact_kind(path)
    allowed = backends_for(kind)
    if backend is not None:
        if backend not in allowed:
            raise UsageError(f"backend '{backend}' cannot run {KINDS[kind].words} ({path.name}); "
                             f"choose one of {', '.join(allowed)}.")
        return backend
    if kind != "onnx":
        return allowed[0]
    from gap_deploy.runtime.backends.onnxrt import provider_works

    # ort-trt is never the default: it builds an engine while the session starts (minutes).
    return "ort-cuda" if provider_works("ort-cuda")[0] else "ort-cpu"


def load(path: str | os.PathLike, backend: str | None = None, *, threads: int | None = None,
         trust_engine: bool = False, provider_options: dict | None = None, cache_dir: str | os.PathLike | None = None,
         trt_profile: str | None = None, allow_cpu_fallback: bool = False,
         shape: Sequence[int] | None = None, verify_key=None, check_description: bool = True) -> Session:
    """Open an artifact: ``.onnx`` on ONNX Runtime, ``.plan``/``.engine`` on TensorRT, an OpenVINO ``.xml`` on
    OpenVINO, a gap-pack bundle on the runtime it was made for.

    ``backend`` is one of runtime.backends.table's (ort-cpu, ort-cuda, ort-trt, trt, ov-cpu, ncnn-cpu,
    litert-cpu, et-xnnpack); by default the best one that really works here for the artifact
    (``Session.backend`` says which). A backend that was asked for and does not work raises
    BackendUnavailableError listing those that do: never a silent fallback, not even per node: on
    ort-cuda and ort-trt one profiled inference at the smallest accepted shape shows where every node
    runs, and a compute node on the CPU fails the session unless ``allow_cpu_fallback=True``; shape
    nodes that onnxruntime puts on the CPU on purpose are allowed and listed in ``Session.cpu_nodes``.

    ONNX Runtime options: ``provider_options`` go to the backend's own provider as given;
    ``cache_dir`` holds ort-trt's engine and timing caches (default: ``.gap-trt-cache`` beside the
    model); ``trt_profile`` ("MIN:OPT:MAX", gap-build's syntax) replaces the profile taken from the
    model's metadata. ``Session.provider_options`` reads back what onnxruntime applied.

    ``verify_key`` (a public key file, a folder of ``*.pem``, or a list of them; default
    $GAP_DEPLOY_TRUSTED_KEYS): the artifact (a bundle folder as a whole, a file with its external data) is
    opened only when its signature verifies under one of them (runtime.signing); with neither set, files are
    not checked, except TensorRT plans, which always need a verified signature or ``trust_engine=True``.

    An ncnn, LiteRT or ExecuTorch bundle's model.json is believed only where the loaded model agrees with it
    (channels, classes, one finite inference at its minimum); ``check_description=False`` is for gap-pack,
    which judges the bundle it is staging by its whole sweep instead.

    A gap-pack bundle folder loads its dynamic model (``model.ort``, ``model.xml``, ``model.param``,
    ``model.tflite`` or ``model.pte``, each with the SHA-256 model.json lists), or with ``shape=(N, C, H, W)``
    an ORT bundle's fixed-shape variant made for that shape; ``.ort`` files load like ``.onnx`` ones. ncnn,
    LiteRT and ExecuTorch files carry no metadata and load only from their bundle.
    """
    if path is None or not isinstance(path, (str, os.PathLike)):
        raise InputTypeError(f"runtime.load needs a path (str or os.PathLike), got {type(path).__name__}.")
    path = Path(path)
    signed = _verify_signature(path, verify_key)
    contract = None
    if is_bundle(path):
        folder, path = path, bundle_model(path, shape)
        if artifact_kind(path) in BUNDLE_ONLY_KINDS:
            contract = bundle_props(folder)
    elif shape is not None:
        raise UsageError("shape= picks a fixed-shape variant of a gap-pack bundle; pass the bundle's folder.")
    name = _choose(path, backend)
    kind = kind_of_backend(name)
    check = kind.check_first == "always" or (kind.check_first == "asked" and backend is not None)
    options = LoadOptions(threads=threads, trust_engine=trust_engine, provider_options=provider_options,
                          cache_dir=Path(cache_dir) if cache_dir else None, trt_profile=trt_profile,
                          allow_cpu_fallback=allow_cpu_fallback, verify_key=verify_key,
                          check_description=check_description, contract=contract, signed=signed,
                          check_works=_check_works if check else None, describe=lambda: _describe(path))
    runner = backend_module(name).open_runner(path, name, options)
    return Session(runner, path)


def _describe(path: Path):
    from gap_deploy.runtime.artifact import describe

    return describe(path)


def _verify_signature(path: Path, verify_key) -> bool:
    """With trusted keys given (or $GAP_DEPLOY_TRUSTED_KEYS), the artifact's signature must verify before any of
    its bytes reach a runtime; returns whether it did. Plans are left to TrtRunner, which checks the plan and its
    manifest."""
    from gap_deploy.runtime.signing import TRUSTED_KEYS_ENV, trusted_keys, verify_path

    if verify_key is False:  # the caller's own staged files (gap-pack's check), not yet signed
        return False
    asked = verify_key is not None or bool(os.environ.get(TRUSTED_KEYS_ENV, "").strip())
    if not asked or artifact_kind(path) == "engine":
        return False
    keys = trusted_keys(verify_key)
    verify_path(path, keys)  # refuses when the keys asked for are none (an empty folder): never unchecked
    if path.suffix == ".onnx":
        from gap_deploy.runtime.naming import external_data_path

        data = external_data_path(path)
        if data.exists():
            verify_path(data, keys)
    return True


def _check_works(name: str) -> None:
    """BackendUnavailableError, naming what works here, when backend ``name`` does not."""
    works, why = _probe(name)
    if not works:
        working = [n for n, reason in available_backends().items() if reason is None]
        raise BackendUnavailableError(f"backend '{name}' is not available: {why}.",
                                      note=f"available here: {', '.join(working) or 'none'}.",
                                      hint=facts(name).install_hint)


class Session:
    """A loaded model. ``run`` for one batch, ``run_many`` for images of mixed sizes. Thread-safe."""

    def __init__(self, runner: Runner, path: Path | None = None):
        self._runner = runner
        self._closed = False
        self.path = path
        self.backend = runner.backend
        self.inputs: tuple[TensorInfo, ...] = runner.inputs
        self.outputs: tuple[TensorInfo, ...] = runner.outputs
        from gap_deploy.runtime.artifact import from_tensors
        from gap_deploy.runtime.profiles import Profile

        info = self.inputs[0] if self.inputs else None
        profiles = tuple(Profile(*p) for p in info.profiles) if info is not None else ()
        #: the artifact as runtime.artifact describes every artifact
        self.spec = spec = from_tensors(self.inputs, self.outputs, runner.props, path=path, profiles=profiles)
        self.metadata = spec.metadata
        if len(spec.dims) != 4:
            raise ArtifactError(f"{path}: input '{spec.input_name}' has rank {len(spec.dims)}; expected NCHW images.")
        if spec.dtype.kind != "f":
            raise ArtifactError(f"{path}: input '{spec.input_name}' is {spec.dtype.name}; gap-deploy runs image "
                                "models with a float input.", hint="export the model with gap-export.")
        min_h, min_w = self.metadata.min_height, self.metadata.min_width
        if profiles:  # an engine accepts nothing below its smallest profile minimum
            min_h = max(min_h, min(p.min[2] for p in profiles))
            min_w = max(min_w, min(p.min[3] for p in profiles))
        if spec.static_size and spec.static_batch:  # a static model declares its input size: refuse one that can
            check_memory((spec.static_batch, spec.channels, *spec.static_size),  # never fit here
                         f"{path}: the model's fixed input")
        self._spec = InputSpec(name=spec.input_name, channels=spec.declared_channels, dtype=spec.dtype,
                               min_height=min_h, min_width=min_w, profiles=tuple((p.min, p.max) for p in profiles),
                               fixed=(spec.fixed(0), spec.fixed(2), spec.fixed(3)),
                               # checked per image, like the minimum; a static program's one size says more
                               max_side=None if spec.static_size else getattr(runner, "max_side", None))

    @property
    def input_spec(self) -> InputSpec:
        return self._spec

    @property
    def runner(self) -> Runner:
        """The backend runner (for example ``runner.ort_session`` to compare with a bare ONNX Runtime loop)."""
        return self._runner

    @property
    def provider_options(self) -> dict[str, dict[str, str]]:
        """ONNX Runtime backends: the options each provider really runs with, read back from onnxruntime."""
        return self._runner.provider_options

    @property
    def cpu_nodes(self) -> tuple:
        """ort-cuda/ort-trt: the shape nodes onnxruntime runs on the CPU (NodePlacement); empty elsewhere."""
        return self._runner.cpu_nodes

    @property
    def device(self) -> dict:
        """Where the model really runs (GPU index and name, or the CPU threads)."""
        return self._runner.device

    @property
    def versions(self) -> dict[str, str]:
        return self._runner.versions

    @property
    def gpu_timing(self) -> bool:
        """Whether the runner times H2D / compute / D2H / enqueue itself (TensorRT engines; gap-bench uses it)."""
        return self._runner.gpu_timing

    def check_cuda_graph(self, images: np.ndarray) -> float | None:
        """Max abs difference between a CUDA-graph replay and a normal execution on ``images``; None when no
        graph could be captured (``runner.graph_failure`` says why; inference then runs without one)."""
        if not self.gpu_timing:
            raise UsageError(f"backend '{self.backend}' has no CUDA graphs; they exist for TensorRT engines.")
        return self._runner.check_cuda_graph(prepare(images, self._spec))

    def run(self, images: np.ndarray, *, cast: bool = False, check_finite: bool = False) -> np.ndarray:
        """Logits (N, num_classes) for a float NCHW batch. Inputs are checked before the backend runs."""
        self._check_open()
        if isinstance(images, np.ndarray) and images.ndim == 4:  # before any copy or conversion is made
            check_memory(images.shape, f"input '{self._spec.name}'", itemsize=np.dtype(self._spec.dtype).itemsize)
        return self._runner.infer(prepare(images, self._spec, cast=cast, check_finite=check_finite))

    def run_many(self, images: Sequence[np.ndarray], *, max_batch: int = DEFAULT_MAX_BATCH, cast: bool = False,
                 check_finite: bool = False) -> list[np.ndarray]:
        """Logits (num_classes,) for each CHW image of a list of mixed sizes, in input order.

        Images of equal size run together in batches of at most ``max_batch``. Different sizes are
        never zero-padded into one batch: padding would change every global average.
        """
        if max_batch < 1:
            raise InputError(f"max_batch must be >= 1, got {max_batch}.")
        for index, image in enumerate(images):
            if not isinstance(image, np.ndarray) or image.ndim != 3:
                got = f"{image.ndim}-D" if isinstance(image, np.ndarray) else type(image).__name__
                raise InputError(f"run_many takes a list of CHW images; item {index} is {got}.",
                                 hint="use Session.run for a batch (N, C, H, W).")
        results: list[np.ndarray | None] = [None] * len(images)
        fixed_batch = self._spec.fixed[0]
        for chunk in batches_by_shape(range(len(images)), lambda i: (images[i].shape, images[i].dtype.str),
                                      fixed_batch or max_batch):
            batch = [images[i] for i in chunk]
            if fixed_batch and len(batch) < fixed_batch:
                # A static batch takes exactly N images: fill the short last chunk by repeating its own
                # images and drop their outputs. Safe for a GAP network: each image is averaged alone.
                batch += [batch[k % len(chunk)] for k in range(fixed_batch - len(chunk))]
            logits = self.run(np.stack(batch), cast=cast, check_finite=check_finite)
            for i, row in zip(chunk, logits):
                results[i] = row
        return results  # type: ignore[return-value]

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"{self!r} is closed; open the model again with runtime.load.")

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._runner.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Session({str(self.path)!r}, backend={self.backend!r})"


def check_session(session, what: str):
    """``session`` when it is a runtime.Session, else InputTypeError (runtime.load makes one)."""
    if not isinstance(session, Session):
        raise InputTypeError(f"{what} needs a runtime.Session (from runtime.load), got {type(session).__name__}.")
    return session

