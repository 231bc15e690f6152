"""Lets a script run from a plain checkout, where gap-deploy is not pip-installed (the GPU machines' images).

Installed, the folders exporter/ and runtime/ are the packages gap_deploy.exporter and gap_deploy.runtime
(pyproject.toml's package-dir). Without an install, ``use_checkout()`` makes ``gap_deploy`` a namespace whose
only folder is this checkout, which is the same mapping; with an install it changes nothing.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def use_checkout() -> None:
    if "gap_deploy" in sys.modules or importlib.util.find_spec("gap_deploy") is not None:
        return
    package = types.ModuleType("gap_deploy")
    package.__path__ = [str(ROOT)]  # gap_deploy.runtime -> ROOT/runtime, gap_deploy.exporter -> ROOT/exporter
    sys.modules["gap_deploy"] = package
