"""gap-run --server: classify image files through a Triton Inference Server (HTTP), as gap-run does locally.

The model's normalization, minimum size and class names come from the gap.* parameters that gap-triton
writes into config.pbtxt, so no copy of the model is needed. Images of one size go in one request (split
at the model's max_batch_size); requests run concurrently. Different sizes are never padded into one
request: Triton's dynamic batcher only batches equal shapes, and padding would change every average.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gap_deploy.runtime._lazy import require
from gap_deploy.runtime.artifact import ArtifactSpec, from_tensors
from gap_deploy.runtime.backends.base import TensorInfo
from gap_deploy.runtime.errors import ArtifactError, BackendUnavailableError, GapError, UsageError, first_line
from gap_deploy.runtime.metadata import ModelMetadata
from gap_deploy.runtime.shapes import batches_by_shape

#: the longest one request (a config read, one inference) may take, whatever the server sends meanwhile
REQUEST_DEADLINE_S = 60.0


@dataclass
class RemoteModel:
    client: object
    name: str
    input_name: str
    output_name: str
    max_batch: int
    metadata: ModelMetadata
    latencies_ms: list[float] = field(default_factory=list)
    #: the served model as runtime.artifact describes it, from the config (input dims without the batch)
    spec: ArtifactSpec | None = None
    deadline_s: float = REQUEST_DEADLINE_S


def _deadline(seconds: float):
    """A bound on a whole call of tritonclient's (gevent-based) HTTP client, not only on each read: a server
    that answers a byte at a time cannot hold it longer."""
    import gevent

    return gevent.Timeout(seconds, TimeoutError(f"no complete answer within {seconds:g} s"))


def connect(server: str, model: str, *, concurrency: int = 8, timeout_s: float = 10.0,
            deadline_s: float = REQUEST_DEADLINE_S) -> RemoteModel:
    """Reach ``server`` (HOST:PORT, http://HOST:PORT or https://HOST:PORT), find ``model`` and read its config;
    one clear error for each failure. Every request has an overall deadline of ``deadline_s``."""
    http = require("tritonclient.http", purpose="for --server", hint="pip install 'gap-deploy[triton]'")
    scheme, _, url = server.rpartition("://")
    if scheme not in ("", "http", "https"):
        raise UsageError(f"--server {server}: scheme {scheme!r} is not http or https.",
                         hint="give HOST:PORT, http://HOST:PORT or https://HOST:PORT.")
    try:
        client = http.InferenceServerClient(url=url, concurrency=concurrency, connection_timeout=timeout_s,
                                            network_timeout=max(timeout_s, 60.0), ssl=scheme == "https")
        with _deadline(deadline_s):
            live = client.is_server_live()
    except Exception as exc:
        raise BackendUnavailableError(f"cannot reach a Triton server at {server}: {first_line(exc)}",
                                      hint="check the address and that tritonserver runs (its HTTP port, "
                                           "8000 by default).") from None
    if not live:
        raise BackendUnavailableError(f"the Triton server at {server} is not live yet.", hint="wait and retry.")
    try:
        with _deadline(deadline_s):
            config = client.get_model_config(model)
    except Exception as exc:
        if isinstance(exc, TimeoutError):
            raise BackendUnavailableError(f"the Triton server at {server} sent no complete config for '{model}': "
                                          f"{first_line(exc)}.", hint="check the server; a proxy in between?") from None
        try:
            with _deadline(deadline_s):
                known = [m["name"] for m in client.get_model_repository_index()]
        except Exception:
            known = []
        raise UsageError(f"the Triton server at {server} has no ready model '{model}': {first_line(exc)}",
                         note=f"its repository holds: {', '.join(known) or '(nothing)'}",
                         hint="give --model one of those names.") from None
    try:
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        max_batch = int(config.get("max_batch_size", 0))
        names = config["input"][0]["name"], config["output"][0]["name"]
        batch = (None,) if max_batch > 0 else ()  # with batching, Triton's dims leave the batch out
        in_shape = (*batch, *(int(d) for d in config["input"][0].get("dims", [])))
        out_shape = (*batch, *(int(d) for d in config["output"][0].get("dims", [])))
        spec = from_tensors([TensorInfo(names[0], np.dtype(np.float32), in_shape)],
                            [TensorInfo(names[1], np.dtype(np.float32), out_shape)], params)
        meta = spec.metadata
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ArtifactError(f"the Triton server at {server} sent a config for '{model}' that cannot be read: "
                            f"{type(exc).__name__} {first_line(exc)}.") from None
    if max_batch < 0:
        raise ArtifactError(f"the config of '{model}' at {server} has max_batch_size {max_batch}; it must be 0 "
                            "(no batching) or more.", hint="fix the model's config.pbtxt (gap-triton writes it).")
    return RemoteModel(client, model, *names, max_batch or 1, meta, deadline_s=deadline_s, spec=spec)


def infer(remote: RemoteModel, batches: Sequence[np.ndarray]) -> list[np.ndarray | GapError]:
    """Send every batch as one concurrent request; the logits per batch, or the server's error."""
    http = require("tritonclient.http", purpose="for --server")
    pending = []
    for batch in batches:
        tensor = http.InferInput(remote.input_name, list(batch.shape), "FP32")
        tensor.set_data_from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        pending.append((time.perf_counter(), remote.client.async_infer(
            remote.name, [tensor], outputs=[http.InferRequestedOutput(remote.output_name)])))
    results: list[np.ndarray | GapError] = []
    for batch, (started, request) in zip(batches, pending):
        try:
            left = max(remote.deadline_s - (time.perf_counter() - started), 0.001)
            with _deadline(left):
                result = request.get_result(block=True, timeout=left)
                output = result.as_numpy(remote.output_name)
            if output is None or output.ndim != 2 or output.shape[0] != len(batch):
                got = "no output" if output is None else f"shape {tuple(output.shape)}"
                raise ValueError(f"it answered {len(batch)} image(s) with {got}")
            results.append(output)
        except Exception as exc:  # InferenceServerException: the server's own message (the runtime's, for python)
            results.append(GapError(f"Triton refused the request: {first_line(exc)}"))
        remote.latencies_ms.append((time.perf_counter() - started) * 1e3)
    return results


def classify_remote(remote: RemoteModel, paths: Sequence[Path], *, topk: int = 5, imgsz=None,
                    progress: Callable[[int], None] | None = None) -> dict:
    """gap-run's report (results, errors) for ``paths``, classified by the Triton server."""
    from gap_deploy.runtime.classify import top_classes
    from gap_deploy.runtime.images import load_image, normalize

    meta = remote.metadata
    channels = remote.spec.channels
    loaded: list[tuple[Path, np.ndarray]] = []
    errors = []
    for path in paths:
        try:
            loaded.append((path, normalize(load_image(path, channels, imgsz), meta)))
        except ArtifactError as exc:
            errors.append({"file": str(path), "error": first_line(exc)})
        if progress:
            progress(1)
    chunks = batches_by_shape(loaded, lambda item: item[1].shape, remote.max_batch)
    outputs = infer(remote, [np.stack([chw for _, chw in chunk]) for chunk in chunks])
    results = []
    for chunk, output in zip(chunks, outputs):
        if isinstance(output, GapError):
            errors += [{"file": str(path), "error": str(output)} for path, _ in chunk]
            continue
        for (path, chw), row in zip(chunk, output):
            results.append({"file": str(path), "size": [int(chw.shape[1]), int(chw.shape[2])],
                            "top": top_classes(row, meta, topk)})
    order = {str(p): i for i, p in enumerate(paths)}
    results.sort(key=lambda r: order[r["file"]])
    return {"artifact": f"triton:{remote.name}", "backend": "triton", "results": results, "errors": errors}
