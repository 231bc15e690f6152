"""gap-verify given bad input as a hostile user gives it: every case of the tables in harness.py that runs gap-verify,
and the cases of its own."""

from __future__ import annotations

import pytest

from tests.adversarial.harness import (
    ROUND4,
    cases_of,
    run_case,
)


@pytest.mark.parametrize("name", cases_of("verify", ROUND4))
def test_round_four(name, base, tmp_path, monkeypatch):
    run_case(name, ROUND4[name], base, tmp_path, monkeypatch)
