"""The adversarial suite's harness: the case tables (round by round, as they were found), the helpers that
make odd inputs, the fixtures, and the runner that holds every CLI case to the suite's rules. The tests, one
file per command, live beside it.

Bad input as a hostile user gives it: one table of cases across the four CLIs and the Python API.

Each CLI case asserts the exit code (1 for bad input, 2 for usage errors), no traceback, exactly one
error message naming the problem, a bounded time, and that every input and every output path holds
byte-for-byte what it held before (outputs get a sentinel first). API cases assert a GapError subclass
with a message, in bounded time.
"""

from __future__ import annotations

import importlib
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("torch")


from gap_deploy.exporter.cli.build import main as gap_build  # noqa: E402
from gap_deploy.exporter.cli.export import main as gap_export  # noqa: E402
from gap_deploy.runtime.cli.bench import main as gap_bench  # noqa: E402
from gap_deploy.runtime.cli.run import main as gap_run  # noqa: E402


def _rt():
    return importlib.import_module("gap_deploy.runtime")


SENTINEL = b"sentinel: must survive every failure\n"


LIMIT_S = 30


CLIS = {"export": gap_export, "build": gap_build, "run": gap_run, "bench": gap_bench}


@dataclass
class Case:
    cli: str
    args: list[str]
    code: int
    message: str
    outputs: list[str] = field(default_factory=list)  # paths (in the workspace) that get a sentinel first
    setup: object = None  # callable(ws: Path) run before, to make odd inputs
    absent: str | None = None  # text that must not appear (wrong advice)


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims width x height, with almost no data: a decompression bomb's shape."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16))
                     + chunk(b"IEND", b""))


def _save_state(ws: Path, name: str, make) -> None:
    import torch

    torch.save(make(), ws / name)


def _pickled_module(ws):
    import torch

    torch.save(torch.nn.Linear(2, 2), ws / "module.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo PWNED > pwned.txt",))


def _evil_pickle(ws):
    import torch

    torch.save({"state": _Evil()}, ws / "evil.pt")


def _ckpt_with(ws, name, change):
    import torch

    state = torch.load(ws / "model.pt", weights_only=True)
    change(state)
    torch.save(state, ws / name)


def _arch_file(ws, name, body):
    (ws / name).write_text("import torch\nfrom torch import nn\n" + body)


def _forged_onnx(ws, name, key, value):
    import onnx

    model = onnx.load(str(ws / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
    onnx.save(model, str(ws / name))


def _int_input_onnx(ws):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.INT64, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [1, 3, 8, 8])])
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(ws / "int.onnx"))


def _huge_static_onnx(ws):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("GlobalAveragePool", ["images"], ["g"]),
                               helper.make_node("Flatten", ["g"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 100000, 100000])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(ws / "huge.onnx"))


def _images(ws, *names):
    from PIL import Image

    folder = ws / "imgs"
    folder.mkdir(exist_ok=True)
    for name in names:
        Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(folder / name)


def _plan_with_manifest(ws, text):
    (ws / "e.plan").write_bytes(b"not really a plan")
    (ws / "e.plan.json").write_text(text)


EXPORT = ["model.pt", "--dynamic", "--imgsz", "32"]


