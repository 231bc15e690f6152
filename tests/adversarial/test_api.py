"""The Python API given bad input: a GapError subclass with a message, in bounded time."""

from __future__ import annotations

import importlib
import time

import pytest

from tests.adversarial.harness import (
    API_CASES,
    LIMIT_S,
    _rt,
)


@pytest.mark.parametrize("name", sorted(API_CASES))
def test_api_bad_input(name, base, tmp_path):
    from gap_deploy.runtime.errors import GapError

    call, kind, message = API_CASES[name]
    (tmp_path / "model.onnx").write_bytes((base / "model.onnx").read_bytes())
    started = time.perf_counter()
    with pytest.raises(GapError) as info:
        call(tmp_path)
    assert type(info.value).__name__ == kind and message in str(info.value)
    assert time.perf_counter() - started < LIMIT_S


@pytest.mark.parametrize("call, fragment", [
    (lambda b, m, d: _rt().load(b, shape="1x3x32x48"), "shape= must be 4 positive whole numbers"),
    (lambda b, m, d: _rt().load(b, shape=[1, 3, "a", 4]), "shape= must be 4 positive whole"),
    (lambda b, m, d: importlib.import_module("gap_deploy.runtime.evaluate").evaluate(str(m), d), "a dict of artifacts"),
    (lambda b, m, d: importlib.import_module("gap_deploy.runtime.evaluate").evaluate({"a": m}, d, sizes=[5]),
     "each size must be 2 positive whole numbers"),
    (lambda b, m, d: list(importlib.import_module("gap_deploy.runtime.classify").iter_classify(None, [])),
     "needs a runtime.Session"),
    (lambda b, m, d: importlib.import_module("gap_deploy.runtime.tune").tune({"a": m}, d, sizes=["32"]),
     "each size must be 2 positive whole numbers"),
])
def test_api_misuse_gets_the_toolkit_s_own_error(tmp_path, reference_onnx, labelled_set, call, fragment):
    """Failed before: ValueError, AttributeError or TypeError from deep inside (e.g. "'str' object has no
    attribute 'items'")."""
    from gap_deploy.exporter.pack import pack
    from gap_deploy.runtime.errors import GapError

    bundle = tmp_path / "bundle"
    pack(reference_onnx, bundle, fixed=[(1, 3, 32, 48)])
    with pytest.raises(GapError, match=fragment):
        call(bundle, reference_onnx, labelled_set)
