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

from gap_deploy.runtime.artifact import ArtifactSpec, from_tensors
from gap_deploy.runtime.backends.base import TensorInfo
from gap_deploy.runtime.errors import ArtifactError, BackendUnavailableError, GapError, UsageError, first_line
from gap_deploy.runtime.metadata import ModelMetadata
from gap_deploy.runtime.waits import Deadline, shutdown

#: the longest one request (a config read, one inference) may take, whatever the server sends meanwhile
REQUEST_DEADLINE_S = 60.0


#: the most bytes one answer may hold: a config or an error is small; logits are rows x classes x 4 bytes
MAX_ANSWER_BYTES = 64 << 20


class _Http:
    """KServe v2 over HTTP(S) with the standard library's http.client, every answer bounded.

    Not tritonclient's HTTP client: its timeouts bound each read, not an answer (a server sending a byte at a
    time holds it for ever), and it inflates a gzip or deflate answer whole, asked for or not
    (tritonclient/http/_infer_result.py: ``gzip.decompress(response.read())``): 1 MB becomes 16 GB. Here every
    request has one deadline, enforced by closing the socket when it passes; answers are read up to
    MAX_ANSWER_BYTES (or what the request can need), and a compressed answer, which this client never asks
    for, is refused. The deadline is runtime.waits.Deadline, the one bounded wait.
    """

    def __init__(self, server: str, *, timeout_s: float, deadline_s: float):
        scheme, _, rest = server.rpartition("://")
        if scheme not in ("", "http", "https"):
            raise UsageError(f"--server {server}: scheme {scheme!r} is not http or https.",
                             hint="give HOST:PORT, http://HOST:PORT or https://HOST:PORT.")
        self.server, self.tls = server, scheme == "https"
        self.address = rest.rstrip("/")
        self.timeout_s, self.deadline_s = timeout_s, deadline_s

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                limit: int = MAX_ANSWER_BYTES, status_only: bool = False) -> tuple[int, dict, bytes]:
        """(status, headers, body); TimeoutError past the deadline, ValueError for an answer that breaks a bound.
        ``status_only``: the body is not read (a health check)."""
        import http.client

        kind = http.client.HTTPSConnection if self.tls else http.client.HTTPConnection
        conn = kind(self.address, timeout=min(self.timeout_s, self.deadline_s))
        deadline = Deadline(self.deadline_s, "complete answer")
        sockets: list = []  # held here: http.client drops its own reference once the answer is begun

        def unblock() -> None:
            for sock in sockets:
                shutdown(sock)

        try:
            with deadline.enforce(unblock):
                conn.connect()
                sockets.append(conn.sock)
                if deadline.expired:
                    raise deadline.error()
                conn.request(method, path, body=body, headers={"Accept-Encoding": "identity", **(headers or {})})
                response = conn.getresponse()
                if status_only:
                    return response.status, {}, b""
                encoding = (response.getheader("Content-Encoding") or "identity").strip().lower()
                if encoding != "identity":
                    raise ValueError(f"it sent a {encoding}-compressed answer, which this client never asks for")
                length = response.getheader("Content-Length")
                if length is not None and (not length.strip().isdigit() or int(length) > limit):
                    raise ValueError(f"it announced an answer of {length.strip()[:20]} bytes (at most {limit} are "
                                     "read)")
                chunks, size = [], 0
                while True:
                    chunk = response.read1(1 << 16)
                    if not chunk:
                        if deadline.expired:  # the cut ended the answer, not the server
                            raise deadline.error()
                        break
                    size += len(chunk)
                    if size > limit:
                        raise ValueError(f"its answer passed {limit} bytes")
                    chunks.append(chunk)
                return response.status, {k.lower(): v for k, v in response.getheaders()}, b"".join(chunks)
        except (OSError, http.client.HTTPException):
            if deadline.expired:
                raise deadline.error() from None
            raise
        finally:
            conn.close()

    def json(self, method: str, path: str, body: bytes | None = None):
        import json

        status, _, data = self.request(method, path, body)
        try:
            payload = json.loads(data) if data else {}
        except ValueError:
            raise ValueError(f"it answered {path} with HTTP {status} and no JSON") from None
        if status != 200:
            error = payload.get("error") if isinstance(payload, dict) else None
            raise ValueError(f"HTTP {status}: {str(error or payload)[:200]}")
        return payload