CASES = {
    # ---- gap-export: the checkpoint
    "export-missing": Case("export", ["nope.pt", "-o", "out.onnx"], 1, "does not exist", ["out.onnx"]),
    "export-directory": Case("export", ["imgs", "-o", "out.onnx"], 1, "is a directory", ["out.onnx"],
                             lambda ws: _images(ws, "a.png")),
    "export-empty": Case("export", ["empty.pt", "-o", "out.onnx"], 1, "is empty", ["out.onnx"],
                         lambda ws: (ws / "empty.pt").write_bytes(b"")),
    "export-random": Case("export", ["rand.pt", "-o", "out.onnx"], 1, "cannot read checkpoint", ["out.onnx"],
                          lambda ws: (ws / "rand.pt").write_bytes(os.urandom(4096))),
    "export-truncated": Case("export", ["trunc.pt", "-o", "out.onnx"], 1, "cannot read checkpoint", ["out.onnx"],
                             lambda ws: (ws / "trunc.pt").write_bytes((ws / "model.pt").read_bytes()[:2000])),
    "export-fifo": Case("export", ["fifo.pt", "-o", "out.onnx"], 1, "not a regular file", ["out.onnx"],
                        lambda ws: os.mkfifo(ws / "fifo.pt")),
    "export-pickled-module": Case("export", ["module.pt", "-o", "out.onnx"], 1, "--trust-checkpoint", ["out.onnx"],
                                  _pickled_module, absent="weights_only=False"),
    "export-os-system-pickle": Case("export", ["evil.pt", "-o", "out.onnx"], 1, "posix.system", ["out.onnx"],
                                    _evil_pickle, absent="weights_only=False will likely succeed"),
    "export-meta-tensor": Case("export", ["meta.pt", "-o", "out.onnx"], 1, "meta device", ["out.onnx"],
                               lambda ws: _ckpt_with(ws, "meta.pt", lambda s: s.__setitem__(
                                   "fcn.bias", __import__("torch").empty(10, device="meta")))),
    "export-sparse-tensor": Case("export", ["sparse.pt", "-o", "out.onnx"], 1, "dense", ["out.onnx"],
                                 lambda ws: _ckpt_with(ws, "sparse.pt", lambda s: s.__setitem__(
                                     "fcn.bias", s["fcn.bias"].to_sparse()))),
    "export-0d-tensor": Case("export", ["zerod.pt", "-o", "out.onnx"], 1, "does not fit", ["out.onnx"],
                             lambda ws: _ckpt_with(ws, "zerod.pt", lambda s: s.__setitem__(
                                 "fcn.weight", __import__("torch").tensor(1.0)))),
    # ---- gap-export: outputs that alias inputs or are not files
    "export-o-is-checkpoint": Case("export", [*EXPORT, "-o", "model.pt"], 1, "same file as MODEL"),
    "export-o-symlink-to-checkpoint": Case("export", [*EXPORT, "-o", "link.onnx"], 1, "same file as MODEL",
                                           setup=lambda ws: os.symlink(ws / "model.pt", ws / "link.onnx")),
    "export-report-is-checkpoint": Case("export", [*EXPORT, "-o", "out.onnx", "--json", "model.pt"], 1,
                                        "same file as MODEL", ["out.onnx"]),
    "export-report-is-output": Case("export", [*EXPORT, "-o", "out.onnx", "--json", "./out.onnx"], 1,
                                    "same file as -o/--output", ["out.onnx"]),
    "export-report-is-variant": Case("export", [*EXPORT, "-o", "out.onnx", "--precision", "fp16",
                                                "--json", "out.fp16.onnx"], 1, "same file as", ["out.onnx"]),
    "export-o-dev-null": Case("export", [*EXPORT, "-o", "/dev/null"], 1, "not a regular file"),
    "export-o-missing-folder": Case("export", [*EXPORT, "-o", "no/such/out.onnx"], 1, "does not exist"),
    "export-o-directory": Case("export", [*EXPORT, "-o", "imgs"], 1, "is a directory",
                               setup=lambda ws: _images(ws, "a.png")),
    "export-calib-is-output": Case("export", [*EXPORT, "-o", "out.onnx", "--precision", "int8", "--calib",
                                              "out.int8.onnx"], 1, "same file as --calib", ["out.onnx",
                                                                                             "out.int8.onnx"]),
    # ---- gap-export: numbers and sizes
    "export-imgsz-huge": Case("export", ["model.pt", "--imgsz", "60000", "-o", "out.onnx"], 1,
                              "GAP_MEMORY_LIMIT", ["out.onnx"]),
    "export-imgsz-too-large": Case("export", ["model.pt", "--imgsz", "100000", "-o", "out.onnx"], 2,
                                   "larger than 65536", ["out.onnx"]),
    "export-imgsz-zero": Case("export", ["model.pt", "--imgsz", "0", "-o", "out.onnx"], 2, "is not a size",
                              ["out.onnx"]),
    "export-imgsz-text": Case("export", ["model.pt", "--imgsz", "big", "-o", "out.onnx"], 2, "is not a size",
                              ["out.onnx"]),
    "export-batch-huge": Case("export", ["model.pt", "--imgsz", "224", "--batch-size", "100000", "-o", "out.onnx"], 1,
                              "GAP_MEMORY_LIMIT", ["out.onnx"]),
    "export-batch-zero": Case("export", ["model.pt", "--batch-size", "0", "-o", "out.onnx"], 2, "--batch-size",
                              ["out.onnx"]),
    "export-atol-nan": Case("export", [*EXPORT, "--atol", "nan", "-o", "out.onnx"], 2, "not a finite number",
                            ["out.onnx"]),
    "export-rtol-negative": Case("export", [*EXPORT, "--rtol", "-1", "-o", "out.onnx"], 2, "below 0",
                                 ["out.onnx"]),
    "export-mean-nan": Case("export", [*EXPORT, "--mean", "nan,0,0", "-o", "out.onnx"], 2, "finite numbers",
                            ["out.onnx"]),
    "export-std-zero": Case("export", [*EXPORT, "--std", "0,0,0", "-o", "out.onnx"], 1, "must be > 0",
                            ["out.onnx"]),
    "export-mean-count": Case("export", [*EXPORT, "--mean", "1,2", "-o", "out.onnx"], 1, "has 2 values",
                              ["out.onnx"]),
    "export-opset": Case("export", [*EXPORT, "--opset", "7", "-o", "out.onnx"], 2, "--opset", ["out.onnx"]),
    "export-min-top1-nan": Case("export", [*EXPORT, "--min-top1", "nan", "-o", "out.onnx"], 2, "not a finite",
                                ["out.onnx"]),
    "export-verify-below-min": Case("export", [*EXPORT, "--verify-shapes", "2x2", "-o", "out.onnx"], 2,
                                    "below this model's minimum", ["out.onnx"]),
    "export-verify-channels": Case("export", [*EXPORT, "--verify-shapes", "1x1x8x8", "-o", "out.onnx"], 2,
                                   "has 1 channels", ["out.onnx"]),
    "export-summary-below-min": Case("export", ["model.pt", "--summary", "--imgsz", "2"], 1, "does not run at 2x2"),
    "export-num-classes": Case("export", [*EXPORT, "--num-classes", "3", "-o", "out.onnx"], 1, "--num-classes",
                               ["out.onnx"]),
    "export-class-names-count": Case("export", [*EXPORT, "--class-names", "names.txt", "-o", "out.onnx"], 1,
                                     "2 class names", ["out.onnx"],
                                     lambda ws: (ws / "names.txt").write_text("a\nb\n")),
    "export-class-names-missing": Case("export", [*EXPORT, "--class-names", "none.txt", "-o", "out.onnx"], 1,
                                       "none.txt", ["out.onnx"]),
    # ---- gap-export: calibration data (the FP32 model must not be replaced first)
    "export-int8-no-calib": Case("export", [*EXPORT, "--precision", "int8", "-o", "out.onnx"], 2, "--calib",
                                 ["out.onnx"]),
    "export-calib-empty-folder": Case("export", [*EXPORT, "--precision", "int8", "--calib", "cal", "-o",
                                                 "out.onnx"], 1, "holds no image files", ["out.onnx", "out.int8.onnx"],
                                      lambda ws: (ws / "cal").mkdir()),
    "export-calib-missing": Case("export", [*EXPORT, "--precision", "int8", "--calib", "nocal", "-o", "out.onnx"], 1,
                                 "does not exist", ["out.onnx", "out.int8.onnx"]),
    "export-calib-nhwc": Case("export", [*EXPORT, "--precision", "int8", "--calib", "nhwc.npy", "-o", "out.onnx"],
                              1, "expected float (N, 3, H, W)", ["out.onnx", "out.int8.onnx"],
                              lambda ws: np.save(ws / "nhwc.npy", np.zeros((4, 32, 32, 3), np.float32))),
    "export-calib-int": Case("export", [*EXPORT, "--precision", "int8", "--calib", "int.npy", "-o", "out.onnx"], 1,
                             "dtype int64", ["out.onnx", "out.int8.onnx"],
                             lambda ws: np.save(ws / "int.npy", np.zeros((4, 3, 32, 32), np.int64))),
    "export-calib-nan": Case("export", [*EXPORT, "--precision", "int8", "--calib", "nan.npy", "-o", "out.onnx"], 1,
                             "NaN", ["out.onnx", "out.int8.onnx"],
                             lambda ws: np.save(ws / "nan.npy", np.full((4, 3, 32, 32), np.nan, np.float32))),
    "export-calib-npz-named-npy": Case("export", [*EXPORT, "--precision", "int8", "--calib", "z.npy", "-o",
                                                  "out.onnx"], 1, ".npz archive", ["out.onnx", "out.int8.onnx"],
                                       lambda ws: np.savez(open(ws / "z.npy", "wb"), a=np.zeros(3))),
    "export-calib-fifo-only": Case("export", [*EXPORT, "--precision", "int8", "--calib", "fifos", "-o",
                                              "out.onnx"], 1, "is not a regular file", ["out.onnx"],
                                   lambda ws: ((ws / "fifos").mkdir(), os.mkfifo(ws / "fifos" / "a.png"))),
    # ---- gap-export: architectures that misbehave
    "export-arch-form": Case("export", [*EXPORT, "--arch", "nocolon", "-o", "out.onnx"], 1, "MODULE:CALLABLE",
                             ["out.onnx"]),
    "export-arch-missing-module": Case("export", [*EXPORT, "--arch", "no_such_mod:Net", "-o", "out.onnx"], 1,
                                       "cannot import", ["out.onnx"]),
    "export-arch-exits": Case("export", [*EXPORT, "--arch", "exits.py:Net", "-o", "out.onnx"], 1,
                              "exited while being imported", ["out.onnx"],
                              lambda ws: _arch_file(ws, "exits.py", "import argparse\nargparse.ArgumentParser()"
                                                    ".parse_args(['--nope'])\n")),
    "export-arch-tuple": Case("export", ["tuple.pt", "--arch", "tuple.py:Net", "--dynamic", "-o", "out.onnx"], 1,
                              "returns a tuple", ["out.onnx"],
                              lambda ws: (_arch_file(ws, "tuple.py", (
                                  "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                                  "        self.c = nn.Conv2d(3, 4, 3)\n    def forward(self, x):\n"
                                  "        y = self.c(x).mean((2, 3))\n        return y, y\n")),
                                          _save_state(ws, "tuple.pt", lambda: __import__("torch").nn.Conv2d(
                                              3, 4, 3).state_dict()), _prefix_state(ws, "tuple.pt", "c."))),
    "export-arch-zero-classes": Case("export", ["zero.pt", "--arch", "zero.py:Net", "-o", "out.onnx"], 1,
                                     "at least one class", ["out.onnx"],
                                     lambda ws: (_arch_file(ws, "zero.py", (
                                         "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                                         "        self.c = nn.Conv2d(3, 4, 3)\n    def forward(self, x):\n"
                                         "        return self.c(x).mean((2, 3))[:, :0]\n")),
                                         _save_state(ws, "zero.pt", lambda: __import__("torch").nn.Conv2d(
                                             3, 4, 3).state_dict()), _prefix_state(ws, "zero.pt", "c."))),
    "export-engine-no-tensorrt": Case("export", [*EXPORT, "--engine", "-o", "out.onnx"], 1,
                                      "needs the full TensorRT", ["out.onnx"]),
    # ---- gap-build
    "build-missing": Case("build", ["nope.onnx", "-o", "out.plan"], 1, "does not exist", ["out.plan"]),
    "build-random": Case("build", ["rand.onnx", "-o", "out.plan"], 1, "cannot read ONNX model", ["out.plan"],
                         lambda ws: (ws / "rand.onnx").write_bytes(os.urandom(2048))),
    "build-o-is-model": Case("build", ["model.onnx", "-o", "model.onnx"], 1, "same file as MODEL"),
    "build-int8-no-calib": Case("build", ["model.onnx", "--precision", "int8", "-o", "out.plan"], 2, "--calib",
                                ["out.plan"]),
    "build-bad-profile": Case("build", ["model.onnx", "--profile", "1x3x4x4:1x3x8x8", "-o", "out.plan"], 2,
                              "MIN:OPT:MAX", ["out.plan"]),
    "build-min-only": Case("build", ["model.onnx", "--min", "1x3x4x4", "-o", "out.plan"], 2, "together",
                           ["out.plan"]),
    "build-workspace-nan": Case("build", ["model.onnx", "--workspace", "nan", "-o", "out.plan"], 2, "not a finite",
                                ["out.plan"]),
    "build-calib-size-zero": Case("build", ["model.onnx", "--calib-size", "0", "-o", "out.plan"], 2, "is not a size",
                                  ["out.plan"]),
    "build-no-tensorrt": Case("build", ["model.onnx", "-o", "out.plan"], 1, "needs the full TensorRT", ["out.plan"]),
    # ---- gap-run
    "run-missing-artifact": Case("run", ["nope.onnx", "imgs"], 1, "does not exist",
                                 setup=lambda ws: _images(ws, "a.png")),
    "run-artifact-directory": Case("run", ["imgs", "imgs"], 1, "is a directory",
                                   setup=lambda ws: _images(ws, "a.png")),
    "run-random-onnx": Case("run", ["rand.onnx", "imgs"], 1, "cannot read ONNX model",
                            setup=lambda ws: ((ws / "rand.onnx").write_bytes(os.urandom(2048)), _images(ws, "a.png"))),
    "run-truncated-onnx": Case("run", ["trunc.onnx", "imgs"], 1, "cannot read ONNX model",
                               setup=lambda ws: ((ws / "trunc.onnx").write_bytes(
                                   (ws / "model.onnx").read_bytes()[:500]), _images(ws, "a.png"))),
    "run-empty-folder": Case("run", ["model.onnx", "none"], 1, "no image files",
                             setup=lambda ws: (ws / "none").mkdir()),
    "run-no-images": Case("run", ["model.onnx", "docs"], 1, "no image files",
                          setup=lambda ws: ((ws / "docs").mkdir(), (ws / "docs" / "a.txt").write_text("x"))),
    "run-fifo-image": Case("run", ["model.onnx", "fifo.png"], 1, "not a regular file",
                           setup=lambda ws: os.mkfifo(ws / "fifo.png")),
    "run-not-an-image": Case("run", ["model.onnx", "fake.png"], 1, "not a readable image",
                             setup=lambda ws: (ws / "fake.png").write_bytes(b"\x89PNG nope")),
    "run-too-small": Case("run", ["model.onnx", "tiny.png"], 1, "below this model's minimum",
                          setup=lambda ws: __import__("PIL.Image").Image.new("RGB", (2, 2)).save(ws / "tiny.png")),
    "run-bomb": Case("run", ["model.onnx", "bomb.png"], 1, "bomb",
                     setup=lambda ws: _png_header_only(ws / "bomb.png", 30000, 30000)),
    "run-imgsz-zero": Case("run", ["model.onnx", "imgs", "--imgsz", "0"], 2, "is not a size",
                           setup=lambda ws: _images(ws, "a.png")),
    "run-imgsz-huge": Case("run", ["model.onnx", "imgs", "--imgsz", "60000"], 1, "GAP_MEMORY_LIMIT",
                           setup=lambda ws: _images(ws, "a.png")),
    "run-topk-zero": Case("run", ["model.onnx", "imgs", "--topk", "0"], 2, "--topk",
                          setup=lambda ws: _images(ws, "a.png")),
    "run-batch-zero": Case("run", ["model.onnx", "imgs", "--batch-size", "0"], 2, "--batch-size",
                           setup=lambda ws: _images(ws, "a.png")),
    "run-trt-on-onnx": Case("run", ["model.onnx", "imgs", "--backend", "trt"], 2, "cannot run an ONNX model",
                            setup=lambda ws: _images(ws, "a.png")),
    "run-cuda-unavailable": Case("run", ["model.onnx", "imgs", "--backend", "ort-cuda"], 1, "not available",
                                 setup=lambda ws: _images(ws, "a.png")),
    "run-plan-without-manifest": Case("run", ["bare.plan", "imgs"], 1, "--trust-engine",
                                      setup=lambda ws: ((ws / "bare.plan").write_bytes(b"plan"),
                                                        _images(ws, "a.png"))),
    "run-manifest-not-object": Case("run", ["e.plan", "imgs"], 1, "not an object",
                                    setup=lambda ws: (_plan_with_manifest(ws, "[1, 2]"), _images(ws, "a.png"))),
    "run-manifest-not-json": Case("run", ["e.plan", "imgs"], 1, "cannot read engine manifest",
                                  setup=lambda ws: (_plan_with_manifest(ws, "{nope"), _images(ws, "a.png"))),
    "run-forged-min": Case("run", ["forged.onnx", "imgs"], 1, "not a whole number",
                           setup=lambda ws: (_forged_onnx(ws, "forged.onnx", "gap.min_height", "four"),
                                             _images(ws, "a.png"))),
    "run-forged-json": Case("run", ["forged.onnx", "imgs"], 1, "not valid JSON",
                            setup=lambda ws: (_forged_onnx(ws, "forged.onnx", "gap.mean", "[0.5,"),
                                              _images(ws, "a.png"))),
    "run-forged-count": Case("run", ["forged.onnx", "imgs"], 1, "2 values for 3 input channels",
                             setup=lambda ws: (_forged_onnx(ws, "forged.onnx", "gap.std", "[0.5, 0.5]"),
                                               _images(ws, "a.png"))),
    "run-forged-type": Case("run", ["forged.onnx", "imgs"], 1, "not a list of strings",
                            setup=lambda ws: (_forged_onnx(ws, "forged.onnx", "gap.class_names", "[1, 2]"),
                                              _images(ws, "a.png"))),
    "run-forged-std-zero": Case("run", ["forged.onnx", "imgs"], 1, "std must be > 0",
                                setup=lambda ws: (_forged_onnx(ws, "forged.onnx", "gap.std", "[0, 0, 0]"),
                                                  _images(ws, "a.png"))),
    "run-int-input": Case("run", ["int.onnx", "imgs"], 1, "float input",
                          setup=lambda ws: (_int_input_onnx(ws), _images(ws, "a.png"))),
    "run-huge-static": Case("run", ["huge.onnx", "imgs"], 1, "GAP_MEMORY_LIMIT",
                            setup=lambda ws: (_huge_static_onnx(ws), _images(ws, "a.png"))),
    # ---- gap-bench
    "bench-duration-nan": Case("bench", ["model.onnx", "--duration", "nan"], 2, "not a finite number"),
    "bench-duration-inf": Case("bench", ["model.onnx", "--duration", "inf"], 2, "not a finite number"),
    "bench-warmup-negative": Case("bench", ["model.onnx", "--warmup", "-1"], 2, "below 0"),
    "bench-shape-huge": Case("bench", ["model.onnx", "--shape", "100000x3x1000x1000"], 1, "GAP_MEMORY_LIMIT"),
    "bench-shape-20-digits": Case("bench", ["model.onnx", "--shape", "99999999999999999999x3x8x8"], 2,
                                  "above 2147483647"),
    "bench-shape-below-min": Case("bench", ["model.onnx", "--shape", "1x3x3x3", "--iterations", "1"], 1,
                                  "below this model's minimum"),
    "bench-json-is-artifact": Case("bench", ["model.onnx", "--json", "model.onnx"], 1, "same file as ARTIFACT"),
    "bench-plot-is-json": Case("bench", ["model.onnx", "--json", "b.json", "--plot", "b.json"], 1,
                               "same file as --json", ["b.json"]),
    "bench-json-dev-null": Case("bench", ["model.onnx", "--json", "/dev/null"], 1, "not a regular file"),
    "bench-cuda-graph-ort": Case("bench", ["model.onnx", "--cuda-graph", "--iterations", "1"], 2,
                                 "TensorRT engines only"),
    "bench-threads-zero": Case("bench", ["model.onnx", "--threads", "0"], 2, "--threads"),
    "bench-threads-huge": Case("bench", ["model.onnx", "--threads", "5000"], 2, "--threads"),
    "bench-iterations-zero": Case("bench", ["model.onnx", "--iterations", "0"], 2, "--iterations"),
    "bench-torch-missing": Case("bench", ["model.onnx", "--torch", "nope.pt"], 1, "does not exist"),
    "bench-torch-wrong-classes": Case("bench", ["model.onnx", "--torch", "five.pt", "--iterations", "1"], 2,
                                      "gives logits of shape (1, 5)",
                                      setup=lambda ws: _save_state(ws, "five.pt", lambda: __import__(
                                          "tests.conftest", fromlist=["x"]).make_reference(5).state_dict())),
    "bench-torch-wrong-channels": Case("bench", ["model.onnx", "--torch", "gray.pt", "--iterations", "1"], 2,
                                       "does not run on the artifact's input",
                                       setup=lambda ws: _save_state(ws, "gray.pt", lambda: __import__(
                                           "tests.conftest", fromlist=["x"]).make_reference(
                                           10, in_channels=1).state_dict())),
}


