"""The backend registry (runtime.backends.table): adding a backend is one module and a line in BACKENDS (a second
in KINDS for a new kind of artifact). tests/runtime/backends/added_backend.py is such a module; registered, it
is chosen, probed, opened and run by runtime.load with no other change. (The CLIs' --backend choices are the
table's names as it stands when they are imported.)"""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from gap_deploy.runtime.backends import table


@pytest.fixture
def added(monkeypatch):
    monkeypatch.setitem(table.KINDS, "gapx", table.ArtifactKind(
        "gapx", "a gapx model", (".gapx",), "tests.runtime.backends.added_backend", check_first="asked"))
    monkeypatch.setitem(table.BACKENDS, "gapx-cpu", table.BackendFacts("gapx-cpu", "gapx", "cpu", None))


def test_a_registered_backend_is_chosen_opened_and_run_by_load(added, reference_onnx, tmp_path):
    from gap_deploy import runtime
    from gap_deploy.runtime import session as session_module

    model = tmp_path / "model.gapx"
    shutil.copyfile(reference_onnx, model)
    x = np.random.default_rng(0).standard_normal((2, 3, 37, 53)).astype(np.float32)
    with runtime.load(model) as mine, runtime.load(reference_onnx, "ort-cpu") as reference:
        assert mine.backend == "gapx-cpu"
        assert mine.metadata.num_classes == reference.metadata.num_classes  # its metadata read through the runner
        np.testing.assert_allclose(mine.run(x), reference.run(x), rtol=1e-5, atol=1e-6)
    assert session_module.available_backends()["gapx-cpu"] is None
    with pytest.raises(runtime.GapError, match="cannot run a gapx model"):
        runtime.load(model, "ort-cpu")


def test_every_registered_kind_names_a_module_that_probes_and_opens():
    for backend in table.BACKENDS:
        module = table.backend_module(backend)
        assert callable(module.probe) and callable(module.open_runner), backend
        works, why = module.probe(backend)
        assert isinstance(works, bool) and isinstance(why, str)
    claimed = [s for kind in table.KINDS.values() for s in kind.suffixes]
    assert len(claimed) == len(set(claimed))  # no suffix belongs to two kinds


def test_a_suffix_means_one_kind_whatever_its_case(tmp_path):
    """m.PLAN is an engine to runtime.load, to gap-tune and to runtime.artifact.describe alike (describe once
    read it as ONNX)."""
    from gap_deploy.runtime.artifact import describe
    from gap_deploy.runtime.errors import ArtifactError

    plan = tmp_path / "m.PLAN"
    plan.write_bytes(b"not an engine")
    assert table.artifact_kind(plan) == "engine"
    with pytest.raises(ArtifactError, match="gap-build manifest"):
        describe(plan)
