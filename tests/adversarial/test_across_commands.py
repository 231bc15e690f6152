"""Bad input that every command meets alike: outputs inside inputs, links, FIFOs, full and immutable disks,
sizes no machine can run, folders that cannot be listed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.adversarial.harness import (
    CLIS,
    _labelled,
    _run_capped,
    gap_export,
    gap_pack,
    gap_triton,
    gap_tune,
)
from tests.conftest import assert_clean_failure


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import errno

    from gap_deploy.runtime import publish as files
    from gap_deploy.runtime.errors import OutputPathError

    target = tmp_path / "report.json"
    target.write_text("old")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", no_space)
    with pytest.raises(OutputPathError, match=r"cannot write .*report.json: No space left on device(.|\n)*free some"):
        files.publish_text(target, "new")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


@pytest.mark.parametrize("command", ["gap-eval", "gap-tune"])
@pytest.mark.parametrize("option, inside", [("--json", "class1/a.png"), ("--plot", "class1/a.png"),
                                            ("--json", "results.json")])
def test_an_output_inside_the_data_folder_is_refused_and_nothing_changes(labelled_set, reference_onnx, command,
                                                                        option, inside):
    from gap_deploy.exporter.cli.tune import main as tune
    from gap_deploy.runtime.cli.eval import main as evaluate

    target = labelled_set / inside
    before = {p: p.read_bytes() for p in labelled_set.rglob("*") if p.is_file()}
    args = [str(reference_onnx), "--data", str(labelled_set), option, str(target)]
    result = CliRunner().invoke(evaluate if command == "gap-eval" else tune, args)
    assert_clean_failure(result, f"{option} {target} is inside --data {labelled_set}")
    assert {p: p.read_bytes() for p in labelled_set.rglob("*") if p.is_file()} == before
    assert target.exists() == (inside != "results.json")


def test_an_output_folder_that_holds_an_input_is_refused(tmp_path):
    from gap_deploy.runtime.errors import OutputPathError
    from gap_deploy.runtime.files import check_distinct

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "model.ort").write_bytes(b"ort")
    with pytest.raises(OutputPathError, match="is inside ARTIFACT"):
        check_distinct({"ARTIFACT": bundle}, {"--json": bundle / "model.json"})
    with pytest.raises(OutputPathError, match="MODEL .* is inside -o/--output"):
        check_distinct({"MODEL": bundle / "model.ort"}, {"-o/--output": bundle})
    check_distinct({"ARTIFACT": bundle}, {"--json": tmp_path / "out.json"})  # beside it is fine


@pytest.mark.parametrize("command, option", [("gap-tune", "--json"), ("gap-tune", "--plot"), ("gap-eval", "--json"),
                                             ("gap-debug", "--json"), ("gap-debug", "--plot")])
def test_a_link_planted_inside_an_input_folder_is_never_written_through(labelled_set, reference_onnx, reference_ckpt,
                                                                       tmp_path, command, option):
    """Failed before: --json data/link.json, a link inside the --data/--images folder pointing at a file outside every
    folder of the run, replaced that file (exit 0): the inside check followed the link to where it leads."""
    from gap_deploy.exporter.cli.debug import main as debug
    from gap_deploy.runtime.cli.eval import main as evaluate

    outside = tmp_path / "precious.txt"
    outside.write_bytes(b"the user's own file")
    link = labelled_set / "class1" / "link.json"
    link.symlink_to(outside)
    if command == "gap-debug":
        cli, args, flag = debug, [str(reference_ckpt), "--images", str(labelled_set / "class1")], "--images"
    else:
        cli = evaluate if command == "gap-eval" else gap_tune
        args, flag = [str(reference_onnx), "--data", str(labelled_set)], "--data"
    result = CliRunner().invoke(cli, [*args, option, str(link)])
    assert_clean_failure(result, f"{option} {link} is inside {flag}")
    assert outside.read_bytes() == b"the user's own file" and link.is_symlink()


def test_an_image_that_becomes_a_fifo_between_check_and_open_never_blocks(tmp_path, monkeypatch):
    """Round four, class 4: the path was checked (a regular file) and then opened by path, so a file swapped for a
    FIFO in between blocked a decode thread for ever. The check is now made on the opened descriptor. The race is
    made certain here: os.stat is told to say "regular file", as it would have before the swap. Failed before: the
    thread was still blocked after 10 s."""
    import os
    import stat as stat_module
    import threading

    from gap_deploy.runtime.errors import ArtifactError
    from gap_deploy.runtime.preprocess import load_image

    fifo = tmp_path / "a.png"
    os.mkfifo(fifo)
    real_stat = os.stat

    def stale_stat(path, *args, **kwargs):
        result = real_stat(path, *args, **kwargs)
        if str(path) == str(fifo):
            return os.stat_result((stat_module.S_IFREG | 0o644, *tuple(result)[1:]))
        return result

    monkeypatch.setattr(os, "stat", stale_stat)
    outcome: list = []

    def decode():
        try:
            load_image(fifo)
            outcome.append("decoded")
        except ArtifactError as exc:
            outcome.append(str(exc))

    worker = threading.Thread(target=decode, daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # unblock the reader so the test process can end, then fail
        with open(fifo, "wb") as writer:
            writer.write(b"x")
    assert not worker.is_alive() and outcome and "is not a regular file" in outcome[0], outcome


@pytest.mark.parametrize("args, message", [
    (["gap-pack", "model.onnx", "-o", "b", "--target", "openvino", "--min-side", "100000"],
     "a check input 1x3x100000x100000 would need about"),
    (["gap-eval", "model.onnx", "--data", "data", "--imgsz", "65536"], "--imgsz 65536: an input 1x3x65536x65536"),
    (["gap-run", "model.onnx", "data/c0/a.png", "--imgsz", "40000"], "would need about"),
])
def test_a_size_no_machine_can_run_is_refused_with_its_numbers(base, tmp_path, args, message):
    """Failed before: gap-pack --min-side 100000 died in NumPy (a traceback), gap-eval --imgsz 65536 resized the
    first image to 51 GB (the OOM killer ended it), each after work had begun."""
    import shutil

    from PIL import Image

    shutil.copy(base / "model.onnx", tmp_path / "model.onnx")
    (tmp_path / "data" / "c0").mkdir(parents=True)
    Image.new("RGB", (16, 12), (9, 99, 199)).save(tmp_path / "data" / "c0" / "a.png")
    done = _run_capped(args, tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr + done.stdout, done.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("args", [["gap-pack", "model.onnx", "-o", "{f}/b"],
                                  ["gap-triton", "model.onnx", "-o", "{f}/r"],
                                  ["gap-export", "model.pt", "-o", "{f}/m.onnx", "--no-verify"]])
def test_an_immutable_output_folder_is_one_message(base, immutable_folder, args):
    """Failed before: gap-pack and gap-triton into an immutable folder ended in PermissionError tracebacks (mkdtemp
    and mkdir); the staging folder and the repository are now created inside the publication's own error rule."""
    clis = {"gap-pack": gap_pack, "gap-triton": gap_triton, "gap-export": gap_export}
    filled = [a.replace("{f}", str(immutable_folder)) if "{f}" in a else str(base / a) if (base / a).exists() else a
              for a in args[1:]]
    result = CliRunner().invoke(clis[args[0]], filled)
    assert_clean_failure(result, str(immutable_folder))
    assert sorted(p.name for p in immutable_folder.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("command", ["run", "eval", "tune"])
def test_a_folder_that_cannot_be_listed_is_one_message(base, tmp_path, monkeypatch, command):
    """Round four, class 6: an unreadable class or image folder (mode 000) raised PermissionError from iterdir, a
    traceback. As root (this machine and CI) mode 000 does not stop a read, so the folder's listing is made to raise
    what os.scandir raises there: PermissionError(EACCES), per Python's documentation."""
    import errno
    import os

    _labelled(tmp_path, "class0")
    locked = tmp_path / "lab" / "class0"
    real = Path.iterdir

    def iterdir(self):
        if self == locked:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    real_scandir = os.scandir  # gap-run lists image folders with os.scandir (runtime.images)

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and Path(path) == locked:  # shutil also passes descriptors
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    args = {"run": [str(base / "model.onnx"), str(locked)],
            "eval": [str(base / "model.onnx"), "--data", str(tmp_path / "lab")],
            "tune": [str(base / "model.onnx"), "--data", str(tmp_path / "lab"), "--sizes", "8"]}[command]
    result = CliRunner().invoke(CLIS[command], args)
    assert_clean_failure(result, "cannot read", f"{locked}: Permission denied")
