"""The documentation site builds with warnings as errors (broken links and anchors included), every command has
its page with a reference generated from the command itself, and the README stays a landing page that links
into the site."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("gap-export", "gap-build", "gap-run", "gap-bench", "gap-eval", "gap-pack", "gap-triton", "gap-tune",
            "gap-debug", "gap-verify")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    return out


@pytest.mark.slow
def test_every_command_has_a_page_with_its_options_from_click(site):
    import importlib

    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == set(COMMANDS)  # a new command needs its page here
    for name in COMMANDS:
        page = (site / "commands" / name / "index.html").read_text()
        module, _, attr = scripts[name].partition(":")
        command = getattr(importlib.import_module(module), attr)
        for param in command.params:  # every option the command shows is on its page, as click declares it
            if getattr(param, "hidden", False):  # an old name kept for a release (docs/reference/vocabulary.md)
                continue
            for opt in param.opts if param.param_type_name == "option" else ():
                assert opt in page, f"{name}'s page does not show {opt}"


@pytest.mark.slow
def test_the_api_page_shows_the_entry_points_from_their_docstrings(site):
    page = (site / "api" / "index.html").read_text()
    for name in ("gap_deploy.runtime.load", "gap_deploy.runtime.Session.run_many", "gap_deploy.exporter.load_model",
                 "gap_deploy.exporter.export_onnx", "gap_deploy.runtime.preprocess.Preprocess"):
        assert f'id="{name}"' in page, name


def test_the_readme_is_a_landing_page_whose_links_exist():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 200
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    local = [link for link in links if not re.match(r"[a-z]+://", link)]
    assert any(link.startswith("docs/") for link in local)
    missing = [link for link in local if not (ROOT / link).exists()]
    assert missing == []


def test_the_shell_completion_the_install_page_shows_is_what_click_gives():
    """docs/install.md's completion line works: click answers the environment variable it names with a bash
    completion function for that command."""
    import os
    import subprocess
    import sys

    text = (ROOT / "docs" / "install.md").read_text()
    assert 'eval "$(_GAP_RUN_COMPLETE=bash_source gap-run)"' in text
    script = Path(sys.executable).parent / "gap-run"  # the console script the line names
    done = subprocess.run([str(script)], capture_output=True, text=True,
                          env={**os.environ, "_GAP_RUN_COMPLETE": "bash_source"}, timeout=60)
    assert done.returncode == 0 and "complete -o nosort -F" in done.stdout and "COMP_WORDS" in done.stdout


@pytest.mark.slow
def test_the_api_page_s_python_runs_as_a_notebook_would(tmp_path):
    """docs/api.md's Python blocks, in order, as one program in an empty folder: the example is the code."""
    import subprocess
    import sys

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), re.S)
    assert len(blocks) >= 2
    done = subprocess.run([sys.executable, "-c", "\n".join(blocks)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'name': 'cat'" in done.stdout or "'name': 'dog'" in done.stdout or "'name': 'bird'" in done.stdout
    assert (tmp_path / "model.onnx").is_file()
