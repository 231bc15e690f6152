"""gap-run --server's client against a lying or slow server: a fake KServe v2 HTTP server on 127.0.0.1 (bounded,
stopped in every case). The real tritonserver is tests/test_triton_server.py's."""

from __future__ import annotations

import time

import numpy as np
import pytest

from gap_deploy.runtime.errors import ArtifactError, BackendUnavailableError  # noqa: E402
from gap_deploy.runtime.triton_client import connect, infer  # noqa: E402
from tests.support.fake_triton import LIE_MESSAGES, LIES, _binary, serve  # noqa: E402


@pytest.fixture
def fake():
    with serve() as running:
        yield running


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


@pytest.mark.parametrize("lie", sorted(LIE_MESSAGES))
def test_a_lying_server_costs_one_clear_error_per_request_and_bounded_time_and_memory(fake, lie):
    """Failed before (gzip): tritonclient inflated the whole answer; the others ended in tracebacks or wrong rows."""
    import tracemalloc

    address, behaviour = fake
    remote = connect(address, "m", deadline_s=5.0)
    behaviour["lie"], behaviour["rows"] = lie, 2
    tracemalloc.start()
    started = time.perf_counter()
    out = infer(remote, [np.zeros((2, 3, 8, 8), np.float32)])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert time.perf_counter() - started < 10
    assert isinstance(out[0], Exception) and LIE_MESSAGES[lie] in str(out[0]), out
    assert peak < 32 << 20  # never the gzip bomb's 256 MB inflated, never the endless body


def test_a_lying_server_through_gap_run_is_one_line_per_image_and_exit_1(fake, tmp_path):
    from click.testing import CliRunner
    from PIL import Image

    from gap_deploy.runtime.cli.run import main

    address, behaviour = fake
    behaviour["lie"] = "gzip"
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    result = CliRunner().invoke(main, ["--server", address, "--model", "m", str(tmp_path / "a.png")])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "gzip-compressed answer" in result.output and "a.png" in result.output


def test_binary_answers_are_read(fake):
    address, behaviour = fake
    remote = connect(address, "m")
    behaviour["rows"] = 2
    LIES["fine-binary"] = lambda h, rows: _binary(h, rows, values=np.arange(rows * 10).reshape(rows, 10))
    behaviour["lie"] = "fine-binary"
    try:
        (out,) = infer(remote, [np.zeros((2, 3, 8, 8), np.float32)])
    finally:
        del LIES["fine-binary"]
    np.testing.assert_array_equal(out, np.arange(20, dtype=np.float32).reshape(2, 10))