def _prefix_state(ws, name, prefix):
    import torch

    state = torch.load(ws / name, weights_only=True)
    torch.save({prefix + k: v for k, v in state.items()}, ws / name)


@pytest.fixture(scope="session")
def base(tmp_path_factory, reference_ckpt, reference_onnx):
    folder = tmp_path_factory.mktemp("adversarial-base")
    (folder / "model.pt").write_bytes(reference_ckpt.read_bytes())
    (folder / "model.onnx").write_bytes(reference_onnx.read_bytes())
    return folder


def _snapshot(ws: Path) -> dict[str, bytes]:
    return {str(p.relative_to(ws)): p.read_bytes() for p in ws.rglob("*")
            if p.is_file() and not p.is_symlink() and not str(p).startswith("/dev")}


def run_case(name, case, base, tmp_path, monkeypatch, server: str | None = None):
    import shutil

    ws = tmp_path / "ws"
    ws.mkdir()
    for item in base.iterdir():
        if item.is_dir():
            shutil.copytree(item, ws / item.name)
        else:
            (ws / item.name).write_bytes(item.read_bytes())
    monkeypatch.chdir(ws)
    if case.setup:
        case.setup(ws)
    for output in case.outputs:
        (ws / output).parent.mkdir(parents=True, exist_ok=True)
        (ws / output).write_bytes(SENTINEL)
    before = _snapshot(ws)
    args = [a.replace("{server}", server or "") for a in case.args]
    started = time.perf_counter()
    result = CliRunner().invoke(CLIS[case.cli], args)
    elapsed = time.perf_counter() - started
    output = result.output
    assert result.exit_code == case.code, f"{name}: exit {result.exit_code}\n{output}\n{result.exception!r}"
    assert isinstance(result.exception, SystemExit), f"{name}: {result.exception!r}"  # never an uncaught exception
    assert "Traceback" not in output
    errors = sum(line.startswith(("Error:", "Skipped:")) for line in output.splitlines())
    assert errors == 1, f"{name}: {errors} messages\n{output}"
    assert case.message in output, f"{name}: {case.message!r} not in\n{output}"
    if case.absent:
        assert case.absent not in output
    assert elapsed < LIMIT_S
    after = _snapshot(ws)
    changed = [k for k, v in before.items() if after.get(k) != v]
    assert changed == [], f"{name}: changed or removed {changed}"
    assert not (ws / "pwned.txt").exists()
    leftovers = [k for k in after if k not in before and (k.endswith(".tmp") or k.startswith(".")
                                                           or "/." in k)]
    assert leftovers == [], f"{name}: left {leftovers}"
    new_files = sorted(k for k in after if k not in before)
    assert new_files == [], f"{name}: wrote {new_files}"


def _api_closed(ws):
    from gap_deploy import runtime

    session = runtime.load(ws / "model.onnx")
    session.close()
    session.run(np.zeros((1, 3, 8, 8), np.float32))


def _fixed_reshape_onnx(ws):
    """A foreign model whose metadata says nothing and whose Reshape only fits 8x8 inputs."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([-1, 192], np.int64), "shape")
    graph = helper.make_graph([helper.make_node("Reshape", ["images", "shape"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 192])], [shape])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(ws / "foreign.onnx"))
    from gap_deploy import runtime

    session = runtime.load(ws / "foreign.onnx")
    assert session.run(np.zeros((1, 3, 8, 8), np.float32)).shape == (1, 192)
    session.run(np.zeros((1, 3, 9, 9), np.float32))


def _nul_external_data(ws):
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    weight.data_location = TensorProto.EXTERNAL
    del weight.float_data[:]
    weight.external_data.add(key="location", value="weights\x00.bin")
    graph = helper.make_graph([helper.make_node("Mul", ["images", "w"], ["logits"])], "g",
                              [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3, 8, 8])], [weight])
    onnx.save(helper.make_model(graph), str(ws / "nul.onnx"))
    from gap_deploy import runtime

    runtime.load(ws / "nul.onnx")


API_CASES = {
    "foreign-model-fails-at-run-time": (_fixed_reshape_onnx, "BackendError", "failed to run the model"),
    "external-data-nul-byte": (_nul_external_data, "ArtifactError", "invalid external-data location"),
    "load-none": (lambda ws: _rt().load(None), "InputTypeError", "needs a path"),
    "load-int": (lambda ws: _rt().load(3), "InputTypeError", "needs a path"),
    "load-fifo": (lambda ws: (os.mkfifo(ws / "f.onnx"), _rt().load(ws / "f.onnx")),
                  "ArtifactError", "not a regular file"),
    "run-after-close": (_api_closed, "UsageError", "is closed"),
    "run-nan-checked": (lambda ws: _rt().load(ws / "model.onnx").run(
        np.full((1, 3, 8, 8), np.nan, np.float32), check_finite=True), "InputError", "NaN"),
    "run-int-dtype": (lambda ws: _rt().load(ws / "model.onnx").run(
        np.zeros((1, 3, 8, 8), np.int64)), "InputTypeError", "dtype int64"),
    "run-many-2d": (lambda ws: _rt().load(ws / "model.onnx").run_many([np.zeros((8, 8))]),
                    "InputError", "list of CHW images"),
    "run-huge-batch": (lambda ws: _rt().load(ws / "model.onnx").run(
        np.broadcast_to(np.zeros((1, 3, 512, 512), np.float32), (4096, 3, 512, 512))), "ResourceError",
        "GAP_MEMORY_LIMIT"),
    "metadata-forged": (lambda ws: _rt().ModelMetadata.from_props({"gap.num_classes": "0"}),
                        "MetadataError", "below 1"),
}


@pytest.fixture
def labelled_set(tmp_path):
    from PIL import Image

    root = tmp_path / "data"
    (root / "class1").mkdir(parents=True)
    Image.new("RGB", (12, 12), (10, 200, 30)).save(root / "class1" / "a.png")
    return root


from gap_deploy.exporter.cli.pack import main as gap_pack  # noqa: E402
from gap_deploy.exporter.cli.triton import main as gap_triton  # noqa: E402
from gap_deploy.exporter.cli.tune import main as gap_tune  # noqa: E402
from gap_deploy.runtime.cli.eval import main as gap_eval  # noqa: E402
from tests.support import fake_triton  # noqa: E402

CLIS.update({"pack": gap_pack, "triton": gap_triton, "tune": gap_tune, "eval": gap_eval})


def _repo(ws, *, python=False):
    """A repository gap-triton wrote for model.onnx, at ws/repo/model."""
    from gap_deploy.exporter.triton import ServeOptions, write_repository

    write_repository([ws / "model.onnx"], ws / "repo", ServeOptions(backend="python" if python else "auto"))
    return ws / "repo" / "model"


def _edit_config(ws, old, new):
    folder = _repo(ws)
    config = folder / "config.pbtxt"
    text = config.read_text()
    assert old in text, old
    config.write_text(text.replace(old, new, 1))


def _write_config(ws, data: bytes):
    (_repo(ws) / "config.pbtxt").write_bytes(data)


def _bundle_json(ws, change):
    import json

    path = ws / "bundle" / "model.json"
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def _bundle_files(data, change):
    data["files"] = change(data["files"])
    return data


def _labelled(ws, *classes):
    """ws/lab/<class>/<i>.png; the reference model's classes are class0..class9."""
    from PIL import Image

    for i, name in enumerate(classes):
        (ws / "lab" / name).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20, 24), (40 * i, 10, 10)).save(ws / "lab" / name / f"{i}.png")


