"""Image files -> top-k classes with a Session: what gap-run prints and what each Ray worker writes."""

from __future__ import annotations

import numpy as np

from runtime.errors import GapError, first_line
from runtime.images import load_image, normalize, softmax
from runtime.metadata import ModelMetadata
from runtime.validation import check_image


def top_classes(logits: np.ndarray, meta: ModelMetadata, k: int) -> list[dict]:
    """The ``k`` most probable classes of one logits row: index, name and softmax probability."""
    probs = softmax(np.asarray(logits, dtype=np.float64))
    order = np.argsort(-probs)[:min(k, probs.size)]
    return [{"index": int(i), "name": meta.class_name(int(i)), "prob": float(probs[i])} for i in order]


def prepare_image(session, chw: np.ndarray) -> np.ndarray:
    """Normalize a [0, 1] CHW image as the model expects and check that it can run (size, profiles)."""
    normalized = normalize(chw, session.metadata)
    check_image(normalized, session.input_spec)
    return normalized


def classify(session, paths, *, topk: int = 5, imgsz=None, batch_size: int = 16, progress=None) -> dict:
    """Top-k classes per image file. Unreadable or too-small files are reported, the rest classified."""
    meta, spec = session.metadata, session.input_spec
    channels = spec.channels or meta.in_channels or 3
    ready, errors = [], []
    for path in paths:
        try:  # size/profile checks per file, so one bad file cannot sink a batch
            ready.append((path, prepare_image(session, load_image(path, channels, imgsz))))
        except GapError as exc:
            errors.append({"file": str(path), "error": first_line(exc)})
        if progress:
            progress(1)
    logits = session.run_many([chw for _, chw in ready], max_batch=batch_size) if ready else []
    results = []
    for (path, chw), row in zip(ready, logits):
        results.append({"file": str(path), "size": [int(chw.shape[1]), int(chw.shape[2])],
                        "top": top_classes(row, meta, topk)})
    return {"artifact": str(session.path), "backend": session.backend, "results": results, "errors": errors}
