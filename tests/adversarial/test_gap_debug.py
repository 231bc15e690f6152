"""gap-debug given bad input as a hostile user gives it: every case of the tables in harness.py that runs gap-debug,
and the cases of its own."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tests.adversarial.harness import (
    ROUND4,
    _run_capped,
    cases_of,
    run_case,
)
from tests.conftest import assert_clean_failure


def test_gap_debug_refuses_a_batch_whose_layer_outputs_cannot_fit(base, tmp_path):
    """Failed before: gap-debug --shape 256x3x224x224 passed the plain memory check (one inference), then held 2 x 16
    layer outputs per pass until the OOM killer ended it. Now refused with the --chunk that fits."""
    import shutil

    shutil.copy(base / "model.pt", tmp_path / "model.pt")
    done = _run_capped(["gap-debug", "model.pt", "--shape", "256x3x224x224"], tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "16 layer(s) per pass would need about" in done.stderr and "Traceback" not in done.stderr
    assert "--chunk" in done.stderr


def test_gap_debug_refuses_an_onnx_not_exported_from_the_checkpoint(tmp_path, reference_ckpt):
    """Round four, class 6: a 1-channel ONNX given with a 3-channel checkpoint failed inside onnxruntime
    ("index: 1 Got: 3 Expected: 1", a traceback). The artifacts are compared with the checkpoint's model first."""
    import torch

    from gap_deploy.exporter import export_onnx, load_model
    from gap_deploy.exporter.cli.debug import main as debug
    from tests.conftest import make_reference

    torch.save(make_reference(in_channels=1).state_dict(), tmp_path / "g1.pt")
    one = export_onnx(load_model(tmp_path / "g1.pt"), tmp_path / "g1.onnx", dynamic=True, imgsz=(32, 32)).path
    result = CliRunner().invoke(debug, [str(reference_ckpt), str(one)])
    assert_clean_failure(result, "g1.onnx has 1 input channel(s)", "has 3: it was not exported from this checkpoint",
                         code=2)


@pytest.mark.parametrize("name", cases_of("debug", ROUND4))
def test_round_four(name, base, tmp_path, monkeypatch):
    run_case(name, ROUND4[name], base, tmp_path, monkeypatch)
