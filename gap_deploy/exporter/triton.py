"""Triton Inference Server model repositories written from the artifacts, and a checker for any repository.

The writer knows what a config needs from the ONNX (input/output names, dims, classes, minimum size,
precision) or the engine manifest (profiles), so the config cannot drift from what was built:
``max_batch_size`` never above the smallest max batch of the plan's profiles, and 0 (full dims, no batching)
for a model whose batch is fixed; one instance group listing every profile (each instance holds them all and
Triton picks one per request by shape); dims ``[C, -1, -1]`` for a dynamic model, labels for Triton's
classification extension, dynamic batching and a warm-up at every shape the model is built for (each profile's
opt, each bucket of a routing contract, else one). The python backend (``backend="python"``) serves any
artifact through the gap-deploy runtime, with its input checks and messages.

The checker parses config.pbtxt against Triton's own ModelConfig schema (tritonclient ships
``grpc/model_config_pb2.py``; it is loaded by path, without grpcio) and compares it with the artifact:
one :class:`Problem` per disagreement, with the field, both values and the fix.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gap_deploy.runtime.artifact import ArtifactSpec, describe
from gap_deploy.runtime.errors import ArtifactError, MissingDependencyError, OutputPathError, UsageError, first_line
from gap_deploy.runtime.files import safe_name
from gap_deploy.runtime.naming import manifest_path
from gap_deploy.runtime.publish import Publication
from gap_deploy.runtime.shapes import format_shape

PLATFORMS = {".onnx": "onnxruntime_onnx", ".plan": "tensorrt_plan", ".engine": "tensorrt_plan"}
DEFAULT_FILENAME = {"onnxruntime_onnx": "model.onnx", "tensorrt_plan": "model.plan"}
PYTHON_MODEL = Path(__file__).with_name("triton_model.py")


@dataclass(frozen=True)
class ServeOptions:
    name: str | None = None
    version: int = 1
    backend: str = "auto"  # auto (the artifact's platform) or python
    #: KIND_GPU / KIND_CPU / KIND_AUTO; auto: what the backend needs (instance_kind)
    kind: str = "auto"
    count: int = 1
    gpus: tuple[int, ...] = (0,)
    max_batch: int | None = None
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 1000
    ort_tensorrt: bool = False  # ONNX on GPU: ONNX Runtime's TensorRT accelerator
    #: python backend: folders the stub puts on sys.path (it ignores PYTHONPATH); () when gap-deploy is installed
    python_paths: tuple[str, ...] = ()


def read_artifact(path: str | os.PathLike) -> ArtifactSpec:
    """What a config needs, from an ONNX file or a plan's manifest (runtime.artifact.describe)."""
    from gap_deploy.runtime.files import check_input_file

    path = check_input_file(path, "artifact")
    if path.suffix not in PLATFORMS:
        raise UsageError(f"{path.name}: Triton serves .onnx and .plan artifacts; use --backend python for others.")
    return describe(path)


def source_of(info: ArtifactSpec) -> Path:
    """The file an artifact was read from (read_artifact always says; a spec made in memory has none)."""
    if info.path is None:
        raise UsageError("an artifact described in memory has no file for Triton to serve; write it first.")
    return info.path


def platform_of(info: ArtifactSpec) -> str:
    return PLATFORMS[source_of(info).suffix]


def config_dims(info: ArtifactSpec) -> list[int]:
    """The input dims as a config writes them: without the batch, -1 where symbolic."""
    return [d or -1 for d in info.dims[1:]]


def classes_of(info: ArtifactSpec) -> int:
    return info.num_classes or -1


def max_batch_for(info: ArtifactSpec, wanted: int | None) -> int:
    """Triton's max_batch_size: never above what every profile allows, and 0 for a model whose batch is fixed.

    With ``max_batch_size > 0`` Triton prepends a batch dim of -1 to ``dims`` and its onnxruntime backend
    requires the model's first dim to be -1 (onnxruntime_backend src/onnxruntime_utils.cc, CompareDimsSupported:
    "for the model to support batching ... the first dimension must be -1"): a static-batch ONNX (gap-export
    without --dynamic) is served with ``max_batch_size: 0`` and its full shape in ``dims``."""
    if info.static_batch:
        if wanted is not None:
            raise UsageError(f"{source_of(info).name} has a fixed batch of {info.static_batch}, so Triton serves it "
                             "with max_batch_size 0 (no batching); --max-batch does not apply.",
                             hint="drop --max-batch, or export with gap-export --dynamic to batch requests.")
        return 0
    limit = info.max_batch
    if wanted is not None and wanted > limit:
        raise UsageError(f"max_batch {wanted} is above what {source_of(info).name} takes ({limit}).",
                         hint="rebuild the engine with a larger max batch (gap-build --max), or lower it.")
    return wanted or limit


