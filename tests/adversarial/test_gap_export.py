"""gap-export given bad input as a hostile user gives it: every case of the tables in harness.py that runs gap-export,
and the cases of its own."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tests.adversarial.harness import (
    CASES,
    EXPORT,
    PREPROCESS,
    ROUND3,
    ROUND4,
    SENTINEL,
    cases_of,
    fake_triton,
    gap_export,
    run_case,
)


def test_ctrl_c_inside_the_exporter_exits_130_and_writes_nothing(base, tmp_path, monkeypatch):
    """torch's exporter reports a KeyboardInterrupt as its own failure; that must still end as Ctrl-C (exit 130),
    not as 'torch.onnx.export failed' (exit 1)."""
    import torch

    def interrupted_export(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise RuntimeError("Failed to export the model with torch.export.") from exc

    monkeypatch.setattr(torch.onnx, "export", interrupted_export)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model.pt").write_bytes((base / "model.pt").read_bytes())
    (tmp_path / "out.onnx").write_bytes(SENTINEL)
    result = CliRunner().invoke(gap_export, [*EXPORT, "-o", "out.onnx"])
    assert result.exit_code == 130 and "Interrupted." in result.output and "Traceback" not in result.output
    assert "export failed" not in result.output
    assert (tmp_path / "out.onnx").read_bytes() == SENTINEL
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt", "out.onnx"]


@pytest.mark.parametrize("name", cases_of("export", CASES))
def test_cli_bad_input(name, base, tmp_path, monkeypatch):
    run_case(name, CASES[name], base, tmp_path, monkeypatch)


@pytest.mark.parametrize("name", cases_of("export", ROUND3))
def test_round_three(name, round3_base, fake_server, tmp_path, monkeypatch):
    try:
        run_case(name, ROUND3[name], round3_base, tmp_path, monkeypatch, server=fake_server)
    finally:
        fake_triton.Fake.behaviour.clear()


@pytest.mark.parametrize("name", cases_of("export", PREPROCESS))
def test_preprocessing_bad_input(name, base, tmp_path, monkeypatch):
    run_case(name, PREPROCESS[name], base, tmp_path, monkeypatch)


@pytest.mark.parametrize("name", cases_of("export", ROUND4))
def test_round_four(name, base, tmp_path, monkeypatch):
    run_case(name, ROUND4[name], base, tmp_path, monkeypatch)
