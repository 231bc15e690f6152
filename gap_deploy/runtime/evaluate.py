"""Accuracy of artifacts on a labelled image folder, per precision and per input size (gap-eval).

The folder holds one sub-folder per class, named like the model's classes. Every artifact sees the same
images at each size, made by each artifact's preprocessing contract (runtime.preprocess: the model's own
size and resize policy, or ``size`` in its place; ``None``: the contract's own size), through the runtime (no
torch). With ``decodes=("exact", "fast")`` every artifact is scored with both decoders side by side, with their
top-1 agreement and the probability of the true class they differ by. Images that cannot be read or are below
the model's minimum become per-file errors and are left out of the figures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gap_deploy.runtime.errors import ArtifactError, UsageError
from gap_deploy.runtime.images import IMAGE_SUFFIXES

Size = tuple[int, ...] | None  # (H, W); None: each image at its own size


def size_label(size: Size) -> str:
    return "native" if size is None else (f"{size[0]}" if size[0] == size[1] else f"{size[0]}x{size[1]}")


@dataclass(frozen=True)
class LabelledFolder:
    classes: tuple[str, ...]  # the model's class names, in index order
    files: tuple[Path, ...]
    labels: tuple[int, ...]  # index into ``classes`` per file


def read_labelled_folder(folder: str | os.PathLike, class_names: Sequence[str] | None,
                         num_classes: int | None) -> LabelledFolder:
    """Files and labels of ``folder``/<class>/*; class folders are matched to the model's class names (or,
    for a model without names, to its class indices 0..N-1)."""
    root = Path(folder)
    if not root.is_dir():
        raise ArtifactError(f"labelled folder {root} {'is not a folder' if root.exists() else 'does not exist'}.",
                            hint="give a folder with one sub-folder of images per class.")
    from gap_deploy.runtime.files import folder_entries

    subfolders = [p for p in folder_entries(root, "labelled folder") if p.is_dir() and not p.name.startswith(".")]
    if not subfolders:
        raise ArtifactError(f"labelled folder {root} has no class sub-folders.",
                            hint="put each class's images in a sub-folder named after the class.")
    names = list(class_names) if class_names else [str(i) for i in range(num_classes or 0)]
    unknown = [p.name for p in subfolders if p.name not in names]
    if unknown:
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        raise ArtifactError(f"{len(unknown)} class folder(s) of {root} are not classes of the model: "
                            f"{', '.join(unknown[:8])}.", note=f"the model's classes: {shown or '(none stored)'}",
                            hint="rename the folders to the model's class names (export with --class-names).")
    files, labels = [], []
    for sub in subfolders:
        for path in folder_entries(sub, "class folder"):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                files.append(path)
                labels.append(names.index(sub.name))
    if not files:
        raise ArtifactError(f"labelled folder {root} holds no image files in its class folders.")
    return LabelledFolder(tuple(names), tuple(files), tuple(labels))


@dataclass
class ArtifactScores:
    top1: float
    top5: float
    images: int
    per_class: dict[str, float]  # top-1 per class (NaN where the class has no image)
    predictions: list[int] = field(repr=False, default_factory=list)


@dataclass
class EvalResult:
    folder: str
    classes: tuple[str, ...]
    artifacts: dict[str, str]  # name -> path
    sizes: list[str]
    scores: dict[str, dict[str, ArtifactScores]]  # artifact -> size label -> scores
    agreement: dict[str, dict[str, float]]  # size label -> "a vs b" -> share of equal top-1
    errors: list[dict]
    #: size label -> "a vs b" -> largest and mean |difference| of the probability given to the true class
    probability_difference: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        def clean(value):
            return None if isinstance(value, float) and math.isnan(value) else value

        return {"folder": self.folder, "classes": list(self.classes), "artifacts": self.artifacts,
                "sizes": self.sizes,
                "accuracy": {a: {s: {"top1": v.top1, "top5": v.top5, "images": v.images} for s, v in row.items()}
                             for a, row in self.scores.items()},
                "per_class": {a: {s: {c: clean(x) for c, x in v.per_class.items()} for s, v in row.items()}
                              for a, row in self.scores.items()},
                "agreement": self.agreement, "probability_difference": self.probability_difference,
                "errors": self.errors}


def record_top5(top5: np.ndarray, rows, logits: np.ndarray) -> None:
    """Write each row's five most probable classes (most probable first) into ``top5`` (N x 5, -1 = none)."""
    k = min(5, logits.shape[1])
    top5[rows, :k] = np.argsort(-logits, axis=1)[:, :k]


def _scores(top5: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> ArtifactScores:
    """Scores from each image's top-5 class indices (most probable first)."""
    top1 = top5[:, 0]
    per_class = {}
    for index, name in enumerate(classes):
        mask = labels == index
        per_class[name] = float(np.mean(top1[mask] == index)) if mask.any() else math.nan
    return ArtifactScores(float(np.mean(top1 == labels)), float(np.mean((top5 == labels[:, None]).any(axis=1))),
                          int(len(labels)), per_class, [int(p) for p in top1])


def check_sizes_fit(sessions, sizes) -> None:
    """UsageError when a size (H, W) is below the minimum input of any of ``sessions`` (gap-eval and gap-tune)."""
    specs = [s.input_spec for s in sessions.values()]
    min_h, min_w = max(s.min_height for s in specs), max(s.min_width for s in specs)
    small = [s for s in sizes if s is not None and (s[0] < min_h or s[1] < min_w)]
    if small:
        raise UsageError(f"size(s) {', '.join(size_label(s) for s in small)} are below the models' minimum input "
                         f"{min_h}x{min_w}.", hint=f"start the sizes at {max(min_h, min_w)} or above.")


def evaluate(artifacts: Mapping[str, str | os.PathLike], folder: str | os.PathLike, sizes: Sequence[Size] = (None,),
             *, backend: str | None = None, batch_size: int = 32,
             progress: Callable[[int], None] | None = None, window: int | None = None, stats=None,
             decodes: Sequence[str] = ("exact",), threads: int | None = None) -> EvalResult:
    """Top-1/top-5 of each artifact at each size on ``folder``, per class, and top-1 agreement between them.

    The images stream (runtime.stream): decoded on worker threads while batches run, at most ``window``
    held at once, each decoded once per size for all artifacts that share a preprocessing and input spec.
    Only each image's top-5 classes are kept, so memory does not grow with the number of images.
    ``stats`` (a StreamStats) adds up where the time went. ``threads``: CPU threads for each model (default:
    the cores the decoding threads leave, runtime.stream.inference_threads).
    """
    from gap_deploy.runtime.errors import InputTypeError
    from gap_deploy.runtime.preprocess import DECODES
    from gap_deploy.runtime.stream import StreamStats
    from gap_deploy.runtime.validation import int_tuple

    if not isinstance(artifacts, dict) or not artifacts:
        raise InputTypeError("evaluate needs a dict of artifacts, {name: path}, with at least one entry; got "
                             f"{type(artifacts).__name__}.")
    sizes = [None if s is None else int_tuple(s, 2, "each size") for s in sizes]
    if not decodes or any(d not in DECODES for d in decodes) or len(set(decodes)) != len(decodes):
        raise UsageError(f"decodes must be distinct values of {', '.join(DECODES)}; got {list(decodes)!r}.")
    stats = stats if stats is not None else StreamStats()
    sessions: dict = {}
    try:
        first = _open_one_model(artifacts, backend, sizes, sessions, threads)
        data = read_labelled_folder(folder, first.class_names, first.num_classes)
        labels_all = np.asarray(data.labels)
        # one run per artifact and decoder: "name", or "name (exact)" and "name (fast)" side by side
        runs = {(name if len(decodes) == 1 else f"{name} ({d})"): (name, d) for name in sessions for d in decodes}
        scores: dict[str, dict[str, ArtifactScores]] = {run: {} for run in runs}
        agreement: dict[str, dict[str, float]] = {}
        differences: dict[str, dict[str, dict[str, float]]] = {}
        errors: list[dict] = []
        for size in sizes:
            label = size_label(size)
            top5, truth_prob, ok_mask = _run_size(sessions, runs, size, data, labels_all, batch_size, window, stats,
                                                  progress, errors, len(decodes) > 1)
            if not ok_mask.any():
                raise ArtifactError(f"no image of {folder} could be evaluated at size {label}.",
                                    note="see the per-file errors.")
            for run in runs:
                scores[run][label] = _scores(top5[run][ok_mask], labels_all[ok_mask], data.classes)
            agreement[label], differences[label] = _pairs(list(runs), top5, truth_prob, ok_mask)
        return EvalResult(str(folder), data.classes, {n: str(p) for n, p in artifacts.items()},
                          [size_label(s) for s in sizes], scores, agreement, errors, differences)
    finally:
        for session in sessions.values():
            session.close()


def _open_one_model(artifacts: Mapping[str, str | os.PathLike], backend: str | None, sizes: Sequence[Size],
                    sessions: dict, threads: int | None = None):
    """Each artifact's session into ``sessions`` (the caller closes them); they must classify the same classes,
    and one image at every size must fit each of them. Returns the first one's metadata."""
    from gap_deploy import runtime
    from gap_deploy.runtime.limits import check_memory
    from gap_deploy.runtime.stream import inference_threads

    for name, path in artifacts.items():
        sessions[name] = runtime.load(path, backend, threads=threads or inference_threads())
    metas = {name: s.metadata for name, s in sessions.items()}
    first = next(iter(metas.values()))
    for name, meta in metas.items():
        if (meta.class_names, meta.num_classes) != (first.class_names, first.num_classes):
            raise UsageError(f"artifact '{name}' has other classes than '{next(iter(metas))}'; compare "
                             "artifacts of one model.")
    check_sizes_fit(sessions, sizes)
    for size in sizes:  # every size before any image is decoded (the stream checks each image again)
        if size is not None:
            for session in sessions.values():
                check_memory((1, session.spec.channels, *size), f"--imgsz {size_label(size)}: an input")
    return first


def _run_size(sessions: dict, runs: dict[str, tuple[str, str]], size: Size, data, labels_all: np.ndarray,
              batch_size: int, window: int | None, stats, progress, errors: list[dict], name_decode: bool):
    """Every run's top-5 (N x 5) and probability of the true class (N) at ``size``, and which images ran.
    Runs that share a preprocessing, a decoder and an input spec share their decoded images."""
    import time

    from gap_deploy.runtime.classify import image_loader
    from gap_deploy.runtime.images import softmax
    from gap_deploy.runtime.stream import stream_batches

    count, label = len(data.files), size_label(size)
    groups: dict[tuple, list[str]] = {}
    for run, (name, decode) in runs.items():
        session = sessions[name]
        key = (session.metadata.preprocessing(size), decode, session.spec.channels, session.input_spec)
        groups.setdefault(key, []).append(run)
    top5 = {run: np.full((count, 5), -1) for run in runs}
    truth_prob = {run: np.full(count, np.nan) for run in runs}
    ok_mask = np.ones(count, bool)
    for (_, decode, _, _), group in groups.items():
        load = image_loader(sessions[runs[group[0]][0]], size, decode=decode)
        for batch in stream_batches(data.files, load, batch_size=batch_size, window=window, stats=stats):
            if progress:
                progress(len(batch.indices))
            if batch.error is not None:
                index = batch.indices[0]
                errors.append({"file": str(data.files[index]), "size": label, "error": batch.error}
                              | ({"decode": decode} if name_decode else {}))
                ok_mask[index] = False
                continue
            rows = list(batch.indices)
            for run in group:
                t0 = time.perf_counter()
                logits = np.stack(sessions[runs[run][0]].run_many(list(batch.images), max_batch=batch_size))
                stats.infer_s += time.perf_counter() - t0
                record_top5(top5[run], rows, logits)
                probs = softmax(logits.astype(np.float64))
                truth_prob[run][rows] = probs[np.arange(len(rows)), labels_all[rows]]
    return top5, truth_prob, ok_mask


def _pairs(names: list[str], top5: dict, truth_prob: dict, ok_mask: np.ndarray):
    """Top-1 agreement and the gap in the true class's probability, for every pair of runs."""
    agreement: dict[str, float] = {}
    differences: dict[str, dict[str, float]] = {}
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            pa, pb = top5[a][ok_mask, 0], top5[b][ok_mask, 0]
            agreement[f"{a} vs {b}"] = float(np.mean(pa == pb)) if len(pa) else math.nan
            gap = np.abs(truth_prob[a][ok_mask] - truth_prob[b][ok_mask])
            differences[f"{a} vs {b}"] = {"max": float(gap.max()), "mean": float(gap.mean())}
    return agreement, differences


def format_table(result: EvalResult) -> str:
    names = list(result.scores)
    width = max(8, *(len(n) for n in names))
    head = f"{'artifact':>{width}}  {'size':>7}  {'top-1':>6}  {'top-5':>6}  {'images':>6}"
    lines = [f"Accuracy on {result.folder} ({len(result.classes)} classes)", head, "-" * len(head)]
    for name in names:
        for size, s in result.scores[name].items():
            lines.append(f"{name:>{width}}  {size:>7}  {s.top1:6.1%}  {s.top5:6.1%}  {s.images:6d}")
    if any(result.agreement.values()):
        lines.append("\nTop-1 agreement between artifacts:")
        for size, pairs in result.agreement.items():
            for pair, value in pairs.items():
                gap = result.probability_difference.get(size, {}).get(pair)
                lines.append(f"  {size:>7}  {pair}: {value:.1%}" + (
                    f" (probability of the true class differs by {gap['max']:.2g} at most, {gap['mean']:.2g} "
                    "on average)" if gap else ""))
    first = names[0]
    lines.append(f"\nTop-1 per class ({first}):")
    sizes = list(result.scores[first])
    lines.append(f"  {'class':>14}  " + "  ".join(f"{s:>7}" for s in sizes))
    for cls in result.classes:
        cells = [result.scores[first][s].per_class.get(cls, math.nan) for s in sizes]
        lines.append(f"  {cls:>14}  " + "  ".join("      -" if math.isnan(c) else f"{c:7.1%}" for c in cells))
    return "\n".join(lines)


def plot(result: EvalResult, path: str | os.PathLike, title: str = "") -> Path:
    """Top-1 (solid) and top-5 (dashed) accuracy against input size, one colour per artifact."""
    from gap_deploy.runtime.plot import publish_figure, pyplot

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    xs = range(len(result.sizes))
    for index, (name, row) in enumerate(result.scores.items()):
        color = f"C{index}"
        ax.plot(xs, [row[s].top1 for s in result.sizes], marker="o", color=color, label=f"{name} top-1")
        ax.plot(xs, [row[s].top5 for s in result.sizes], marker=".", linestyle="--", color=color, alpha=0.6,
                label=f"{name} top-5")
    if result.classes:
        ax.axhline(1 / len(result.classes), color="grey", linestyle=":", label="chance (top-1)")
    ax.set_xticks(list(xs), result.sizes)
    ax.set_xlabel("input size (pixels)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")  # beside the curves, never on them
    ax.set_title(title or f"Accuracy by input size on {Path(result.folder).name}")
    fig.tight_layout()
    return publish_figure(fig, path)