def _list(values) -> str:
    return "[ " + ", ".join(str(v) for v in values) + " ]"


def instance_kind(info: ArtifactSpec, options: ServeOptions) -> str:
    """The instance kind a config asks for: ``options.kind``, or for "auto" what the backend needs. A TensorRT
    plan, and ONNX through ONNX Runtime's TensorRT accelerator, run only on a GPU: KIND_GPU. Plain ONNX runs on
    either: KIND_AUTO, which Triton's model_config.proto defines as GPU instances when the listed GPUs are there,
    CPU instances otherwise, so one repository serves on both kinds of machine. The python backend here runs
    gap-deploy's CPU backends: KIND_CPU."""
    if options.kind != "auto":
        return options.kind
    if options.backend == "python":
        return "KIND_CPU"
    return "KIND_GPU" if platform_of(info) == "tensorrt_plan" or options.ort_tensorrt else "KIND_AUTO"


def config_text(info: ArtifactSpec, name: str, options: ServeOptions, filename: str) -> str:
    python = options.backend == "python"
    kind = instance_kind(info, options)
    max_batch = max_batch_for(info, options.max_batch)
    dims = config_dims(info) if max_batch else [info.static_batch, *config_dims(info)]
    lines = [f'name: "{name}"', 'backend: "python"' if python else f'platform: "{platform_of(info)}"',
             f"max_batch_size: {max_batch}"]
    if not python and filename != DEFAULT_FILENAME[platform_of(info)]:
        lines.append(f'default_model_filename: "{filename}"')
    lines += ["input [", f'  {{ name: "{info.input_name}" data_type: TYPE_FP32 dims: {_list(dims)} }}', "]",
              "output [", f'  {{ name: "{info.output_name}" data_type: TYPE_FP32 dims: [ {classes_of(info)} ] '
              f'label_filename: "labels.txt" }}', "]"]
    # One group holding every profile: Triton's scheduler does not route requests by shape, so an instance that
    # held only some profiles would refuse the shapes of the others (see _check_profiles).
    gpus = f" gpus: {_list(options.gpus)}" if kind in ("KIND_GPU", "KIND_AUTO") else ""
    prof = "" if python or not info.profiles else \
        " profile: " + _list(f'"{i}"' for i in range(len(info.profiles)))
    lines += ["instance_group [", f"  {{ count: {options.count} kind: {kind}{gpus}{prof} }}", "]"]
    if options.dynamic_batching and max_batch > 1:
        preferred = options.preferred_batch_sizes or tuple(b for b in (4, 8, 16) if b <= max_batch)
        lines.append(f"dynamic_batching {{ preferred_batch_size: {_list(preferred)} "
                     f"max_queue_delay_microseconds: {options.max_queue_delay_us} }}" if preferred else
                     f"dynamic_batching {{ max_queue_delay_microseconds: {options.max_queue_delay_us} }}")
    # without batching, a warm-up's dims are the full shape and its batch_size 1 (model_config.proto, ModelWarmup)
    samples = []
    for shape in warmup_shapes(info):
        warm_batch, warm_dims = (shape[0], shape[1:]) if max_batch else (1, shape)
        samples.append(f'  {{ name: "{format_shape(shape)}" batch_size: {warm_batch} inputs {{ key: '
                       f'"{info.input_name}" value {{ data_type: TYPE_FP32 dims: {_list(warm_dims)} random_data: true '
                       '} } }')
    lines += ["model_warmup [", ",\n".join(samples), "]"]
    if options.ort_tensorrt and platform_of(info) == "onnxruntime_onnx" and not python:
        from gap_deploy.runtime.backends.onnxrt import trt_profile_options

        # No precision_mode: Triton maps FP16/INT8 to trt_fp16_enable/trt_int8_enable (onnxruntime_backend
        # src/onnxruntime.cc), which makes ONNX Runtime's TensorRT EP build a weakly typed network that may run in
        # FP16 the layers gap-deploy verified in FP32. Left at its default, the EP obeys the ONNX's own types (its
        # casts and Q/DQ nodes), as gap-deploy's ort-trt backend does.
        params = {"trt_engine_cache_enable": "1", **trt_profile_options(info)}
        body = " ".join(f'parameters {{ key: "{k}" value: "{v}" }}' for k, v in params.items())
        lines.append(f'optimization {{ execution_accelerators {{ gpu_execution_accelerator: [ {{ name: "tensorrt" '
                     f"{body} }} ] }} }}")
    if not python and _version_compatible(info):
        lines.insert(0, f"# {VC_NOTE}")
    # The model's gap.* metadata (normalization, minimum size, classes) rides along, so a client such as
    # gap-run --server can preprocess exactly as gap-run does without a copy of the model.
    params = {k: v for k, v in info.metadata.to_props().items() if k.startswith("gap.")}
    if python:
        params.update({"artifact": filename, "sys_path": json.dumps(list(options.python_paths))})
    lines += [f'parameters {{ key: {json.dumps(k)} value {{ string_value: {json.dumps(v)} }} }}'
              for k, v in params.items() if k.startswith("gap.") or python]
    return "\n".join(lines) + "\n"


