"""gap-tune --traffic --buckets K: the few fixed input sizes (buckets) that serve a stream of images of many sizes
fastest at the accuracy asked. torch-free; every figure comes from gap-tune's own sweep, nothing is assumed.

- **Traffic**: the sizes of the images a deployment will see, read from their headers (nothing is decoded; the
  EXIF orientation turns them as the contract does), an evenly spaced sample when there are many.
- **Routing**: an image goes to the smallest bucket at least as large as its *effective side*, the side the
  preprocessing contract scales to the target (the shorter side times the crop fraction for ``shorter-side``,
  the longer side for ``letterbox``, the larger side for ``stretch`` and ``none``), so no image is shrunk while a
  larger bucket exists; an image larger than every bucket goes to the largest, as every image does with one
  size. A bucket's side is the smaller of its height and width.
- **Accuracy of a bucket**: top-1 at the bucket's size of the labelled images routed to it by their own sizes,
  with its Wilson 95% interval. A bucket no labelled image routes to is judged by the whole labelled set at its
  size (the sweep's point), and the plan says so.
- **Accuracy on the traffic**: within a bucket, accuracy depends on how far an image is scaled, so the labelled
  images routed there are reweighted to the traffic's sizes (post-stratified by effective side; Wilson's
  interval at Kish's effective size): the top-1 a replay of the traffic is compared with. The choice itself
  holds the labelled images' top-1 at ``min_top1`` (so K = 1 stays gap-tune's choice) and notes a bucket whose
  reweighted top-1 falls below it, and one whose traffic lies outside the labelled sizes routed there.
- **Latency**: each bucket's median latency at the sweep's batch size, weighted by the traffic's share of the
  bucket: the predicted mean, and the p95 of the per-image latencies that mixture gives. The model's median
  leaves out what a stream costs around it (gap-run's decoding threads competing for the cores and the GIL,
  the batch's preparation): 0.1-0.2 ms per image on 2 cores, most of the time at sub-millisecond sizes. So
  gap-tune also runs a sample of the traffic at each size through gap-run's own pipeline (tune(stream=)),
  and the *serving* prediction (``stream_mean_ms``, ``stream_p95_ms``) weights those measurements instead:
  the figure a replay with gap-run is compared with.

The plan for K buckets is the set, among the swept fixed sizes of one artifact and backend, with the lowest
predicted mean of the model's medians (the quantity gap-tune's one-size choice ranks by; the serving overhead is
nearly the same per image at every size, so it changes the prediction, not the ranking) whose every bucket reaches
``min_top1`` (ties: the more accurate worst bucket). With K = 1 every image routes to the one bucket, so the plan is
gap-tune's own choice among the fixed sizes (the fastest point with top-1 >= X, ties to the more accurate).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from gap_deploy.runtime.errors import ArtifactError, InputError, UsageError
from gap_deploy.runtime.intervals import wilson, wilson_rate

#: at most this many traffic images have their headers read (an evenly spaced sample beyond it)
DEFAULT_SAMPLE = 5000
#: the most buckets a plan may hold (each is a model or a profile to ship)
MAX_BUCKETS = 8
#: the most candidate sets examined for one artifact and backend (C(n, K) grows fast)
MAX_COMBINATIONS = 200_000
#: --buckets auto: the fewest buckets whose predicted mean latency is within this share of the best K's
AUTO_WITHIN = 0.05


@dataclass(frozen=True)
class Traffic:
    """Image sizes of a deployment's stream: ``sizes`` is (n, 2) of (height, width) as the contract turns them."""

    source: str
    sizes: np.ndarray
    files: int  # image files found
    errors: tuple[dict, ...] = ()  # headers that could not be read: {"file", "error"}
    paths: tuple[str, ...] = ()  # the files whose sizes were read, in order (what a serving-path sample draws from)

    def sample_paths(self, count: int) -> list[str]:
        """``count`` of the read files, evenly spaced (all when there are fewer)."""
        return [self.paths[i] for i in _evenly(len(self.paths), count)]

    @property
    def sampled(self) -> int:
        return int(len(self.sizes))

    def to_dict(self) -> dict:
        return {"source": self.source, "files": self.files, "read": self.sampled, "errors": list(self.errors)}


