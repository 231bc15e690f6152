"""ONNX Runtime backends: ort-cpu, ort-cuda, ort-trt."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from runtime._lazy import require
from runtime.backends.base import Runner, TensorInfo
from runtime.errors import ArtifactError, BackendUnavailableError, first_line

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}


def _ort():
    return require("onnxruntime", purpose="to run .onnx models")


@functools.cache
def provider_works(backend: str) -> tuple[bool, str]:
    """Whether ``backend`` really runs a model here, and why not.

    onnxruntime-gpu lists the CUDA and TensorRT providers even when their libraries are missing and
    then quietly runs on the CPU, so a tiny model is loaded and the session's real providers read.
    """
    try:
        ort = _ort()
    except BackendUnavailableError as exc:
        return False, first_line(exc)
    provider = PROVIDERS[backend]
    if provider not in ort.get_available_providers():
        return False, f"this onnxruntime build has no {provider}"
    if backend == "ort-cpu":
        return True, ""
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(probe.SerializeToString(), options,
                                       providers=[provider, "CPUExecutionProvider"])
    except Exception as exc:
        return False, f"{provider} failed to start: {first_line(exc)}"
    if provider not in session.get_providers():
        return False, f"{provider} is listed but its libraries (CUDA/cuDNN/TensorRT) could not be loaded"
    return True, ""


class OrtRunner(Runner):
    def __init__(self, path: Path, backend: str = "ort-cpu", *, threads: int | None = None):
        ort = _ort()
        works, why = provider_works(backend)
        if not works:
            raise BackendUnavailableError(f"backend '{backend}' is not available: {why}.")
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = threads
        providers = [PROVIDERS[backend]] + (["CPUExecutionProvider"] if backend != "ort-cpu" else [])
        try:
            self._session = ort.InferenceSession(str(path), options, providers=providers)
        except Exception as exc:
            raise ArtifactError(f"cannot read ONNX model {path}: {first_line(exc)}",
                                hint="re-export the model with gap-export.") from None
        if PROVIDERS[backend] not in self._session.get_providers():  # never fall back silently
            raise BackendUnavailableError(f"backend '{backend}' did not start for {path}; "
                                          f"the session runs on {self._session.get_providers()} only.")
        self.backend = backend
        self.inputs = tuple(self._info(i) for i in self._session.get_inputs())
        self.outputs = tuple(self._info(o) for o in self._session.get_outputs())
        self.props = dict(self._session.get_modelmeta().custom_metadata_map)
        self._in_name, self._out_names = self.inputs[0].name, [self.outputs[0].name]
        self.session_options = options

    @staticmethod
    def _info(arg) -> TensorInfo:
        shape = tuple(d if isinstance(d, int) else (d or "?") for d in arg.shape)
        return TensorInfo(arg.name, np.dtype(_DTYPES.get(arg.type, np.float32)), shape)

    def infer(self, array: np.ndarray) -> np.ndarray:
        return self._session.run(self._out_names, {self._in_name: array})[0]

    @property
    def device(self) -> dict:
        threads = self.session_options.intra_op_num_threads
        return {"ort_providers": self._session.get_providers(),
                "ort_intra_op_threads": threads or "default (one per core)"}

    @property
    def versions(self) -> dict[str, str]:
        return {"onnxruntime": _ort().__version__}

    @property
    def ort_session(self):
        """The underlying ``onnxruntime.InferenceSession`` (for benchmarks against a bare loop)."""
        return self._session

    def close(self) -> None:
        self._session = None