#: Triton's TensorRT backend refuses version-compatible plans unless the server is told otherwise
#: (tensorrt_backend README, "Command line options": version-compatible; src/loader.cc)
VC_NOTE = ("a version-compatible plan: start tritonserver with --backend-config=tensorrt,version-compatible=true, "
           "or Triton's TensorRT backend refuses to load it.")


def _version_compatible(info: ArtifactSpec) -> bool:
    from gap_deploy.runtime.manifest import EngineManifest

    if source_of(info) is None or platform_of(info) != "tensorrt_plan" or not manifest_path(source_of(info)).is_file():
        return False
    return bool(EngineManifest.read(source_of(info)).version_compatible)


def notes_for(info: ArtifactSpec) -> list[str]:
    """What a server operator must know about this artifact beyond its config (printed by gap-triton)."""
    return [VC_NOTE] if _version_compatible(info) else []


def warmup_shapes(info: ArtifactSpec) -> list[tuple]:
    """One warm-up per shape the model is built to see, so no first request pays for a shape: each TensorRT
    profile's opt (gap-build --profile per bucket), else each bucket of a routing contract (gap-tune --buckets
    --emit's MODEL.buckets.onnx: every image arrives at one of them), else one (_opt_shape)."""
    from gap_deploy.runtime.limits import check_memory

    if info.profiles:
        shapes = [tuple(p.opt) for p in info.profiles]
    else:
        buckets = info.metadata.preprocessing(channels=info.channels).buckets or ()
        shapes = [(1, info.channels, h, w) for h, w in buckets
                  if info.fixed(2) is None and info.fixed(3) is None]
    if not shapes:
        return [_opt_shape(info)]
    for shape in shapes:
        check_memory(shape, f"the warm-up input of {source_of(info).name}")
    return list(dict.fromkeys(shapes))


def _opt_shape(info: ArtifactSpec) -> tuple:
    """The warm-up shape: the engine's opt shape, or 1 x C x 224 (at least the model's minimum); one whose
    tensors could never fit in memory (a forged minimum of 99999, say) is refused, not written into a config."""
    from gap_deploy.runtime.limits import check_memory

    if info.profiles:
        shape = tuple(info.profiles[0].opt)
    else:
        side = max(224, info.metadata.min_height, info.metadata.min_width)
        shape = (1, info.channels, info.fixed(2) or side, info.fixed(3) or side)
    check_memory(shape, f"the warm-up input of {source_of(info).name}")
    return shape


