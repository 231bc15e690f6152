"""gap-run is three commands in one (local, --ray, --server): an option the chosen mode does not read is a usage
error naming it (exit 2), before anything is loaded, contacted or written."""

import socket

import pytest
from click.testing import CliRunner

from gap_deploy.runtime.cli.run import MODE_OPTIONS, main
from tests.conftest import assert_clean_failure


def _closed_port() -> int:
    with socket.socket() as s:  # bound and closed: nothing listens there, so a contact would fail, not hang
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SERVER = ["--server", f"127.0.0.1:{_closed_port()}", "--model", "m"]
RAY = ["--ray", "127.0.0.1:1", "--output", "results"]
CASES = {
    "server+ray": (SERVER + ["--ray"], "--ray"),
    "server+backend": (SERVER + ["--backend", "ort-cpu"], "--backend"),
    "server+batch-size": (SERVER + ["--batch-size", "4"], "--batch-size"),
    "server+trust-engine": (SERVER + ["--trust-engine"], "--trust-engine"),
    "server+workers": (SERVER + ["--workers", "2"], "--workers"),
    "server+logits": (SERVER + ["--logits"], "--logits"),
    "server+ray-batch-size": (SERVER + ["--ray-batch-size", "8"], "--ray-batch-size"),
    "ray+batch-size": (RAY + ["--batch-size", "4"], "--batch-size"),
    "ray+json": (RAY + ["--format", "json"], "--format"),
    "ray+concurrency": (RAY + ["--concurrency", "2"], "--concurrency"),
    "local+workers": (["--workers", "2"], "--workers"),
    "local+cpus-per-worker": (["--cpus-per-worker", "1"], "--cpus-per-worker"),
    "local+logits": (["--logits"], "--logits"),
    "local+ray-batch-size": (["--ray-batch-size", "8"], "--ray-batch-size"),
    "local+concurrency": (["--concurrency", "3"], "--concurrency"),
}


@pytest.mark.parametrize("case", CASES)
def test_an_option_the_mode_ignores_is_refused_by_name(tmp_path, reference_onnx, case, monkeypatch):
    args, option = CASES[case]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.png").write_bytes(b"not read")
    result = CliRunner().invoke(main, [str(reference_onnx), "a.png", *args])
    assert result.exit_code == 2, result.output
    assert f"{option} does not apply to" in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no results folder was started


def test_every_option_belongs_to_a_mode():
    """A new option must say which modes read it, or every mode refuses it."""
    options = {p.name for p in main.params if p.expose_value and p.name not in ("artifact", "images")}
    assert options == set().union(*MODE_OPTIONS.values())


def test_the_ray_batch_size_is_its_own_option_with_its_own_default():
    batch = {p.name: p.default for p in main.params}
    assert (batch["batch_size"], batch["ray_batch_size"]) == (16, 256)


def test_options_of_the_mode_still_work(tmp_path, reference_onnx):
    from PIL import Image

    Image.new("RGB", (20, 30), (200, 10, 10)).save(tmp_path / "red.png")
    result = CliRunner().invoke(main, [str(reference_onnx), str(tmp_path / "red.png"), "--batch-size", "4", "-k", "2"])
    assert result.exit_code == 0, result.output
    assert "red.png (" in result.output and "class" in result.output


def test_debug_prints_the_hidden_cause(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    plain = CliRunner().invoke(main, [str(bad), "x.png"])
    assert_clean_failure(plain, "cannot read ONNX model")
    debug = CliRunner().invoke(main, ["--debug", str(bad), "x.png"])
    assert debug.exit_code == 1
    assert "Traceback" in debug.output and "DecodeError" in debug.output  # the cause `from None` hid


@pytest.mark.parametrize("command", ["gap-export", "gap-build", "gap-run", "gap-bench", "gap-eval", "gap-pack",
                                     "gap-triton", "gap-tune", "gap-debug"])
def test_every_command_prints_its_version(command):
    from importlib.metadata import entry_points

    from gap_deploy.runtime.version import __version__

    (entry,) = [e for e in entry_points(group="console_scripts") if e.name == command]
    result = CliRunner().invoke(entry.load(), ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"gap-deploy {__version__}"
