"""gap-triton given bad input as a hostile user gives it: every case of the tables in harness.py that runs gap-triton,
and the cases of its own."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from tests.adversarial.harness import (
    ROUND3,
    ROUND4,
    cases_of,
    fake_triton,
    run_case,
)
from tests.conftest import assert_clean_failure


@pytest.mark.parametrize("field, value, message", [
    ("metadata", "a string", '"metadata" is not a map of names to strings'),
    ("metadata", {"gap.arch": 5}, '"metadata" is not a map of names to strings'),
    ("profiles", "x", '"profiles" is not a list of objects'),
    ("gpu_name", 7, '"gpu_name" is int, not a string'),
    ("version_compatible", "yes", '"version_compatible" is not true or false'),
])
def test_a_manifest_of_the_wrong_types_is_one_message(tmp_path, field, value, message):
    """Round three's remainder: a plan manifest whose metadata is a string crashed gap-triton (AttributeError, a
    traceback). The manifest's JSON types are checked when it is read, for every command."""
    import json

    from gap_deploy.exporter.cli.triton import main as triton
    from gap_deploy.runtime.manifest import EngineManifest

    manifest = EngineManifest(tensorrt_version="11.4.0.106", gpu_name="X", compute_capability="9.0", precision="fp32",
                              plan_sha256="0" * 64, onnx_sha256="0" * 64,
                              profiles=[{"images": [[1, 3, 4, 4], [1, 3, 8, 8], [1, 3, 16, 16]]}])
    (tmp_path / "p.plan").write_bytes(b"plan")
    data = json.loads(manifest.to_json())
    data[field] = value
    (tmp_path / "p.plan.json").write_text(json.dumps(data))
    result = CliRunner().invoke(triton, [str(tmp_path / "p.plan"), "-o", str(tmp_path / "repo")])
    assert_clean_failure(result, "cannot read engine manifest", message)
    assert not (tmp_path / "repo").exists()


@pytest.mark.parametrize("name", cases_of("triton", ROUND3))
def test_round_three(name, round3_base, fake_server, tmp_path, monkeypatch):
    try:
        run_case(name, ROUND3[name], round3_base, tmp_path, monkeypatch, server=fake_server)
    finally:
        fake_triton.Fake.behaviour.clear()


@pytest.mark.parametrize("name", cases_of("triton", ROUND4))
def test_round_four(name, base, tmp_path, monkeypatch):
    run_case(name, ROUND4[name], base, tmp_path, monkeypatch)
