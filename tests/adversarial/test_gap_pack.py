"""gap-pack given bad input as a hostile user gives it: every case of the tables in harness.py that runs gap-pack,
and the cases of its own."""

from __future__ import annotations

import time

import pytest
from click.testing import CliRunner

from tests.adversarial.harness import (
    ROUND3,
    ROUND4,
    cases_of,
    fake_triton,
    gap_pack,
    run_case,
)
from tests.conftest import assert_clean_failure


def test_a_report_inside_the_bundle_it_describes_is_refused(reference_onnx, tmp_path):
    """Failed before: gap-pack -o b --json b/model.json replaced the bundle's own description after writing it (the
    bundle no longer loaded), exit 0."""
    bundle = tmp_path / "b"
    for made in (False, True):  # a new folder, and an empty one (a folder target may be empty)
        if made:
            bundle.mkdir()
        result = CliRunner().invoke(gap_pack, [str(reference_onnx), "-o", str(bundle), "--json",
                                               str(bundle / "model.json")])
        assert_clean_failure(result, f"--json {bundle / 'model.json'} is inside -o/--output {bundle}, which is "
                                     "written whole")
        assert bundle.exists() == made and not (made and any(bundle.iterdir()))


@pytest.mark.parametrize("fixed", ["1x3x64x64", "1x3x32x32"])
def test_fixed_variants_of_a_static_model_are_refused_before_anything_is_written(tmp_path, reference_ckpt, fixed):
    """Round three's remainder: gap-pack --fixed on a static model ended in onnxruntime's tools ("Can't replace
    existing fixed size of 32 with 64", or the model-fix error for its own size), with a traceback."""
    from gap_deploy.exporter import export_onnx, load_model

    static = export_onnx(load_model(reference_ckpt), tmp_path / "static.onnx", dynamic=False, imgsz=(32, 32)).path
    result = CliRunner().invoke(gap_pack, [str(static), "-o", str(tmp_path / "b"), "--fixed", fixed])
    assert_clean_failure(result, "is already static (input 1x3x32x32)", code=2)
    assert not (tmp_path / "b").exists()


def test_gap_pack_writes_through_a_link_to_an_empty_folder(reference_onnx, tmp_path):
    """Round four, 8b: -o a symlink to an empty folder was refused by gap-pack (the commit could not remove the
    link as a folder) although gap-export writes through a link at its output. One rule: written through."""
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    result = CliRunner().invoke(gap_pack, [str(reference_onnx), "-o", str(link)])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and (real / "model.json").is_file()


def test_ctrl_c_that_a_converter_swallows_still_stops_gap_pack_and_publishes_nothing(reference_onnx, tmp_path,
                                                                                  monkeypatch):
    """Round four, class 7: Ctrl-C during a converter ended with the bundle written and exit 0: Python raises
    KeyboardInterrupt inside the converter, which may catch it and go on. The stand-in converter here does exactly
    that (catches the KeyboardInterrupt and returns); a real SIGINT is sent to this process. Failed before: pack
    returned and published the folder."""
    import os
    import signal
    import threading

    import gap_deploy.exporter.pack_edge as pack_edge
    from gap_deploy.exporter.pack import pack

    def swallowing_converter(*args, **kwargs):
        timer = threading.Timer(0.2, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        try:
            time.sleep(5)
        except KeyboardInterrupt:
            pass  # what a converter that catches BaseException does
        raise RuntimeError("stopped")  # and its own error afterwards

    monkeypatch.setattr(pack_edge, "build_edge", swallowing_converter)
    with pytest.raises(KeyboardInterrupt):
        pack(reference_onnx, tmp_path / "b", target="ncnn")
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []


def test_a_core_ml_bundle_from_other_weights_is_refused_unless_asked(reference_onnx, tmp_path):
    """Round four, 8b: a Core ML bundle packed from a checkpoint with other weights was written: Core ML cannot run
    here, so no check could show it. Refused now, naming --other-weights."""
    pytest.importorskip("coremltools")
    import torch

    from tests.conftest import make_reference

    other = tmp_path / "other.pt"
    torch.save(make_reference(seed=9).state_dict(), other)
    result = CliRunner().invoke(gap_pack, [str(reference_onnx), "--target", "coreml", "--checkpoint", str(other),
                                           "-o", str(tmp_path / "b")])
    assert_clean_failure(result, "is not the file gapcnn.onnx was exported from", "--other-weights", code=2)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("target", ["ort", "openvino", "ncnn"])
def test_a_full_disk_during_gap_pack_is_one_message_and_leaves_nothing(base, tiny_disk, target):
    """Failed before: a full disk during gap-pack gave OSError tracebacks (ORT's converter, pnnx's copy) or OpenVINO's
    RuntimeError "basic_ios::clear: iostream error"."""
    if target != "ort":
        pytest.importorskip({"openvino": "openvino", "ncnn": "pnnx"}[target])
    result = CliRunner().invoke(gap_pack, [str(base / "model.onnx"), "-o", str(tiny_disk / "b"), "--target", target])
    assert_clean_failure(result, "could not write" if target == "openvino" else "No space left on device")
    assert list(tiny_disk.iterdir()) == []


@pytest.mark.parametrize("name", cases_of("pack", ROUND3))
def test_round_three(name, round3_base, fake_server, tmp_path, monkeypatch):
    try:
        run_case(name, ROUND3[name], round3_base, tmp_path, monkeypatch, server=fake_server)
    finally:
        fake_triton.Fake.behaviour.clear()


@pytest.mark.parametrize("name", cases_of("pack", ROUND4))
def test_round_four(name, base, tmp_path, monkeypatch):
    run_case(name, ROUND4[name], base, tmp_path, monkeypatch)