def write_repository(artifacts: Sequence[str | os.PathLike], repo: str | os.PathLike,
                     options: ServeOptions = ServeOptions()) -> list[Path]:
    """One model folder per artifact: config.pbtxt, labels.txt and VERSION/model.*; each checked before it is
    moved into the repository (an existing model folder of the same name is refused)."""
    repo = Path(repo)
    if repo.exists() and not repo.is_dir():
        raise OutputPathError(f"model repository {repo} is not a folder.")
    if not repo.parent.is_dir():
        raise OutputPathError(f"folder {repo.parent} does not exist.", hint=f"mkdir -p {repo.parent}")
    infos = [read_artifact(a) for a in artifacts]
    names = [options.name if options.name and len(infos) == 1 else
             (f"{options.name}_{i}" if options.name else source_of(info).name.split(".")[0])
             for i, info in enumerate(infos)]
    if len(set(names)) != len(names):
        names = [f"{n}_{source_of(info).suffix[1:]}_{info.metadata.precision}" for n, info in zip(names, infos)]
    names = [safe_name(n, "model name") for n in names]  # names and metadata values become folders
    if len(set(names)) != len(names):
        raise UsageError(f"the artifacts' model names collide ({', '.join(names)}); nothing was written.",
                         hint="give artifacts distinct file names, or one --name per run.")
    taken = [repo / n for n in names if (repo / n).exists()]
    if taken:
        raise OutputPathError(f"{taken[0]} exists; a model folder is never written over. Nothing was written.",
                              hint="choose another --name or repository.")
    try:
        repo.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create model repository {repo}: {exc.strerror or exc}.",
                              hint="choose a folder you can write to.") from None
    with Publication() as pub:  # all the models appear, or none
        for name, info in zip(names, infos):
            _stage_model_folder(pub.folder(repo / name, "model folder", signed=False), name, info, options)
    sign_repository(repo)
    return [repo / n for n in names]


def sign_repository(repo: Path) -> Path | None:
    """With a signing key in force (--sign-key, $GAP_DEPLOY_SIGN_KEY), the whole repository as it now stands is
    signed into ``REPO.sig`` beside it, so a server can verify every model folder with one public key. Signed
    after the models are in place (a repository may hold other models too), so a failure here leaves them
    unsigned and says so."""
    from gap_deploy.runtime.signing import sign_key_from_env, sign_path, signature_path

    key = sign_key_from_env()
    if key is None:
        return None
    with Publication(sign_key=None) as pub:
        out = pub.file(signature_path(repo))
        try:
            sign_path(repo, key, out)
        except Exception as exc:
            raise type(exc)(f"{exc} The model folders were written; the repository is not signed.") from None
    return signature_path(repo)


def _stage_model_folder(staging: Path, name: str, info: ArtifactSpec, options: ServeOptions) -> None:
    """One model folder, filled in its staging twin and checked there; runtime.publish moves it into place."""
    filename = source_of(info).name if options.backend == "python" else DEFAULT_FILENAME[platform_of(info)]
    version = staging / str(options.version)
    version.mkdir()
    shutil.copyfile(source_of(info), version / filename)
    if options.backend == "python":
        shutil.copyfile(PYTHON_MODEL, version / "model.py")
    if manifest_path(source_of(info)).is_file():  # beside the plan: Triton ignores it, the checker reads it
        shutil.copyfile(manifest_path(source_of(info)), version / manifest_path(filename).name)
    names_ = info.metadata.class_names or tuple(str(i) for i in range(max(classes_of(info), 0)))
    (staging / "labels.txt").write_text("\n".join(names_) + "\n")
    (staging / "config.pbtxt").write_text(config_text(info, name, options, filename))
    problems = check_model_folder(staging, expected_name=name, artifact=info)
    if problems:
        raise ArtifactError(f"the config written for {name} does not pass its own check.",
                            note="\n".join(map(str, problems)))


# ---- the checker -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Problem:
    model: str
    field: str
    config: str
    expected: str
    fix: str

    def __str__(self) -> str:
        return f"{self.model}: {self.field}: config says {self.config}, the model has {self.expected}. Fix: {self.fix}"


def model_config_module():
    """tritonclient's ModelConfig protobuf module, loaded by path (no grpcio needed)."""
    spec = importlib.util.find_spec("tritonclient")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError("checking a Triton repository needs tritonclient (its ModelConfig schema).",
                                     hint="pip install 'gap-deploy[triton]'")
    path = Path(next(iter(spec.submodule_search_locations))) / "grpc" / "model_config_pb2.py"
    name = "gap_triton_model_config_pb2"
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.util.spec_from_file_location(name, path)
    if loader is None or loader.loader is None:
        raise MissingDependencyError(f"tritonclient's {path.name} cannot be loaded.",
                                     hint="pip install 'gap-deploy[triton]'.")
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    sys.modules[name] = module
    return module


