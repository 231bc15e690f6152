"""gap-run --ray against a real local Ray (2 CPUs): every row equals local gap-run's answer."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from gap_deploy.runtime.batch import BatchJob, connect, read_results, run_batch  # noqa: E402
from gap_deploy.runtime.classify import classify  # noqa: E402
from gap_deploy.runtime.images import collect_images  # noqa: E402

pytestmark = pytest.mark.slow
SIZES = [(32, 32), (48, 40), (64, 64), (20, 31), (100, 57)]
TIME_LIMIT_S = 300


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray limited to 2 CPUs, shut down whatever happens; every wait bounded by an alarm."""
    def too_slow(signum, frame):
        raise TimeoutError(f"the Ray test took more than {TIME_LIMIT_S} s")

    previous = signal.signal(signal.SIGALRM, too_slow)
    signal.alarm(TIME_LIMIT_S)
    os.environ.pop("RAY_ADDRESS", None)
    try:
        yield connect("auto", num_cpus=2)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("ray-images")
    rng = np.random.default_rng(0)
    for i in range(210):
        h, w = SIZES[i % len(SIZES)]
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    for i in range(3):
        (root / f"broken{i}.png").write_bytes(b"\x89PNG broken" * (i + 1))
    for i in range(2):
        Image.new("RGB", (3, 2 + i)).save(root / f"tiny{i}.png")
    os.mkfifo(root / "fifo.png")  # never read: a FIFO would block a read task forever
    return root


def test_every_row_equals_local_gap_run(local_ray, folder, reference_onnx, tmp_path):
    from gap_deploy import runtime

    out = tmp_path / "results.parquet"
    result = run_batch(BatchJob(reference_onnx, (str(folder),), out, topk=3, batch_size=16, workers=2,
                                cpus_per_worker=0.5, logits=True))
    rows = {r["path"]: r for r in read_results(out)}
    files = collect_images([folder])
    assert len(rows) == len(files) == 216  # every file is a row, the FIFO too (listed alike locally)
    with runtime.load(reference_onnx) as session:
        local = classify(session, files, topk=3)
    assert len(local["results"]) == 210 and len(local["errors"]) == 6
    assert any("not a regular file" in e["error"] for e in local["errors"])  # reported, never opened
    for item in local["results"]:
        row = rows[str(item["file"])]
        assert row["error"] is None and [row["height"], row["width"]] == item["size"]
        assert row["top_labels"] == [t["name"] for t in item["top"]]
        np.testing.assert_allclose(row["top_scores"], [t["prob"] for t in item["top"]], atol=1e-6)
        assert len(row["logits"]) == 10
    errors = {e["file"]: e["error"] for e in result.errors}
    assert set(errors) == {str(f) for f in folder.iterdir() if f.name.startswith(("broken", "tiny", "fifo"))}
    assert "below this model's minimum" in errors[str(folder / "tiny0.png")]
    assert "not a regular file" in errors[str(folder / "fifo.png")]
    assert result.workers == 2
    # every classified row names the actor that did it (how many each did depends on when each was ready)
    assert 1 <= len(result.per_worker) <= 2 and sum(result.per_worker.values()) == 215, result.per_worker


def test_a_routed_models_buckets_reach_rays_workers(local_ray, folder, reference_onnx, tmp_path):
    """gap-tune --buckets --emit's MODEL.buckets.onnx on Ray: each worker reads the routing rule from the model's
    contract, so every image runs at its bucket, as gap-run --buckets runs it locally."""
    import onnx

    from gap_deploy import runtime
    from gap_deploy.exporter.emit import with_routing

    model = onnx.load(str(reference_onnx))
    buckets = [(32, 32), (64, 48)]
    with_routing(model, buckets)
    routed = tmp_path / "gapcnn.buckets.onnx"
    onnx.save(model, str(routed))
    out = tmp_path / "routed.parquet"
    run_batch(BatchJob(routed, (str(folder),), out, topk=2, batch_size=16, workers=2, cpus_per_worker=0.5))
    rows = {r["path"]: r for r in read_results(out)}
    with runtime.load(reference_onnx) as session:
        local = classify(session, collect_images([folder]), topk=2, buckets=buckets)
    assert len(local["results"]) == 212  # the two tiny images too: resized to a bucket, as --imgsz would
    for item in local["results"]:
        row = rows[str(item["file"])]
        assert [row["height"], row["width"]] == item["size"] and tuple(item["size"]) in buckets
        assert row["top_labels"] == [t["name"] for t in item["top"]]
    assert {tuple(i["size"]) for i in local["results"]} == set(buckets)  # both buckets were used


def test_every_actor_can_get_work_batches_and_blocks():
    """300 images, 2 actors, batch 256: two batches of 150 in two blocks (it was one block of 300, which Ray gives
    to one actor); a batch is never cut below 1, blocks never exceed the images or 200."""
    from gap_deploy.runtime.batch import balanced_batch, block_count

    assert balanced_batch(300, 2, 256) == 150 and block_count(300, 2, 150) == 2
    assert balanced_batch(10_000, 4, 256) == 256 and block_count(10_000, 4, 256) == 40
    assert balanced_batch(3, 8, 256) == 1 and block_count(3, 8, 1) == 3
    assert block_count(10**6, 2, 16) == 200 and balanced_batch(0, 2, 256) == 1