@dataclass
class RemoteModel:
    client: _Http
    name: str
    input_name: str
    output_name: str
    max_batch: int
    metadata: ModelMetadata
    latencies_ms: list[float] = field(default_factory=list)
    #: the served model as runtime.artifact describes it, from the config (input dims without the batch)
    spec: ArtifactSpec | None = None
    deadline_s: float = REQUEST_DEADLINE_S
    concurrency: int = 8


def connect(server: str, model: str, *, concurrency: int = 8, timeout_s: float = 10.0,
            deadline_s: float = REQUEST_DEADLINE_S) -> RemoteModel:
    """Reach ``server`` (HOST:PORT, http://HOST:PORT or https://HOST:PORT), find ``model`` and read its config;
    one clear error for each failure. Every request has an overall deadline of ``deadline_s``."""
    from urllib.parse import quote

    client = _Http(server, timeout_s=timeout_s, deadline_s=deadline_s)
    try:
        live, _, _ = client.request("GET", "/v2/health/live", status_only=True)
    except Exception as exc:
        raise BackendUnavailableError(f"cannot reach a Triton server at {server}: {first_line(exc)}",
                                      hint="check the address and that tritonserver runs (its HTTP port, "
                                           "8000 by default).") from None
    if live != 200:
        raise BackendUnavailableError(f"the Triton server at {server} is not live yet (HTTP {live}).",
                                      hint="wait and retry.")
    try:
        config = client.json("GET", f"/v2/models/{quote(model, safe='')}/config")
    except Exception as exc:
        if isinstance(exc, (TimeoutError, OSError)) or "compressed" in str(exc) or "bytes" in str(exc):
            raise BackendUnavailableError(f"the Triton server at {server} sent no complete config for '{model}': "
                                          f"{first_line(exc)}.", hint="check the server; a proxy in between?") from None
        try:
            index = client.json("POST", "/v2/repository/index", b"{}")
            known = [str(m.get("name")) for m in index if isinstance(m, dict)] if isinstance(index, list) else []
        except Exception:
            known = []
        raise UsageError(f"the Triton server at {server} has no ready model '{model}': {first_line(exc)}",
                         note=f"its repository holds: {', '.join(known) or '(nothing)'}",
                         hint="give --model one of those names.") from None
    try:
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        max_batch = int(config.get("max_batch_size", 0))
        names = str(config["input"][0]["name"]), str(config["output"][0]["name"])
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
    return RemoteModel(client, model, *names, max_batch or 1, meta, deadline_s=deadline_s, spec=spec,
                       concurrency=concurrency)


