"""docs/reference/vocabulary.md's table against the commands: every option it names is where it says and shown in
--help, no command shows a spelling the table replaced, every old name is hidden and sets the same value as its
new one (with a note), and the options it adds work: gap-run --format csv, --threads reaching the sessions."""

from __future__ import annotations

import csv
import importlib
import io
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from gap_deploy.__main__ import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "reference" / "vocabulary.md"


def rows() -> list[dict]:
    lines = TABLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| concept |"))
    found = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        concept, option, commands, old = (cell.strip() for cell in line.strip("|").split("|"))
        olds = [(name, [c.strip() for c in where.split(",")])
                for names, where in re.findall(r"((?:`--[a-z-]+`(?:, )?)+) \(([^)]*)\)", old)
                for name in re.findall(r"`(--[a-z-]+)`", names)]
        found.append({"concept": concept, "option": option.strip("`"),
                      "commands": [c.strip() for c in commands.split(",")], "old": olds})
    return found


def command(name: str):
    return importlib.import_module(COMMANDS[name]).main


def shown(name: str) -> set[str]:
    """The option strings a command's --help shows."""
    cmd = command(name)
    return {opt for p in cmd.params if not getattr(p, "hidden", False) for opt in (*p.opts, *p.secondary_opts)}


def hidden(name: str) -> set[str]:
    cmd = command(name)
    return {opt for p in cmd.params if getattr(p, "hidden", False) for opt in p.opts}


ROWS = rows()


def test_the_table_is_read_whole():
    assert len(ROWS) >= 12 and all(r["commands"] for r in ROWS)
    assert ("--json-lines", ["gap-run"]) in next(r["old"] for r in ROWS if r["option"] == "--format")


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r["option"])
def test_each_option_is_where_the_table_says_and_its_old_names_are_hidden(row):
    for name in row["commands"]:
        assert row["option"] in shown(name), f"{name} does not show {row['option']}"
    for old, where in row["old"]:
        for name in where:
            assert old in hidden(name) and old not in shown(name), f"{name}: {old} should be a hidden old name"


def test_no_command_shows_a_replaced_spelling():
    """An old name is gone from every --help, where another row does not own it (gap-run's --backend is the
    runtime backend, gap-triton's old --backend was Triton's)."""
    owners = {(name, r["option"]) for r in ROWS for name in r["commands"]}
    for row in ROWS:
        for old, _ in row["old"]:
            for name in COMMANDS:
                if old in shown(name):
                    assert (name, old) in owners, f"{name} still shows {old} ({row['concept']}: {row['option']})"


def test_every_help_text_prints_as_written():
    """click prints help text as it is (no %-formatting): a '%%' written for argparse shows doubled."""
    from click.testing import CliRunner

    for name in COMMANDS:
        result = CliRunner().invoke(command(name), ["--help"], terminal_width=200)
        assert result.exit_code == 0, (name, result.output)
        assert "%%" not in result.output, f"{name} --help shows '%%'"


# (command, arguments before the option, old spelling, new spelling): each parses to the same parameters
SAME_VALUE = [
    ("gap-export", ["m.pt"], ["--batch", "3"], ["--batch-size", "3"]),
    ("gap-export", ["m.pt"], ["--report", "r.json"], ["--json", "r.json"]),
    ("gap-tune", ["m.onnx", "--data", "d"], ["--batch", "4"], ["--batch-size", "4"]),
    ("gap-tune", ["m.onnx", "--data", "d"], ["--sizes", "32:64:16"], ["--imgsz", "32:64:16"]),
    ("gap-build", ["m.onnx"], ["--calib-size", "48"], ["--calib-imgsz", "48"]),
    ("gap-run", ["m.onnx", "a.png"], ["--json"], ["--format", "json"]),
    ("gap-run", ["m.onnx", "a.png"], ["--json-lines"], ["--format", "jsonl"]),
    ("gap-triton", ["m.onnx", "-o", "repo"], ["--backend", "python"], ["--triton-backend", "python"]),
]


@pytest.mark.parametrize("name, before, old, new", SAME_VALUE, ids=lambda v: v if isinstance(v, str) else None)
def test_an_old_name_sets_what_the_new_one_sets_and_says_so(name, before, old, new, capsys):
    cmd = command(name)
    with cmd.make_context(name, [*before, *old]) as ctx_old:
        got_old = dict(ctx_old.params)
    spelled = new[0] if len(old) == len(new) else " ".join(new)  # a flag's note gives the value it stands for
    assert f"Note: {old[0]} is now {spelled};" in capsys.readouterr().err
    with cmd.make_context(name, [*before, *new]) as ctx_new:
        got_new = dict(ctx_new.params)
    assert capsys.readouterr().err == ""
    assert got_old == got_new
    defaults = dict(cmd.make_context(name, before).params)
    assert got_new != defaults  # the option did something: the comparison above can fail


def test_gap_run_csv_streams_the_same_results_as_jsonl(tmp_path, reference_onnx):
    from PIL import Image

    from gap_deploy.runtime.cli.run import main

    for i, size in enumerate([(40, 24), (33, 57), (64, 64)]):
        Image.new("RGB", size[::-1], (30 * i, 200, 90)).save(tmp_path / f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    as_csv = CliRunner().invoke(main, [str(reference_onnx), str(tmp_path), "--format", "csv", "-k", "3"])
    as_jsonl = CliRunner().invoke(main, [str(reference_onnx), str(tmp_path), "--format", "jsonl", "-k", "3"])
    assert as_csv.exit_code == as_jsonl.exit_code == 1  # bad.png
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    items = [json.loads(line) for line in as_jsonl.stdout.splitlines()][:-1]
    assert [r["file"] for r in table] == [i["file"] for i in items] and len(table) == 4
    for row, item in zip(table, items):
        if "error" in item:
            assert row["error"] == item["error"] and row["class1"] == ""
            continue
        assert [int(row["height"]), int(row["width"])] == item["size"]
        assert [row[f"class{k}"] for k in (1, 2, 3)] == [t["name"] for t in item["top"]]
        assert [float(row[f"prob{k}"]) for k in (1, 2, 3)] == pytest.approx([t["prob"] for t in item["top"]],
                                                                             rel=1e-5)
    assert "their rows hold the error" in as_csv.stderr


@pytest.mark.parametrize("name", ["gap-run", "gap-eval", "gap-tune"])
def test_threads_reaches_every_session_the_command_opens(name, tmp_path, reference_onnx, monkeypatch):
    """--threads N becomes onnxruntime's intra-op thread count in the sessions the command opens (read back from
    the real onnxruntime session's options)."""
    from PIL import Image

    from gap_deploy import runtime

    for cls in ("class0", "class1"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (32, 32), (10, 20, 30)).save(tmp_path / cls / "a.png")
    opened = []
    real = runtime.load

    def load(*args, **kwargs):
        session = real(*args, **kwargs)
        opened.append(session.device["ort_intra_op_threads"])
        return session

    monkeypatch.setattr(runtime, "load", load)
    args = {"gap-run": [str(reference_onnx), str(tmp_path), "-r"],
            "gap-eval": [str(reference_onnx), "--data", str(tmp_path)],
            "gap-tune": [str(reference_onnx), "--data", str(tmp_path), "--imgsz", "32", "--no-native",
                         "--duration", "0.05", "--backend", "ort-cpu"]}[name]
    result = CliRunner().invoke(command(name), [*args, "--threads", "3"])
    assert result.exit_code == 0, result.output
    assert opened and all(threads == 3 for threads in opened), opened