def read_traffic(sources: Sequence[str | os.PathLike], *, sample: int = DEFAULT_SAMPLE,
                 orientation: str = "exif") -> Traffic:
    """The sizes of the images in ``sources`` (folders, walked with their sub-folders; image files; quoted globs;
    or a text file listing one image path per line), from their headers. An InputError when none is found or
    none can be read."""
    from gap_deploy.runtime.images import IMAGE_SUFFIXES, header_size, image_paths, no_images_message

    if sample < 1:
        raise UsageError(f"the traffic sample must hold at least one image; got {sample}.")
    listed: list[str] = []
    for source in map(str, sources):
        if os.path.isfile(source) and os.path.splitext(source)[1].lower() not in IMAGE_SUFFIXES:
            listed += _listed_in(source)
        else:
            listed.append(source)
    paths = image_paths(listed, recursive=True)
    if not len(paths):
        raise InputError("traffic: " + no_images_message(listed, recursive=True))
    count = len(paths)
    sizes, errors, read = [], [], []
    for i in _evenly(count, sample):
        try:
            width, height = header_size(paths[i], orientation=orientation)
            sizes.append((height, width))
            read.append(str(paths[i]))
        except ArtifactError as exc:
            errors.append({"file": paths[i], "error": str(exc).splitlines()[0]})
    name = ", ".join(map(str, sources))
    if not sizes:
        raise InputError(f"traffic: no header of the {len(errors)} image(s) read in {name} could be read; the "
                         f"first: {errors[0]['error']}", hint="point --traffic at the images the deployment sees.")
    return Traffic(name, np.asarray(sizes, dtype=np.int64).reshape(-1, 2), count, tuple(errors), tuple(read))


def _evenly(count: int, most: int) -> list[int]:
    """Indexes of at most ``most`` of ``count`` items, evenly spaced (all of them when there are no more)."""
    if count <= most:
        return list(range(count))
    return [int(i) for i in np.linspace(0, count - 1, most).round()]


def _listed_in(path: str) -> list[str]:
    """A text file of image paths, one per line (blank lines and # comments left out); relative paths are taken
    from the list's own folder."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = [line.strip() for line in handle]
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"traffic list {path} cannot be read as text: {exc}",
                         hint="give a folder of images, or a text file with one image path per line.") from None
    base = os.path.dirname(os.path.abspath(path))
    return [line if os.path.isabs(line) else os.path.join(base, line) for line in lines
            if line and not line.startswith("#")]


def effective_sides(sizes: np.ndarray, contract) -> np.ndarray:
    """Each image's side that the contract scales to its target (see the module doc), as floats."""
    hw = np.asarray(sizes, dtype=np.float64).reshape(-1, 2)
    policy = getattr(contract, "resize", "none")
    if policy == "shorter-side":
        return hw.min(axis=1) * float(getattr(contract, "crop_fraction", 1.0))
    if policy == "letterbox":
        return hw.max(axis=1)
    return hw.max(axis=1)  # stretch, none: every side must fit for nothing to be shrunk


def route(sides: np.ndarray, bucket_sides: Sequence[int]) -> np.ndarray:
    """The bucket index of each side: the smallest bucket side >= it, else the largest (``bucket_sides``
    ascending)."""
    edges = np.asarray(bucket_sides, dtype=np.float64)
    index = np.searchsorted(edges, np.asarray(sides, dtype=np.float64), side="left")
    return np.minimum(index, len(edges) - 1)


@dataclass(frozen=True)
class Bucket:
    size: tuple[int, int]
    share: float  # of the traffic
    latency_ms: float  # median, at the sweep's batch size
    correct: int  # labelled images routed here, right at this size
    images: int  # labelled images routed here
    whole_set: bool = False  # no labelled image routes here: the whole labelled set at this size stands in
    stream_ms: float | None = None  # per batch through gap-run's pipeline on a traffic sample (TuneResult.stream_ms)
    #: top-1 expected on the traffic routed here: the labelled images reweighted to its sizes (traffic_top1)
    on_traffic: float | None = None
    on_traffic_interval: tuple[float, float] | None = None

    @property
    def top1(self) -> float:
        return self.correct / self.images if self.images else 0.0

    @property
    def interval(self) -> tuple[float, float]:
        return wilson(self.correct, self.images)

    @property
    def label(self) -> str:
        h, w = self.size
        return str(h) if h == w else f"{h}x{w}"

    def to_dict(self) -> dict:
        low, high = self.interval
        return {"size": list(self.size), "share": self.share, "latency_ms": self.latency_ms, "correct": self.correct,
                "images": self.images, "top1": self.top1, "top1_interval": [low, high], "whole_set": self.whole_set,
                "stream_ms": self.stream_ms, "top1_on_traffic": self.on_traffic,
                "top1_on_traffic_interval": list(self.on_traffic_interval) if self.on_traffic_interval else None}


