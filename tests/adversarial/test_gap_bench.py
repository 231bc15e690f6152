"""gap-bench given bad input as a hostile user gives it: every case of the tables in harness.py that runs gap-bench,
and the cases of its own."""

from __future__ import annotations

import pytest

from tests.adversarial.harness import (
    CASES,
    ROUND3,
    ROUND4,
    cases_of,
    fake_triton,
    run_case,
)


@pytest.mark.parametrize("name", cases_of("bench", CASES))
def test_cli_bad_input(name, base, tmp_path, monkeypatch):
    run_case(name, CASES[name], base, tmp_path, monkeypatch)


@pytest.mark.parametrize("name", cases_of("bench", ROUND3))
def test_round_three(name, round3_base, fake_server, tmp_path, monkeypatch):
    try:
        run_case(name, ROUND3[name], round3_base, tmp_path, monkeypatch, server=fake_server)
    finally:
        fake_triton.Fake.behaviour.clear()


@pytest.mark.parametrize("name", cases_of("bench", ROUND4))
def test_round_four(name, base, tmp_path, monkeypatch):
    run_case(name, ROUND4[name], base, tmp_path, monkeypatch)
