"""Lets a script run from a plain checkout, where gap-deploy is not pip-installed (the GPU machines' images).

The package's folder is the checkout's gap_deploy/, so putting the checkout first on ``sys.path`` is the whole
mapping; with an install (editable or not) it changes nothing.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def use_checkout() -> None:
    if "gap_deploy" in sys.modules or importlib.util.find_spec("gap_deploy") is not None:
        return
    sys.path.insert(0, str(ROOT))
