"""A fake KServe v2 HTTP server on 127.0.0.1 that lies in every way a hostile or broken Triton server can:
for the client tests and the adversarial suite. ``serve()`` starts it on a free port and stops it (bounded)."""

from __future__ import annotations

import contextlib
import functools
import gzip
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

CONFIG = {"name": "m", "max_batch_size": 8,
          "input": [{"name": "images", "data_type": "TYPE_FP32", "dims": [3, -1, -1]}],
          "output": [{"name": "logits", "data_type": "TYPE_FP32", "dims": [10]}], "parameters": {}}


class Fake(BaseHTTPRequestHandler):
    behaviour: dict = {}

    def log_message(self, *args):
        pass

    def _json(self, payload, code=200):
        body = json.dumps(payload).encode()
        if self.behaviour.get("slow") and self.path.endswith("/config"):
            body += b" " * 100  # long enough to outlast the deadline a byte at a time
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.behaviour.get("slow"):  # a byte at a time: each read is quick, the whole answer never is
            try:
                for byte in body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up, as it must
        else:
            self.wfile.write(body)

    def do_GET(self):
        if self.path.endswith("/health/live"):
            self._json({}) if not self.behaviour.get("slow") else self._json({"live": True, "pad": "x" * 200})
        elif self.path.endswith("/config") and "/models/m/" not in self.path:  # only model "m" is served
            self._json({"error": "Request for unknown model"}, 400)
        elif self.path.endswith("/config"):
            config = self.behaviour.get("raw_config")
            self._json(config if config is not None else {**CONFIG, **self.behaviour.get("config", {})})
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        if self.path.endswith("/repository/index"):
            return self._json([{"name": "m", "state": "READY"}])
        rows = self.behaviour.get("rows", 1)
        lie = self.behaviour.get("lie")
        if lie is not None:
            return LIES[lie](self, rows)
        self._json({"model_name": "m", "outputs": [{"name": "logits", "datatype": "FP32", "shape": [rows, 10],
                                                     "data": [0.5] * (rows * 10)}]})

    def raw(self, body: bytes, code: int = 200, headers: dict | None = None, length: bool = True):
        self.send_response(code)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


def _endless(handler, rows):
    """No length, and bytes until the client hangs up."""
    handler.send_response(200)
    handler.send_header("Connection", "close")
    handler.end_headers()
    try:
        for _ in range(10_000):  # 640 MB at most, far more than the client reads
            handler.wfile.write(b"0" * 65536)
    except (BrokenPipeError, ConnectionResetError):
        pass


def _binary(handler, rows, *, datatype="FP32", size=None, shape=None, values=None):
    data = np.asarray(values if values is not None else np.full((rows, 10), 0.5), "<f4").tobytes()
    head = json.dumps({"outputs": [{"name": "logits", "datatype": datatype, "shape": shape or [rows, 10],
                                    "parameters": {"binary_data_size": size if size is not None else len(data)}}]})
    handler.raw(head.encode() + data, headers={"Inference-Header-Content-Length": str(len(head))})


@functools.cache
def gzip_bomb(inflated: int = 256 << 20) -> bytes:
    """A gzip stream of ``inflated`` zero bytes (about 250 kB), made a chunk at a time so the fake never holds the
    inflated bytes itself: a client that inflates it allocates them."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb") as stream:
        block = b"\0" * (1 << 20)
        for _ in range(inflated >> 20):
            stream.write(block)
    return out.getvalue()


LIES = {
    "gzip": lambda h, rows: h.raw(gzip_bomb(), headers={"Content-Encoding": "gzip"}),
    "deflate": lambda h, rows: h.raw(__import__("zlib").compress(b"\0" * (1 << 20)),
                                     headers={"Content-Encoding": "deflate"}),
    "huge-length": lambda h, rows: h.raw(b"{}", headers={"Content-Length": str(10 ** 12)}, length=False),
    "bad-length": lambda h, rows: h.raw(b"{}", headers={"Content-Length": "-5"}, length=False),
    "endless": _endless,
    "not-json": lambda h, rows: h.raw(b"<html>proxy error</html>"),
    "error-500": lambda h, rows: h.raw(json.dumps({"error": "model crashed on input"}).encode(), code=500),
    "no-output": lambda h, rows: h.raw(json.dumps({"outputs": []}).encode()),
    "other-output": lambda h, rows: h.raw(json.dumps({"outputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 10],
                                                                    "data": [0] * rows * 10}]}).encode()),
    "int64": lambda h, rows: _binary(h, rows, datatype="INT64"),
    "short-binary": lambda h, rows: _binary(h, rows, size=4 * rows * 10 + 400),
    "split-beyond-body": lambda h, rows: h.raw(b"{}", headers={"Inference-Header-Content-Length": "999999"}),
    "rank-3": lambda h, rows: _binary(h, rows, shape=[rows, 10, 1]),
    "wrong-classes": lambda h, rows: _binary(h, rows, shape=[rows, 5], values=np.zeros((rows, 5))),
    "nan": lambda h, rows: _binary(h, rows, values=np.full((rows, 10), np.nan)),
    "values-short": lambda h, rows: h.raw(json.dumps({"outputs": [{"name": "logits", "datatype": "FP32",
                                                                    "shape": [rows, 10], "data": [0.5]}]}).encode()),
}


LIE_MESSAGES = {
    "gzip": "gzip-compressed answer", "deflate": "deflate-compressed answer",
    "huge-length": "announced an answer of 1000000000000 bytes", "bad-length": "announced an answer of -5 bytes",
    "endless": "its answer passed", "not-json": "not KServe v2 JSON", "error-500": "model crashed on input",
    "no-output": "without the output 'logits'", "other-output": "without the output 'logits'",
    "int64": "'INT64' of shape", "short-binary": "binary output holds", "split-beyond-body": "not KServe v2 JSON",
    "rank-3": "not FP32 (N, classes)", "wrong-classes": "answered 5 classes; the model's config has 10",
    "nan": "NaN or infinite logits", "values-short": "holds 1 values for shape (2, 10)",
}


@contextlib.contextmanager
def serve():
    """(address, behaviour): the fake on a free port of 127.0.0.1; ``behaviour`` changes what it answers."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), Fake)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}", Fake.behaviour
    finally:
        Fake.behaviour.clear()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
