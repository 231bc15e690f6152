"""pyproject.toml: every extra installs one CUDA flavour, and full and lean TensorRT at one version.

Facts the checker is built on (read from the packages' own metadata on PyPI, 2026-12-01):
- ``tensorrt`` 11.4.0.106 (the metapackage) requires ``tensorrt_cu13``: a bare ``tensorrt`` means CUDA 13,
  and says nothing a reader of pyproject.toml can see; ``tensorrt-cu12`` / ``tensorrt-lean-cu12`` are CUDA 12.
- ``onnxruntime-gpu`` 1.24.4, 1.25.1 and 1.26.0 require ``nvidia-cuda-runtime-cu12~=12.0``; 1.27.0 requires
  ``nvidia-cuda-runtime-cu13~=13.0``, and 1.29.0, 1.30.0 and 1.31.1 ``nvidia-cuda-runtime~=13.0``.
- ``cuda-python`` N.x is the CUDA N bindings.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
ORT_GPU_CUDA = {"1.24.4": 12, "1.25.1": 12, "1.26.0": 12, "1.27.0": 13, "1.29.0": 13, "1.30.0": 13, "1.31.1": 13}
METAPACKAGES = {"tensorrt", "tensorrt-lean", "tensorrt-dispatch"}


def closure(extras: dict[str, list[str]], name: str) -> list[Requirement]:
    """Every requirement an extra installs, its own references to gap-deploy[...] followed."""
    found: list[Requirement] = []
    for text in extras[name]:
        req = Requirement(text)
        if req.name == "gap-deploy":
            for inner in req.extras:
                found += closure(extras, inner)
        else:
            found.append(req)
    return found


def cuda_majors(req: Requirement) -> set[int] | None:
    """The CUDA majors a requirement can install; None when it has nothing to do with CUDA."""
    name = req.name.lower().replace("_", "-")
    if name in METAPACKAGES:
        raise AssertionError(f"{req}: the bare metapackage names no CUDA major (11.4 means CUDA 13); "
                             f"use {name}-cu12 or {name}-cu13")
    suffix = re.search(r"-cu(\d+)$", name)
    if suffix:
        return {int(suffix.group(1))}
    if name in ("cuda-python", "cuda-bindings"):
        majors = {m for m in (11, 12, 13, 14, 15) if any(req.specifier.contains(f"{m}.{minor}")
                                                           for minor in (0, 6, 9))}
        if len(majors) > 1:
            raise AssertionError(f"{req}: allows CUDA {sorted(majors)}; bound it to one major")
        return majors
    if name == "onnxruntime-gpu":
        return {cuda for version, cuda in ORT_GPU_CUDA.items() if req.specifier.contains(version)}
    return None


def check_extra(extras: dict[str, list[str]], name: str) -> None:
    reqs = closure(extras, name)
    majors: dict[int, list[str]] = {}
    for req in reqs:
        for major in cuda_majors(req) or ():
            majors.setdefault(major, []).append(str(req))
    if len(majors) > 1:
        raise AssertionError(f"[{name}] mixes CUDA flavours: {majors}")
    trt = [r for r in reqs if r.name.lower().startswith("tensorrt")]
    pins = {str(r.specifier) for r in trt}
    if trt and (len(pins) != 1 or not next(iter(pins)).startswith("==")):
        raise AssertionError(f"[{name}] TensorRT packages are not pinned to one version: {[str(r) for r in trt]}")


EXTRAS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


@pytest.mark.parametrize("name", sorted(EXTRAS))
def test_every_extra_installs_one_cuda_flavour_and_one_tensorrt_version(name):
    check_extra(EXTRAS, name)


@pytest.mark.parametrize("combo, major", [(("gpu-cu13", "test"), 13), (("gpu-cu12", "test"), 12),
                                          (("cpu", "dev"), 12), (("gpu", "test"), 13)])
def test_the_documented_install_lines_are_coherent(combo, major):
    extras = dict(EXTRAS, combo=[f"gap-deploy[{','.join(combo)}]"])
    check_extra(extras, "combo")
    found = {m for r in closure(extras, "combo") for m in (cuda_majors(r) or ())}
    assert found == {major}


@pytest.mark.parametrize("extras, message", [
    # the set of the previous pyproject.toml: tensorrt>=11.0 (CUDA 13 through its metapackage) beside dev's
    # CUDA 12 lean runtime and cuda-python<13
    ({"gpu": ["tensorrt>=11.0", "cuda-python>=12.6", "onnxruntime-gpu>=1.27"]}, "names no CUDA major"),
    ({"gpu": ["tensorrt-cu13==11.4.0.106", "cuda-python>=12.6"]}, r"allows CUDA \[12, 13"),
    ({"gpu": ["tensorrt-cu13==11.4.0.106", "tensorrt-lean-cu12==11.4.0.106"]}, "mixes CUDA flavours"),
    ({"gpu": ["onnxruntime-gpu>=1.24", "cuda-python>=13,<14"]}, "mixes CUDA flavours"),
    ({"gpu": ["tensorrt-cu12>=11.0", "tensorrt-lean-cu12==11.4.0.106"]}, "not pinned to one version"),
    ({"gpu": ["gap-deploy[a]", "tensorrt-lean-cu12==11.4.0.106"], "a": ["tensorrt-cu12==11.5.0"]},
     "not pinned to one version"),
])
def test_the_checker_refuses_a_mixed_set(extras, message):
    with pytest.raises(AssertionError, match=message):
        check_extra(extras, "gpu")


RUNTIME_ONLY = ["edge", "openvino", "ncnn-run", "litert-run"]
CONVERTING = ["openvino-int8", "ncnn", "litert", "executorch", "coreml"]


def _resolve(requirements: list[str]) -> dict[str, str]:
    """What pip would install for ``requirements`` into an empty environment, with this project's constraints
    (name -> version), from pip's own resolver (``--dry-run --report``)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", "-", "-c", str(ROOT / "constraints" / "cpu.txt"), *requirements],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and ("No matching distribution" in done.stderr or "connection" in done.stderr.lower()):
        pytest.skip(f"no package index here: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    return {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}


@pytest.mark.slow
@pytest.mark.parametrize("name", RUNTIME_ONLY + CONVERTING)
def test_no_edge_extra_changes_torch_and_runtime_extras_need_none(name):
    """An app on a board installs only a runtime extra: it must not pull torch. A converting extra may need torch,
    but with the constraints file it resolves to the pinned CPU wheel, never another build."""
    resolved = _resolve([str(r) for r in closure(EXTRAS, name)])
    pinned = (ROOT / "constraints" / "cpu.txt").read_text().split("torch==")[1].split()[0]
    if name in RUNTIME_ONLY:
        assert "torch" not in resolved, f"[{name}] pulls torch {resolved.get('torch')}"
    else:
        assert resolved.get("torch", pinned).split("+")[0] == pinned  # the local CPU wheel is 2.13.0+cpu
    assert not any(n.startswith("nvidia-") for n in resolved), f"[{name}] pulls CUDA libraries"


def test_python_m_gap_deploy_knows_every_console_script():
    """`python -m gap_deploy COMMAND` and each command's module (`python -m gap_deploy.runtime.cli.run`) run the
    same commands as the console scripts pyproject.toml declares."""
    import subprocess
    import sys

    import tomllib

    from gap_deploy.__main__ import COMMANDS

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert COMMANDS == {name: target.split(":")[0] for name, target in scripts.items()}
    for module in ("gap_deploy.runtime.cli.run", "gap_deploy.exporter.cli.pack"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.startswith(f"Usage: python -m {module}"), done.stderr
    listing = subprocess.run([sys.executable, "-m", "gap_deploy"], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0 and "gap-verify" in listing.stdout
    unknown = subprocess.run([sys.executable, "-m", "gap_deploy", "nope"], capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown command 'nope'" in unknown.stderr
