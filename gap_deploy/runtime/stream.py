"""Images as a stream: decoded by a thread pool while batches run, in bounded memory.

``stream_batches`` reads and decodes items ahead of the consumer on worker threads (Pillow and ONNX
Runtime release the GIL, so decoding overlaps inference) and groups the decoded images by size into
batches. At most ``window`` decoded images exist at any time, counting those still being decoded, those
decoded but not yet taken, and those waiting in a size group, and the decoded images held stay within a
memory budget (``budget_bytes``: the decodes in flight are counted at the largest image seen so far): peak
memory depends on the window and the budget, never on the number of images, and 40 photos of 3000x3000 are
not all held because none of them shares a size. A group is handed over when it holds ``batch_size`` images;
when the window or the budget is full of groups that are not, the largest group goes as it is. At the end
every group goes.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from gap_deploy.runtime.errors import GapError, UsageError, first_line

T = TypeVar("T")

#: default decoded images held at once: a few batches' worth for every worker
DEFAULT_WINDOW = 256
#: default memory for decoded images held at once (at most a quarter of runtime.limits' limit)
DEFAULT_BUDGET = 1 << 30


def default_budget() -> int:
    from gap_deploy.runtime.limits import limit_bytes

    return min(DEFAULT_BUDGET, max(limit_bytes() // 4, 1 << 20))


@dataclass
class StreamStats:
    """Where a stream's time went, and the most decoded images it held at once."""

    images: int = 0
    failed: int = 0
    decode_s: float = 0.0  # summed over the worker threads
    wait_s: float = 0.0  # the consumer waiting for a decode
    infer_s: float = 0.0  # filled in by the consumer around its inference calls
    wall_s: float = 0.0
    workers: int = 0
    window: int = 0
    peak_held: int = 0
    #: the most bytes of decoded images held at once (counted when they are taken from the decoders)
    peak_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_decode(self, seconds: float) -> None:
        with self._lock:
            self.decode_s += seconds

    @property
    def images_per_s(self) -> float:
        return self.images / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> dict:
        return {"images": self.images, "failed": self.failed, "wall_s": self.wall_s,
                "images_per_s": self.images_per_s, "decode_s": self.decode_s, "wait_s": self.wait_s,
                "infer_s": self.infer_s, "workers": self.workers, "window": self.window, "peak_held": self.peak_held,
                "peak_bytes": self.peak_bytes}

    def summary(self) -> str:
        return (f"{self.images} image(s) in {self.wall_s:.2f} s: {self.images_per_s:.1f} images/s; decoding "
                f"{self.decode_s:.2f} s over {self.workers} thread(s), waiting for images {self.wait_s:.2f} s, "
                f"inference {self.infer_s:.2f} s")


@dataclass(frozen=True)
class Batch:
    """Decoded images of one size (``indices`` into the input), or one item that failed (``error``)."""

    indices: tuple[int, ...]
    images: tuple[np.ndarray, ...] = ()
    error: str | None = None


def default_workers() -> int:
    """One decoding thread per core but one (left to inference and the consumer), at most 8. Measured on 2
    cores, 10,000 48x48 PNGs, the demo model: 1 thread 2,046 images/s, 2 threads 1,962, 3 threads 1,705 (the
    decoders' Python work and the consumer contend for the GIL)."""
    return max(1, min(8, (os.cpu_count() or 1) - 1))


def inference_threads() -> int:
    """CPU threads for the model while a stream decodes: the cores the decoding threads leave. Measured on 2 cores
    (scripts/bench_decode.py's 2,000 JPEGs of 500x375 at 224, the demo model): ONNX Runtime's default (a thread per
    core, spinning while idle) 205 images/s, one thread 306; 3,000 48x48 PNGs 4,648 against 5,572; at 512 px,
    where inference dominates, 54 against 56."""
    return max(1, (os.cpu_count() or 1) - default_workers())