def parse_config(text: str, where: str):
    from google.protobuf import text_format

    pb = model_config_module()
    try:
        return text_format.Parse(text, pb.ModelConfig())
    except text_format.ParseError as exc:
        raise ArtifactError(f"{where}: not a valid Triton ModelConfig: {exc}",
                            hint="see Triton's model_config.proto for the fields and their types.") from None


#: the most a config.pbtxt or labels.txt may hold before the checker reads it (a real one is a few kB)
MAX_TEXT_BYTES = 4 << 20


def _read_text(path: Path, what: str) -> str:
    """A small UTF-8 text file of the repository, or ArtifactError saying why not (never a traceback)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_TEXT_BYTES + 1)
    except OSError as exc:
        raise ArtifactError(f"{path}: cannot read the {what}: {exc.strerror or exc}.") from None
    if len(data) > MAX_TEXT_BYTES:
        raise ArtifactError(f"{path}: the {what} is larger than {MAX_TEXT_BYTES >> 20} MiB; no real one is.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArtifactError(f"{path}: the {what} is not UTF-8 text (byte {exc.start}).") from None


def _plain_file_name(name: str, field_: str, model: str, add) -> bool:
    """Whether ``name`` (a file the config names) is a plain name inside the model folder; else a problem."""
    from gap_deploy.runtime.errors import GapError

    try:
        safe_name(name, field_)
        return True
    except GapError:
        add(field_, repr(name)[:80], "a plain file name inside the model folder", "name a file in the folder")
        return False


def check_model_folder(folder: Path, *, expected_name: str | None = None,
                       artifact: ArtifactSpec | None = None) -> list[Problem]:
    """Every disagreement between ``folder``'s config.pbtxt, its layout and its artifact."""
    model = expected_name or folder.name
    config_path = folder / "config.pbtxt"
    if not config_path.is_file():
        return [Problem(model, "config.pbtxt", "(missing)", "a model folder", "write one (gap-triton)")]
    config = parse_config(_read_text(config_path, "config"), str(config_path))
    problems: list[Problem] = []

    def add(field_: str, have, want, fix: str):
        problems.append(Problem(model, field_, str(have), str(want), fix))

    if config.name and config.name != model:
        add("name", config.name, f"folder name {model!r}", f'name: "{model}"')
    # by number, as Triton orders them (it serves the highest): as strings, "10" would sort before "2"
    # ASCII digits only: Python's isdigit() also takes "١" or "²", which Triton does not read as a version
    versions = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()),
                      key=lambda p: int(p.name))
    if not versions:
        add("layout", "no numbered version folder", "VERSION/model file", "put the model in 1/")
        return problems
    model_file = _model_file(config, versions[-1], model, add)
    if model_file is None:
        return problems
    info = artifact or read_artifact(model_file)
    platform = config.platform or config.backend
    if config.backend != "python" and PLATFORMS.get(model_file.suffix) != platform:
        add("platform", platform, PLATFORMS.get(model_file.suffix), f'platform: "{PLATFORMS.get(model_file.suffix)}"')
    _check_input(config, info, add)
    _check_output(config, info, folder, model, add)
    _check_batching(config, info, add)
    for warm in config.model_warmup:
        _check_warmup(config, warm, info, add)
    return problems