def _behave(**changes):
    return lambda ws: (fake_triton.Fake.behaviour.update(changes), _images(ws, "a.png"))


def _forged_copy(ws, folder, key, value):
    (ws / folder).mkdir()
    _forged_onnx(ws, f"{folder}/model.onnx", key, value)


def _broken_arch(ws):
    _arch_file(ws, "broken.py", "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n"
                                "        self.c = nn.Conv2d(3, 4, 3)\n    def forward(self, x):\n"
                                "        raise RuntimeError('always broken')\n")
    _save_state(ws, "broken.pt", lambda: __import__("torch").nn.Conv2d(3, 4, 3).state_dict())
    _prefix_state(ws, "broken.pt", "c.")


SERVER = ["--server", "{server}", "--model", "m", "imgs"]


TRITON = ["model.onnx", "-o", "repo"]


EVAL = ["model.onnx", "--data", "lab"]


TUNE = ["model.onnx", "--data", "lab", "--sizes", "8", "--duration", "0.05", "--min-top1", "0"]


ROUND3 = {
    # ---- gap-triton: names and metadata that become paths, collisions, bad artifacts and numbers
    "triton-name-traversal": Case("triton", [*TRITON, "--name", "/../x"], 1, "cannot be a file or folder name"),
    "triton-name-dotdot": Case("triton", [*TRITON, "--name", ".."], 1, "cannot be a file or folder name"),
    "triton-name-slash": Case("triton", [*TRITON, "--name", "a/b"], 1, "cannot be a file or folder name"),
    "triton-name-hidden": Case("triton", [*TRITON, "--name", ".hidden"], 1, "cannot be a file or folder name"),
    "triton-name-long": Case("triton", [*TRITON, "--name", "a" * 200], 1, "cannot be a file or folder name"),
    "triton-name-nul": Case("triton", [*TRITON, "--name", "a\x01b"], 1, "cannot be a file or folder name"),
    "triton-precision-traversal": Case("triton", ["model.onnx", "sub/model.onnx", "-o", "repo"], 1,
                                       "cannot be a file or folder name",
                                       setup=lambda ws: _forged_copy(ws, "sub", "gap.precision", "x/../../outside")),
    "triton-names-collide": Case("triton", ["model.onnx", "sub/model.onnx", "-o", "repo"], 2, "collide",
                                 setup=lambda ws: (ws / "sub").mkdir() or
                                 (ws / "sub" / "model.onnx").write_bytes((ws / "model.onnx").read_bytes())),
    "triton-existing-model-folder": Case("triton", TRITON, 1, "never written over", ["repo/model/keep.txt"],
                                         lambda ws: (ws / "repo" / "model").mkdir(parents=True)),
    "triton-output-is-file": Case("triton", ["model.onnx", "-o", "model.onnx"], 1, "is not a folder"),
    "triton-output-parent-missing": Case("triton", ["model.onnx", "-o", "no/such/repo"], 1, "does not exist"),
    "triton-random-onnx": Case("triton", ["rand.onnx", "-o", "repo"], 1, "cannot read ONNX model",
                               setup=lambda ws: (ws / "rand.onnx").write_bytes(os.urandom(2048))),
    "triton-suffix": Case("triton", ["notes.txt", "-o", "repo"], 2, "Triton serves .onnx and .plan",
                          setup=lambda ws: (ws / "notes.txt").write_text("x")),
    "triton-plan-no-manifest": Case("triton", ["e.plan", "-o", "repo"], 1, "has no gap-build manifest",
                                    setup=lambda ws: (ws / "e.plan").write_bytes(b"plan")),
    "triton-plan-manifest-garbage": Case("triton", ["e.plan", "-o", "repo"], 1, "manifest",
                                         setup=lambda ws: _plan_with_manifest(ws, "{")),
    "triton-forged-warmup": Case("triton", ["forged.onnx", "-o", "repo"], 1, "GAP_MEMORY_LIMIT",
                                 setup=lambda ws: _forged_onnx(ws, "forged.onnx", "gap.min_height", "99999")),
    "triton-forged-metadata": Case("triton", ["forged.onnx", "-o", "repo"], 1, "is invalid",
                                   setup=lambda ws: _forged_onnx(ws, "forged.onnx", "gap.num_classes", "-4")),
    "triton-max-batch-above": Case("triton", [*TRITON, "--max-batch", "64"], 2, "above what"),
    "triton-max-batch-zero": Case("triton", [*TRITON, "--max-batch", "0"], 2, "--max-batch"),
    "triton-version-zero": Case("triton", [*TRITON, "--model-version", "0"], 2, "--model-version"),
    "triton-count-zero": Case("triton", [*TRITON, "--count", "0"], 2, "--count"),
    "triton-nothing": Case("triton", [], 2, "ARTIFACTS"),
    # ---- gap-triton --check: repositories anyone can write
    "check-missing": Case("triton", ["--check", "nope"], 1, "is not a folder"),
    "check-empty": Case("triton", ["--check", "repo"], 1, "holds no model folders",
                        setup=lambda ws: (ws / "repo").mkdir()),
    "check-binary-config": Case("triton", ["--check", "repo"], 1, "not UTF-8 text",
                                setup=lambda ws: _write_config(ws, b"\xff\xfe" + os.urandom(200))),
    "check-truncated-config": Case("triton", ["--check", "repo"], 1, "not a valid Triton ModelConfig",
                                   setup=lambda ws: _write_config(ws, b'name: "model"\nmax_batch_size: ')),
    "check-wrong-type": Case("triton", ["--check", "repo"], 1, "Expected string",
                             setup=lambda ws: _write_config(ws, b'name: "model" input [ { name: 5 } ]')),
    "check-huge-config": Case("triton", ["--check", "repo"], 1, "larger than 4 MiB",
                              setup=lambda ws: _write_config(ws, b"#" * (5 << 20))),
    "check-dims-overflow": Case("triton", ["--check", "repo"], 1, "Value out of range",
                                setup=lambda ws: _edit_config(ws, "dims: [ 3, -1, -1 ]",
                                                              "dims: [ 3, 1" + "0" * 25 + " ]")),
    "check-label-traversal": Case("triton", ["--check", "repo"], 1, "plain file name inside the model folder",
                                  setup=lambda ws: _edit_config(ws, 'label_filename: "labels.txt"',
                                                                'label_filename: "../../../../etc/passwd"')),
    "check-filename-traversal": Case("triton", ["--check", "repo"], 1, "plain file name inside the model folder",
                                     setup=lambda ws: _edit_config(ws, "max_batch_size: 16", 'max_batch_size: 16\n'
                                                                   'default_model_filename: "../../model.onnx"')),
    "check-labels-binary": Case("triton", ["--check", "repo"], 1, "labels file is not UTF-8",
                                setup=lambda ws: (_repo(ws) / "labels.txt").write_bytes(b"a\xff\n")),
    "check-labels-count": Case("triton", ["--check", "repo"], 1, "9 labels",
                               setup=lambda ws: (_repo(ws) / "labels.txt").write_text("x\n" * 9)),
    "check-version-as-number": Case("triton", ["--check", "repo"], 1, "no 10/model.onnx",
                                    setup=lambda ws: (_repo(ws) / "10").mkdir()),
    "check-no-version": Case("triton", ["--check", "repo"], 1, "no numbered version folder",
                             setup=lambda ws: __import__("shutil").rmtree(_repo(ws) / "1")),
    "check-foreign-model-py": Case("triton", ["--check", "repo"], 1, "not gap-deploy's (not checked",
                                   setup=lambda ws: (_repo(ws, python=True) / "1" / "model.py").write_text("x = 1\n")),
    "check-platform": Case("triton", ["--check", "repo"], 1, "platform",
                           setup=lambda ws: _edit_config(ws, 'platform: "onnxruntime_onnx"',
                                                         'platform: "tensorrt_plan"')),
    "check-dims": Case("triton", ["--check", "repo"], 1, "input.dims",
                       setup=lambda ws: _edit_config(ws, "dims: [ 3, -1, -1 ]", "dims: [ 1, -1, -1 ]")),
    "check-name": Case("triton", ["--check", "repo"], 1, "folder name",
                       setup=lambda ws: _edit_config(ws, 'name: "model"', 'name: "other"')),
    "check-random-model": Case("triton", ["--check", "repo"], 1, "cannot read ONNX model",
                               setup=lambda ws: (_repo(ws) / "1" / "model.onnx").write_bytes(os.urandom(999))),
    "check-no-config": Case("triton", ["--check", "repo"], 1, "(missing)",
                            setup=lambda ws: (_repo(ws) / "config.pbtxt").unlink()),
    "check-max-batch-negative": Case("triton", ["--check", "repo"], 1, "max_batch_size",
                                     setup=lambda ws: _edit_config(ws, "max_batch_size: 16", "max_batch_size: -3")),
    # ---- gap-pack
    "pack-fixed-huge": Case("pack", ["model.onnx", "-o", "b2", "--fixed", "1x3x100000x100000"], 1, "GAP_MEMORY_LIMIT"),
    "pack-fixed-channels": Case("pack", ["model.onnx", "-o", "b2", "--fixed", "1x5x8x8"], 2, "has 5 channels"),
    "pack-fixed-below-min": Case("pack", ["model.onnx", "-o", "b2", "--fixed", "1x3x2x2"], 2, "below the model's"),
    "pack-fixed-text": Case("pack", ["model.onnx", "-o", "b2", "--fixed", "axb"], 2, "is not of the form"),
    "pack-fixed-zero": Case("pack", ["model.onnx", "-o", "b2", "--fixed", "0x3x8x8"], 2, "below 1"),
    "pack-output-not-empty": Case("pack", ["model.onnx", "-o", "b2"], 1, "exists and is not empty", ["b2/keep.txt"],
                                  lambda ws: (ws / "b2").mkdir()),
    "pack-output-is-file": Case("pack", ["model.onnx", "-o", "model.pt"], 1, "exists and is not empty"),
    "pack-output-parent-missing": Case("pack", ["model.onnx", "-o", "no/such/b"], 1, "does not exist"),
    "pack-random": Case("pack", ["rand.onnx", "-o", "b2"], 1, "cannot read ONNX model",
                        setup=lambda ws: (ws / "rand.onnx").write_bytes(os.urandom(3000))),
    "pack-missing": Case("pack", ["nope.onnx", "-o", "b2"], 1, "does not exist"),
    "pack-forged-metadata": Case("pack", ["forged.onnx", "-o", "b2"], 1, "is invalid",
                                 setup=lambda ws: _forged_onnx(ws, "forged.onnx", "gap.min_width", "wide")),
    "pack-app-ncnn": Case("pack", ["model.onnx", "-o", "b2", "--target", "ncnn", "--app"], 2,
                          "--app makes the app-ready model"),
    "pack-app-two-sizes": Case("pack", ["model.onnx", "-o", "b2", "--app", "--fixed", "1x3x32x32", "--fixed",
                                        "1x3x16x16"], 2, "one --fixed shape"),
    "pack-app-batch": Case("pack", ["model.onnx", "-o", "b2", "--app", "--fixed", "2x3x32x32"], 2, "takes one image"),
    "pack-app-output-not-empty": Case("pack", ["model.onnx", "-o", "b2", "--app"], 1, "exists and is not empty",
                                      ["b2/keep.txt"], lambda ws: (ws / "b2").mkdir()),
    "pack-json-is-model": Case("pack", ["model.onnx", "-o", "b2", "--json", "model.onnx"], 1, "same file as"),
    "pack-json-inside-output": Case("pack", ["model.onnx", "-o", "bundle", "--json", "bundle/x.json"], 1,
                                    "is inside -o/--output bundle, which is written whole"),
    # ---- bundles run by gap-run and gap-bench
    "bundle-json-garbage": Case("run", ["bundle", "imgs"], 1, "cannot read bundle description",
                                setup=lambda ws: ((ws / "bundle" / "model.json").write_text("{"), _images(ws,
                                    "a.png"))),
    "bundle-json-list": Case("run", ["bundle", "imgs"], 1, "is not a gap-pack bundle description",
                             setup=lambda ws: ((ws / "bundle" / "model.json").write_text("[]"), _images(ws, "a.png"))),
    "bundle-files-list": Case("run", ["bundle", "imgs"], 1, "is not a gap-pack bundle description",
                              setup=lambda ws: (_bundle_json(ws, lambda d: {**d, "files": [1]}), _images(ws, "a.png"))),
    "bundle-missing-ort": Case("run", ["bundle", "imgs"], 1, "is missing, or a link out of the bundle",
                               setup=lambda ws: ((ws / "bundle" / "model.ort").unlink(), _images(ws, "a.png"))),
    "bundle-swapped-ort": Case("run", ["bundle", "imgs"], 1, "does not match the SHA-256",
                               setup=lambda ws: ((ws / "bundle" / "model.ort").write_bytes(
                                   (ws / "bundle" / "model_1x3x32x32.ort").read_bytes()), _images(ws, "a.png"))),
    "bundle-name-traversal": Case("run", ["bundle", "imgs"], 1, "no plain file name",
                                  setup=lambda ws: (_bundle_json(ws, lambda d: _bundle_files(d, lambda f: {
                                      "../model.ort" if k == "model.ort" else k: v for k, v in f.items()})),
                                                    _images(ws, "a.png"))),
    "bundle-link-out": Case("run", ["bundle", "imgs"], 1, "is missing, or a link out of the bundle",
                            setup=lambda ws: ((ws / "bundle" / "model.ort").unlink(),
                                              os.symlink(ws / "model.onnx", ws / "bundle" / "model.ort"),
                                              _images(ws, "a.png"))),
    "bundle-no-dynamic": Case("run", ["bundle", "imgs"], 1, "lists no dynamic model",
                              setup=lambda ws: (_bundle_json(ws, lambda d: _bundle_files(d, lambda f: {
                                  k: v for k, v in f.items() if k != "model.ort"})), _images(ws, "a.png"))),
    "bundle-sha-number": Case("run", ["bundle", "imgs"], 1, "does not match the SHA-256",
                              setup=lambda ws: (_bundle_json(ws, lambda d: _bundle_files(d, lambda f: {
                                  k: {**v, "sha256": 5} for k, v in f.items()})), _images(ws, "a.png"))),
    "bench-bundle-swapped": Case("bench", ["bundle", "--shape", "1x3x32x32"], 1, "does not match the SHA-256",
                                 setup=lambda ws: (ws / "bundle" / "model.ort").write_bytes(
                                     (ws / "bundle" / "model_1x3x32x32.ort").read_bytes())),
    "run-output-inside-bundle": Case("run", ["bundle", "imgs", "--ray", "--output", "bundle/out"], 1, "inside",
                                     setup=lambda ws: _images(ws, "a.png")),
    # ---- gap-eval
    "eval-data-missing": Case("eval", ["model.onnx", "--data", "nope"], 1, "does not exist"),
    "eval-data-is-file": Case("eval", ["model.onnx", "--data", "model.pt"], 1, "is not a folder"),
    "eval-data-empty": Case("eval", ["model.onnx", "--data", "lab"], 1, "lab",
                            setup=lambda ws: (ws / "lab").mkdir()),
    "eval-unknown-class": Case("eval", EVAL, 1, "rename the folders", setup=lambda ws: _labelled(ws, "zebra")),
    "eval-json-inside-data": Case("eval", [*EVAL, "--json", "lab/class0/r.json"], 1, "inside",
                                  setup=lambda ws: _labelled(ws, "class0", "class1")),
    "eval-plot-inside-data": Case("eval", [*EVAL, "--plot", "lab/p.png"], 1, "inside",
                                  setup=lambda ws: _labelled(ws, "class0", "class1")),
    "eval-json-is-image": Case("eval", [*EVAL, "--json", "lab/class0/0.png"], 1, "inside",
                               setup=lambda ws: _labelled(ws, "class0", "class1")),
    "eval-json-is-artifact": Case("eval", [*EVAL, "--json", "model.onnx"], 1, "same file as",
                                  setup=lambda ws: _labelled(ws, "class0", "class1")),
    "eval-json-dev-null": Case("eval", [*EVAL, "--json", "/dev/null"], 1, "not a regular file",
                               setup=lambda ws: _labelled(ws, "class0", "class1")),
    "eval-imgsz-zero": Case("eval", [*EVAL, "--imgsz", "0"], 2, "is not a size",
                            setup=lambda ws: _labelled(ws, "class0", "class1")),
    "eval-imgsz-below-min": Case("eval", [*EVAL, "--imgsz", "2"], 2, "below",
                                 setup=lambda ws: _labelled(ws, "class0", "class1")),
    "eval-random-artifact": Case("eval", ["rand.onnx", "--data", "lab"], 1, "cannot read ONNX model",
                                 setup=lambda ws: ((ws / "rand.onnx").write_bytes(os.urandom(999)),
                                                   _labelled(ws, "class0"))),
    "eval-batch-zero": Case("eval", [*EVAL, "--batch-size", "0"], 2, "--batch-size",
                            setup=lambda ws: _labelled(ws, "class0")),
    "eval-trt-on-onnx": Case("eval", [*EVAL, "--backend", "trt"], 2, "cannot run an ONNX model",
                             setup=lambda ws: _labelled(ws, "class0")),
    # ---- gap-tune
    "tune-sizes-zero": Case("tune", [*TUNE[:4], "0"], 2, "between 1 and", setup=lambda ws: _labelled(ws, "class0")),
    "tune-sizes-huge": Case("tune", [*TUNE[:4], "99999999"], 2, "between 1 and",
                            setup=lambda ws: _labelled(ws, "class0")),
    "tune-sizes-text": Case("tune", [*TUNE[:4], "big"], 2, "--sizes", setup=lambda ws: _labelled(ws, "class0")),
    "tune-sizes-below-min": Case("tune", [*TUNE[:4], "2"], 2, "below the models' minimum",
                                 setup=lambda ws: _labelled(ws, "class0")),
    "tune-emit-not-empty": Case("tune", [*TUNE, "--emit", "deploy"], 2, "exists and is not empty",
                                ["deploy/keep.txt"], lambda ws: ((ws / "deploy").mkdir(), _labelled(ws, "class0"))),
    "tune-emit-inside-data": Case("tune", [*TUNE, "--emit", "lab/deploy"], 1, "inside",
                                  setup=lambda ws: _labelled(ws, "class0")),
    "tune-json-inside-data": Case("tune", [*TUNE, "--json", "lab/t.json"], 1, "inside",
                                  setup=lambda ws: _labelled(ws, "class0")),
    "tune-plot-is-artifact": Case("tune", [*TUNE, "--plot", "model.onnx"], 1, "same file as",
                                  setup=lambda ws: _labelled(ws, "class0")),
    "tune-min-top1-nan": Case("tune", [*TUNE[:7], "--min-top1", "nan"], 2, "not a finite",
                              setup=lambda ws: _labelled(ws, "class0")),
    "tune-duration-inf": Case("tune", [*TUNE[:4], "8", "--duration", "inf"], 2, "not a finite",
                              setup=lambda ws: _labelled(ws, "class0")),
    "tune-data-missing": Case("tune", ["model.onnx", "--data", "nope", "--sizes", "8"], 1, "does not exist"),
    "tune-artifact-missing": Case("tune", ["nope.onnx", "--data", "lab", "--sizes", "8"], 1, "does not exist",
                                  setup=lambda ws: _labelled(ws, "class0")),
    "tune-two-constraints": Case("tune", [*TUNE, "--max-ms", "5"], 2, "cannot go together",
                                 setup=lambda ws: _labelled(ws, "class0")),
    "tune-unknown-class": Case("tune", TUNE, 1, "rename the folders", setup=lambda ws: _labelled(ws, "zebra")),
    # ---- gap-run --server against a lying server (one image: one "Skipped:" line naming it, exit 1)
    **{f"server-lie-{lie}": Case("run", SERVER, 1, fake_triton.LIE_MESSAGES[lie],
                                 setup=_behave(lie=lie, rows=1 if lie != "values-short" else 2))
       for lie in sorted(fake_triton.LIE_MESSAGES) if lie != "values-short"},
    "server-unknown-model": Case("run", ["--server", "{server}", "--model", "zz", "imgs"], 2, "has no ready model 'zz'",
                                 setup=lambda ws: _images(ws, "a.png")),
    "server-unreachable": Case("run", ["--server", "127.0.0.1:1", "--model", "m", "imgs"], 1,
                               "cannot reach a Triton server", setup=lambda ws: _images(ws, "a.png")),
    "server-scheme": Case("run", ["--server", "ftp://{server}", "--model", "m", "imgs"], 2, "is not http or https",
                          setup=lambda ws: _images(ws, "a.png")),
    "server-negative-max-batch": Case("run", SERVER, 1, "max_batch_size -3",
                                      setup=_behave(config={"max_batch_size": -3})),
    "server-config-not-a-config": Case("run", SERVER, 1, "cannot be read", setup=_behave(raw_config=[1, 2])),
    "server-config-no-input": Case("run", SERVER, 1, "cannot be read", setup=_behave(config={"input": []})),
    "server-config-bad-dims": Case("run", SERVER, 1, "cannot be read",
                                   setup=_behave(config={"input": [{"name": "images", "dims": ["x"]}]})),
    "server-forged-metadata": Case("run", SERVER, 1, "is invalid",
                                   setup=_behave(config={"parameters": {"gap.std": {"string_value": "[0, 0, 0]"}}})),
    "server-no-images": Case("run", ["--server", "{server}", "--model", "m", "empty"], 1, "no image files",
                             setup=lambda ws: (ws / "empty").mkdir()),
    "server-with-ray": Case("run", [*SERVER, "--ray"], 2, "--ray does not apply"),
    # ---- gap-run --ray: refused before any Ray work
    "ray-output-not-empty": Case("run", ["model.onnx", "imgs", "--ray", "--output", "res"], 1,
                                 "exists and is not empty", ["res/keep.txt"],
                                 lambda ws: ((ws / "res").mkdir(), _images(ws, "a.png"))),
    "ray-output-inside-images": Case("run", ["model.onnx", "imgs", "--ray", "--output", "imgs/res"], 1, "inside",
                                     setup=lambda ws: _images(ws, "a.png")),
    "ray-output-is-file": Case("run", ["model.onnx", "imgs", "--ray", "--output", "model.pt"], 1,
                               "exists and is not a folder", setup=lambda ws: _images(ws, "a.png")),
    "ray-output-holds-artifact": Case("run", ["sub/model.onnx", "imgs", "--ray", "--output", "sub"], 1,
                                      "exists and is not empty",
                                      setup=lambda ws: ((ws / "sub").mkdir(), (ws / "sub" / "model.onnx").write_bytes(
                                          (ws / "model.onnx").read_bytes()), _images(ws, "a.png"))),
    "ray-without-output": Case("run", ["model.onnx", "imgs", "--ray"], 2, "go together",
                               setup=lambda ws: _images(ws, "a.png")),
    "ray-batch-size-local": Case("run", ["model.onnx", "imgs", "--ray-batch-size", "4"], 2, "does not apply",
                                 setup=lambda ws: _images(ws, "a.png")),
    # ---- left from the first rounds
    "export-calib-below-min": Case("export", [*EXPORT, "--precision", "int8", "--calib", "c.npy", "-o", "out.onnx"],
                                   1, "minimum input is 4x4", ["out.onnx", "out.int8.onnx"],
                                   lambda ws: np.save(ws / "c.npy", np.zeros((4, 3, 2, 2), np.float32))),
    "export-calib-random-npy": Case("export", [*EXPORT, "--precision", "int8", "--calib", "r.npy", "-o", "out.onnx"],
                                    1, "it was not loaded", ["out.onnx", "out.int8.onnx"],
                                    lambda ws: (ws / "r.npy").write_bytes(os.urandom(1000)), absent="allow_pickle"),
    "export-calib-object-npy": Case("export", [*EXPORT, "--precision", "int8", "--calib", "o.npy", "-o", "out.onnx"],
                                    1, "it was not loaded", ["out.onnx", "out.int8.onnx"],
                                    lambda ws: np.save(ws / "o.npy", np.array([{"a": 1}], dtype=object)),
                                    absent="allow_pickle"),
    "export-fails-at-every-size": Case("export", ["broken.pt", "--arch", "broken.py:Net", "--dynamic", "--imgsz",
                                                  "600", "-o", "out.onnx"], 1, "from 1x1 to 600x600", ["out.onnx"],
                                       _broken_arch),
}