@dataclass(frozen=True)
class BucketPlan:
    artifact: str
    backend: str
    buckets: tuple[Bucket, ...]
    mean_ms: float
    p95_ms: float

    @property
    def streamed(self) -> bool:
        """Every bucket's serving-path latency was measured."""
        return all(b.stream_ms is not None and math.isfinite(b.stream_ms) for b in self.buckets)

    @property
    def stream_mean_ms(self) -> float | None:
        """The stream's predicted mean per batch through gap-run's pipeline: what a replay measures."""
        if not self.streamed:
            return None
        return float(sum(b.share * (b.stream_ms or 0.0) for b in self.buckets))

    @property
    def stream_p95_ms(self) -> float | None:
        if not self.streamed:
            return None
        return _p95([b.stream_ms or 0.0 for b in self.buckets], [b.share for b in self.buckets])

    @property
    def worst_top1(self) -> float:
        return min(b.top1 for b in self.buckets)

    @property
    def label(self) -> str:
        return f"{self.artifact} {self.backend} [{', '.join(b.label for b in self.buckets)}]"

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "backend": self.backend, "buckets": [b.to_dict() for b in self.buckets],
                "mean_ms": self.mean_ms, "p95_ms": self.p95_ms, "stream_mean_ms": self.stream_mean_ms,
                "stream_p95_ms": self.stream_p95_ms, "worst_top1": self.worst_top1}


@dataclass(frozen=True)
class Planning:
    """The chosen plan, the best plan for every K examined (the trade-off curve), and the one-size choice."""

    chosen: BucketPlan
    by_k: dict[int, BucketPlan]
    single: BucketPlan
    traffic: Traffic
    min_top1: float
    notes: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict:
        return {"chosen": self.chosen.to_dict(), "by_k": {k: p.to_dict() for k, p in self.by_k.items()},
                "single": self.single.to_dict(), "traffic": self.traffic.to_dict(), "min_top1": self.min_top1,
                "notes": list(self.notes)}


def _p95(latencies: Sequence[float], shares: Sequence[float]) -> float:
    order = np.argsort(latencies)
    cumulative = np.cumsum(np.asarray(shares, dtype=np.float64)[order])
    at = int(np.searchsorted(cumulative, 0.95 - 1e-12, side="left"))
    return float(np.asarray(latencies)[order][min(at, len(order) - 1)])


