"""gap-export as a user runs it: help, outputs, reports and every bad input."""

import json
import os

import numpy as np
import pytest

pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from gap_deploy.exporter.cli.export import main  # noqa: E402
from tests.conftest import assert_clean_failure  # noqa: E402


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_help_lists_every_option():
    result = run("--help")
    assert result.exit_code == 0
    for option in ["--dynamic", "--imgsz", "--batch-size", "--arch", "--num-classes", "--trust-checkpoint",
                   "--class-names", "--mean", "--std", "--opset", "--simplify", "--no-verify",
                   "--verify-shapes", "--atol", "--rtol", "--json", "--summary", "--output"]:
        assert option in result.output


def test_dynamic_export_with_report(tmp_path, reference_ckpt):
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"n{i}" for i in range(10)))
    result = run(reference_ckpt, "--dynamic", "-o", out, "--json", report, "--class-names", names,
                 "--verify-shapes", "1x3x4x4,37x53,2x3x64x96")
    assert result.exit_code == 0, result.output
    assert "1x3x37x53" in result.output and "pass" in result.output
    assert "input images [batch, 3, height, width]" in result.output
    data = json.loads(report.read_text())
    assert data["parity"]["passed"] and len(data["parity"]["shapes"]) == 3
    assert data["input_dims"] == ["batch", 3, "height", "width"]
    assert json.loads(data["metadata"]["gap.class_names"])[3] == "n3"


def test_default_output_is_next_to_the_model(tmp_path, reference_ckpt):
    ckpt = tmp_path / "net.pt"
    ckpt.write_bytes(reference_ckpt.read_bytes())
    result = run(ckpt, "--no-verify", "--imgsz", "32")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "net.onnx").is_file()


def test_summary_prints_the_layer_table(reference_ckpt):
    result = run(reference_ckpt, "--summary", "--imgsz", "64")
    assert result.exit_code == 0, result.output
    assert "Sequential (conv1)" in result.output and "AdaptiveAvgPool2d (gap)" in result.output
    assert "[1, 64, 16, 16]" in result.output and "Total params: 20,042" in result.output


def test_failed_parity_exits_1_and_leaves_no_file(tmp_path):
    import torch

    from tests.support.families import ShapeBranch

    ckpt = tmp_path / "branch.pt"
    torch.save(ShapeBranch().state_dict(), ckpt)
    out = tmp_path / "m.onnx"
    result = run(ckpt, "--arch", "tests.support.families:ShapeBranch", "--dynamic", "--imgsz", "32", "-o", out,
                 "--verify-shapes", "32x32,9x9")
    assert_clean_failure(result, "differs from PyTorch at 1 of 2 shapes", "was not written", "FAIL")
    assert not out.exists()


@pytest.mark.parametrize("option, value", [("--atol", "-1"), ("--rtol", "nan"), ("--atol", "inf"),
                                           ("--rtol", "-0.5")])
def test_tolerances_must_be_finite_and_not_negative(tmp_path, reference_ckpt, option, value):
    result = run(reference_ckpt, "--dynamic", "-o", tmp_path / "m.onnx", option, value)
    assert_clean_failure(result, option, code=2)
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("case, message", [
    ("missing", "does not exist"),
    ("directory", "is a directory"),
    ("empty", "is empty"),
    ("random", "cannot read checkpoint"),
    ("truncated", "cannot read checkpoint"),
    ("pickled", "--trust-checkpoint"),
    ("torchscript", "--trust-checkpoint"),
    ("wrong-shape", "vs model"),
    ("missing-keys", "missing keys"),
    ("unexpected-keys", "unexpected keys"),
])
def test_bad_checkpoints(tmp_path, reference_ckpt, case, message):
    import torch

    from gap_deploy.exporter.model import GapCNN

    path = tmp_path / "bad.pt"
    state = torch.load(reference_ckpt, weights_only=True)
    if case == "directory":
        path.mkdir()
    elif case == "empty":
        path.touch()
    elif case == "random":
        path.write_bytes(os.urandom(1000))
    elif case == "truncated":
        path.write_bytes(reference_ckpt.read_bytes()[:-500])
    elif case == "pickled":
        torch.save(GapCNN(), path)
    elif case == "torchscript":
        torch.jit.save(torch.jit.script(GapCNN()), str(path))
    elif case == "wrong-shape":
        state["fcn.bias"] = torch.zeros(11)
        torch.save(state, path)
    elif case == "missing-keys":
        del state["fcn.bias"]
        torch.save(state, path)
    elif case == "unexpected-keys":
        state["head.weight"] = torch.zeros(2)
        torch.save(state, path)
    arch = ["--arch", "gap_deploy.exporter.model:GapCNN"] if case.endswith("keys") or case == "wrong-shape" else []
    out = tmp_path / "out.onnx"
    result = run(path, "--dynamic", "-o", out, *arch)
    assert_clean_failure(result, message)
    assert not out.exists()


