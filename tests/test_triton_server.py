"""End to end against a real tritonserver (python backend): a gap-triton repository of the reference model,
64+ concurrent requests of several sizes through gap-run's client, every answer equal to runtime.Session."""

from __future__ import annotations

import json
import site
import statistics
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("tritonclient.http")
from tests.support.triton_server import distribution, tritonserver  # noqa: E402

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
if distribution() is None:
    pytest.skip("the tritonserver bundled by nvidia-pytriton is not installed (make venv installs it)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory, reference_onnx):
    from gap_deploy.exporter.triton import ServeOptions, write_repository

    work = tmp_path_factory.mktemp("triton")
    paths = (str(ROOT), *site.getsitepackages())  # the python stub ignores PYTHONPATH
    write_repository([reference_onnx], work / "repo", ServeOptions(backend="python", python_paths=paths,
                                                                   max_batch=8, max_queue_delay_us=20000))
    with tritonserver(work / "repo", work) as (url, log):
        yield url, log


def test_concurrent_requests_equal_the_runtime(server, reference_onnx):
    from gap_deploy import runtime
    from gap_deploy.runtime.triton_client import connect, infer

    url, _ = server
    remote = connect(url, "gapcnn", concurrency=16)
    rng = np.random.default_rng(0)
    sizes = [(32, 32), (37, 53), (64, 48)]
    # 24 requests per size, sent together (as gap-run's client sends them: one size after another), batch 1 and 3;
    # Triton's dynamic batcher only joins requests of equal shape that arrive together
    batches = [rng.standard_normal((1 + (i % 4 == 0) * 2, 3, *sizes[i // 24])).astype(np.float32) for i in range(72)]
    before = remote.client.json("GET", "/v2/models/gapcnn/stats")["model_stats"][0]
    outputs = infer(remote, batches)
    after = remote.client.json("GET", "/v2/models/gapcnn/stats")["model_stats"][0]
    with runtime.load(reference_onnx) as session:
        mismatches = sum(not np.array_equal(out, session.run(x)) for x, out in zip(batches, outputs))
    assert all(isinstance(o, np.ndarray) for o in outputs)
    assert mismatches == 0
    inferences = int(after["inference_count"]) - int(before["inference_count"])
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert inferences == sum(len(b) for b in batches)
    assert executions < len(batches)  # fewer executions than requests: Triton's dynamic batcher joined requests
    p50, p99 = statistics.median(remote.latencies_ms), float(np.percentile(remote.latencies_ms, 99))
    print(f"\n{len(batches)} requests, {inferences} images, {executions} executions, 3 sizes, "
          f"mismatches {mismatches}, client latency p50 {p50:.1f} ms p99 {p99:.1f} ms")


def test_a_request_below_the_minimum_gets_the_runtime_message(server):
    from gap_deploy.runtime.errors import GapError
    from gap_deploy.runtime.triton_client import connect, infer

    url, _ = server
    (output,) = infer(connect(url, "gapcnn"), [np.zeros((1, 3, 3, 3), np.float32)])
    assert isinstance(output, GapError)
    assert "below this model's minimum of 4x4" in str(output)


def test_gap_run_server_equals_local_gap_run(server, reference_onnx, tmp_path):
    from PIL import Image

    from gap_deploy.runtime.cli.run import main

    url, _ = server
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(32, 32), (32, 32), (40, 24), (57, 61), (40, 24)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    Image.new("RGB", (2, 2)).save(tmp_path / "tiny.png")
    remote = CliRunner().invoke(main, ["--server", url, "--model", "gapcnn", str(tmp_path), "--format", "json",
                                       "-k", "3"])
    local = CliRunner().invoke(main, [str(reference_onnx), str(tmp_path), "--format", "json", "-k", "3"])
    assert remote.exit_code == local.exit_code == 1  # tiny.png is below the minimum in both
    a, b = json.loads(remote.stdout), json.loads(local.stdout)
    assert [r["file"] for r in a["results"]] == [r["file"] for r in b["results"]] and len(a["results"]) == 5
    for x, y in zip(a["results"], b["results"]):
        assert [t["name"] for t in x["top"]] == [t["name"] for t in y["top"]]
        np.testing.assert_allclose([t["prob"] for t in x["top"]], [t["prob"] for t in y["top"]], atol=1e-6)
    assert "below this model's minimum" in a["errors"][0]["error"]


def test_unknown_model_and_unreachable_server(server, tmp_path):
    from PIL import Image

    from gap_deploy.runtime.cli.run import main
    from tests.conftest import assert_clean_failure

    url, _ = server
    Image.new("RGB", (16, 16)).save(tmp_path / "a.png")
    result = CliRunner().invoke(main, ["--server", url, "--model", "nope", str(tmp_path / "a.png")])
    assert_clean_failure(result, "has no ready model 'nope'", "gapcnn", code=2)
    result = CliRunner().invoke(main, ["--server", "127.0.0.1:1", "--model", "gapcnn", str(tmp_path / "a.png")])
    assert_clean_failure(result, "cannot reach a Triton server at 127.0.0.1:1")


def _serve_command(repo: Path, port: int):
    """gap-triton --serve as a terminal starts it: SIGINT at its default whatever this test runner inherited (a
    job started in the background of a non-interactive shell ignores SIGINT, and Python then installs no
    KeyboardInterrupt for it)."""
    import signal
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "gap_deploy", "gap-triton", "--serve", str(repo), "--http-port",
                             str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_gap_triton_serve_runs_the_bundled_server_until_ctrl_c(tmp_path, reference_onnx):
    """The command a user runs (gap-triton --serve), as a process: it says where it serves, gap-run --server
    classifies through it as locally, and Ctrl-C (SIGINT) stops it with exit 0 and no traceback."""
    import signal

    from gap_deploy.exporter.cli.triton import stub_paths
    from gap_deploy.exporter.triton import ServeOptions, write_repository
    from gap_deploy.exporter.triton_serve import free_port
    from gap_deploy.runtime.cli.run import main

    write_repository([reference_onnx], tmp_path / "repo", ServeOptions(backend="python", python_paths=stub_paths()))
    from PIL import Image

    Image.fromarray(np.random.default_rng(2).integers(0, 255, (40, 24, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    port = free_port()
    process = _serve_command(tmp_path / "repo", port)
    try:
        line = process.stdout.readline()  # bounded: the server is ready within serve()'s own 90 s, or exits
        assert f"Serving gapcnn at http://127.0.0.1:{port}" in line, process.stderr.read() if not line else line
        image = str(tmp_path / "a.png")
        remote = CliRunner().invoke(main, ["--server", f"127.0.0.1:{port}", "--model", "gapcnn", image,
                                           "--format", "jsonl", "-k", "2"])
        local = CliRunner().invoke(main, [str(reference_onnx), image, "--format", "jsonl", "-k", "2"])
        assert remote.exit_code == local.exit_code == 0, remote.output
        a, b = (json.loads(r.stdout.splitlines()[0]) for r in (remote, local))
        assert [t["name"] for t in a["top"]] == [t["name"] for t in b["top"]]
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        assert process.returncode == 0, err
        assert "Traceback" not in err and "Stopping tritonserver" in err
        # docker stop, systemd and kill send SIGTERM: the same clean stop
        again = _serve_command(tmp_path / "repo", free_port())
        try:
            assert "Serving gapcnn" in again.stdout.readline()
            again.send_signal(signal.SIGTERM)
            _, err = again.communicate(timeout=60)
            assert again.returncode == 0 and "Traceback" not in err and "Stopping tritonserver" in err, err
        finally:
            if again.poll() is None:
                again.kill()
                again.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


def test_gap_triton_serve_says_why_an_onnx_repository_does_not_load_here(tmp_path, reference_onnx):
    """pytriton's server has only the python backend: an onnxruntime_onnx repository fails to load, and the
    command says so with the fix, exit 1, no traceback."""
    from gap_deploy.exporter.triton import ServeOptions, write_repository
    from gap_deploy.exporter.triton_serve import free_port

    write_repository([reference_onnx], tmp_path / "repo", ServeOptions())
    process = _serve_command(tmp_path / "repo", free_port())
    try:
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1, out + err
    assert "Traceback" not in err and "--triton-backend python" in err and "onnxruntime" in err


def test_a_routed_models_repository_warms_up_every_bucket_and_the_server_loads_it(tmp_path, reference_onnx):
    """gap-tune --buckets --emit's MODEL.buckets.onnx through gap-triton: one warm-up sample per bucket (read back
    with Triton's own ModelConfig schema), and the real server loads the model with them (a warm-up sample that
    fails fails the load: TritonModelInstance::WarmUp); a client's image then runs at its bucket."""
    import onnx

    from gap_deploy.exporter.cli.triton import stub_paths
    from gap_deploy.exporter.emit import with_routing
    from gap_deploy.exporter.triton import ServeOptions, parse_config, write_repository
    from gap_deploy.runtime.cli.run import main

    model = onnx.load(str(reference_onnx))
    with_routing(model, [(16, 16), (40, 32)])
    routed = tmp_path / "gapcnn.onnx"
    onnx.save(model, str(routed))
    write_repository([routed], tmp_path / "repo", ServeOptions(backend="python", python_paths=stub_paths()))
    config = parse_config((tmp_path / "repo" / "gapcnn" / "config.pbtxt").read_text(), "config.pbtxt")
    assert [(w.batch_size, list(w.inputs["images"].dims)) for w in config.model_warmup] == \
        [(1, [3, 16, 16]), (1, [3, 40, 32])]
    from PIL import Image

    Image.fromarray(np.random.default_rng(3).integers(0, 255, (30, 26, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    with tritonserver(tmp_path / "repo", tmp_path) as (url, log):
        remote = CliRunner().invoke(main, ["--server", url, "--model", "gapcnn", str(tmp_path / "a.png"),
                                           "--format", "jsonl", "-k", "1"])
    assert remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout.splitlines()[0])["size"] == [40, 32]  # side 30 -> the 40x32 bucket
