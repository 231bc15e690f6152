"""A real tritonserver (the one nvidia-pytriton bundles, python backend only) on 127.0.0.1, for the tests: the
package's own launcher (gap_deploy.exporter.triton_serve, what gap-triton --serve runs), so the tests start it
exactly as a user's command does. Every wait is bounded and the server is stopped on the way out."""

from __future__ import annotations

import contextlib
from pathlib import Path

from gap_deploy.exporter.triton_serve import distribution, serve

__all__ = ["distribution", "tritonserver"]


@contextlib.contextmanager
def tritonserver(repo: Path, workdir: Path):
    """Yield (http url, log path) of a tritonserver serving ``repo``; stopped whatever happens."""
    with serve(repo, workdir) as served:
        yield served.url, served.log
