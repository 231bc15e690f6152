"""Plots (matplotlib, optional): the one way every --plot gets pyplot and writes its PNG, and gap-bench's
latency and throughput against resolution, per backend."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from gap_deploy.runtime._lazy import require
from gap_deploy.runtime.publish import publish_bytes
from gap_deploy.runtime.shapes import format_shape


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed), or the error naming the [plot] extra."""
    matplotlib = require("matplotlib", purpose="for --plot")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def publish_figure(fig, path: str | os.PathLike) -> Path:
    """``fig`` as a PNG at ``path``, published whole (runtime.publish); the figure is closed."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    pyplot().close(fig)
    return publish_bytes(path, buffer.getvalue())


def plot_results(results: Sequence, path: str | Path, title: str = "") -> Path:
    plt = pyplot()

    shapes = sorted({r.shape for r in results}, key=lambda s: (s[2] * s[3], s[0]))
    labels = [format_shape(s) for s in shapes]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for backend in dict.fromkeys(r.backend for r in results):
        rows = {r.shape: r for r in results if r.backend == backend}
        xs = [i for i, s in enumerate(shapes) if s in rows]
        med = [rows[shapes[i]].latency_ms.median for i in xs]
        low = [rows[shapes[i]].latency_ms.median - rows[shapes[i]].latency_ms.min for i in xs]
        high = [rows[shapes[i]].latency_ms.p90 - rows[shapes[i]].latency_ms.median for i in xs]
        left.errorbar(xs, med, yerr=[low, high], marker="o", capsize=3, label=backend)
        right.plot(xs, [rows[shapes[i]].throughput_ips for i in xs], marker="o", label=backend)
    for ax, ylabel in ((left, "latency ms (median; bars: min to p90)"), (right, "throughput, images/s")):
        ax.set_xticks(range(len(shapes)), labels, rotation=30, ha="right")
        ax.set_xlabel("input shape (BxCxHxW), by pixels per image")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title or "gap-bench")
    fig.tight_layout()
    return publish_figure(fig, path)
