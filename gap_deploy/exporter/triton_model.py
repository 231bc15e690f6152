"""Triton python-backend model that serves a gap-deploy artifact through the gap-deploy runtime.

gap-triton --backend python copies this file to REPO/NAME/VERSION/model.py. Any artifact the runtime
runs is served (ONNX on ONNX Runtime, TensorRT engines on the full or the lean runtime), with the
runtime's input checks: their messages reach the client as Triton errors. Requests of different image
sizes run as separate batches, never padded (padding would change every global average).
"""

import json
import os
import site
import sys

import numpy as np

# exists only inside tritonserver's python backend, which loads this file
import triton_python_backend_utils as pb_utils  # pyright: ignore[reportMissingImports]


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        paths = json.loads(params.get("sys_path", "[]"))
        for path in reversed(paths):  # the stub ignores PYTHONPATH
            if path not in sys.path:
                sys.path.insert(0, path)
        for path in paths:  # their .pth files too: an editable install of gap-deploy is found through one
            if os.path.isdir(path):
                site.addsitedir(path)
        from gap_deploy import runtime

        folder = os.path.join(args["model_repository"], args["model_version"])
        self.session = runtime.load(os.path.join(folder, params["artifact"]),
                                    params.get("backend") or None)
        self.input_name = config["input"][0]["name"]
        self.output_name = config["output"][0]["name"]
        self.errors = runtime.GapError

    def execute(self, requests):
        responses = [None] * len(requests)
        from gap_deploy.runtime.shapes import batches_by_shape

        arrays = [(index, _to_numpy(pb_utils.get_input_tensor_by_name(request, self.input_name)))
                  for index, request in enumerate(requests)]
        for items in batches_by_shape(arrays, lambda item: item[1].shape[1:]):
            batch = np.concatenate([images for _, images in items])
            try:
                logits = self.session.run(batch)
            except self.errors as exc:
                for index, _ in items:
                    responses[index] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc)))
                continue
            start = 0
            for index, images in items:
                part = logits[start:start + len(images)].astype(np.float32)
                start += len(images)
                responses[index] = pb_utils.InferenceResponse([_to_tensor(self.output_name, part)])
        return responses

    def finalize(self):
        self.session.close()


# The python backend's stub converts arrays with the numpy C API it was built against; with numpy 2 in the
# stub's interpreter that loses the data (measured: empty outputs). DLPack hands the buffer over instead.
def _to_numpy(tensor) -> np.ndarray:
    return np.from_dlpack(tensor).copy()


def _to_tensor(name: str, array: np.ndarray):
    return pb_utils.Tensor.from_dlpack(name, np.ascontiguousarray(array))