@pytest.fixture(scope="session")
def round3_base(base, tmp_path_factory):
    """base, plus a gap-pack bundle of model.onnx (dynamic, and fixed to 1x3x32x32)."""
    import shutil

    from gap_deploy.exporter.pack import pack

    folder = tmp_path_factory.mktemp("adversarial-round3")
    for item in base.iterdir():
        shutil.copy(item, folder / item.name)
    pack(folder / "model.onnx", folder / "bundle", fixed=[(1, 3, 32, 32)])
    return folder


@pytest.fixture(scope="session")
def fake_server():
    with fake_triton.serve() as (address, _):
        yield address


def _run_capped(args: list[str], cwd: Path, gigabytes: int = 8) -> subprocess.CompletedProcess:
    """A gap-* command in a process whose address space is capped, so a regression fails with MemoryError instead
    of waking the machine's OOM killer."""
    import resource

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (gigabytes << 30, gigabytes << 30))

    env = {k: v for k, v in os.environ.items() if k != "GAP_MEMORY_LIMIT"}
    return subprocess.run([str(Path(sys.executable).with_name(args[0])), *args[1:]], cwd=cwd, env=env,
                          preexec_fn=cap, capture_output=True, text=True, timeout=300)


from gap_deploy.exporter.cli.debug import main as gap_debug  # noqa: E402
from gap_deploy.runtime.cli.verify import main as gap_verify  # noqa: E402

