"""The suite's own size, and that every case of the tables runs in exactly one command's file."""

from __future__ import annotations

from tests.adversarial.harness import (
    API_CASES,
    CASES,
    ROUND3,
    ROUND4,
)


def test_the_suite_is_large_enough():
    assert len(CASES) + len(API_CASES) >= 80


def test_round_three_adds_at_least_100_cases():
    assert len(ROUND3) >= 100


def test_round_four_adds_at_least_60_cases_here():
    assert len(ROUND4) >= 60


def test_every_case_of_the_tables_runs_in_exactly_one_command_file():
    """The tables are run per command (cases_of): a case whose command has no file, or a table a command's file
    does not run, would be a case that never runs."""
    import ast
    from pathlib import Path

    from tests.adversarial import harness

    runs: dict[str, set[str]] = {}
    for path in Path(__file__).parent.glob("test_gap_*.py"):
        command = path.stem.removeprefix("test_gap_")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "cases_of":
                assert ast.literal_eval(node.args[0]) == command, f"{path.name} runs another command's cases"
                runs.setdefault(node.args[1].id, set()).add(command)
    for table in ("CASES", "ROUND3", "ROUND4", "PREPROCESS"):
        commands = {case.cli for case in getattr(harness, table).values()}
        assert runs.get(table, set()) == commands, table
