"""runtime.manifest.EngineManifest: the file beside a plan that says where it may run, and what a wrong or
forged one gives (one message with the command that rebuilds, never a traceback)."""

from __future__ import annotations

import json

import pytest

from gap_deploy.runtime.errors import ArtifactError, ManifestMismatchError
from gap_deploy.runtime.manifest import EngineManifest, manifest_path, version_compatible_runs

HERE = {"tensorrt_version": "11.4.0.106", "gpu_name": "NVIDIA H200", "compute_capability": "9.0"}


def _manifest(**changes) -> EngineManifest:
    values = dict(HERE, precision="fp16", plan_sha256="a" * 64, onnx_sha256="b" * 64,
                  profiles=[{"images": [[1, 3, 4, 4], [1, 3, 64, 64], [8, 3, 256, 256]]}])
    values.update(changes)
    return EngineManifest(**values)


def test_a_manifest_survives_its_file(tmp_path):
    plan = tmp_path / "m.plan"
    manifest = _manifest(metadata={"gap.num_classes": "10"})
    manifest.write(plan)
    assert manifest_path(plan).is_file()
    assert EngineManifest.read(plan) == manifest


@pytest.mark.parametrize("text, why", [
    ("[]", "not an object"),
    ('{"format": 999}', "format 999"),
    ("{not json", "Expecting property name"),
])
def test_an_unreadable_manifest_is_one_message(tmp_path, text, why):
    plan = tmp_path / "m.plan"
    manifest_path(plan).write_text(text)
    with pytest.raises(ArtifactError, match=why):
        EngineManifest.read(plan)


def test_a_field_of_the_wrong_type_is_named(tmp_path):
    plan = tmp_path / "m.plan"
    data = json.loads(_manifest().to_json())
    data["metadata"] = "not a map"
    manifest_path(plan).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match='"metadata" is not a map'):
        EngineManifest.read(plan)


def test_a_plan_runs_only_where_its_manifest_allows(tmp_path):
    plan = tmp_path / "m.plan"
    _manifest().check(plan=plan, plan_sha256="a" * 64, **HERE)  # built here: runs
    cases = [
        (_manifest(), dict(HERE, plan_sha256="c" * 64), "SHA-256 differs"),
        (_manifest(tensorrt_version="11.3.0.1"), dict(HERE, plan_sha256="a" * 64), "Engines only run on the version"),
        (_manifest(compute_capability="8.9", gpu_name="L4"), dict(HERE, plan_sha256="a" * 64), "compute capability"),
        (_manifest(gpu_name="NVIDIA H100"), dict(HERE, plan_sha256="a" * 64), "was built on a NVIDIA H100"),
        (_manifest(), dict(HERE, plan_sha256="a" * 64, lean=True), "not version-compatible"),
    ]
    for manifest, here, why in cases:
        with pytest.raises(ManifestMismatchError, match=why) as caught:
            manifest.check(plan=plan, **here)
        assert "gap-build" in (caught.value.hint or "")
    _manifest(gpu_name="NVIDIA H100", hardware_compatibility="same-cc").check(plan=plan, plan_sha256="a" * 64,
                                                                               **HERE)


def test_version_compatible_engines_run_forward_only():
    assert version_compatible_runs((11, 0, 0), (11, 4, 0))
    assert version_compatible_runs((10, 9, 0), (11, 4, 0))  # NVIDIA's 11.x matrix: 10 -> 11
    assert not version_compatible_runs((11, 4, 0), (11, 0, 0))  # never on an older TensorRT
    assert not version_compatible_runs((10, 9, 0), (12, 0, 0))  # no promise past one major
