"""gap-build given bad input as a hostile user gives it: every case of the tables in harness.py that runs gap-build,
and the cases of its own."""

from __future__ import annotations

import pytest

from tests.adversarial.harness import (
    CASES,
    cases_of,
    run_case,
)


@pytest.mark.parametrize("name", cases_of("build", CASES))
def test_cli_bad_input(name, base, tmp_path, monkeypatch):
    run_case(name, CASES[name], base, tmp_path, monkeypatch)