def _model_file(config, version: Path, model: str, add) -> Path | None:
    """The model file that ``config`` names in the newest ``version`` folder, or None after adding why not:
    for the python backend, its parameters.artifact beside gap-deploy's own model.py; otherwise the
    platform's default_model_filename."""
    python = config.backend == "python"
    platform = config.platform or config.backend
    if python:
        filename = config.parameters["artifact"].string_value if "artifact" in config.parameters else ""
        if not filename:
            add("parameters.artifact", "(missing)", "the artifact's file name", 'parameters { key: "artifact" ... }')
            return None
        if not _plain_file_name(filename, "parameters.artifact", model, add):
            return None
        if not (version / "model.py").is_file():
            add("layout", "no model.py", f"{version.name}/model.py", "write the repository with gap-triton")
        elif (version / "model.py").read_bytes() != PYTHON_MODEL.read_bytes():
            # the checker never runs a model.py: one that is not gap-deploy's is not checked, and says so
            add("model.py", "a model.py that is not gap-deploy's (not checked: it was not run)",
                "gap-deploy's exporter/triton_model.py", "write the repository with gap-triton, or check it yourself")
    else:
        if platform not in DEFAULT_FILENAME:
            add("platform", platform or "(none)", "onnxruntime_onnx or tensorrt_plan", "set platform")
            return None
        filename = config.default_model_filename or DEFAULT_FILENAME[platform]
        if not _plain_file_name(filename, "default_model_filename", model, add):
            return None
    model_file = version / filename
    if model_file.is_file():
        return model_file
    other = next((p for p in version.iterdir() if p.suffix in PLATFORMS and not python), None)
    if other is not None and PLATFORMS[other.suffix] != platform:
        add("platform", platform, f"a {PLATFORMS[other.suffix]} file ({other.name})",
            f'platform: "{PLATFORMS[other.suffix]}"')
    else:
        add("layout", f"no {version.name}/{filename}", "the model file", f"copy the artifact to {model_file}")
    return None


def _the_tensor(tensors, what: str, name: str, add):
    """The config's one ``what`` ("input" or "output") tensor, its name checked; None (after adding why) when the
    config declares another number of them."""
    if len(tensors) != 1:
        add(what, f"{len(tensors)} {what}s", f"1 {what}", f"declare exactly one {what}")
        return None
    if tensors[0].name != name:
        add(f"{what}.name", tensors[0].name, name, f'name: "{name}"')
    return tensors[0]


def _check_input(config, info: ArtifactSpec, add) -> None:
    pb = model_config_module()
    tensor = _the_tensor(config.input, "input", info.input_name, add)
    if tensor is None:
        return
    if tensor.data_type != pb.TYPE_FP32:
        add("input.data_type", pb.DataType.Name(tensor.data_type), "TYPE_FP32", "data_type: TYPE_FP32")
    dims = list(tensor.dims)
    want = config_dims(info)
    if config.max_batch_size == 0:  # without batching, the dims include the batch
        want = [info.static_batch or -1, *want]
    if dims != want:
        add("input.dims", dims, want, f"dims: {_list(want)}")


def _check_output(config, info: ArtifactSpec, folder: Path, model: str, add) -> None:
    tensor = _the_tensor(config.output, "output", info.output_name, add)
    if tensor is None:
        return
    if list(tensor.dims)[-1:] != [classes_of(info)]:
        add("output.dims", list(tensor.dims), [classes_of(info)], f"dims: [ {classes_of(info)} ]")
    if tensor.label_filename and _plain_file_name(tensor.label_filename, "output.label_filename", model, add):
        labels = folder / tensor.label_filename
        if not labels.is_file():
            add("output.label_filename", tensor.label_filename, "an existing file", "write labels.txt")
        else:
            count = len([line for line in _read_text(labels, "labels file").splitlines() if line.strip()])
            if count != classes_of(info):
                add("labels", f"{count} labels", f"{classes_of(info)} classes", "one label per class, in order")


def _check_batching(config, info: ArtifactSpec, add) -> None:
    if info.static_batch and config.max_batch_size > 0:
        # onnxruntime_backend src/onnxruntime_utils.cc, CompareDimsSupported: with max_batch_size > 0 "the first
        # dimension must be -1"; the backend refuses to load a model whose batch is fixed
        add("max_batch_size", config.max_batch_size,
            f"a fixed batch of {info.static_batch} (Triton's rule: max_batch_size > 0 needs a first dim of -1)",
            "max_batch_size: 0 with the full shape in dims, or export with gap-export --dynamic")
    elif info.profiles and config.max_batch_size > min(p.max[0] for p in info.profiles):
        limit = min(p.max[0] for p in info.profiles)
        add("max_batch_size", config.max_batch_size, f"at most {limit} (the smallest profile max batch)",
            f"max_batch_size: {limit}")
    if info.profiles:
        _check_profiles(config, info, add)
    if config.HasField("dynamic_batching") and config.max_batch_size:
        bad = [b for b in config.dynamic_batching.preferred_batch_size if b > config.max_batch_size]
        if bad:
            add("dynamic_batching.preferred_batch_size", bad, f"<= max_batch_size {config.max_batch_size}",
                "drop the larger sizes")