def plan_buckets(result, traffic: Traffic, labelled_sizes: np.ndarray, contract, *, k: int | str,
                 min_top1: float) -> Planning:
    """The plan for ``k`` buckets (1..MAX_BUCKETS, or "auto": the fewest whose predicted mean latency is within
    AUTO_WITHIN of the best K's) from a finished sweep (``result``: a TuneResult with per-image hits) and the
    traffic. ``labelled_sizes`` are the (height, width) of ``result.labelled``, in order."""
    series: dict[tuple[str, str], list] = {}
    for point in result.points:
        if point.size != "native" and (point.artifact, point.backend, point.size) in result.hits:
            series.setdefault((point.artifact, point.backend), []).append(point)
    if not series:
        raise UsageError("no fixed size was measured, so there are no buckets to choose from.",
                         hint="give gap-tune sizes (--imgsz) with --buckets.")
    distinct = max(len({p.size for p in ps}) for ps in series.values())
    if k != "auto" and not 1 <= int(k) <= MAX_BUCKETS:
        raise UsageError(f"--buckets takes 1 to {MAX_BUCKETS} or auto; got {k}.")
    if k != "auto" and int(k) > distinct:
        raise UsageError(f"--buckets {k} asks for more buckets than the {distinct} size(s) measured.",
                         hint=f"give at least {k} sizes with --imgsz, or fewer buckets.")
    traffic_sides = effective_sides(traffic.sizes, contract)
    labelled_sides = effective_sides(labelled_sizes, contract)
    seen = len(np.unique(traffic_sides))
    if k != "auto" and int(k) > seen:
        raise UsageError(f"--buckets {k} asks for more buckets than the traffic has sizes: its {traffic.sampled} "
                         f"image(s) have {seen} distinct side(s) as the preprocessing scales them, so "
                         f"{int(k) - seen} bucket(s) would serve no image.",
                         hint=f"ask for at most {seen} (or auto), or point --traffic at more of the deployment's "
                              "images.")
    ks = range(1, min(MAX_BUCKETS, distinct, seen) + 1) if k == "auto" else [int(k)]
    by_k: dict[int, BucketPlan] = {}
    for count in ks:
        best = None
        for (artifact, backend), points in series.items():
            for plan in _plans(result, artifact, backend, points, count, traffic_sides, labelled_sides):
                if plan.worst_top1 >= min_top1 and (best is None or _key(plan) < _key(best)):
                    best = plan
        if best is not None:
            by_k[count] = best
    single = by_k.get(1) or _best_single(result, series, traffic_sides, labelled_sides, min_top1)
    if not by_k:
        raise UsageError(f"no set of {k} bucket(s) keeps every bucket at top-1 >= {min_top1:.1%}.",
                         hint="lower --min-top1, give more sizes or labelled images, or fewer buckets.")
    if k == "auto":
        fastest = min(p.mean_ms for p in by_k.values())
        chosen = by_k[min(c for c, p in by_k.items() if p.mean_ms <= fastest * (1 + AUTO_WITHIN))]
    else:
        chosen = by_k[int(k)]
    notes = tuple(f"bucket {b.label}: no labelled image routes here; judged by the whole labelled set at this size"
                  for b in chosen.buckets if b.whole_set)
    notes += coverage_notes(chosen, traffic_sides, labelled_sides)
    notes += tuple(f"bucket {b.label}: reweighted to the traffic's sizes, its top-1 is expected at {b.on_traffic:.1%} "
                   f"({b.on_traffic_interval[0]:.1%}-{b.on_traffic_interval[1]:.1%}), below --min-top1 "
                   f"{min_top1:.1%}, though the labelled images routed there reach it"
                   for b in chosen.buckets if b.on_traffic is not None and b.on_traffic < min_top1
                   and b.on_traffic_interval is not None)
    return Planning(chosen, by_k, single, traffic, min_top1, notes)


#: a bucket's accuracy is called extrapolated when more than this share of the traffic routed to it lies outside
#: the effective sides of the labelled images routed to it
COVERAGE_SHARE = 0.05


#: traffic_top1's strata hold at least this many labelled images each, and there are at most MAX_STRATA
MIN_STRATUM, MAX_STRATA = 20, 8