def snapshot(root: Path) -> dict:
    """Every file below ``root`` with its bytes (folders included by their paths)."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_fifo() else None)
            for p in sorted(root.rglob("*"))}


def test_an_existing_folder_is_never_replaced_and_links_are_written_through(local_ray, folder, reference_onnx,
                                                                             tmp_path):
    """Failed before: the output folder, whatever it was (the image folder itself, earlier results), was moved
    aside and deleted after the job."""
    from gap_deploy.runtime.cli.run import main
    from tests.conftest import assert_clean_failure

    glob = str(folder / "0[0-4]?.png")  # a glob: 50 images
    old = tmp_path / "r.parquet"
    old.mkdir()
    (old / "old.parquet").write_bytes(b"previous results")
    images_before, old_before = snapshot(folder), snapshot(old)
    for output, fragment in ((folder, "exists and is not empty"), (old, "exists and is not empty"),
                             (folder / "results", "is inside image source")):
        result = CliRunner().invoke(main, [str(reference_onnx), str(folder), "--ray", "--output", str(output)])
        assert_clean_failure(result, fragment)
    assert snapshot(folder) == images_before and snapshot(old) == old_before  # byte for byte
    target = tmp_path / "real"
    target.mkdir()  # empty: it is used
    link = tmp_path / "link"
    link.symlink_to(target)
    result = CliRunner().invoke(main, [str(reference_onnx), glob, "--ray", "--output", str(link), "--workers", "1",
                                       "--imgsz", "24"])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and "50 row(s)" in result.output  # the link stays; its folder holds the results
    rows = read_results(target)
    assert len(rows) == 50 and all(r["height"] == 24 and r["width"] == 24 for r in rows)


def test_ray_needs_an_output_and_a_reachable_cluster(reference_onnx, folder, tmp_path):
    from gap_deploy.runtime.cli.run import main
    from tests.conftest import assert_clean_failure

    result = CliRunner().invoke(main, [str(reference_onnx), str(folder), "--ray"])
    assert_clean_failure(result, "--ray and --output go together", code=2)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:  # bound and closed again: nothing listens there
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("how", ["--ray ADDRESS", "RAY_ADDRESS"])
def test_a_cluster_nobody_answers_at_fails_at_once(reference_onnx, folder, tmp_path, monkeypatch, how):
    """Failed before: ray.init retried for minutes (for ever with RAY_ADDRESS set) at an address with no cluster."""
    import time

    from gap_deploy.runtime.cli.run import main
    from tests.conftest import assert_clean_failure

    address = f"127.0.0.1:{_closed_port()}"
    if how == "RAY_ADDRESS":
        monkeypatch.setenv("RAY_ADDRESS", address)
        ray_args = ["--ray"]
    else:
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        ray_args = ["--ray", address]
    started = time.perf_counter()
    result = CliRunner().invoke(main, [str(reference_onnx), str(folder), *ray_args, "--output",
                                       str(tmp_path / "r.parquet")])
    assert_clean_failure(result, f"no Ray cluster answers at {address}", "ray start --head")
    assert time.perf_counter() - started < 30 and not (tmp_path / "r.parquet").exists()


def test_workers_the_cluster_can_never_hold_are_refused(local_ray, reference_onnx, folder, tmp_path):
    from gap_deploy.runtime.cli.run import main
    from tests.conftest import assert_clean_failure

    result = CliRunner().invoke(main, [str(reference_onnx), str(folder), "--ray", "--output", str(tmp_path / "r"),
                                       "--workers", "8", "--cpus-per-worker", "1"])
    assert_clean_failure(result, "8 worker(s) x 1 CPU(s) ask for 8 CPUs; the cluster has 2", code=2)
    assert not (tmp_path / "r").exists() and not list(tmp_path.glob(".r.*"))


def test_object_store_uris_reach_ray_as_written(reference_onnx, tmp_path, monkeypatch):
    """Failed before: click's Path type turned s3://bucket/x into s3:/bucket/x, so object stores never worked
    from the CLI. Only what the CLI hands to runtime.batch is checked here (no object store is reachable)."""
    import gap_deploy.runtime.batch as batch
    from gap_deploy.runtime.cli.run import main

    seen = {}

    def record(job):
        seen["sources"] = job.sources
        raise batch.GapError("stop here")

    monkeypatch.setattr(batch, "run_batch", record)
    CliRunner().invoke(main, [str(reference_onnx), "s3://bucket/images/", "gs://other/x.png", "--ray", "--output",
                              str(tmp_path / "r")])
    assert seen["sources"] == ("s3://bucket/images/", "gs://other/x.png")


def test_ray_chatter_is_left_out_of_gap_runs_output_unless_debug(reference_onnx, tmp_path):
    """gap-run --ray as a user runs it (its own process, its own local Ray): stderr holds gap-run's lines and
    none of Ray's INFO, progress or token-authentication lines (about 15 before); --debug keeps them, which
    shows the filter is what removed them."""
    import subprocess
    import sys

    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (24 + i, 24), (40 * i, 90, 200)).save(images / f"{i}.png")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    runs = {}
    for flags in ((), ("--debug",)):
        out = tmp_path / f"out{len(flags)}.parquet"
        done = subprocess.run([sys.executable, "-m", "gap_deploy", "gap-run", str(reference_onnx), str(images), "--ray",
                               "-o", str(out), "--workers", "1", *flags], capture_output=True, text=True, env=env,
                              timeout=240)
        assert done.returncode == 0, done.stderr[-3000:]
        runs[flags] = done.stderr
    quiet, loud = runs[()], runs[("--debug",)]
    assert "Images per worker" in quiet and "Traceback" not in quiet
    ray_info = re.compile(r"\sINFO\s.* -- ")  # "2026-12-05 12:42:23,240<TAB>INFO streaming_executor.py:215 -- ..."
    assert not [line for line in quiet.splitlines() if ray_info.search(line) or "Token authentication" in line], quiet
    assert sum(bool(ray_info.search(line)) for line in loud.splitlines()) >= 5, loud
