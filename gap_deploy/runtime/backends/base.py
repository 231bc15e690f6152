"""The protocol every backend implements, and what the Session knows about a model's tensors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output as a backend reports it. ``shape`` holds ints for fixed dims and, for symbolic
    ones, their name (str) or None. runtime.artifact.from_tensors reads these into the ArtifactSpec.

    ``profiles`` (TensorRT only) lists each optimization profile's (min, opt, max) shapes.
    """

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]
    profiles: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class LoadOptions:
    """What ``runtime.load`` was asked, for a backend module's ``open_runner``: each backend takes what applies to
    it. ``contract`` is the (metadata, tensor names) of the gap-pack bundle the model came from (None outside
    one); ``signed``, whether its signature verified (a verified bundle needs no first load in a child)."""

    threads: int | None = None
    trust_engine: bool = False
    provider_options: dict | None = None
    cache_dir: Path | None = None
    trt_profile: str | None = None
    allow_cpu_fallback: bool = False
    verify_key: object = None
    check_description: bool = True
    contract: tuple | None = None
    signed: bool = False
    #: runtime.session's check that the backend works here (naming those that do), where the backend's kind
    #: asks for one (runtime.backends.table.ArtifactKind.check_first); the module calls it where it applies
    check_works: Callable[[str], None] | None = None
    #: runtime.artifact.describe of the file, on demand (runtime.artifact sits above the backends)
    describe: Callable[[], object] | None = None


class Runner:
    """One backend instance. ``infer`` gets an array that the Session has already validated.

    Subclasses set ``backend`` (the name users pass to ``runtime.load``), ``inputs``, ``outputs`` and
    ``props`` (the model's metadata map), and must be safe to call from several threads. Runners that
    time the GPU's phases themselves (TensorRT) set ``gpu_timing`` and implement ``infer_timed``,
    ``timed_loop`` (benchmarks, work queued as trtexec keeps it) and ``check_cuda_graph``; ``device`` and
    ``versions`` describe where the runner really executes.
    """

    backend: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    props: dict[str, str]
    #: True when ``infer_timed`` reports H2D / compute / D2H / enqueue from CUDA events
    gpu_timing: bool = False
    #: ONNX Runtime GPU backends: the nodes onnxruntime runs on the CPU on purpose (shape arithmetic), as
    #: runtime.backends.placement.NodePlacement; empty elsewhere
    cpu_nodes: tuple = ()

    def infer(self, array: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def infer_timed(self, array: np.ndarray, *, cuda_graph: bool = False, transfers: bool = True):
        """(output, GpuTiming) for runners with ``gpu_timing``."""
        raise NotImplementedError(f"backend '{self.backend}' has no GPU phase timing")

    def timed_loop(self, array: np.ndarray, *, cuda_graph: bool = False, transfers: bool = True):
        """A context manager yielding step()/finish() for benchmarks (``gpu_timing`` runners)."""
        raise NotImplementedError(f"backend '{self.backend}' has no GPU phase timing")

    def check_cuda_graph(self, array: np.ndarray) -> float | None:
        """Max abs difference between a CUDA-graph replay and a normal execution (``gpu_timing`` runners); None
        when no graph could be captured."""
        raise NotImplementedError(f"backend '{self.backend}' has no CUDA graphs")

    @property
    def device(self) -> dict:
        """Where this runner executes (GPU name and index, CPU threads, ...)."""
        return {}

    @property
    def versions(self) -> dict[str, str]:
        """The versions of the libraries this runner executes with."""
        return {}

    @property
    def provider_options(self) -> dict[str, dict[str, str]]:
        """ONNX Runtime runners: the options each execution provider really runs with."""
        return {}

    def close(self) -> None:
        """Release backend resources; the runner must not be used afterwards."""
