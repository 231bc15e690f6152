"""`pip install .` (not editable) into a fresh venv beside another distribution with a top-level `runtime` package:
both import, and gap-run works, also from a folder that holds an application's own runtime/ package.

The fresh venv gets no packages from an index: the test's own interpreter lends its site-packages (numpy, click,
Pillow, onnxruntime, setuptools) through a .pth line, which puts that folder on sys.path without processing the
.pth files inside it, so this checkout's editable install is not active in the fresh venv.
"""

from __future__ import annotations

import shutil
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _tracked_copy(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _pip(python: Path, *args: str) -> None:
    result = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                             "--no-index", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_installed_names_cannot_collide_with_a_runtime_package(tmp_path, reference_onnx):
    from PIL import Image

    env = tmp_path / "fresh"
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    subprocess.run([str(python), "-m", "pip", "uninstall", "--quiet", "-y", "setuptools"], check=True,
                   capture_output=True, timeout=120)  # the venv's own (old) setuptools: ours builds instead
    (site / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    other = tmp_path / "other"  # an unrelated distribution whose import name is `runtime`
    (other / "runtime").mkdir(parents=True)
    (other / "runtime" / "__init__.py").write_text("WHO = 'another project'\n")
    (other / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools"]\nbuild-backend = '
                                          '"setuptools.build_meta"\n[project]\nname = "runtime-other"\nversion = "1"\n'
                                          '[tool.setuptools]\npackages = ["runtime"]\n')
    _pip(python, str(other))
    _pip(python, str(_tracked_copy(tmp_path / "src")))  # pip install . from a clean copy, not editable

    app = tmp_path / "app"  # an application with its own runtime/ folder, run from its own folder
    (app / "runtime").mkdir(parents=True)
    (app / "runtime" / "__init__.py").write_text("WHO = 'the application'\n")
    code = ("import runtime, gap_deploy.runtime as ours\n"
            "import gap_deploy.runtime.session as s\n"
            f"print(runtime.WHO, '|', ours.__file__.startswith({str(site)!r}), '|', s.Session.__name__)")
    check = subprocess.run([str(python), "-c", code],
        cwd=app, capture_output=True, text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "the application | True | Session"
    elsewhere = subprocess.run([str(python), "-c", "import runtime; print(runtime.WHO)"], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)
    assert elsewhere.stdout.strip() == "another project"  # the other distribution still imports

    Image.new("RGB", (40, 30), (200, 10, 10)).save(app / "red.png")
    run = subprocess.run([str(env / "bin" / "gap-run"), str(reference_onnx), "red.png", "-k", "1"], cwd=app,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("red.png (") and "class" in run.stdout
    templates = subprocess.run([str(python), "-c", "from importlib.resources import files; "
                                "print(sorted(p.name for p in files('gap_deploy.exporter').joinpath('readmes')"
                                ".iterdir()))"], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert "ort.md" in templates and "coreml.md" in templates  # gap-pack's README templates are in the wheel
    assert "check_vision.swift" in templates and "app_litert.md" in templates  # and the app-ready ones
    typed = subprocess.run([str(python), "-c", "from importlib.resources import files; "
                            "print(files('gap_deploy').joinpath('py.typed').is_file())"],
                           capture_output=True, text=True, check=True, cwd=tmp_path).stdout.strip()
    assert typed == "True"  # type checkers read the package's own annotations (PEP 561)
    as_module = subprocess.run([str(python), "-m", "gap_deploy", "run", "--help"], capture_output=True, text=True,
                               cwd=tmp_path, timeout=120)
    assert as_module.returncode == 0 and as_module.stdout.startswith("Usage: gap-run")
    tops = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                           "print(m.distribution('gap-deploy').read_text('top_level.txt'))"],
                          capture_output=True, text=True, check=True).stdout.split()
    assert tops == ["gap_deploy"]  # nothing else claims the top level
    licensed = subprocess.run([str(python), "-c", "import importlib.metadata as m; "
                               f"d = next(m.distributions(name='gap-deploy', path=[{str(site)!r}])); "
                               "print(d.metadata['License-Expression']); "
                               "print(next(f for f in d.files if f.name == 'LICENSE').read_text().split()[:3])"],
                              capture_output=True, text=True)
    assert licensed.returncode == 0, licensed.stderr
    # the text travels in the wheel that was installed here (not the checkout's editable install the .pth borrows)
    assert licensed.stdout.splitlines() == ["Apache-2.0", "['Apache', 'License', 'Version']"]


@pytest.mark.parametrize("line", ["pip install -c constraints/cpu.txt '.[cpu]'", "pip install '.[edge]'"])
def test_the_readme_s_install_lines_work_in_a_fresh_environment(tmp_path, reference_onnx, line):
    """The README's CPU and edge lines, run as written in a clean copy of the checkout, into fresh environments
    (the package index this machine has): the CPU line gets PyTorch's CPU build and no CUDA package; the edge line
    no torch and no onnx; gap-run classifies an image with each."""
    import json
    import shlex

    from PIL import Image

    assert line in (ROOT / "README.md").read_text()
    src = _tracked_copy(tmp_path / "src")
    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=True).create(env)
    python = env / "bin" / "python"
    words = shlex.split(line)
    done = subprocess.run([str(python), "-m", *words, "--quiet"], cwd=src, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    listed = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                            check=True).stdout
    names = {p["name"].lower(): p["version"] for p in json.loads(listed)}
    assert not [n for n in names if n.startswith("nvidia")], names  # no CUDA package on a CPU install
    if "[cpu]" in line:
        assert names["torch"].endswith("+cpu") and "onnxruntime-gpu" not in names
    else:
        assert "torch" not in names and "onnx" not in names and "onnxruntime" in names
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    run = subprocess.run([str(env / "bin" / "gap-run"), str(reference_onnx), str(tmp_path / "red.png"), "-k", "1"],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert run.returncode == 0 and "class" in run.stdout, run.stderr
