"""Every fact about a backend, in one table: code looks a backend up here instead of testing its name.

This is the registry. A backend is one line of ``BACKENDS`` (its facts and install hint) whose artifact kind is
one line of ``KINDS`` (the file suffixes, the words for it, and the module that probes and opens it). That
module (``gap_deploy.runtime.backends.<name>``) provides ``probe(backend) -> (works, why)`` and
``open_runner(path, backend, options) -> Runner``. Adding a backend is that module and a line here (a second
line for a new kind of artifact); runtime.session, runtime.artifact and the CLIs read everything else from here.

    backend     runs               device  tolerances  FP32 in TF32           builds at start  cold start timed
    ort-cpu     .onnx/.ort         cpu     cpu         no                     no               yes
    ort-plain   .onnx/.ort         cpu     cpu         no                     no               yes
    ort-cuda    .onnx/.ort         cuda    gpu         no (use_tf32=0)        no               yes
    ort-trt     .onnx/.ort         cuda    gpu         yes (no TF32 switch)   yes (minutes)    yes
    trt         .plan/.engine      cuda    gpu         no (gap-build clears)  no               no
    ov-cpu      .xml (OpenVINO)    cpu     cpu         no (f32 hint)          no               yes
    ncnn-cpu    .param (ncnn)      cpu     cpu         no (FP16 options off)  no               yes
    litert-cpu  .tflite (LiteRT)   cpu     cpu         no                     no               yes
    et-xnnpack  .pte (ExecuTorch)  cpu     cpu         no                     no               yes

ort-plain is ONNX Runtime's CPU provider in a session with onnxruntime's own defaults, as an app that embeds the
.onnx (or Triton's onnxruntime backend) makes it; ort-cpu's sessions turn off what slows INT8 models made before
the pool order fix (runtime.backends.onnxrt.DISABLED_OPTIMIZERS). gap-tune times an INT8 ONNX on both.

ncnn, LiteRT and ExecuTorch models are opened from their gap-pack bundle (model.json carries their metadata).

A GPU backend's Ray worker reserves one GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from gap_deploy.runtime.errors import UsageError


@dataclass(frozen=True)
class BackendFacts:
    name: str
    #: "onnx" (ONNX Runtime: .onnx, .ort, bundles), "engine" (TensorRT plans), "openvino" (OpenVINO IR .xml),
    #: "ncnn" (.param + .bin), "litert" (.tflite) or "executorch" (.pte)
    artifact: str
    #: where the model computes: "cpu" or "cuda" (also the device a PyTorch reference runs on beside it)
    device: str
    #: the onnxruntime execution provider that must run the model; None for TensorRT itself
    provider: str | None
    #: FP32 artifacts compute in TF32 here whatever is asked (judged with the TF32 tolerance)
    fp32_is_tf32: bool = False
    #: the session builds an engine while it starts (never a default backend)
    builds_at_start: bool = False
    #: session creation is a meaningful cold start, timed by gap-bench
    cold_start_measured: bool = True
    #: what to install when the backend does not work here
    install_hint: str = "see docs/install.md."
    #: the session keeps onnxruntime's defaults (none of gap-deploy's session options): how an app's own
    #: InferenceSession runs the model; timed beside the default backend, never chosen by default
    plain_session: bool = False

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    @property
    def tolerances(self) -> str:
        """Which tolerance table artifacts on this backend are judged with (runtime.parity)."""
        return "gpu" if self.gpu else "cpu"

    @property
    def ray_gpus(self) -> int:
        """GPUs one Ray worker running this backend reserves."""
        return 1 if self.gpu else 0


@dataclass(frozen=True)
class ArtifactKind:
    """A kind of artifact: the suffixes of its files, how a message names it, and the module whose ``probe`` and
    ``open_runner`` serve every backend of this kind."""

    name: str
    #: how a message names one ("an ONNX model")
    words: str
    #: the file suffixes of this kind, lower case (ONNX takes every suffix no other kind claims)
    suffixes: tuple[str, ...]
    #: the module with ``probe`` and ``open_runner``: a name under gap_deploy.runtime.backends, or a dotted path
    module: str
    #: its files carry no metadata: opened only from their gap-pack bundle (model.json describes them)
    bundle_only: bool = False
    #: runtime.load checks that the backend works before opening: "always", or "asked" (only when the backend
    #: was named; the default is chosen among those that work), or "never" (the runner says why itself)
    check_first: str = "never"
    #: the suffixes of the runnable files a gap-pack bundle of this kind holds
    bundle_suffixes: tuple[str, ...] = ()
    #: the file read beside the runnable one (its weights), by suffix: checked against model.json too
    companion: str | None = None


_ORT_GPU_HINT = "install onnxruntime-gpu with matching CUDA/cuDNN for ort-cuda, and TensorRT for ort-trt."

BACKENDS: dict[str, BackendFacts] = {f.name: f for f in (
    BackendFacts("ort-cpu", "onnx", "cpu", "CPUExecutionProvider"),
    BackendFacts("ort-plain", "onnx", "cpu", "CPUExecutionProvider", plain_session=True),
    BackendFacts("ort-cuda", "onnx", "cuda", "CUDAExecutionProvider", install_hint=_ORT_GPU_HINT),
    BackendFacts("ort-trt", "onnx", "cuda", "TensorrtExecutionProvider", fp32_is_tf32=True, builds_at_start=True,
                 install_hint=_ORT_GPU_HINT),
    BackendFacts("trt", "engine", "cuda", None, cold_start_measured=False),
    BackendFacts("ov-cpu", "openvino", "cpu", None),
    BackendFacts("ncnn-cpu", "ncnn", "cpu", None, install_hint="pip install 'gap-deploy[ncnn-run]'"),
    BackendFacts("litert-cpu", "litert", "cpu", None, install_hint="pip install 'gap-deploy[litert-run]'"),
    BackendFacts("et-xnnpack", "executorch", "cpu", None,
                 install_hint="pip install 'gap-deploy[executorch]' -c constraints/cpu.txt"),
)}
KINDS: dict[str, ArtifactKind] = {k.name: k for k in (
    ArtifactKind("onnx", "an ONNX model", (".onnx", ".ort"), "onnxrt", check_first="asked", bundle_suffixes=(".ort",)),
    ArtifactKind("engine", "a TensorRT engine", (".plan", ".engine", ".trt"), "trt"),
    ArtifactKind("openvino", "an OpenVINO model", (".xml",), "openvino", bundle_suffixes=(".xml",), companion=".bin"),
    ArtifactKind("ncnn", "an ncnn model", (".param",), "edge", bundle_only=True, check_first="always",
                 bundle_suffixes=(".param",), companion=".bin"),
    ArtifactKind("litert", "a LiteRT model", (".tflite",), "edge", bundle_only=True, check_first="always",
                 bundle_suffixes=(".tflite",)),
    ArtifactKind("executorch", "an ExecuTorch program", (".pte",), "edge", bundle_only=True, check_first="always",
                 bundle_suffixes=(".pte",)),
)}
ONNX_BACKENDS = tuple(n for n, f in BACKENDS.items() if f.artifact == "onnx")
#: the suffixes of TensorRT plans
ENGINE_SUFFIXES = KINDS["engine"].suffixes
#: the kinds whose files carry no metadata: opened from their gap-pack bundle
BUNDLE_ONLY_KINDS = tuple(k.name for k in KINDS.values() if k.bundle_only)


def backends_for(kind: str) -> tuple[str, ...]:
    """The backends that run an artifact of ``kind`` (the first is its default, except ONNX's)."""
    return tuple(n for n, f in BACKENDS.items() if f.artifact == kind)


def artifact_kind(path) -> str:
    """"engine", "openvino", "ncnn", "litert", "executorch" or "onnx", from a file's suffix."""
    from pathlib import Path

    suffix = Path(path).suffix.lower()  # the kinds' own suffixes; anything no other kind claims is ONNX Runtime's
    return next((k.name for k in KINDS.values() if k.name != "onnx" and suffix in k.suffixes), "onnx")


def kind_of_backend(backend: str) -> ArtifactKind:
    return KINDS[facts(backend).artifact]


def backend_module(backend: str):
    """The module that probes and opens ``backend`` (imported when first asked; its heavy library later still)."""
    import importlib

    module = kind_of_backend(backend).module
    return importlib.import_module(module if "." in module else f"gap_deploy.runtime.backends.{module}")


def facts(backend: str) -> BackendFacts:
    """The facts of ``backend``; UsageError naming the backends for an unknown name."""
    try:
        return BACKENDS[backend]
    except (KeyError, TypeError):
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.") from None