def _check_profiles(config, info: ArtifactSpec, add) -> None:
    """Every instance group of a multi-profile plan must hold every profile.

    model_config.proto (ModelInstanceGroup.profile): the profiles listed are those "available to this instance
    group", Triton "will choose the optimal profile based on the shapes of the input tensors" among them, and
    with none listed "the server will select the first optimization profile". The scheduler does not pick an
    instance by shape, so a group holding only some profiles refuses the shapes of the others
    (tensorrt_backend src/tensorrt_utils.cc, ValidateDimension: "model expected the shape of dimension ...
    to be between min and max")."""
    count = len(info.profiles)
    everything = [str(i) for i in range(count)]
    for index, group in enumerate(config.instance_group):
        listed = list(group.profile)
        bad = [p for p in listed if not (p.isascii() and p.isdigit()) or int(p) >= count]
        if bad:
            add("instance_group.profile", ", ".join(bad), f"0..{count - 1}", "name existing profiles")
            continue
        if count > 1 and sorted(set(listed or ["0"]), key=int) != everything:
            add(f"instance_group[{index}].profile", f"[{', '.join(listed) or 'none: profile 0 only'}]",
                f"{count} profiles, every one needed on every instance (Triton does not route requests to an "
                "instance by shape)", "one group with profile: " + _list(f'"{p}"' for p in everything))


def _warmup_shape(config, warm) -> list[int] | None:
    for value in warm.inputs.values():
        dims = [int(d) for d in value.dims]
        return [max(warm.batch_size, 1), *dims] if config.max_batch_size > 0 else dims
    return None


def _check_warmup(config, warm, info: ArtifactSpec, add) -> None:
    """A warm-up sample the model cannot run fails the instance's initialization, and with it the load (core
    src/backend_model_instance.cc, TritonModelInstance::WarmUp: "failed to run warmup sample")."""
    if warm.batch_size > max(config.max_batch_size, 1):
        add("model_warmup.batch_size", warm.batch_size, f"<= {max(config.max_batch_size, 1)}", "lower it")
    for key in warm.inputs:
        if key != info.input_name:
            add("model_warmup.inputs", key, info.input_name, f'key: "{info.input_name}"')
            return
    shape = _warmup_shape(config, warm)
    if shape is None:
        return
    if len(shape) != 4:
        add("model_warmup.dims", shape[1:] if config.max_batch_size > 0 else shape,
            "C, H, W (with max_batch_size 0: N, C, H, W)", "give the warm-up the input's dims")
        return
    if info.profiles:
        if not any(all(lo <= s <= hi for s, lo, hi in zip(shape, p.min, p.max)) for p in info.profiles):
            ranges = "; ".join(f"{format_shape(p.min)} to {format_shape(p.max)}" for p in info.profiles)
            add("model_warmup", f"shape {format_shape(shape)}", f"a shape inside a profile ({ranges}); a warm-up "
                "outside every profile fails the model's load", "warm up at a profile's opt shape")
    elif info.metadata.min_height and (shape[2] < info.metadata.min_height or shape[3] < info.metadata.min_width):
        add("model_warmup.dims", f"shape {format_shape(shape)}",
            f"at least {info.metadata.min_height}x{info.metadata.min_width}", "warm up larger")


def check_repository(repo: str | os.PathLike) -> tuple[list[str], list[Problem]]:
    """(model folders checked, problems) for a whole repository."""
    repo = Path(repo)
    if not repo.is_dir():
        raise ArtifactError(f"model repository {repo} is not a folder.")
    models = sorted(p for p in repo.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not models:
        raise ArtifactError(f"model repository {repo} holds no model folders.")
    problems: list[Problem] = []
    for folder in models:
        try:
            problems += check_model_folder(folder)
        except (ArtifactError, UsageError) as exc:
            problems.append(Problem(folder.name, "config.pbtxt", first_line(exc), "a readable, valid config",
                                    "correct it (Triton's model_config.proto), or write it with gap-triton"))
    return [m.name for m in models], problems
