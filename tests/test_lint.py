"""The checks of `make lint`, run by `make test` too (CI runs that): ruff, its complexity rule at 15 included, and
pyright in basic mode (pyproject.toml's [tool.pyright]): no finding, no unresolved import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN))
    if found is None:
        pytest.fail(f"{name} is not installed beside {sys.executable}: pip install -e '.[test]'")
    return found


def test_ruff_finds_nothing():
    done = subprocess.run([_tool("ruff"), "check", "--output-format", "concise", "."], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_pyright_resolves_every_import_and_finds_nothing():
    done = subprocess.run([_tool("pyright"), "--outputjson"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    import json

    report = json.loads(done.stdout)
    found = [f"{d['file']}:{d['range']['start']['line'] + 1}: {d.get('rule')}: {d['message']}"
             for d in report["generalDiagnostics"]]
    assert found == [], "\n".join(found)
    assert report["summary"]["filesAnalyzed"] > 80  # the package and the scripts, not an empty selection