def _infer_one(remote: RemoteModel, batch: np.ndarray) -> np.ndarray:
    """One request with the binary tensor extension (KServe v2 as Triton implements it), checked: the logits
    (len(batch), classes) float32, or ValueError / TimeoutError / OSError saying what the server did."""
    import json
    from urllib.parse import quote

    data = np.ascontiguousarray(batch, dtype=np.float32).tobytes()
    header = json.dumps({"inputs": [{"name": remote.input_name, "shape": list(batch.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(data)}}],
                         "outputs": [{"name": remote.output_name, "parameters": {"binary_data": True}}]}).encode()
    classes = remote.spec.num_classes if remote.spec is not None else None
    limit = min(MAX_ANSWER_BYTES, (1 << 20) + len(batch) * 4 * classes) if classes else MAX_ANSWER_BYTES
    status, headers, body = remote.client.request(
        "POST", f"/v2/models/{quote(remote.name, safe='')}/infer", header + data,
        {"Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))}, limit)
    split = headers.get("inference-header-content-length")
    try:
        head_size = int(split) if split is not None else len(body)
        if not 0 <= head_size <= len(body):
            raise ValueError
        answer = json.loads(body[:head_size])
    except ValueError:
        raise ValueError(f"HTTP {status} with an answer that is not KServe v2 JSON") from None
    if status != 200 or not isinstance(answer, dict):
        error = answer.get("error") if isinstance(answer, dict) else answer
        raise ValueError(str(error)[:300] if error else f"HTTP {status}")
    outputs = [o for o in answer.get("outputs", []) if isinstance(o, dict) and o.get("name") == remote.output_name]
    if not outputs:
        raise ValueError(f"it answered without the output '{remote.output_name}'")
    out = outputs[0]
    dims = [int(d) for d in out.get("shape", [])]
    if out.get("datatype") != "FP32" or len(dims) != 2 or dims[0] < 0 or dims[1] < 0:
        raise ValueError(f"it answered {out.get('datatype')!r} of shape {tuple(dims)}, not FP32 (N, classes)")
    shape = (dims[0], dims[1])
    size = (out.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        raw = body[head_size:head_size + int(size)]
        if int(size) != shape[0] * shape[1] * 4 or len(raw) != int(size):
            raise ValueError(f"its binary output holds {len(raw)} bytes for shape {shape}")
        values: np.ndarray = np.frombuffer(raw, dtype="<f4").reshape(shape)
    else:
        values = np.asarray(out.get("data", []), dtype=np.float32)
        if values.size != shape[0] * shape[1]:
            raise ValueError(f"its output holds {values.size} values for shape {shape}")
        values = values.reshape(shape)
    if values.shape[0] != len(batch):
        raise ValueError(f"it answered {len(batch)} image(s) with shape {tuple(values.shape)}")
    if classes and values.shape[1] != classes:
        raise ValueError(f"it answered {values.shape[1]} classes; the model's config has {classes}")
    if not np.isfinite(values).all():
        raise ValueError("it answered NaN or infinite logits")
    return values


def infer(remote: RemoteModel, batches: Sequence[np.ndarray]) -> list[np.ndarray | GapError]:
    """Send every batch as one request, ``remote.concurrency`` at a time; the logits per batch, or what went
    wrong with it (each within the request deadline)."""
    from concurrent.futures import ThreadPoolExecutor

    def one(batch):
        started = time.perf_counter()
        try:
            return _infer_one(remote, batch)
        except Exception as exc:  # the server's own message (the runtime's, for the python backend), or ours
            return GapError(f"Triton refused the request: {first_line(exc)}")
        finally:
            remote.latencies_ms.append((time.perf_counter() - started) * 1e3)

    if not batches:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(remote.concurrency, len(batches)))) as pool:
        return list(pool.map(one, batches))


def classify_remote(remote: RemoteModel, paths: Sequence[Path], *, topk: int = 5, imgsz=None,
                    progress: Callable[[int], None] | None = None, decode: str = "exact") -> dict:
    """gap-run's report (results, errors) for ``paths``, classified by the Triton server.

    Streams as gap-run does locally (runtime.stream): images decode on worker threads into batches of one size
    (at most the config's max_batch_size), ``remote.concurrency`` requests go out together, and no more than
    the stream's window of decoded images is held, however many files there are."""
    from gap_deploy.runtime.classify import top_classes
    from gap_deploy.runtime.stream import stream_batches

    meta = remote.metadata
    if remote.spec is None:
        raise UsageError(f"{remote.name} on the server has no input spec to prepare images for.")
    channels = remote.spec.channels
    contract = meta.preprocessing(imgsz, channels)  # the contract the repository's config carries (gap.preprocess)
    paths = list(paths)
    results, errors, waiting = [], [], []

    def load(path):
        return contract.load(path, channels, decode=decode)

    def send() -> None:
        outputs = infer(remote, [np.stack(batch.images) for batch in waiting])
        for batch, output in zip(waiting, outputs):
            if isinstance(output, GapError):
                errors.extend({"file": str(paths[i]), "error": str(output)} for i in batch.indices)
            else:
                results.extend({"file": str(paths[i]), "size": [int(chw.shape[1]), int(chw.shape[2])],
                                "top": top_classes(row, meta, topk)}
                               for i, chw, row in zip(batch.indices, batch.images, output))
            if progress:
                progress(len(batch.indices))
        waiting.clear()

    for batch in stream_batches(paths, load, batch_size=remote.max_batch):
        if batch.error is not None:
            errors.append({"file": str(paths[batch.indices[0]]), "error": batch.error})
            if progress:
                progress(1)
            continue
        waiting.append(batch)
        if len(waiting) >= remote.concurrency:
            send()
    if waiting:
        send()
    order = {str(p): i for i, p in enumerate(paths)}
    results.sort(key=lambda r: order[r["file"]])
    errors.sort(key=lambda r: order.get(r["file"], -1))
    return {"artifact": f"triton:{remote.name}", "backend": "triton", "results": results, "errors": errors}
