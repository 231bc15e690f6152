"""Every fact about a backend, in one table: code looks a backend up here instead of testing its name.

    backend     runs               device  tolerances  FP32 in TF32           builds at start  cold start timed
    ort-cpu     .onnx/.ort         cpu     cpu         no                     no               yes
    ort-cuda    .onnx/.ort         cuda    gpu         no (use_tf32=0)        no               yes
    ort-trt     .onnx/.ort         cuda    gpu         yes (no TF32 switch)   yes (minutes)    yes
    trt         .plan/.engine      cuda    gpu         no (gap-build clears)  no               no
    ov-cpu      .xml (OpenVINO)    cpu     cpu         no (f32 hint)          no               yes
    ncnn-cpu    .param (ncnn)      cpu     cpu         no (FP16 options off)  no               yes
    litert-cpu  .tflite (LiteRT)   cpu     cpu         no                     no               yes
    et-xnnpack  .pte (ExecuTorch)  cpu     cpu         no                     no               yes

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


BACKENDS: dict[str, BackendFacts] = {f.name: f for f in (
    BackendFacts("ort-cpu", "onnx", "cpu", "CPUExecutionProvider"),
    BackendFacts("ort-cuda", "onnx", "cuda", "CUDAExecutionProvider"),
    BackendFacts("ort-trt", "onnx", "cuda", "TensorrtExecutionProvider", fp32_is_tf32=True, builds_at_start=True),
    BackendFacts("trt", "engine", "cuda", None, cold_start_measured=False),
    BackendFacts("ov-cpu", "openvino", "cpu", None),
    BackendFacts("ncnn-cpu", "ncnn", "cpu", None),
    BackendFacts("litert-cpu", "litert", "cpu", None),
    BackendFacts("et-xnnpack", "executorch", "cpu", None),
)}
ONNX_BACKENDS = tuple(n for n, f in BACKENDS.items() if f.artifact == "onnx")
ENGINE_BACKENDS = tuple(n for n, f in BACKENDS.items() if f.artifact == "engine")
#: an artifact's file suffix -> its kind (anything else is ONNX Runtime's)
ARTIFACT_SUFFIXES = {".plan": "engine", ".engine": "engine", ".trt": "engine", ".xml": "openvino",
                     ".param": "ncnn", ".tflite": "litert", ".pte": "executorch"}
#: the kinds whose files carry no metadata: opened from their gap-pack bundle
BUNDLE_ONLY_KINDS = ("ncnn", "litert", "executorch")


def backends_for(kind: str) -> tuple[str, ...]:
    """The backends that run an artifact of ``kind`` (the first is its default, except ONNX's)."""
    return tuple(n for n, f in BACKENDS.items() if f.artifact == kind)


def artifact_kind(path) -> str:
    """"engine", "openvino", "ncnn", "litert", "executorch" or "onnx", from a file's suffix."""
    from pathlib import Path

    return ARTIFACT_SUFFIXES.get(Path(path).suffix.lower(), "onnx")


def facts(backend: str) -> BackendFacts:
    """The facts of ``backend``; UsageError naming the backends for an unknown name."""
    try:
        return BACKENDS[backend]
    except (KeyError, TypeError):
        raise UsageError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.") from None