CLIS.update({"debug": gap_debug, "verify": gap_verify})


def _keys(ws, mode=0o600):
    from tests.conftest import make_key_pair

    private, public = make_key_pair(ws, "k")
    private.chmod(mode)
    return private, public


def _signed_onnx(ws):
    from tests.conftest import sign_files

    private, _ = _keys(ws)
    (ws / "s.onnx").write_bytes((ws / "model.onnx").read_bytes())
    sign_files(private, ws / "s.onnx")


def _signed_then(ws, change):
    _signed_onnx(ws)
    change(ws)


def _link_in_lab(ws, name="l.json"):
    _labelled(ws, "class0", "class1")
    (ws / "outside.txt").write_bytes(SENTINEL)
    os.symlink(ws / "outside.txt", ws / "lab" / name)


def _flip(path: Path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


ROUND4 = {
    # ---- signing keys given to the writers
    "export-sign-key-missing": Case("export", [*EXPORT, "-o", "out.onnx", "--sign-key", "nope.pem"], 2,
                                    "does not exist", ["out.onnx"]),
    "export-sign-key-readable": Case("export", [*EXPORT, "-o", "out.onnx", "--sign-key", "k.key.pem"], 2,
                                     "can be read or written by other users", ["out.onnx"],
                                     lambda ws: _keys(ws, 0o644)),
    "export-sign-key-group": Case("export", [*EXPORT, "-o", "out.onnx", "--sign-key", "k.key.pem"], 2,
                                  "can be read or written by other users", ["out.onnx"], lambda ws: _keys(ws, 0o640)),
    "export-sign-key-fifo": Case("export", [*EXPORT, "-o", "out.onnx", "--sign-key", "f.pem"], 2,
                                 "not a regular file", ["out.onnx"], lambda ws: os.mkfifo(ws / "f.pem")),
    "export-sign-key-dir": Case("export", [*EXPORT, "-o", "out.onnx", "--sign-key", "lab"], 2, "signing key",
                                ["out.onnx"], lambda ws: _labelled(ws, "class0")),
    "export-sign-key-symlink": Case("export", [*EXPORT, "-o", "out.onnx", "--sign-key", "l.pem"], 2,
                                    "symbolic link", ["out.onnx"],
                                    lambda ws: (_keys(ws), os.symlink(ws / "k.key.pem", ws / "l.pem"))),
    "export-sign-key-public": Case("export", [*EXPORT, "-o", "out.onnx", "--sign-key", "k.pub.pem"], 1,
                                   "could not sign", ["out.onnx"], lambda ws: (ws / "k.pub.pem").chmod(0o600)
                                   if _keys(ws) else None),
    "export-sign-key-garbage": Case("export", [*EXPORT, "-o", "out.onnx", "--sign-key", "g.pem"], 1,
                                    "could not sign", ["out.onnx"],
                                    lambda ws: ((ws / "g.pem").write_text("garbage"), (ws / "g.pem").chmod(0o600))),
    "pack-sign-key-readable": Case("pack", ["model.onnx", "-o", "b", "--sign-key", "k.key.pem"], 2,
                                   "can be read or written", setup=lambda ws: _keys(ws, 0o644)),
    "triton-sign-key-missing": Case("triton", ["model.onnx", "-o", "repo", "--sign-key", "nope.pem"], 2,
                                    "does not exist"),
    "tune-sign-key-fifo": Case("tune", [*TUNE, "--sign-key", "f.pem"], 2, "not a regular file",
                               setup=lambda ws: (_labelled(ws, "class0"), os.mkfifo(ws / "f.pem"))),
    # ---- verification on load
    "run-verify-no-signature": Case("run", ["model.onnx", "imgs", "--verify-key", "k.pub.pem"], 1,
                                    "has no signature", setup=lambda ws: (_keys(ws), _images(ws, "a.png"))),
    "run-verify-other-key": Case("run", ["s.onnx", "imgs", "--verify-key", "o.pub.pem"], 1,
                                 "was not made by a trusted key",
                                 setup=lambda ws: (_signed_onnx(ws), _images(ws, "a.png"),
                                                   __import__("tests.conftest").conftest.make_key_pair(ws, "o"))),
    "run-verify-flipped": Case("run", ["s.onnx", "imgs", "--verify-key", "k.pub.pem"], 1,
                               "changed since it was signed",
                               setup=lambda ws: (_signed_then(ws, lambda w: _flip(w / "s.onnx")),
                                                 _images(ws, "a.png"))),
    "run-verify-sig-garbage": Case("run", ["s.onnx", "imgs", "--verify-key", "k.pub.pem"], 1, "s.onnx",
                                   setup=lambda ws: (_signed_then(ws, lambda w: (w / "s.onnx.sig").write_text("{")),
                                                     _images(ws, "a.png"))),
    "run-verify-sig-fifo": Case("run", ["s.onnx", "imgs", "--verify-key", "k.pub.pem"], 1, "not a regular file",
                                setup=lambda ws: (_signed_then(ws, lambda w: ((w / "s.onnx.sig").unlink(),
                                                                              os.mkfifo(w / "s.onnx.sig"))),
                                                  _images(ws, "a.png"))),
    "run-verify-key-fifo": Case("run", ["s.onnx", "imgs", "--verify-key", "f.pem"], 1, "not a regular file",
                                setup=lambda ws: (_signed_onnx(ws), os.mkfifo(ws / "f.pem"), _images(ws, "a.png"))),
    "run-verify-key-garbage": Case("run", ["s.onnx", "imgs", "--verify-key", "g.pem"], 1, "trusted key",
                                   setup=lambda ws: (_signed_onnx(ws), (ws / "g.pem").write_text("x"),
                                                     _images(ws, "a.png"))),
    "run-verify-empty-key-folder": Case("run", ["s.onnx", "imgs", "--verify-key", "keys"], 1,
                                        "no trusted public key", setup=lambda ws: (
                                            _signed_onnx(ws), (ws / "keys").mkdir(), _images(ws, "a.png"))),
    "run-verify-on-ray": Case("run", ["s.onnx", "imgs", "--ray", "--output", "o", "--verify-key", "k.pub.pem"], 2,
                              "--verify-key", setup=lambda ws: (_signed_onnx(ws), _images(ws, "a.png"))),
    "bench-verify-no-signature": Case("bench", ["model.onnx", "--verify-key", "k.pub.pem"], 1, "has no signature",
                                      setup=lambda ws: _keys(ws)),
    "bench-verify-flipped": Case("bench", ["s.onnx", "--verify-key", "k.pub.pem"], 1, "changed since it was signed",
                                 setup=lambda ws: _signed_then(ws, lambda w: _flip(w / "s.onnx"))),
    # ---- gap-verify
    "verify-missing": Case("verify", ["nope.onnx", "--key", "k.pub.pem"], 1, "nope.onnx",
                           setup=lambda ws: _keys(ws)),
    "verify-no-key": Case("verify", ["s.onnx"], 1, "no trusted public key", setup=_signed_onnx),
    "verify-no-signature": Case("verify", ["model.onnx", "--key", "k.pub.pem"], 1, "has no signature",
                                setup=lambda ws: _keys(ws)),
    "verify-flipped": Case("verify", ["s.onnx", "--key", "k.pub.pem"], 1, "changed since it was signed",
                           setup=lambda ws: _signed_then(ws, lambda w: _flip(w / "s.onnx"))),
    "verify-other-key": Case("verify", ["s.onnx", "--key", "o.pub.pem"], 1, "not made by a trusted key",
                             setup=lambda ws: (_signed_onnx(ws),
                                               __import__("tests.conftest").conftest.make_key_pair(ws, "o"))),
    "verify-json-is-artifact": Case("verify", ["s.onnx", "--key", "k.pub.pem", "--json", "s.onnx"], 1,
                                    "same file as ARTIFACT", setup=_signed_onnx),
    "verify-random-file": Case("verify", ["r.bin", "--key", "k.pub.pem"], 1, "r.bin",
                               setup=lambda ws: (_keys(ws), (ws / "r.bin").write_bytes(os.urandom(100)))),
    # ---- links planted inside input folders, and reports inside folders written whole
    "tune-json-link-in-data": Case("tune", [*TUNE, "--json", "lab/l.json"], 1, "is inside --data",
                                   setup=_link_in_lab),
    "tune-plot-link-in-data": Case("tune", [*TUNE, "--plot", "lab/l.png"], 1, "is inside --data",
                                   setup=lambda ws: _link_in_lab(ws, "l.png")),
    "eval-json-link-in-data": Case("eval", [*EVAL, "--json", "lab/l.json"], 1, "is inside --data",
                                   setup=_link_in_lab),
    "debug-json-link-in-images": Case("debug", ["model.pt", "--images", "lab", "--json", "lab/l.json"], 1,
                                      "is inside --images", setup=_link_in_lab),
    "tune-json-inside-emit": Case("tune", [*TUNE, "--emit", "d", "--json", "d/r.json"], 1,
                                  "which is written whole", setup=lambda ws: _labelled(ws, "class0")),
    "tune-plot-inside-emit": Case("tune", [*TUNE, "--emit", "d", "--plot", "d/p.png"], 1,
                                  "which is written whole", setup=lambda ws: _labelled(ws, "class0")),
    "pack-json-in-new-bundle": Case("pack", ["model.onnx", "-o", "nb", "--json", "nb/model.json"], 1,
                                    "which is written whole"),
    # ---- gap-tune sizes
    "tune-sizes-range-huge": Case("tune", [*TUNE[:3], "--sizes", "1:100000000000:1"], 2, "a sweep measures at most",
                                  setup=lambda ws: _labelled(ws, "class0")),
    "tune-sizes-range-8189": Case("tune", [*TUNE[:3], "--sizes", "4:8192:1"], 2, "use a larger step",
                                  setup=lambda ws: _labelled(ws, "class0")),
    "tune-sizes-list-65": Case("tune", [*TUNE[:3], "--sizes", ",".join(str(8 + i) for i in range(65))], 2,
                               "at most 64", setup=lambda ws: _labelled(ws, "class0")),
    "tune-sizes-stop-above": Case("tune", [*TUNE[:3], "--sizes", "8:9000:1000"], 2, "at most 8192 pixels",
                                  setup=lambda ws: _labelled(ws, "class0")),
    "tune-sizes-step-zero": Case("tune", [*TUNE[:3], "--sizes", "8:64:0"], 2, "is not N, HxW or START:STOP:STEP",
                                 setup=lambda ws: _labelled(ws, "class0")),
    "tune-sizes-backwards": Case("tune", [*TUNE[:3], "--sizes", "64:8:8"], 2, "is not N, HxW or START:STOP:STEP",
                                 setup=lambda ws: _labelled(ws, "class0")),
    "tune-sizes-four-parts": Case("tune", [*TUNE[:3], "--sizes", "8:16:4:2"], 2, "is not N, HxW",
                                  setup=lambda ws: _labelled(ws, "class0")),
    "tune-sizes-huge-memory": Case("tune", [*TUNE[:3], "--sizes", "8192"], 1, "would need about",
                                   setup=lambda ws: _labelled(ws, "class0")),
    # ---- memory before allocation
    "eval-imgsz-65536": Case("eval", [*EVAL, "--imgsz", "65536"], 1, "would need about",
                             setup=lambda ws: _labelled(ws, "class0")),
    "pack-min-side-huge": Case("pack", ["model.onnx", "-o", "b", "--target", "openvino", "--min-side", "100000"], 1,
                               "would need about"),
    "debug-shape-batch-256": Case("debug", ["model.pt", "--shape", "256x3x224x224"], 1, "--chunk"),
    "debug-chunk-huge-shape": Case("debug", ["model.pt", "--shape", "64x3x512x512", "--chunk", "64"], 1,
                                   "would need about"),
    # ---- descriptions, manifests and IRs that lie or are no description
    "run-bundle-json-deep": Case("run", ["b", "imgs"], 1, "nests too deeply",
                                 setup=lambda ws: (_pack(ws), (ws / "b" / "model.json").write_text(
                                     "[" * 100_000 + "]" * 100_000), _images(ws, "a.png"))),
    "run-bundle-json-huge": Case("run", ["b", "imgs"], 1, "larger than 16 MiB",
                                 setup=lambda ws: (_pack(ws), (ws / "b" / "model.json").write_bytes(
                                     b" " * (17 << 20)), _images(ws, "a.png"))),
    "triton-manifest-metadata-string": Case("triton", ["e.plan", "-o", "repo"], 1, '"metadata" is not a map',
                                            setup=lambda ws: _plan_with_manifest(ws, _manifest_text(
                                                metadata="a string"))),
    "triton-manifest-profiles-string": Case("triton", ["e.plan", "-o", "repo"], 1, '"profiles" is not a list',
                                            setup=lambda ws: _plan_with_manifest(ws, _manifest_text(profiles="x"))),
    "triton-manifest-gpu-number": Case("triton", ["e.plan", "-o", "repo"], 1, '"gpu_name" is int',
                                       setup=lambda ws: _plan_with_manifest(ws, _manifest_text(gpu_name=7))),
    "triton-manifest-vc-text": Case("triton", ["e.plan", "-o", "repo"], 1, '"version_compatible" is not true',
                                    setup=lambda ws: _plan_with_manifest(ws, _manifest_text(version_compatible="1"))),
    "pack-fixed-on-static": Case("pack", ["static.onnx", "-o", "b", "--fixed", "1x3x64x64"], 2, "already static",
                                 setup=lambda ws: _static(ws)),
    "pack-fixed-own-size-static": Case("pack", ["static.onnx", "-o", "b", "--fixed", "1x3x32x32"], 2,
                                       "already static", setup=lambda ws: _static(ws)),
    "debug-onnx-other-channels": Case("debug", ["model.pt", "g1.onnx"], 2, "has 1 input channel(s)",
                                      setup=lambda ws: _one_channel(ws)),
    # ---- Triton repositories Triton would not load
    "triton-check-group-per-profile": Case("triton", ["--check", "repo"], 1, "every one needed on every instance",
                                           setup=lambda ws: _repo_edit(ws, "per-profile")),
    "triton-check-static-batching": Case("triton", ["--check", "repo"], 1, "first dim of -1",
                                         setup=lambda ws: _repo_edit(ws, "static")),
    "triton-check-warmup-outside": Case("triton", ["--check", "repo"], 1, "a warm-up outside every profile",
                                        setup=lambda ws: _repo_edit(ws, "warmup")),
    "triton-check-arabic-version": Case("triton", ["--check", "repo"], 1, "no numbered version folder",
                                        setup=lambda ws: _repo_edit(ws, "version")),
    "triton-static-max-batch": Case("triton", ["static.onnx", "-o", "repo", "--max-batch", "4"], 2,
                                    "fixed batch of 1", setup=lambda ws: _static(ws)),
    # ---- signed bundles
    "verify-bundle-unsigned": Case("verify", ["b", "--key", "k.pub.pem"], 1, "has no signature",
                                   setup=lambda ws: (_pack(ws), _keys(ws))),
    "run-verify-bundle-added-file": Case("run", ["b", "imgs", "--verify-key", "k.pub.pem"], 1,
                                         "not signed (added after signing)", setup=lambda ws: _signed_bundle_then(
                                             ws, lambda w: (w / "b" / "extra.txt").write_text("later"))),
    "run-verify-bundle-flipped": Case("run", ["b", "imgs", "--verify-key", "k.pub.pem"], 1,
                                      "changed since it was signed", setup=lambda ws: _signed_bundle_then(
                                          ws, lambda w: _flip(w / "b" / "labels.txt"))),
    "run-verify-bundle-file-removed": Case("run", ["b", "imgs", "--verify-key", "k.pub.pem"], 1, "b",
                                           setup=lambda ws: _signed_bundle_then(
                                               ws, lambda w: (w / "b" / "README.md").unlink())),
}


def _signed_bundle_then(ws, change):
    from tests.conftest import sign_files

    _pack(ws)
    private, _ = _keys(ws)
    sign_files(private, ws / "b")
    change(ws)
    _images(ws, "a.png")


def _manifest_text(**changes) -> str:
    import json

    from gap_deploy.runtime.manifest import EngineManifest

    data = json.loads(EngineManifest(tensorrt_version="11.4.0.106", gpu_name="X", compute_capability="9.0",
                                     precision="fp32", plan_sha256="0" * 64, onnx_sha256="0" * 64,
                                     profiles=[{"images": [[1, 3, 4, 4], [1, 3, 8, 8], [1, 3, 16, 16]]}]).to_json())
    data.update(changes)
    return json.dumps(data)


def _pack(ws):
    from gap_deploy.exporter.pack import pack

    pack(ws / "model.onnx", ws / "b")


def _static(ws):
    from gap_deploy.exporter import export_onnx, load_model

    export_onnx(load_model(ws / "model.pt"), ws / "static.onnx", dynamic=False, imgsz=(32, 32))


def _one_channel(ws):
    import torch

    from gap_deploy.exporter import export_onnx, load_model
    from tests.conftest import make_reference

    torch.save(make_reference(in_channels=1).state_dict(), ws / "g1.pt")
    export_onnx(load_model(ws / "g1.pt"), ws / "g1.onnx", dynamic=True, imgsz=(32, 32))


def _repo_edit(ws, how):
    from gap_deploy.exporter.triton import ServeOptions, write_repository
    from gap_deploy.runtime.files import sha256_bytes
    from gap_deploy.runtime.manifest import EngineManifest
    from gap_deploy.runtime.metadata import ModelMetadata

    if how == "static":
        _static(ws)
        write_repository([ws / "static.onnx"], ws / "repo")
        path = ws / "repo" / "static" / "config.pbtxt"
        path.write_text(path.read_text().replace("max_batch_size: 0", "max_batch_size: 1")
                        .replace("dims: [ 1, 3, 32, 32 ]", "dims: [ 3, 32, 32 ]"))
        return
    if how == "version":
        write_repository([ws / "model.onnx"], ws / "repo")
        (ws / "repo" / "model" / "1").rename(ws / "repo" / "model" / "\u0661")
        return
    plan = ws / "p.plan"
    plan.write_bytes(b"engine")
    EngineManifest(tensorrt_version="11.4.0.106", gpu_name="G", compute_capability="9.0", precision="fp16",
                   plan_sha256=sha256_bytes(b"engine"), onnx_sha256="0" * 64,
                   profiles=[{"images": [[1, 3, 4, 4], [1, 3, 224, 224], [8, 3, 512, 512]]},
                             {"images": [[1, 3, 513, 513], [1, 3, 768, 768], [4, 3, 1024, 1024]]}],
                   metadata=ModelMetadata(arch="GapCNN", in_channels=3, num_classes=10, min_height=4,
                                          min_width=4).to_props()).write(plan)
    write_repository([plan], ws / "repo", ServeOptions(name="m"))
    path = ws / "repo" / "m" / "config.pbtxt"
    text = path.read_text()
    if how == "per-profile":
        text = text.replace('profile: [ "0", "1" ]', 'profile: [ "0" ]')
    else:
        text = text.replace("dims: [ 3, 224, 224 ]", "dims: [ 3, 600, 224 ]")
    path.write_text(text)


def _lying_contract(ws, **change):
    """model.onnx with its gap.preprocess edited: a contract written by hand."""
    import onnx

    model = onnx.load(str(ws / "model.onnx"))
    prop = next(p for p in model.metadata_props if p.key == "gap.preprocess")
    values = json.loads(prop.value) | {"resize": "shorter-side", "size": [32, 32]} | change
    prop.value = json.dumps(values)
    onnx.save(model, str(ws / "lying.onnx"))
    _images(ws, "a.png")
    _labelled(ws, "class0")


PREPROCESS = {
    "run-contract-crop-zero": Case("run", ["lying.onnx", "imgs"], 1, "crop_fraction 0 is outside 0.05 to 1",
                                   setup=lambda ws: _lying_contract(ws, crop_fraction=0)),
    "run-contract-crop-five": Case("run", ["lying.onnx", "imgs"], 1, "crop_fraction 5 is outside 0.05 to 1",
                                   setup=lambda ws: _lying_contract(ws, crop_fraction=5)),
    "run-contract-interpolation": Case("run", ["lying.onnx", "imgs"], 1, "interpolation 'sinc' is not one of",
                                       setup=lambda ws: _lying_contract(ws, interpolation="sinc")),
    "run-contract-huge-size": Case("run", ["lying.onnx", "imgs"], 1, "needs a size of 1 to 16384",
                                   setup=lambda ws: _lying_contract(ws, size=[10 ** 9, 10 ** 9])),
    "eval-contract-lies": Case("eval", ["lying.onnx", "--data", "lab", "--json", "e.json"], 1,
                               "gap.preprocess", ["e.json"], lambda ws: _lying_contract(ws, crop_fraction=5)),
    "tune-contract-lies": Case("tune", ["lying.onnx", "--data", "lab", "--json", "t.json"], 1,
                               "gap.preprocess", ["t.json"], lambda ws: _lying_contract(ws, pixel_scale=3)),
    "export-preprocess-missing-file": Case("export", [*EXPORT, "-o", "out.onnx", "--preprocess", "nope.py:make"], 1,
                                           "--preprocess file nope.py does not exist", ["out.onnx"]),
    "export-preprocess-not-importable": Case("export", [*EXPORT, "-o", "out.onnx", "--preprocess", "bad.py:make"],
                                             1, "cannot import --preprocess module 'bad.py'", ["out.onnx"],
                                             lambda ws: (ws / "bad.py").write_text("import no_such_thing_xyz\n")),
    "export-preprocess-no-colon": Case("export", [*EXPORT, "-o", "out.onnx", "--preprocess", "make"], 1,
                                       "is not of the form MODULE:CALLABLE", ["out.onnx"]),
    "export-preprocess-not-a-transform": Case("export", [*EXPORT, "-o", "out.onnx", "--preprocess", "t.py:make"], 1,
                                              "step 1 of the transform", ["out.onnx"],
                                              lambda ws: (ws / "t.py").write_text("def make():\n    return 42\n")),
    "export-preprocess-raises": Case("export", [*EXPORT, "-o", "out.onnx", "--preprocess", "t.py:make"], 1,
                                     "calling it failed", ["out.onnx"],
                                     lambda ws: (ws / "t.py").write_text("def make():\n    1 / 0\n")),
    "export-preprocess-timm-missing": Case("export", [*EXPORT, "-o", "out.onnx", "--preprocess", "timm"], 1,
                                           "timm", ["out.onnx"]),
    "export-crop-fraction-range": Case("export", [*EXPORT, "-o", "out.onnx", "--resize", "shorter-side",
                                                  "--crop-fraction", "5"], 2, "--crop-fraction", ["out.onnx"]),
    "export-crop-without-resize": Case("export", [*EXPORT, "-o", "out.onnx", "--crop-fraction", "0.8"], 2,
                                       "--crop-fraction needs a resize policy that crops", ["out.onnx"]),
    "export-no-antialias-in-pillow": Case("export", [*EXPORT, "-o", "out.onnx", "--resize", "stretch",
                                                     "--resize-space", "uint8", "--no-antialias"], 1,
                                          "always antialiases", ["out.onnx"]),
    "export-imgsz-against-transform": Case("export", ["model.pt", "--dynamic", "--imgsz", "32", "-o", "out.onnx",
                                                      "--resize", "stretch", "--check-transform", "nope.py:f"], 1,
                                           "--check-transform file nope.py does not exist", ["out.onnx"]),
    "export-images-missing": Case("export", [*EXPORT, "-o", "out.onnx", "--check-transform", "t.py:make",
                                             "--images", "nowhere"], 2, "--images nowhere is not a folder",
                                  ["out.onnx"],
                                  lambda ws: (ws / "t.py").write_text("def make():\n    return lambda im: im\n")),
}


@pytest.fixture
def immutable_folder(tmp_path):
    """A folder with the immutable attribute (chattr +i): not even root may add to it."""
    folder = tmp_path / "frozen"
    folder.mkdir()
    (folder / "keep.txt").write_bytes(SENTINEL)
    done = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 60 kB tmpfs: a bundle does not fit."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:  # lazily if a file in it is still open (a runtime that has not let go yet)
        if subprocess.run(["umount", str(mount)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def cases_of(command: str, table: dict) -> list[str]:
    """The names of ``table``'s cases that run ``command``, sorted: each command's file runs its own."""
    return sorted(name for name, case in table.items() if case.cli == command)
