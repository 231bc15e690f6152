"""runtime.publish.Publication: files and folders appear together or not at all; what was there stays."""

from __future__ import annotations

import os

import pytest

from gap_deploy.runtime.errors import OutputPathError
from gap_deploy.runtime.publish import Publication


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_files_and_a_folder_appear_together_on_success(tmp_path):
    with Publication(sign_key=None) as pub:
        pub.write_bytes(tmp_path / "a.bin", b"A")
        pub.write_text(tmp_path / "b.txt", "B")
        staged = pub.folder(tmp_path / "bundle")
        (staged / "model.json").write_text("{}")
        assert not (tmp_path / "a.bin").exists() and not (tmp_path / "bundle").exists()  # nothing before the end
    assert (tmp_path / "a.bin").read_bytes() == b"A" and (tmp_path / "b.txt").read_text() == "B"
    assert (tmp_path / "bundle" / "model.json").read_text() == "{}"
    assert _leftovers(tmp_path) == []  # no staging file or backup left beside the targets


def test_an_exception_publishes_nothing_and_keeps_what_was_there(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"old")
    with pytest.raises(RuntimeError), Publication(sign_key=None) as pub:
        pub.write_bytes(tmp_path / "a.bin", b"new")
        pub.write_bytes(tmp_path / "c.bin", b"C")
        pub.folder(tmp_path / "bundle")
        raise RuntimeError("a check failed")
    assert (tmp_path / "a.bin").read_bytes() == b"old"
    assert not (tmp_path / "c.bin").exists() and not (tmp_path / "bundle").exists()
    assert _leftovers(tmp_path) == []


def test_a_move_that_fails_halfway_restores_the_targets_already_moved(tmp_path, monkeypatch):
    (tmp_path / "a.bin").write_bytes(b"old A")
    real_replace = os.replace
    calls = []

    def failing_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    with pytest.raises(OutputPathError), Publication(sign_key=None) as pub:
        pub.write_bytes(tmp_path / "a.bin", b"new A")
        pub.write_bytes(tmp_path / "b.bin", b"new B")
        monkeypatch.setattr(os, "replace", failing_second)
    monkeypatch.setattr(os, "replace", real_replace)
    assert (tmp_path / "a.bin").read_bytes() == b"old A"  # moved first, then put back
    assert not (tmp_path / "b.bin").exists()


def test_a_link_at_a_file_target_keeps_pointing_where_it_did(tmp_path):
    real = tmp_path / "real.bin"
    real.write_bytes(b"old")
    (tmp_path / "link.bin").symlink_to(real)
    with Publication(sign_key=None) as pub:
        pub.write_bytes(tmp_path / "link.bin", b"new")
    assert (tmp_path / "link.bin").is_symlink() and real.read_bytes() == b"new"


def test_a_folder_is_never_written_over_another(tmp_path):
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "mine.txt").write_text("keep")
    with pytest.raises(OutputPathError, match="exists and is not empty"), Publication(sign_key=None) as pub:
        pub.folder(tmp_path / "bundle")
    assert (tmp_path / "bundle" / "mine.txt").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    with Publication(sign_key=None) as pub:  # an empty folder may be filled
        (pub.folder(tmp_path / "empty") / "x").write_text("x")
    assert (tmp_path / "empty" / "x").read_text() == "x"
