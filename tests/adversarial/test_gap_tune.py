"""gap-tune given bad input as a hostile user gives it: every case of the tables in harness.py that runs gap-tune,
and the cases of its own."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from tests.adversarial.harness import (
    PREPROCESS,
    ROUND3,
    ROUND4,
    _run_capped,
    cases_of,
    fake_triton,
    gap_tune,
    run_case,
)


@pytest.mark.parametrize("sizes, message", [
    ("4:8192:1", r"asks for 8189 size\(s\) up to 8192; a sweep measures at most 64"),
    ("1:100000000000:1", r"asks for 100000000000 size\(s\)"),
    ("32:8192:128", r"--sizes (\d+): an input 1x3x\1x\1 would need about"),  # which size: the machine's memory
])
def test_gap_tune_refuses_a_sweep_it_cannot_run_before_decoding_anything(base, tmp_path, sizes, message):
    """Round four, classes 4 and 4b: --sizes 4:8192:1 measured 8189 sizes (hours; a range of 10^11 was expanded
    into a list first), and 32:8192:128 held 16-64 images resized to 8096x8096 (9.4 GB peak here) before the
    estimate refused it. Now counted and estimated before any image is decoded."""
    import shutil

    from PIL import Image

    shutil.copy(base / "model.onnx", tmp_path / "model.onnx")
    for c in ("class0", "class1"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (40, 30), (i * 40, 99, 9)).save(tmp_path / "data" / c / f"{i}.png")
    started = time.perf_counter()
    done = _run_capped(["gap-tune", "model.onnx", "--data", "data", "--sizes", sizes], tmp_path, gigabytes=6)
    import re

    assert done.returncode in (1, 2) and re.search(message, done.stderr), done.stdout + done.stderr
    assert "Traceback" not in done.stderr and time.perf_counter() - started < 30


@pytest.mark.parametrize("when", [1, 4])
def test_ctrl_c_while_gap_tune_decodes_exits_130_and_writes_nothing(labelled_set, reference_onnx, tmp_path,
                                                                    monkeypatch, when):
    """Failed before: Ctrl-C while gap-tune decoded the images (before any point was measured) came back as an
    'interrupted' result with no figures, and the table's formatting crashed (KeyError, exit 1)."""
    from PIL import Image

    from gap_deploy.runtime.preprocess import Preprocess

    for i in range(4):
        Image.new("RGB", (12 + i, 12), (i, 50, 90)).save(labelled_set / "class1" / f"x{i}.png")
    real, calls = Preprocess.read, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == when:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(Preprocess, "read", interrupted)
    out = tmp_path / "t.json"
    result = CliRunner().invoke(gap_tune, [str(reference_onnx), "--data", str(labelled_set), "--sizes", "16",
                                           "--json", str(out)])
    assert result.exit_code == 130 and "Interrupted." in result.output and "Traceback" not in result.output
    assert not out.exists()


@pytest.mark.parametrize("name", cases_of("tune", ROUND3))
def test_round_three(name, round3_base, fake_server, tmp_path, monkeypatch):
    try:
        run_case(name, ROUND3[name], round3_base, tmp_path, monkeypatch, server=fake_server)
    finally:
        fake_triton.Fake.behaviour.clear()


@pytest.mark.parametrize("name", cases_of("tune", PREPROCESS))
def test_preprocessing_bad_input(name, base, tmp_path, monkeypatch):
    run_case(name, PREPROCESS[name], base, tmp_path, monkeypatch)


@pytest.mark.parametrize("name", cases_of("tune", ROUND4))
def test_round_four(name, base, tmp_path, monkeypatch):
    run_case(name, ROUND4[name], base, tmp_path, monkeypatch)
