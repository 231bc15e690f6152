"""runtime.files: the path checks every command makes before it reads or writes."""

from __future__ import annotations

import os

import pytest

from gap_deploy.runtime.errors import ArtifactError, InputTypeError, OutputPathError
from gap_deploy.runtime.files import (
    check_distinct,
    check_input_file,
    check_new_folder,
    check_output_path,
    safe_name,
    sha256_bytes,
    sha256_file,
)


def test_an_input_must_be_a_readable_non_empty_regular_file(tmp_path):
    good = tmp_path / "m.onnx"
    good.write_bytes(b"x")
    assert check_input_file(good, "model") == good
    (tmp_path / "empty.onnx").write_bytes(b"")
    os.mkfifo(tmp_path / "pipe.onnx")
    for path, message in ((tmp_path / "missing.onnx", "does not exist"), (tmp_path, "is a directory"),
                          (tmp_path / "empty.onnx", "is empty"), (tmp_path / "pipe.onnx", "not a regular file"),
                          (str(tmp_path / "a\x00b"), "NUL byte")):
        with pytest.raises(ArtifactError, match=message):
            check_input_file(path, "model")
    with pytest.raises(InputTypeError):
        check_input_file(3, "model")


def test_an_output_path_must_be_writable_and_never_a_device(tmp_path):
    assert check_output_path(tmp_path / "new.onnx") == tmp_path / "new.onnx"
    os.mkfifo(tmp_path / "pipe")
    for path, message in ((tmp_path, "is a directory"), (tmp_path / "no" / "m.onnx", "does not exist"),
                          (tmp_path / "pipe", "not a regular file")):
        with pytest.raises(OutputPathError, match=message):
            check_output_path(path)


def test_names_from_users_or_metadata_cannot_be_path_syntax():
    assert safe_name("resnet_18.v2", "model name") == "resnet_18.v2"
    for bad in ("", ".hidden", "../x", "a/b", "a b", "x" * 129, "ü"):
        with pytest.raises(OutputPathError):
            safe_name(bad, "model name")


def test_a_new_folder_must_not_exist_or_be_empty(tmp_path):
    assert check_new_folder(tmp_path / "new", "bundle") == tmp_path / "new"
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(OutputPathError, match="exists and is not empty"):
        check_new_folder(tmp_path / "full", "bundle")
    with pytest.raises(OutputPathError, match="does not exist"):
        check_new_folder(tmp_path / "no" / "new", "bundle")


def test_no_output_may_be_an_input_or_inside_an_input_folder(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    (tmp_path / "images").mkdir()
    (tmp_path / "alias.onnx").symlink_to(model)
    check_distinct({"MODEL": model}, {"-o": tmp_path / "out.onnx"})
    for output in (model, tmp_path / "alias.onnx", tmp_path / "images" / "out.json"):
        with pytest.raises(OutputPathError, match="same file as MODEL|inside --images"):
            check_distinct({"MODEL": model, "--images": tmp_path / "images"}, {"-o": output})


def test_hashes_of_a_file_and_of_its_bytes_agree(tmp_path):
    data = os.urandom(3 << 20)  # more than one read chunk
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob", chunk=1 << 20) == sha256_bytes(data)
    assert sha256_bytes(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # FIPS 180-2
