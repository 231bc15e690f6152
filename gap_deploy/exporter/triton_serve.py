"""Serve a model repository with the tritonserver that nvidia-pytriton bundles: gap-triton --serve.

pytriton's wheel carries a real tritonserver (python backend only, no onnxruntime or TensorRT backends) and a
python-backend stub per Python version. The server is started from a copy of that distribution with the stub of
this interpreter's version in ``backends/python`` (the stub links the running interpreter's libpython, so
LD_LIBRARY_PATH names its lib folder, beside the wheel's own libraries). Every wait is bounded and the server is
stopped on the way out, failures included. On a GPU machine with every backend, the official container is the
server to use (docs/commands/gap-triton.md); this one is for CPU machines and for trying a repository.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from gap_deploy.runtime.errors import ArtifactError, UsageError

READY_TIMEOUT_S = 90
STOP_TIMEOUT_S = 20


def distribution() -> Path | None:
    """nvidia-pytriton's package folder when it holds the bundled tritonserver, else None."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root if (root / "tritonserver" / "bin" / "tritonserver").is_file() else None


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Served:
    """A running server: its HTTP address (HOST:PORT, what gap-run --server takes), log file and process."""

    url: str
    log: Path
    process: subprocess.Popen


def _prepare(root: Path, workdir: Path) -> Path:
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise ArtifactError(f"nvidia-pytriton has no python-backend stub for Python {version}.",
                            hint="run gap-triton --serve with a Python that pytriton supports (3.8 to 3.12).")
    server = workdir / "tritonserver"
    shutil.copytree(root / "tritonserver", server, ignore=shutil.ignore_patterns("python_backend_stubs"))
    shutil.copy(stub, server / "backends" / "python" / "triton_python_backend_stub")
    return server


def _log_tail(log: Path, limit: int = 3000) -> str:
    """The server log's error lines (glog's "E" lines and its final "error:" line), else its end."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    errors = [line for line in text.splitlines() if re.match(r"E\d{4} ", line) or line.startswith("error:")]
    return "\n".join(errors)[-limit:] if errors else text[-limit:]


@contextlib.contextmanager
def serve(repo: str | os.PathLike, workdir: str | os.PathLike, *, address: str = "127.0.0.1",
          http_port: int | None = None, ready_timeout: float = READY_TIMEOUT_S) -> Iterator[Served]:
    """Yield a ``Served`` tritonserver for ``repo``, ready (``/v2/health/ready`` answered 200); stopped on the way
    out whatever happens. ``workdir`` receives the server's copy and its log. A server that exits or is not
    ready in ``ready_timeout`` seconds is an ArtifactError with the end of its log."""
    root = distribution()
    if root is None:
        raise UsageError("no tritonserver here: nvidia-pytriton is not installed.",
                         hint="pip install --no-deps nvidia-pytriton==0.7.0 (its tritonserver needs none of its "
                              "Python dependencies), or run the official container (docs/commands/gap-triton.md).")
    repo, workdir = Path(repo).resolve(), Path(workdir)
    if not repo.is_dir():
        raise UsageError(f"{repo} is not a model repository folder.",
                         hint="write one with gap-triton ARTIFACT -o REPO.")
    server = _prepare(root, workdir)
    libs = [str(root.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(filter(None, [*libs, os.environ.get("LD_LIBRARY_PATH", "")]))}
    http = http_port or free_port(address)
    grpc, metrics = free_port(address), free_port(address)
    log = workdir / "tritonserver.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(server / "bin" / "tritonserver"), f"--model-repository={repo}",
             f"--backend-directory={server / 'backends'}", f"--http-port={http}", f"--grpc-port={grpc}",
             f"--metrics-port={metrics}", f"--http-address={address}", f"--grpc-address={address}",
             "--allow-metrics=false", "--exit-on-error=true"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"{address}:{http}"
    try:
        _wait_ready(process, url, log, ready_timeout)
        yield Served(url, log, process)
    finally:
        stop(process)


def _wait_ready(process: subprocess.Popen, url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise ArtifactError(f"tritonserver exited ({process.returncode}) before it was ready:\n{_log_tail(log)}",
                                hint="pytriton's tritonserver has only the python backend: write the repository "
                                     "with gap-triton --triton-backend python, or serve it with the official "
                                     "container.")
        try:
            with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise ArtifactError(f"tritonserver was not ready in {timeout:.0f} s:\n{_log_tail(log)}")
        time.sleep(0.5)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (tritonserver unloads its models and exits), then SIGKILL after STOP_TIMEOUT_S."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
