"""A backend added the way the registry says (runtime.backends.table): this module and one line each in BACKENDS
and KINDS, nothing else. It runs ``.gapx`` files (an ONNX model under another suffix) through onnxruntime's
InferenceSession directly, so its logits can be held against ort-cpu's."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gap_deploy.runtime.backends.base import LoadOptions, Runner, TensorInfo


def probe(backend: str) -> tuple[bool, str]:
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return False, f"onnxruntime is missing ({exc})"
    return True, ""


def open_runner(path: Path, backend: str, options: LoadOptions) -> Runner:
    return GapxRunner(path, threads=options.threads)


class GapxRunner(Runner):
    backend = "gapx-cpu"

    def __init__(self, path: Path, *, threads: int | None = None):
        import onnxruntime as ort

        settings = ort.SessionOptions()
        if threads:
            settings.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(path), settings, providers=["CPUExecutionProvider"])
        first_in, first_out = self._session.get_inputs()[0], self._session.get_outputs()[0]
        self.inputs = (TensorInfo(first_in.name, np.dtype(np.float32),
                                  tuple(d if isinstance(d, int) else None for d in first_in.shape)),)
        self.outputs = (TensorInfo(first_out.name, np.dtype(np.float32),
                                   tuple(d if isinstance(d, int) else None for d in first_out.shape)),)
        self.props = dict(self._session.get_modelmeta().custom_metadata_map)

    def infer(self, array: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self.inputs[0].name: array})[0]
