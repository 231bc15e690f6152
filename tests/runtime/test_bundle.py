"""runtime.bundle: a gap-pack bundle as the runtime reads it. model.json is a file anyone can write: every name it
gives must be a plain file of the bundle whose bytes have the SHA-256 it lists."""

from __future__ import annotations

import json

import pytest

from gap_deploy.runtime.bundle import BUNDLE_FILE, bundle_model, bundle_props, is_bundle, kind_of
from gap_deploy.runtime.errors import ArtifactError, UsageError
from gap_deploy.runtime.files import sha256_file


def _bundle(folder, files: dict[str, bytes], **description):
    folder.mkdir()
    entries = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        entries[name] = {"sha256": sha256_file(folder / name)}
    (folder / BUNDLE_FILE).write_text(json.dumps({"files": entries, **description}))
    return folder


def test_the_dynamic_model_is_chosen_and_its_weights_checked(tmp_path):
    folder = _bundle(tmp_path / "b", {"model.xml": b"<net/>", "model.bin": b"weights"})
    assert is_bundle(folder) and not is_bundle(folder / "model.xml")
    assert bundle_model(folder, None) == folder / "model.xml"
    assert kind_of(folder) == "openvino"
    (folder / "model.bin").write_bytes(b"other weights")  # the companion is checked too
    with pytest.raises(ArtifactError, match="does not match the SHA-256"):
        bundle_model(folder, None)


def test_a_fixed_variant_is_found_by_its_shape(tmp_path):
    folder = _bundle(tmp_path / "b", {"model.ort": b"dyn", "model_1x3x64x64.ort": b"fixed"})
    description = json.loads((folder / BUNDLE_FILE).read_text())
    description["files"]["model_1x3x64x64.ort"]["shape"] = [1, 3, 64, 64]
    (folder / BUNDLE_FILE).write_text(json.dumps(description))
    assert bundle_model(folder, None) == folder / "model.ort"
    assert bundle_model(folder, (1, 3, 64, 64)) == folder / "model_1x3x64x64.ort"
    with pytest.raises(UsageError, match="no variant fixed to 1x3x32x32"):
        bundle_model(folder, (1, 3, 32, 32))


@pytest.mark.parametrize("name", ["../outside.ort", "/etc/passwd.ort", "sub/model.ort"])
def test_a_name_that_is_not_a_plain_file_of_the_bundle_is_refused(tmp_path, name):
    folder = _bundle(tmp_path / "b", {"model.ort": b"x"})
    (folder / BUNDLE_FILE).write_text(json.dumps({"files": {name: {"sha256": "0" * 64}}}))
    with pytest.raises(ArtifactError):
        bundle_model(folder, None)


def test_a_link_out_of_the_bundle_is_refused(tmp_path):
    outside = tmp_path / "secret.ort"
    outside.write_bytes(b"x")
    folder = _bundle(tmp_path / "b", {})
    (folder / "model.ort").symlink_to(outside)
    (folder / BUNDLE_FILE).write_text(json.dumps({"files": {"model.ort": {"sha256": sha256_file(outside)}}}))
    with pytest.raises(ArtifactError, match="a link out of the bundle"):
        bundle_model(folder, None)


def test_the_description_of_a_file_without_metadata_is_checked(tmp_path):
    folder = _bundle(tmp_path / "b", {"model.tflite": b"x"}, input="images", output="logits",
                     metadata={"gap.num_classes": "10"})
    assert bundle_props(folder) == ({"gap.num_classes": "10"}, ("images", "logits"))
    for bad in ({"metadata": {"num_classes": 10}}, {"metadata": {}, "input": "", "output": "logits"},
                {"files": "not a map"}):
        (folder / BUNDLE_FILE).write_text(json.dumps({"files": {}, **bad}))
        with pytest.raises(ArtifactError):
            bundle_props(folder)


def test_a_core_ml_bundle_says_where_it_runs(tmp_path):
    folder = _bundle(tmp_path / "b", {}, target="coreml")
    with pytest.raises(ArtifactError, match="runs only on Apple"):
        bundle_model(folder, None)