def test_output_folder_missing(tmp_path, reference_ckpt):
    result = run(reference_ckpt, "-o", tmp_path / "no" / "m.onnx")
    assert_clean_failure(result, "does not exist", "mkdir -p")


def test_output_folder_is_a_file(tmp_path, reference_ckpt):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run(reference_ckpt, "-o", blocker / "m.onnx")
    assert_clean_failure(result, "is not a directory")


def test_output_folder_not_writable(tmp_path, reference_ckpt, monkeypatch):
    # root can write anywhere, so simulate the permission check's answer
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(tmp_path) else real_access(p, m))
    result = run(reference_ckpt, "-o", tmp_path / "m.onnx")
    assert_clean_failure(result, "not writable")


@pytest.mark.parametrize("args, message", [
    (["--imgsz", "abc"], "is not a size"),
    (["--mean", "a,b"], "not a comma-separated list"),
    (["--verify-shapes", "1x2x3"], "not of the form"),
    (["--verify-shapes", "1x1x8x8"], "has 1 channels"),
])
def test_usage_errors_exit_2(reference_ckpt, args, message):
    result = run(reference_ckpt, "--dynamic", *args)
    assert_clean_failure(result, message, code=2)


def test_class_names_count_mismatch(tmp_path, reference_ckpt):
    names = tmp_path / "names.json"
    names.write_text('["a", "b"]')
    result = run(reference_ckpt, "-o", tmp_path / "m.onnx", "--class-names", names)
    assert_clean_failure(result, "2 class names given but the model has 10 classes")


@pytest.mark.parametrize("make_calib, message", [
    (lambda d: d.mkdir() or d, "holds no image files"),
    (lambda d: (np.save(d.with_suffix(".npy"), np.zeros((4, 32, 32, 3), np.float32)), d.with_suffix(".npy"))[1],
     "expected float (N, 3, H, W)"),
    (lambda d: d.with_suffix(".npy"), "calibration data"),
    (lambda d: (d.with_suffix(".txt").write_text("x"), d.with_suffix(".txt"))[1], "neither a folder of images"),
])
def test_a_bad_calib_fails_before_any_file_is_replaced(tmp_path, reference_ckpt, make_calib, message):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"the user's previous export")
    (tmp_path / "m.int8.onnx").write_bytes(b"the previous int8 model")
    calib = make_calib(tmp_path / "calib")
    result = CliRunner().invoke(main, [str(reference_ckpt), "--dynamic", "--imgsz", "32", "-o", str(out),
                                       "--precision", "int8", "--calib", str(calib)])
    assert_clean_failure(result, message)
    assert out.read_bytes() == b"the user's previous export"
    assert (tmp_path / "m.int8.onnx").read_bytes() == b"the previous int8 model"


def test_fp32_and_variant_appear_together_or_not_at_all(tmp_path, monkeypatch):
    """A failure while moving the second file puts the first one back as it was."""
    import gap_deploy.runtime.publish as files
    from gap_deploy.runtime.errors import OutputPathError
    from gap_deploy.runtime.publish import Publication

    def write_together(pairs):
        with Publication() as pub:
            for path, data in pairs:
                pub.write_bytes(path, data)

    out, variant = tmp_path / "m.onnx", tmp_path / "m.fp16.onnx"
    out.write_bytes(b"old fp32")
    real_replace = files.os.replace

    def failing_replace(src, dst):
        if str(dst).endswith(".fp16.onnx"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(files.os, "replace", failing_replace)
    with pytest.raises(OutputPathError, match="No space left"):
        write_together([(out, b"new fp32"), (variant, b"new fp16")])
    assert out.read_bytes() == b"old fp32" and not variant.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temporaries, no backups left
    monkeypatch.setattr(files.os, "replace", real_replace)
    write_together([(out, b"new fp32"), (variant, b"new fp16")])
    assert out.read_bytes() == b"new fp32" and variant.read_bytes() == b"new fp16"


def test_ctrl_c_during_int8_leaves_the_old_files(tmp_path, reference_ckpt, monkeypatch):
    import gap_deploy.exporter.precision as precision

    out = tmp_path / "m.onnx"
    out.write_bytes(b"old fp32")
    (tmp_path / "m.int8.onnx").write_bytes(b"old int8")
    calib = tmp_path / "calib.npy"
    np.save(calib, np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(precision, "to_int8", interrupted)
    result = run(reference_ckpt, "--dynamic", "--imgsz", "32", "-o", out, "--precision", "int8", "--calib", calib)
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert out.read_bytes() == b"old fp32" and (tmp_path / "m.int8.onnx").read_bytes() == b"old int8"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["calib.npy", "m.int8.onnx", "m.onnx"]


def test_an_output_symlink_is_written_through(tmp_path, reference_ckpt):
    target = tmp_path / "real.onnx"
    target.write_bytes(b"old")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    result = run(reference_ckpt, "--dynamic", "--imgsz", "32", "-o", link, "--no-verify")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == target  # the link still points where it did
    assert target.read_bytes()[:4] != b"old" and target.stat().st_size > 1000
