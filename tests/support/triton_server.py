"""A real tritonserver (the one nvidia-pytriton bundles, python backend only) on 127.0.0.1, for the tests.

Started from a copy of the bundled distribution with the python-backend stub of this interpreter's
version; the stub links the running interpreter's libpython, so LD_LIBRARY_PATH names its lib folder.
Every wait is bounded and the server is stopped on the way out, failures included.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

READY_TIMEOUT_S = 90


def distribution() -> Path | None:
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(next(iter(spec.submodule_search_locations)))
    return root if (root / "tritonserver" / "bin" / "tritonserver").is_file() else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def tritonserver(repo: Path, workdir: Path):
    """Yield (http url, log path) of a tritonserver serving ``repo``; stopped whatever happens."""
    root = distribution()
    server = workdir / "tritonserver"
    shutil.copytree(root / "tritonserver", server, ignore=shutil.ignore_patterns("python_backend_stubs"))
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    shutil.copy(root / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                server / "backends" / "python" / "triton_python_backend_stub")
    libs = [str(root.parent / "nvidia_pytriton.libs"), sysconfig.get_config_var("LIBDIR") or ""]
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(filter(None, [*libs, os.environ.get("LD_LIBRARY_PATH", "")]))}
    http, grpc, metrics = _free_port(), _free_port(), _free_port()
    log = workdir / "tritonserver.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(server / "bin" / "tritonserver"), f"--model-repository={repo}",
             f"--backend-directory={server / 'backends'}", f"--http-port={http}", f"--grpc-port={grpc}",
             f"--metrics-port={metrics}", "--http-address=127.0.0.1", "--grpc-address=127.0.0.1",
             "--allow-metrics=false", "--exit-on-error=true"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"127.0.0.1:{http}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"tritonserver exited ({process.returncode}):\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://{url}/v2/health/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"tritonserver not ready in {READY_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