def traffic_top1(labelled_sides: np.ndarray, hits: np.ndarray, traffic_sides: np.ndarray) \
        -> tuple[float | None, tuple[float, float] | None]:
    """Top-1 on the traffic routed to a bucket, from the labelled images judged there (``hits`` 1/0 at their
    ``labelled_sides``): post-stratified by effective side, since one bucket's accuracy depends on how far each
    image is scaled. Strata are quantiles of the labelled sides (each >= MIN_STRATUM images); each stratum's
    accuracy is weighted by the traffic's share in it (sides beyond the labelled range count in the end strata:
    coverage_notes says when that is much of the bucket). The interval is Wilson's at Kish's effective size.
    (None, None) when no traffic or no labelled image routes here."""
    if not len(traffic_sides) or not len(hits):
        return None, None
    strata = max(1, min(MAX_STRATA, len(hits) // MIN_STRATUM))
    edges = np.unique(np.quantile(labelled_sides, np.linspace(0, 1, strata + 1)[1:-1]))
    own, theirs = np.searchsorted(edges, labelled_sides, "right"), np.searchsorted(edges, traffic_sides, "right")
    p = variance = covered = 0.0
    for s in range(len(edges) + 1):
        n = int(np.count_nonzero(own == s))
        if not n:
            continue
        share = float(np.count_nonzero(theirs == s)) / len(traffic_sides)
        p += share * float(np.mean(hits[own == s] == 1))
        variance += share * share / n
        covered += share
    if covered <= 0:
        return None, None
    p /= covered  # traffic in a stratum with no labelled image (only between equal edges) is left out
    effective = covered * covered / variance if variance else float(len(hits))
    return p, wilson_rate(p, effective)


def coverage_notes(plan: BucketPlan, traffic_sides: np.ndarray, labelled_sides: np.ndarray) -> tuple[str, ...]:
    """Where the traffic routed to a bucket has sides the labelled images routed there do not: its accuracy
    there is not measured, only assumed (an image shrunk 3x is not one shrunk 1.2x)."""
    sides = [min(b.size) for b in plan.buckets]
    traffic_at, labelled_at = route(traffic_sides, sides), route(labelled_sides, sides)
    notes = []
    for j, bucket in enumerate(plan.buckets):
        mine, known = traffic_sides[traffic_at == j], labelled_sides[(labelled_at == j) & (labelled_sides > 0)]
        if not len(mine) or not len(known):
            continue
        low, high = float(known.min()), float(known.max())
        outside = mine[(mine < low) | (mine > high)]
        if len(outside) > COVERAGE_SHARE * len(mine):
            notes.append(f"bucket {bucket.label}: {len(outside) / len(mine):.0%} of its traffic has effective sides "
                         f"{outside.min():.0f}-{outside.max():.0f}, outside the labelled images routed there "
                         f"({low:.0f}-{high:.0f}): its accuracy there is extrapolated; add labelled images of "
                         "those sizes to measure it")
    return tuple(notes)


def _key(plan: BucketPlan) -> tuple[float, float]:
    return plan.mean_ms, -plan.worst_top1


def _best_single(result, series, traffic_sides, labelled_sides, min_top1) -> BucketPlan:
    plans = [p for (a, b), points in series.items()
             for p in _plans(result, a, b, points, 1, traffic_sides, labelled_sides)]
    ok = [p for p in plans if p.worst_top1 >= min_top1] or plans
    return min(ok, key=_key)


def _plans(result, artifact: str, backend: str, points, count: int, traffic_sides, labelled_sides):
    """Every set of ``count`` sizes of one artifact and backend, as a BucketPlan."""
    by_side = sorted(points, key=lambda p: (min(p.shape[2:]), p.shape[2] * p.shape[3]))
    combos = itertools.combinations(by_side, count)
    if math.comb(len(by_side), count) > MAX_COMBINATIONS:
        raise UsageError(f"{len(by_side)} sizes taken {count} at a time is {math.comb(len(by_side), count):,} sets; "
                         f"at most {MAX_COMBINATIONS:,} are examined.", hint="give fewer sizes or fewer buckets.")
    total = len(traffic_sides)
    for chosen in combos:
        sides = [min(p.shape[2:]) for p in chosen]
        if len(set(sides)) < len(sides):
            continue  # two buckets of one side: routing could not tell them apart
        traffic_at = route(traffic_sides, sides)
        labelled_at = route(labelled_sides, sides) if count > 1 else np.zeros(len(labelled_sides), int)
        buckets = []
        for j, point in enumerate(chosen):
            hits = result.hits[(artifact, backend, point.size)]
            mine = (labelled_at == j) & (hits >= 0)
            whole = not mine.any()
            if whole:
                mine = hits >= 0
            expected, interval = traffic_top1(labelled_sides[mine], hits[mine], traffic_sides[traffic_at == j])
            buckets.append(Bucket(tuple(point.shape[2:]), float(np.count_nonzero(traffic_at == j)) / total,
                                  point.latency_ms, int(np.count_nonzero(hits[mine] == 1)),
                                  int(np.count_nonzero(mine)), whole,
                                  result.stream_ms.get((artifact, backend, point.size)), expected, interval))
        latencies = [b.latency_ms for b in buckets]
        shares = [b.share for b in buckets]
        yield BucketPlan(artifact, backend, tuple(buckets), float(np.dot(latencies, shares)), _p95(latencies, shares))


def routed(traffic: Traffic, contract, plan: BucketPlan) -> tuple[np.ndarray, list[int], np.ndarray]:
    """The traffic's effective sides, the plan's bucket sides, and the bucket each image routes to."""
    sides = effective_sides(traffic.sizes, contract)
    bucket_sides = [min(b.size) for b in plan.buckets]
    return sides, bucket_sides, route(sides, bucket_sides)


def histogram(traffic: Traffic, contract, plan: BucketPlan, width: int = 40) -> str:
    """The traffic's effective sides as a text histogram, one row per bucket's range, with each row's share."""
    sides, bucket_sides, at = routed(traffic, contract, plan)
    lines = []
    low = 0.0
    for j, bucket in enumerate(plan.buckets):
        share = float(np.count_nonzero(at == j)) / len(sides)
        high = bucket_sides[j]
        span = f"{low:>5.0f}-{high:<5.0f}" if j < len(plan.buckets) - 1 else f"{low:>5.0f}+     "
        lines.append(f"  sides {span} -> {bucket.label:>7}  {'#' * round(share * width):<{width}} {share:6.1%}")
        low = high
    return "\n".join(lines)
