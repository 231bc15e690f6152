"""gap-run --server's client against a lying or slow server: a fake KServe v2 HTTP server on 127.0.0.1 (bounded,
stopped in every case). The real tritonserver is tests/test_triton_server.py's."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

pytest.importorskip("tritonclient.http")

from gap_deploy.runtime.errors import ArtifactError, BackendUnavailableError  # noqa: E402
from gap_deploy.runtime.triton_client import connect, infer  # noqa: E402

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
        elif self.path.endswith("/config"):
            self._json({**CONFIG, **self.behaviour.get("config", {})})
        else:
            self._json({"error": "not found"}, 404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", 0))
        self.rfile.read(length)
        rows = self.behaviour.get("rows", 1)
        self._json({"model_name": "m", "outputs": [{"name": "logits", "datatype": "FP32", "shape": [rows, 10],
                                                     "data": [0.5] * (rows * 10)}]})


@pytest.fixture
def fake():
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


def test_a_server_that_answers_a_byte_at_a_time_is_bounded_by_an_overall_deadline(fake):
    """Failed before: the timeout was per read, so a trickling server held the client for ever."""
    address, behaviour = fake
    behaviour["slow"] = True
    started = time.perf_counter()
    with pytest.raises(BackendUnavailableError, match="sent no complete config for 'm': no complete answer within 1 s"):
        connect(address, "m", deadline_s=1.0)
    assert time.perf_counter() - started < 10


def test_fewer_rows_than_images_is_an_error_for_those_images(fake):
    """Failed before: the images without a row vanished, exit 0."""
    address, behaviour = fake
    remote = connect(address, "m")
    behaviour["rows"] = 1
    out = infer(remote, [np.zeros((3, 3, 8, 8), np.float32), np.zeros((1, 3, 8, 8), np.float32)])
    assert "answered 3 image(s) with shape (1, 10)" in str(out[0]) and isinstance(out[1], np.ndarray)


def test_a_negative_max_batch_size_is_refused(fake):
    """Failed before: max_batch_size -3 sent nothing and printed nothing, exit 0."""
    address, behaviour = fake
    behaviour["config"] = {"max_batch_size": -3}
    with pytest.raises(ArtifactError, match="max_batch_size -3"):
        connect(address, "m")


def test_https_is_tls_and_other_schemes_are_refused(fake):
    """Failed before: --server https://... silently talked plain HTTP."""
    from gap_deploy.runtime.errors import UsageError

    address, _ = fake
    with pytest.raises(BackendUnavailableError, match="cannot reach a Triton server at https://"):
        connect(f"https://{address}", "m", deadline_s=5.0)  # the fake speaks plain HTTP: the TLS handshake fails
    with pytest.raises(UsageError, match="scheme 'ftp' is not http or https"):
        connect(f"ftp://{address}", "m")
    assert connect(f"http://{address}", "m").max_batch == 8
