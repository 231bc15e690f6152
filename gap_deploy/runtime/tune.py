"""gap-tune's measurements and decision: which input size, precision and backend to deploy.

For every artifact x backend x input size, top-1/top-5 on the user's labelled images (resized exactly as
``gap-run --imgsz`` resizes them) and latency/throughput at one batch size, measured with gap-bench's
harness in the same run. Each image is decoded once and each session created once. Accuracy comes with
its Wilson 95% interval: two points whose intervals overlap are tied, not ranked. From the points: the
Pareto front of accuracy against latency, and a decision under one constraint. torch-free.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gap_deploy.runtime.backends.table import BACKENDS, facts
from gap_deploy.runtime.errors import GapError, UsageError, first_line
from gap_deploy.runtime.evaluate import check_sizes_fit, record_top5, size_label
from gap_deploy.runtime.intervals import wilson  # re-exported: gap-tune's interval

if TYPE_CHECKING:
    from gap_deploy.runtime.session import Session
    from gap_deploy.runtime.stream import Batch

@dataclass(frozen=True)
class TunePoint:
    artifact: str
    backend: str
    size: str  # "64", "48x80" or "native"
    shape: tuple[int, int, int, int]  # what latency was measured at (B, C, H, W)
    correct: int
    top5_correct: int
    images: int
    latency_ms: float  # median at ``shape``
    p99_ms: float
    throughput_ips: float

    @property
    def top1(self) -> float:
        return self.correct / self.images if self.images else 0.0

    @property
    def top5(self) -> float:
        return self.top5_correct / self.images if self.images else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.correct, self.images)

    @property
    def series(self) -> str:
        return f"{self.artifact}/{self.backend}"

    @property
    def label(self) -> str:
        return f"{self.series} @ {self.size}"

    def to_dict(self) -> dict:
        data = asdict(self)
        low, high = self.interval
        data.update(shape=list(self.shape), top1=self.top1, top5=self.top5, top1_low=low, top1_high=high)
        return data


SPEEDS = ("latency", "throughput")


def _cost(point: TunePoint, speed: str) -> float:
    """Lower is better: latency, or minus throughput."""
    return point.latency_ms if speed == "latency" else -point.throughput_ips


def dominates(a: TunePoint, b: TunePoint, speed: str = "latency") -> bool:
    """``a`` is at least as accurate and at least as fast as ``b``, and strictly better in one of them."""
    no_worse = a.top1 >= b.top1 and _cost(a, speed) <= _cost(b, speed)
    return no_worse and (a.top1 > b.top1 or _cost(a, speed) < _cost(b, speed))


def pareto_front(points: Sequence[TunePoint], speed: str = "latency") -> list[TunePoint]:
    """The points no other point dominates, fastest first."""
    if speed not in SPEEDS:
        raise UsageError(f"speed {speed!r}; choose latency or throughput.")
    front = [p for p in points if not any(dominates(q, p, speed) for q in points if q is not p)]
    return sorted(front, key=lambda p: (_cost(p, speed), -p.top1))


def tied(a: TunePoint, b: TunePoint) -> bool:
    """Whether the accuracies of ``a`` and ``b`` cannot be told apart: their Wilson intervals overlap."""
    (a_low, a_high), (b_low, b_high) = a.interval, b.interval
    return a_low <= b_high and b_low <= a_high


@dataclass(frozen=True)
class Decision:
    chosen: TunePoint
    constraint: str  # e.g. "top-1 >= 75%"
    reason: str
    #: points more accurate than the chosen one on the front: (point, top-1 gained, extra ms)
    better: tuple[tuple[TunePoint, float, float], ...] = ()
    #: points whose accuracy is tied with the chosen one's and that met the constraint
    tied_with: tuple[TunePoint, ...] = ()

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.to_dict(), "constraint": self.constraint, "reason": self.reason,
                "better": [{"point": p.to_dict(), "top1_gain": g, "extra_ms": c} for p, g, c in self.better],
                "tied_with": [p.label for p in self.tied_with]}


def decide(points: Sequence[TunePoint], *, min_top1: float | None = None, max_ms: float | None = None,
           min_ips: float | None = None) -> Decision:
    """One point under exactly one constraint.

    - ``min_top1``: the fastest point whose top-1 is at least that;
    - ``max_ms``: the most accurate point whose median latency is within the budget;
    - ``min_ips``: the most accurate point whose throughput is at least that.
    For the last two, points whose accuracy is tied with the best one (overlapping intervals) count as
    equally accurate, and the fastest of them is chosen. Remaining ties go to the faster point.
    """
    given = [c for c in (min_top1, max_ms, min_ips) if c is not None]
    if len(given) != 1:
        raise UsageError("give exactly one constraint: --min-top1, --max-ms or --min-ips.")
    if not points:
        raise UsageError("no measured point to choose from.")
    fastest = lambda ps: min(ps, key=lambda p: (p.latency_ms, -p.top1))  # noqa: E731
    if min_top1 is not None:
        constraint = f"top-1 >= {min_top1:.1%}"
        ok = [p for p in points if p.top1 >= min_top1]
        if not ok:
            best = max(points, key=lambda p: p.top1)
            raise UsageError(f"no point reaches {constraint}; the most accurate is {best.label} at "
                             f"{best.top1:.1%} (95% interval {best.interval[0]:.1%}-{best.interval[1]:.1%}).",
                             hint="lower --min-top1, add sizes or artifacts, or train for these sizes.")
        chosen = fastest(ok)
        reason = f"the fastest of the {len(ok)} point(s) with {constraint}"
        if chosen.interval[0] < min_top1:
            reason += (f"; its 95% interval reaches down to {chosen.interval[0]:.1%}, so {chosen.images} images "
                       f"cannot confirm {min_top1:.0%} (use more images, or a higher --min-top1 for a margin)")
        peers = tuple(p for p in ok if p is not chosen and tied(p, chosen))
    else:
        if max_ms is not None:
            constraint = f"median latency <= {max_ms:g} ms"
            ok = [p for p in points if p.latency_ms <= max_ms]
            closest = min(points, key=lambda p: p.latency_ms)
            missing = f"the fastest is {closest.label} at {closest.latency_ms:.3f} ms"
        else:
            assert min_ips is not None  # exactly one constraint was given
            constraint = f"throughput >= {min_ips:g} images/s"
            ok = [p for p in points if p.throughput_ips >= min_ips]
            closest = max(points, key=lambda p: p.throughput_ips)
            missing = f"the highest is {closest.label} at {closest.throughput_ips:.1f} images/s"
        if not ok:
            raise UsageError(f"no point meets {constraint}; {missing}.",
                             hint="relax the constraint, add smaller sizes, or a faster backend or precision.")
        best = max(ok, key=lambda p: (p.top1, -p.latency_ms))
        peers = tuple(p for p in ok if tied(p, best))
        chosen = fastest(peers)
        reason = (f"the most accurate of the {len(ok)} point(s) with {constraint}"
                  + (f"; {len(peers)} are tied in accuracy (overlapping 95% intervals), so the fastest of them"
                     if len(peers) > 1 else ""))
        peers = tuple(p for p in peers if p is not chosen)
    better = tuple((p, p.top1 - chosen.top1, p.latency_ms - chosen.latency_ms)
                   for p in pareto_front(points) if p.top1 > chosen.top1)
    return Decision(chosen, constraint, reason, better, peers)


@dataclass
class TuneResult:
    folder: str
    classes: tuple[str, ...]
    batch: int
    images: int
    points: list[TunePoint] = field(default_factory=list)
    #: seconds spent decoding, evaluating and timing, and the whole sweep
    seconds: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    errors: list[dict] = field(default_factory=list)
    #: True when the decoded images did not fit the memory set aside for them, and each size decoded anew
    streamed: bool = False
    #: the labelled images the sweep kept, in order, and for each (artifact, backend, size) point whether each was
    #: right at top-1 (1), wrong (0) or could not run (-1): what gap-tune --buckets judges a bucket by
    labelled: list[str] = field(default_factory=list)
    hits: dict[tuple[str, str, str], np.ndarray] = field(default_factory=dict)
    #: the first artifact's preprocessing contract (runtime.preprocess.Preprocess): how --buckets routes sizes
    contract: object = None
    #: per (artifact, backend, size): ms per batch of the serving path (iter_classify, gap-run's own pipeline:
    #: decoding threads, preparation, the model) on a sample of the traffic at that size; see tune(stream=)
    stream_ms: dict[tuple[str, str, str], float] = field(default_factory=dict)
    resize_policy: str = ("each image resized to the size with bilinear interpolation on its [0, 1] pixels, "
                          "aspect ratio not kept (gap-run --imgsz); 'native' runs every image at its own size")

    def front(self, speed: str = "latency") -> list[TunePoint]:
        return pareto_front(self.points, speed)

    def to_dict(self, decision: Decision | None = None) -> dict:
        front = {p.label for p in self.front()}
        return {"folder": self.folder, "classes": list(self.classes), "batch": self.batch, "images": self.images,
                "streamed": self.streamed, "resize_policy": self.resize_policy, "interrupted": self.interrupted,
                "seconds": self.seconds,
                "points": [dict(p.to_dict(), on_front=p.label in front) for p in self.points],
                "front": [p.label for p in self.front()], "errors": self.errors,
                "decision": decision.to_dict() if decision else None}


#: the most sizes one sweep measures: each is a point per artifact and backend, timed and evaluated
MAX_SIZES = 64


def fitting(channels: int, size: tuple[int, int], most: int) -> int:
    """How many images of ``size`` may be held and run together: at most ``most``, and within half the memory
    limit with their activations (runtime.limits' estimate); at least 1 (one image was checked to fit)."""
    from gap_deploy.runtime.limits import estimate_bytes, limit_bytes

    return max(1, min(most, (limit_bytes() // 2) // max(estimate_bytes((1, channels, *size)), 1)))


def parse_sizes(texts: Sequence[str]) -> list[tuple[int, int]]:
    """``32:256:16`` (start:stop:step, stop included), ``32,48,64``, ``48x80``; repeatable. At most
    :data:`MAX_SIZES` sizes, counted before any range is expanded (``1:8192:1`` is refused in microseconds, not
    measured for hours)."""
    sizes: list[tuple[int, int]] = []
    for text in texts:
        for part in str(text).replace(" ", "").split(","):
            if not part:
                continue
            try:
                if ":" in part:
                    start, stop, *step = (int(v) for v in part.split(":"))
                    if len(step) > 1:
                        raise ValueError
                    step_value = step[0] if step else 16
                    if start < 1 or stop < start or step_value < 1:
                        raise ValueError
                    count = (stop - start) // step_value + 1
                    if stop > 8192 or len(sizes) + count > MAX_SIZES:
                        raise UsageError(
                            f"--sizes {part} asks for {count} size(s) up to {stop}; a sweep measures at most "
                            f"{MAX_SIZES} sizes of at most 8192 pixels.",
                            hint=f"use a larger step (e.g. {start}:{min(stop, 8192)}:"
                                 f"{max(step_value, -(-(min(stop, 8192) - start) // (MAX_SIZES - 1)))}).")
                    sizes += [(s, s) for s in range(start, stop + 1, step_value)]
                elif "x" in part.lower():
                    h, w = (int(v) for v in part.lower().split("x"))
                    sizes.append((h, w))
                else:
                    sizes.append((int(part), int(part)))
            except UsageError:
                raise
            except ValueError:
                raise UsageError(f"--sizes {part!r} is not N, HxW or START:STOP:STEP (e.g. 32:256:16).") from None
    if any(h < 1 or w < 1 or h > 8192 or w > 8192 for h, w in sizes):
        raise UsageError("--sizes must lie between 1 and 8192 pixels.")
    sizes = list(dict.fromkeys(sizes))
    if len(sizes) > MAX_SIZES:
        raise UsageError(f"--sizes gives {len(sizes)} sizes; a sweep measures at most {MAX_SIZES}.",
                         hint="give fewer sizes, or a range with a larger step.")
    return sizes


def default_sizes(meta) -> list[tuple[int, int]]:
    """Half to twice the export size in quarter steps (64 -> 32..128 by 16), never below the model's minimum."""
    export = meta.export_height or 224
    step = max(export // 4, 1)
    low = max(export // 2, meta.min_height, meta.min_width, 1)
    return [(s, s) for s in range(low, 2 * export + 1, step)]


def read_file(contract, path, channels: int):
    """One image file decoded for ``contract`` (runtime.preprocess), before any resize: held for every size."""
    from gap_deploy.runtime.images import open_regular

    with open_regular(path) as handle:
        return contract.read(handle, channels, name=str(path))


def prepared(session, contract, decoded) -> np.ndarray:
    """A decoded image made into ``session``'s input by ``contract`` (at one size), with the size checks."""
    from gap_deploy.runtime.validation import check_image

    chw = contract.finish(decoded)
    check_image(chw, session.input_spec)
    return chw


def sample_per_class(files: Sequence[Path], labels: Sequence[int], max_per_class: int | None):
    """At most ``max_per_class`` files of each class, the first in sorted order (deterministic)."""
    if max_per_class is None:
        return list(files), list(labels)
    kept: dict[int, int] = {}
    out_files, out_labels = [], []
    for path, label in zip(files, labels):
        if kept.get(label, 0) < max_per_class:
            kept[label] = kept.get(label, 0) + 1
            out_files.append(path)
            out_labels.append(label)
    return out_files, out_labels


def tune(artifacts: Mapping[str, str | os.PathLike], folder: str | os.PathLike, *,
         sizes: Sequence[tuple[int, int]] | None = None, native: bool = True, backends: Sequence[str] | None = None,
         batch: int = 1, max_per_class: int | None = None, settings=None,
         progress: Callable[[str], None] | None = None,
         on_plan: Callable[[int, float], None] | None = None, hold_bytes: int | None = None,
         threads: int | None = None, stream: Sequence[str | os.PathLike] = ()) -> TuneResult:
    """Measure every artifact x backend x size (see the module doc); Ctrl-C returns what was measured.

    Each image is decoded once and held for all sizes while the decoded images fit in ``hold_bytes``
    (default: a quarter of the memory limit of runtime.limits); beyond that the sweep streams instead,
    decoding each image once per size (shared by the artifacts), in bounded memory (runtime.stream), and
    ``result.streamed`` says so. ``on_plan(points, seconds)`` is called once before the sweep with the
    number of points and an estimate of its length; ``progress(label)`` after each point. ``threads``: CPU
    threads for each model (default: the runtime's own, as gap-bench measures). ``stream``: image files (a
    sample of the deployment's traffic) run at every fixed size through gap-run's own pipeline (decoding
    threads, the contract at that size, the model, at ``batch``; serving_ms), into ``result.stream_ms``: what a
    stream costs per batch, the model's time included.
    """
    from gap_deploy.runtime.bench import BenchSettings
    from gap_deploy.runtime.errors import InputTypeError
    from gap_deploy.runtime.evaluate import read_labelled_folder
    from gap_deploy.runtime.limits import check_memory, limit_bytes
    from gap_deploy.runtime.validation import int_tuple

    if not isinstance(artifacts, dict) or not artifacts:
        raise InputTypeError("tune needs a dict of artifacts, {name: path}, with at least one entry; got "
                             f"{type(artifacts).__name__}.")
    sizes = None if sizes is None else [(h, w) for h, w in (int_tuple(s, 2, "each size") for s in sizes)]
    if batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}.")
    settings = settings or BenchSettings(warmup_s=0.1, duration_s=0.5, min_iterations=5)
    hold_bytes = limit_bytes() // 4 if hold_bytes is None else hold_bytes
    started = time.perf_counter()
    sessions: dict[tuple[str, str], Session] = {}
    result: TuneResult | None = None
    try:
        open_sessions(artifacts, backends, sessions, threads)
        first = one_model(sessions)
        chosen_sizes = list(sizes) if sizes else default_sizes(first)
        check_sizes_fit(sessions, chosen_sizes)
        widest = max(s.spec.channels for s in sessions.values())
        for size in chosen_sizes:  # one image at every size must fit, before any image is decoded
            check_memory((1, widest, *size), f"--sizes {size_label(size)}: an input")
        data = read_labelled_folder(folder, first.class_names, first.num_classes)
        files, labels = sample_per_class(data.files, data.labels, max_per_class)
        result = TuneResult(str(folder), data.classes, batch, 0)
        result.contract = first.preprocessing()
        decode_started = time.perf_counter()
        sweep = Sweep.decoded(sessions, files, result, hold_bytes, folder, widest)
        truth = np.asarray([labels[i] for i in sweep.keep])
        result.images = len(sweep.keep)
        result.seconds["decode"] = time.perf_counter() - decode_started
        result.seconds["evaluate"] = result.seconds["bench"] = 0.0
        all_sizes = ([None] if native else []) + chosen_sizes
        if on_plan:
            points = len(sessions) * len(all_sizes)
            on_plan(points, points * sweep.seconds_per_point(settings, chosen_sizes, result))
        for size in all_sizes:
            for group, keys in sweep.groups.items():
                sweep.measure(size, group, keys, truth, result, batch, settings, progress)
                if stream and size is not None:
                    for key in keys:
                        result.stream_ms[(key[0], key[1], size_label(size))] = \
                            serving_ms(sweep.sessions[key], stream, size, batch, settings.duration_s)
    except KeyboardInterrupt:
        if result is None or not result.points:  # nothing measured yet (loading, decoding, the probe): no result
            raise
        result.interrupted = True
    finally:
        for session in sessions.values():
            session.close()
    result.seconds["total"] = time.perf_counter() - started
    return result


#: serving_ms repeats its sample at least this many times and until ``seconds`` have passed, at most MAX_PASSES
MIN_PASSES, MAX_PASSES = 3, 50


def serving_ms(session, files: Sequence[str | os.PathLike], size: tuple[int, int], batch: int,
               seconds: float = 0.5) -> float:
    """ms per batch of ``batch`` images that iter_classify (gap-run's pipeline) spends in inference on ``files`` at
    ``size``: a first pass of two batches warms the session at that shape, then the whole sample is run again
    and again (MIN_PASSES, then until ``seconds``), and the median pass is taken, as gap-bench takes the median
    iteration. Files that cannot be read are left out; nan when none can run."""
    from gap_deploy.runtime.classify import iter_classify
    from gap_deploy.runtime.stream import StreamStats

    for _ in iter_classify(session, files[:batch * 2], imgsz=size, batch_size=batch):
        pass
    passes: list[float] = []
    started = time.perf_counter()
    while len(passes) < MIN_PASSES or (time.perf_counter() - started < seconds and len(passes) < MAX_PASSES):
        stats = StreamStats()
        ran = sum("error" not in item for item in iter_classify(session, files, imgsz=size, batch_size=batch,
                                                                 stats=stats))
        if not ran:
            return float("nan")
        passes.append(1000 * stats.infer_s / ran * batch)
    return float(np.median(passes))


def open_sessions(artifacts: Mapping[str, str | os.PathLike], backends: Sequence[str] | None,
                  sessions: dict[tuple[str, str], Session], threads: int | None = None) -> None:
    """One session per artifact x backend, into ``sessions`` as they open (the caller closes them): the backends
    asked for that run the artifact's kind, or by default every quick ONNX backend that works here (an INT8 ONNX
    on ort-plain too, onnxruntime's own defaults, as an app that embeds it runs it)."""
    from gap_deploy import runtime
    from gap_deploy.runtime.backends.table import ONNX_BACKENDS, backends_for
    from gap_deploy.runtime.bundle import kind_of
    from gap_deploy.runtime.session import available_backends

    works = {name for name, why in available_backends().items() if why is None}
    for name, path in artifacts.items():
        kind = kind_of(path)
        quick = [b for b in ONNX_BACKENDS if b in works and not facts(b).builds_at_start]
        default = [b for b in quick if not facts(b).plain_session] if kind == "onnx" else list(backends_for(kind))
        wanted = list(backends) if backends else default
        usable = [b for b in wanted if facts(b).artifact == kind]
        if not usable:
            raise UsageError(f"no backend given runs artifact '{name}' ({path}); asked for {', '.join(wanted)}.")
        for backend in usable:
            sessions[(name, backend)] = runtime.load(path, backend, threads=threads)
        if not backends and kind == "onnx" and sessions[(name, usable[0])].metadata.precision == "int8":
            for backend in (b for b in quick if facts(b).plain_session):
                sessions[(name, backend)] = runtime.load(path, backend, threads=threads)


#: ort-plain is said to be slower than gap-deploy's session when its median is more than this fraction above it
#: (the two points are timed one after the other, not in turns: a few per cent apart on a quiet machine, more on a
#: busy one; faster in a plain session costs an app nothing and is not said)
PLAIN_SLOWER = 0.15


def plain_notes(result: TuneResult) -> list[str]:
    """Where an artifact runs slower in a plain onnxruntime session (ort-plain) than in gap-deploy's (the same
    artifact, size and provider): what an app that embeds the .onnx would get instead."""
    plain = {b for b in BACKENDS if facts(b).plain_session}
    own = {(p.artifact, p.size, facts(p.backend).provider): p for p in result.points if p.backend not in plain}
    notes = []
    for p in (p for p in result.points if p.backend in plain):
        other = own.get((p.artifact, p.size, facts(p.backend).provider))
        if other and other.latency_ms > 0 and p.latency_ms / other.latency_ms - 1 > PLAIN_SLOWER:
            notes.append(f"{p.artifact} @ {p.size}: {p.latency_ms:.3f} ms in a plain onnxruntime session "
                         f"({p.backend}) against {other.latency_ms:.3f} ms in gap-deploy's ({other.backend}): an "
                         "app that embeds the .onnx gets the first.")
    return notes


def one_model(sessions: dict[tuple[str, str], Session]):
    """The metadata of the first session, after checking that every session classifies the same classes."""
    first = next(iter(sessions.values())).metadata
    for (name, _), session in sessions.items():
        if (session.metadata.class_names, session.metadata.num_classes) != (first.class_names, first.num_classes):
            raise UsageError(f"artifact '{name}' has other classes than '{next(iter(sessions))[0]}'; tune "
                             "artifacts of one model.")
    return first


@dataclass
class Sweep:
    """The images of one sweep and the sessions that measure them. Sessions that share a preprocessing contract
    and an input spec form a group and share their prepared images; each size is the contract at that size
    (runtime.preprocess), made from images decoded once. ``held`` maps (channels, contract) to the decoded
    images while they fit in memory; None when the sweep streams, decoding each image once per size."""

    sessions: dict[tuple[str, str], Session]
    files: list
    keep: list[int]
    groups: dict[tuple, list]
    held: dict[tuple, list] | None
    widest: int

    @classmethod
    def decoded(cls, sessions, files, result: TuneResult, hold_bytes: int, folder, widest: int) -> Sweep:
        groups: dict[tuple, list] = {}
        for key, session in sessions.items():
            channels = session.spec.channels
            contract = session.metadata.preprocessing(channels=channels)
            groups.setdefault((channels, contract, session.input_spec), []).append(key)
        held = hold_images(groups, files, result, hold_bytes)
        keep = list(range(len(files)))
        if held is not None:
            keep = [i for i in keep if all(held[g][i] is not None for g in held)]
            if not keep:
                raise UsageError(f"no image of {folder} could be read.", note="see the per-file errors.")
        return cls(sessions, files, keep, groups, held, widest)

    def seconds_per_point(self, settings, chosen_sizes, result: TuneResult) -> float:
        """An estimate of one point's seconds: its benchmark, and the images through the first group's lead
        session at the largest size (a probe of up to 16 images), plus decoding when the sweep streams."""
        bench_s = settings.warmup_s + (settings.duration_s if settings.iterations is None else 0.0)
        per_image = result.seconds["decode"] / max(len(self.files), 1) if result.streamed else 0.0
        (c0, contract0, _), (key, *_) = next(iter(self.groups.items()))
        session = self.sessions[key]
        largest = max(chosen_sizes, key=lambda s: s[0] * s[1]) if chosen_sizes else None
        probe = []
        probe_count = 16 if largest is None else fitting(self.widest, largest, 16)
        for i in self.keep[:probe_count]:
            try:
                raw = self.held[c0, contract0][i] if self.held is not None else read_file(contract0, self.files[i], c0)
                probe.append(prepared(session, contract0.sized(largest), raw))
            except GapError:
                pass  # unreadable or too small at its own size: reported when its point runs
        t0 = time.perf_counter()
        if probe:
            session.run_many(probe, max_batch=probe_count)
        per_image += (time.perf_counter() - t0) / max(len(probe), 1)
        return bench_s + per_image * len(self.keep) + 0.05

    def batches(self, size, lead: Session, channels: int, contract) -> Iterator[Batch]:
        """The kept images prepared for ``lead`` at ``size``, in order: from the held images, or streamed."""
        if self.held is not None:
            return self._held_batches(size, lead, channels, contract, self.held[channels, contract])
        return self._streamed_batches(size, lead, channels, contract)

    def _held_batches(self, size, lead: Session, channels: int, contract, images: list) -> Iterator[Batch]:
        """Chunks of at most 64 prepared images in order (Session.run_many groups them by shape), fewer where
        64 images at ``size`` and their activations would not fit."""
        from gap_deploy.runtime.stream import Batch

        chunk: list = []
        limit = 64 if size is None else fitting(channels, size, 64)
        at_size = contract.sized(size)
        for j, i in enumerate(self.keep):
            try:
                chunk.append((j, prepared(lead, at_size, images[i])))
            except GapError as exc:
                yield Batch((j,), error=first_line(exc))
            if len(chunk) == limit or (chunk and j == len(self.keep) - 1):
                yield Batch(tuple(x for x, _ in chunk), tuple(a for _, a in chunk))
                chunk = []

    def _streamed_batches(self, size, lead: Session, channels: int, contract) -> Iterator[Batch]:
        from gap_deploy.runtime.stream import default_workers, stream_batches

        at_size = contract.sized(size)

        def load(path):
            return prepared(lead, at_size, read_file(at_size, path, channels))

        count = 64 if size is None else fitting(channels, size, 64)  # the window: a batch and the decodes in flight
        return stream_batches([self.files[i] for i in self.keep], load, batch_size=count,
                              window=count + default_workers())

    def measure(self, size, group: tuple, keys: list, truth: np.ndarray, result: TuneResult, batch: int, settings,
                progress: Callable[[str], None] | None) -> None:
        """One size for one group: top-1/top-5 of each of its sessions on the kept images, then each timed at
        that size (at the median image size for native sizes); a point each into ``result``."""
        from gap_deploy.runtime.bench import bench_session

        channels, contract, _ = group
        label = size_label(size)
        t0 = time.perf_counter()
        top = {key: np.full((len(self.keep), 5), -1) for key in keys}
        ran = np.zeros(len(self.keep), bool)
        shapes = []
        for item in self.batches(size, self.sessions[keys[0]], channels, contract):
            if item.error is not None:
                result.errors.append({"file": str(self.files[self.keep[item.indices[0]]]), "size": label,
                                      "error": item.error})
                continue
            rows = list(item.indices)
            ran[rows] = True
            shapes += [img.shape for img in item.images]
            for key in keys:
                logits = np.stack(self.sessions[key].run_many(list(item.images), max_batch=max(batch, 16)))
                record_top5(top[key], rows, logits)
        if not ran.any():
            raise UsageError(f"no image could run at size {label} on {', '.join(k[0] for k in keys)}.",
                             note="see the per-file errors.")
        result.seconds["evaluate"] += time.perf_counter() - t0
        if size is None:  # latency at the median image size
            hs, ws = sorted(s[1] for s in shapes), sorted(s[2] for s in shapes)
            hw = (hs[len(hs) // 2], ws[len(ws) // 2])
        else:
            hw = size
        y = truth[ran]
        if not result.labelled:
            result.labelled = [str(self.files[i]) for i in self.keep]
        for key in keys:
            hits = np.full(len(self.keep), -1, np.int8)
            hits[ran] = top[key][ran][:, 0] == y
            result.hits[(key[0], key[1], label)] = hits
            got = top[key][ran]
            correct, top5 = int(np.sum(got[:, 0] == y)), int(np.sum((got == y[:, None]).any(axis=1)))
            t1 = time.perf_counter()
            timed, _ = bench_session(self.sessions[key], (batch, channels, *hw), settings)
            if timed is None:  # interrupted before a single timed iteration
                raise KeyboardInterrupt
            result.seconds["bench"] += time.perf_counter() - t1
            result.points.append(TunePoint(key[0], key[1], label, (batch, channels, *hw), correct, top5,
                                           int(ran.sum()), timed.latency_ms.median, timed.latency_ms.p99,
                                           timed.throughput_ips))
            if progress:
                progress(result.points[-1].label)
            if timed.interrupted:
                raise KeyboardInterrupt


def hold_images(groups: dict[tuple, list], files: list, result: TuneResult,
                hold_bytes: int) -> dict[tuple, list] | None:
    """Every file decoded once per (channels, contract) of the groups, None where unreadable (its error into
    ``result``); None instead of the images, and ``result.streamed``, once they would pass ``hold_bytes``."""
    held: dict[tuple, list] = {}
    held_size = 0
    for c, contract in dict.fromkeys((k[0], k[1]) for k in groups):
        held[c, contract] = []
        for path in files:
            try:
                image = read_file(contract, path, c)
            except GapError as exc:
                result.errors.append({"file": str(path), "size": "any", "error": first_line(exc)})
                image = None
            held[c, contract].append(image)
            held_size += image.nbytes if image is not None else 0
            if held_size > hold_bytes:
                result.streamed = True  # too many to hold: stream, decoding once per size
                result.errors = [e for e in result.errors if e["size"] != "any"]
                return None
    return held


def format_table(result: TuneResult, decision: Decision | None = None) -> str:
    front = {p.label for p in result.front()}
    head = (f"{'artifact/backend':>20} {'size':>7} {'top-1':>6} {'95% interval':>13} {'top-5':>6} "
            f"{'median ms':>9} {'p99 ms':>8} {'img/s':>8}  front")
    lines = [f"gap-tune on {result.folder}: {result.images} images, {len(result.classes)} classes, batch "
             f"{result.batch}" + (" (interrupted: partial)" if result.interrupted else ""), head, "-" * len(head)]
    for p in sorted(result.points, key=lambda p: (p.series, p.latency_ms)):
        low, high = p.interval
        mark = "*" if p.label in front else ""
        if decision and p is decision.chosen:
            mark += "  <- chosen"
        lines.append(f"{p.series:>20} {p.size:>7} {p.top1:6.1%} {low:6.1%}-{high:6.1%} {p.top5:6.1%} "
                     f"{p.latency_ms:9.3f} {p.p99_ms:8.3f} {p.throughput_ips:8.1f}  {mark}")
    lines.append("* on the Pareto front of top-1 against median latency; accuracies whose 95% intervals overlap "
                 "are tied.")
    if decision:
        c = decision.chosen
        lines.append(f"\nChosen for {decision.constraint}: {c.label}: top-1 {c.top1:.1%} "
                     f"({c.interval[0]:.1%}-{c.interval[1]:.1%}), {c.latency_ms:.3f} ms median at "
                     f"{'x'.join(map(str, c.shape))}, {c.throughput_ips:.1f} images/s.")
        lines.append(f"Why: {decision.reason}.")
        if decision.tied_with:
            shown = [p.label for p in decision.tied_with[:6]]
            more = len(decision.tied_with) - len(shown)
            lines.append("Tied with it in accuracy (and slower): " + ", ".join(shown)
                         + (f" and {more} more" if more > 0 else ""))
        for p, gain, cost in decision.better:
            lines.append(f"Next better: {p.label}: +{gain:.1%} top-1 for {cost:+.3f} ms"
                         + ("" if not tied(p, c) else " (tied: the intervals overlap)"))
    return "\n".join(lines)


def plot(result: TuneResult, path: str | os.PathLike, decision: Decision | None = None) -> Path:
    """Top-1 against median latency: one colour per artifact/backend, the front drawn and labelled with
    sizes, dominated points grey, the chosen point starred."""
    from gap_deploy.runtime.plot import publish_figure, pyplot

    plt = pyplot()

    front = result.front()
    on_front = {p.label for p in front}
    fig, ax = plt.subplots(figsize=(9.5, 5))
    for index, series in enumerate(dict.fromkeys(p.series for p in result.points)):
        mine = [p for p in result.points if p.series == series]
        good = [p for p in mine if p.label in on_front]
        grey = [p for p in mine if p.label not in on_front]
        ax.scatter([p.latency_ms for p in grey], [p.top1 for p in grey], facecolor="0.8", edgecolor=f"C{index}",
                   linewidth=1, s=24, zorder=2)  # dominated: grey, its series in the edge
        ax.scatter([p.latency_ms for p in good], [p.top1 for p in good], color=f"C{index}", s=40, zorder=3,
                   label=series)
        for p in mine:
            low, high = p.interval
            ax.plot([p.latency_ms] * 2, [low, high], color=f"C{index}" if p.label in on_front else "0.8",
                    linewidth=1, zorder=1)
    ax.plot([p.latency_ms for p in front], [p.top1 for p in front], color="black", linewidth=1, linestyle="--",
            zorder=2, label="Pareto front")
    for p in front:
        ax.annotate(p.size, (p.latency_ms, p.top1), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if decision:
        c = decision.chosen
        ax.scatter([c.latency_ms], [c.top1], marker="*", s=260, color="gold", edgecolor="black", zorder=4,
                   label=f"chosen: {c.label}")
    ax.set_xscale("log")
    ax.set_xlabel(f"median latency at batch {result.batch} (ms, log scale)")
    ax.set_ylabel("top-1 accuracy (95% interval)")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    ax.set_title(f"Accuracy against latency on {Path(result.folder).name} ({result.images} images)")
    fig.tight_layout()
    return publish_figure(fig, path)


def plot_buckets(planning, contract, path: str | os.PathLike) -> Path:
    """Two panels: the traffic's effective sides as a histogram with the chosen buckets' sizes as edges (each
    bar coloured by the bucket it routes to), and the predicted mean latency against the number of buckets
    (the model's medians, and the serving path's where measured), the one-size choice dashed. Here, not in
    runtime.buckets, which the preprocessing contract imports for its routing rule."""
    from gap_deploy.runtime.buckets import routed
    from gap_deploy.runtime.plot import publish_figure, pyplot

    plt = pyplot()
    chosen = planning.chosen
    sides, bucket_sides, at = routed(planning.traffic, contract, chosen)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    bins = np.linspace(float(sides.min()) - 0.5, float(sides.max()) + 0.5, 41)
    for j, bucket in enumerate(chosen.buckets):
        mine = sides[at == j]
        left.hist(mine, bins=bins, color=f"C{j}", alpha=0.85,
                  label=f"-> {bucket.label}: {bucket.share:.0%}, top-1 {bucket.top1:.0%}")
        left.axvline(bucket_sides[j], color=f"C{j}", linestyle="--", linewidth=1)
    left.set_xlabel("effective side (px, as the preprocessing scales it)")
    left.set_ylabel("images")
    left.set_title(f"Traffic ({planning.traffic.sampled} images) and its buckets")
    left.legend(fontsize="small")
    ks = sorted(planning.by_k)
    right.plot(ks, [planning.by_k[k].mean_ms for k in ks], marker="o", label="model's medians")
    if all(planning.by_k[k].streamed for k in ks):
        right.plot(ks, [planning.by_k[k].stream_mean_ms for k in ks], marker="s", label="serving (gap-run)")
    right.axhline(planning.single.mean_ms, color="0.5", linestyle=":", label=f"one size {planning.single.label}")
    right.scatter([len(chosen.buckets)], [chosen.mean_ms], marker="*", s=200, color="gold", edgecolor="black",
                  zorder=3, label="chosen")
    right.set_xlabel("buckets (K)")
    right.set_ylabel("predicted mean ms per batch")
    right.set_xticks(ks)
    right.set_title(f"every bucket at top-1 >= {planning.min_top1:.0%}")
    right.grid(True, alpha=0.3)
    right.legend(fontsize="small")
    fig.tight_layout()
    return publish_figure(fig, path)
