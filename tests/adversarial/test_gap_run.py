"""gap-run given bad input as a hostile user gives it: every case of the tables in harness.py that runs gap-run,
and the cases of its own."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from click.testing import CliRunner

from tests.adversarial.harness import (
    CASES,
    PREPROCESS,
    ROUND3,
    ROUND4,
    _images,
    _rt,
    cases_of,
    fake_triton,
    gap_run,
    run_case,
)
from tests.conftest import assert_clean_failure


def test_ctrl_c_while_onnxruntime_imports_exits_130(base, tmp_path, monkeypatch):
    import gap_deploy.runtime._lazy as lazy

    real = lazy.importlib.import_module

    def import_module(name, *args):
        if name.split(".")[0] == "onnxruntime":
            raise KeyboardInterrupt
        return real(name, *args)

    _images(tmp_path, "a.png")
    monkeypatch.setattr(lazy.importlib, "import_module", import_module)
    result = CliRunner().invoke(gap_run, [str(base / "model.onnx"), str(tmp_path / "imgs"), "--backend", "ort-cpu"])
    assert result.exit_code == 130 and "Interrupted." in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "model.json: it nests too deeply"),
    (lambda p: p.write_bytes(b" " * (17 << 20) + b"{}"), "is larger than 16 MiB; no real one is"),
    (lambda p: (p.unlink(), os.mkfifo(p)), "is a directory, not a file"),  # a FIFO is no model.json: no bundle
])
def test_a_bundle_description_that_is_no_description_is_one_message(base, tmp_path, make, message):
    """Round four, class 6: a 100,000-deep model.json raised RecursionError out of json (a traceback), a huge one was
    read whole, and a FIFO would block the read. model.json is now read from its descriptor, bounded, and its
    nesting error said."""
    import shutil

    from gap_deploy.exporter.pack import pack

    bundle = tmp_path / "b"
    pack(base / "model.onnx", bundle)
    make(bundle / "model.json")
    _images(tmp_path, "a.png")
    started = time.perf_counter()
    result = CliRunner().invoke(gap_run, [str(bundle), str(tmp_path / "imgs")])
    assert_clean_failure(result, message)
    assert time.perf_counter() - started < 30
    shutil.rmtree(bundle)


def test_onnxruntime_failures_read_without_its_cpp_framing(tmp_path):
    """A model that fails inside onnxruntime: the message keeps onnxruntime's reason, not its C++ framing
    ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION :", source paths and function signatures)."""
    import onnx
    from onnx import TensorProto, helper

    from gap_deploy.runtime.errors import GapError

    shape = helper.make_tensor("shape", TensorProto.INT64, [2], [5, -1])
    graph = helper.make_graph([helper.make_node("Reshape", ["images", "shape"], ["flat"], name="r"),
                               helper.make_node("ReduceMean", ["flat"], ["logits"], axes=[1], keepdims=1)], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 1])], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    with _rt().load(tmp_path / "m.onnx", "ort-cpu") as session:
        with pytest.raises(GapError) as caught:
            session.run(np.zeros((1, 3, 8, 8), np.float32))  # 192 values cannot be 5 rows
    text = str(caught.value)
    assert "cannot be reshaped" in text or "Reshape" in text, text
    assert "[ONNXRuntimeError]" not in text and "onnxruntime_src" not in text and ".cc:" not in text, text


@pytest.mark.parametrize("name", cases_of("run", CASES))
def test_cli_bad_input(name, base, tmp_path, monkeypatch):
    run_case(name, CASES[name], base, tmp_path, monkeypatch)


@pytest.mark.parametrize("name", cases_of("run", ROUND3))
def test_round_three(name, round3_base, fake_server, tmp_path, monkeypatch):
    try:
        run_case(name, ROUND3[name], round3_base, tmp_path, monkeypatch, server=fake_server)
    finally:
        fake_triton.Fake.behaviour.clear()


@pytest.mark.parametrize("name", cases_of("run", PREPROCESS))
def test_preprocessing_bad_input(name, base, tmp_path, monkeypatch):
    run_case(name, PREPROCESS[name], base, tmp_path, monkeypatch)


@pytest.mark.parametrize("name", cases_of("run", ROUND4))
def test_round_four(name, base, tmp_path, monkeypatch):
    run_case(name, ROUND4[name], base, tmp_path, monkeypatch)
