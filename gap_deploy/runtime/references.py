"""Reference implementations (PyTorch eager for ``gap-bench --torch``) found through an entry point.

The runtime never imports the exporter: the exporter side registers its reference under the entry-point
group ``gap_deploy.references`` (pyproject.toml), and gap-bench loads it by name only when asked.
A reference is a callable ``(checkpoint, *, arch, num_classes, trust_checkpoint, device, threads) ->
(infer, versions)`` where ``infer`` maps an NCHW float32 array to logits.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points

from gap_deploy.runtime._lazy import require
from gap_deploy.runtime.errors import MissingDependencyError

GROUP = "gap_deploy.references"


def load_reference(name: str) -> Callable:
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        raise MissingDependencyError(f"no '{name}' reference is installed (entry point group {GROUP}).",
                                     hint="pip install 'gap-deploy[cpu]' (the exporter registers the PyTorch "
                                          "reference).")
    if name == "torch":
        require("torch", purpose="for --torch")
    return found[0].load()