def stream_batches(items: Sequence, load: Callable[[object], np.ndarray], *, batch_size: int = 16,
                   window: int | None = None, workers: int | None = None,
                   stats: StreamStats | None = None, budget_bytes: int | None = None) -> Iterator[Batch]:
    """Batches of decoded images of one size each, while the next ones decode (see the module doc).

    ``load(item)`` returns a CHW array or raises GapError, which becomes a ``Batch`` with ``error`` for
    that item alone. Every input index appears in exactly one yielded Batch.
    """
    workers, window = _window(batch_size, window, workers)
    stats = stats if stats is not None else StreamStats()
    stats.workers, stats.window = workers, window
    budget = budget_bytes if budget_bytes is not None else default_budget()
    started = time.perf_counter()

    def decode(index: int):
        t0 = time.perf_counter()
        try:
            return load(items[index])
        except GapError as exc:
            return exc
        finally:
            stats.add_decode(time.perf_counter() - t0)

    groups = _SizeGroups(stats)
    pending: deque = deque()  # futures in input order
    submitted = 0

    def room() -> bool:
        if groups.count + len(pending) >= window:
            return False
        if groups.largest == 0:  # no image seen yet, so none can be counted: as many in flight as workers
            return len(pending) < workers
        # the budget, but never so tight that nothing decodes: one image in flight when nothing is held
        return (groups.bytes + (len(pending) + 1) * groups.largest <= budget
                or (groups.count == 0 and not pending))

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gap-decode") as pool:
        try:
            while True:
                while submitted < len(items) and room():
                    pending.append(pool.submit(decode, submitted))
                    submitted += 1
                stats.peak_held = max(stats.peak_held, groups.count + len(pending))
                if not pending:
                    if submitted < len(items) and groups.groups:  # the budget is full of groups: free it, go on
                        yield groups.take_largest()
                        continue
                    break
                t0 = time.perf_counter()
                index = submitted - len(pending)
                result = pending.popleft().result()
                stats.wait_s += time.perf_counter() - t0
                if isinstance(result, GapError):
                    stats.failed += 1
                    yield Batch((index,), error=first_line(result))
                    continue
                full = groups.add(index, result, batch_size)
                if full is not None:
                    yield full
                elif submitted < len(items) and (groups.count >= window - workers
                                                 or groups.bytes + workers * groups.largest > budget):
                    # the groups fill the window or the budget (but for room for the decodes in flight) and none
                    # is a full batch: send the largest one now, so that decoding can go on
                    yield groups.take_largest()
            yield from groups.take_all()
        finally:
            for future in pending:  # an early stop (an error, Ctrl-C): never decode what nobody will take
                future.cancel()
            stats.wall_s = time.perf_counter() - started


def _window(batch_size: int, window: int | None, workers: int | None) -> tuple[int, int]:
    """(workers, window) with their defaults, once the window holds a batch and the decodes in flight."""
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}.")
    workers = workers or default_workers()
    window = window or max(DEFAULT_WINDOW, 2 * batch_size)
    if window < batch_size + workers:
        raise UsageError(f"window ({window}) must hold a batch ({batch_size}) and the decodes in flight ({workers}).")
    return workers, window


class _SizeGroups:
    """Decoded images waiting in groups of one shape and dtype (a batch runs one shape), with their count, their
    bytes and the largest image seen: what stream_batches weighs against its window and budget."""

    def __init__(self, stats: StreamStats):
        self.groups: dict[tuple, list[tuple[int, np.ndarray]]] = {}
        self.count = 0
        self.bytes = 0
        self.largest = 0
        self._stats = stats

    def add(self, index: int, array: np.ndarray, batch_size: int) -> Batch | None:
        """Hold ``array``; its group as a Batch once the group holds ``batch_size`` images."""
        key = (array.shape, array.dtype.str)
        group = self.groups.setdefault(key, [])
        group.append((index, array))
        self.count += 1
        self.bytes += array.nbytes
        self.largest = max(self.largest, array.nbytes)
        self._stats.peak_bytes = max(self._stats.peak_bytes, self.bytes)
        return self._take(key) if len(group) >= batch_size else None

    def take_largest(self) -> Batch:
        return self._take(max(self.groups, key=lambda k: sum(a.nbytes for _, a in self.groups[k])))

    def take_all(self) -> Iterator[Batch]:
        while self.groups:
            yield self._take(next(iter(self.groups)))

    def _take(self, key: tuple) -> Batch:
        group = self.groups.pop(key)
        self.count -= len(group)
        self.bytes -= sum(a.nbytes for _, a in group)
        self._stats.images += len(group)
        return Batch(tuple(i for i, _ in group), tuple(a for _, a in group))


def in_order(results: Iterable[tuple[int, T]], count: int) -> Iterator[T]:
    """Yield the values of (index, value) pairs, arriving in any order, in index order 0..count-1, each as
    soon as every earlier one has arrived."""
    waiting: dict[int, T] = {}
    next_index = 0
    for index, value in results:
        waiting[index] = value
        while next_index in waiting:
            yield waiting.pop(next_index)
            next_index += 1
    if next_index != count:
        raise RuntimeError(f"stream ended at item {next_index} of {count}")
