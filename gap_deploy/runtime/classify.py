"""Image files -> top-k classes with a Session: what gap-run prints and what each Ray worker writes."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

import numpy as np

from gap_deploy.runtime.images import softmax
from gap_deploy.runtime.metadata import ModelMetadata
from gap_deploy.runtime.validation import check_image


def top_classes_batch(logits: np.ndarray, meta: ModelMetadata, k: int) -> list[list[dict]]:
    """:func:`top_classes` for every row of a (N, classes) batch at once (one softmax and one sort)."""
    probs = softmax(np.asarray(logits, dtype=np.float64))
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[{"index": int(i), "name": meta.class_name(int(i)), "prob": float(row[i])} for i in top]
            for row, top in zip(probs, order)]


def top_classes(logits: np.ndarray, meta: ModelMetadata, k: int) -> list[dict]:
    """The ``k`` most probable classes of one logits row: index, name and softmax probability."""
    return top_classes_batch(np.asarray(logits)[None, :], meta, k)[0]


def image_loader(session, imgsz=None, *, decode: str = "exact", buckets=None):
    """``path -> input tensor`` for ``session``: its model's preprocessing contract (at ``imgsz`` when given,
    routed between ``buckets`` sizes when given, runtime.preprocess), then the size and profile checks, so one
    bad file fails alone."""
    channels = session.spec.channels
    contract = session.metadata.preprocessing(imgsz, channels)
    if buckets:
        contract = contract.with_buckets(buckets)

    def load(path):
        chw = contract.load(path, channels, decode=decode)
        check_image(chw, session.input_spec)
        return chw
    return load


def iter_classify(session, paths, *, topk: int = 5, imgsz=None, batch_size: int = 16, window: int | None = None,
                  workers: int | None = None, stats=None, decode: str = "exact", buckets=None) -> Iterator[dict]:
    """Classify image files as a stream: one dict per file, in input order, each as soon as it and every
    earlier file are done: ``{"file", "size", "top"}``, or ``{"file", "error"}`` for a file that cannot be
    read or run. Decoding overlaps inference and at most ``window`` decoded images are held
    (runtime.stream). ``stats`` (a StreamStats) receives where the time went. ``buckets``: see image_loader.
    ``paths`` is indexed, not copied, when it is a sequence (gap-run's packed list stays packed)."""
    from gap_deploy.runtime.session import check_session
    from gap_deploy.runtime.stream import StreamStats, in_order, stream_batches

    check_session(session, "iter_classify")
    meta = session.metadata
    paths = paths if isinstance(paths, Sequence) else list(paths)
    stats = stats if stats is not None else StreamStats()
    load = image_loader(session, imgsz, decode=decode, buckets=buckets)

    def results():
        for batch in stream_batches(paths, load, batch_size=batch_size, window=window, workers=workers, stats=stats):
            if batch.error is not None:
                yield batch.indices[0], {"file": str(paths[batch.indices[0]]), "error": batch.error}
                continue
            t0 = time.perf_counter()
            logits = session.run_many(list(batch.images), max_batch=batch_size)
            stats.infer_s += time.perf_counter() - t0
            tops = top_classes_batch(np.stack(logits), meta, topk)
            for index, chw, top in zip(batch.indices, batch.images, tops):
                yield index, {"file": str(paths[index]), "size": [int(chw.shape[1]), int(chw.shape[2])],
                              "top": top}

    yield from in_order(results(), len(paths))


def classify(session, paths, *, topk: int = 5, imgsz=None, batch_size: int = 16, progress=None,
             window: int | None = None, workers: int | None = None, decode: str = "exact", buckets=None) -> dict:
    """Top-k classes per image file. Unreadable or too-small files are reported, the rest classified. ``buckets``:
    each image at one of these sizes (image_loader).

    Streams (iter_classify): memory is bounded by the window, not by the number of files; the report's
    ``stats`` says where the time went.
    """
    from gap_deploy.runtime.stream import StreamStats

    stats = StreamStats()
    results, errors = [], []
    for item in iter_classify(session, paths, topk=topk, imgsz=imgsz, batch_size=batch_size, window=window,
                              workers=workers, stats=stats, decode=decode, buckets=buckets):
        (errors if "error" in item else results).append(item)
        if progress:
            progress(1)
    return {"artifact": str(session.path), "backend": session.backend, "results": results, "errors": errors,
            "stats": stats.to_dict()}
