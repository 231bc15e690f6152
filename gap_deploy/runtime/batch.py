"""Batch inference with Ray Data: the same answers as gap-run, on one machine or a cluster.

Ray Data distributes the image files (a folder, a list of paths, a glob) to a pool of actors, each
holding one ``runtime.Session``. Local and shared files are opened by the actors themselves; URIs of
other filesystems Ray reads (s3://, gs://, ...) are read by Ray and their bytes decoded by the actors.
One row per image is written to Parquet: path, height, width, the top-k classes and probabilities, an error (an
unreadable or too-small image is a row with its error, never a failed job) and, on request, the logits.

Actors ask for a fraction of a CPU (and a GPU for the ``trt``/``ort-cuda``/``ort-trt`` backends), so the
read tasks always find a free CPU: an actor pool holding every CPU starves the reads and the job stalls.
Images of different sizes in one Ray batch are grouped by size and never padded (``Session.run_many``).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gap_deploy.runtime._lazy import require
from gap_deploy.runtime.backends.table import facts
from gap_deploy.runtime.errors import GapError, InputError, OutputPathError, UsageError, first_line
from gap_deploy.runtime.images import image_paths, no_images_message

RAY_FLOOR = "2.40"


@dataclass(frozen=True)
class BatchJob:
    artifact: Path
    sources: tuple[str, ...]
    output: Path
    backend: str | None = None
    imgsz: tuple[int, int] | None = None
    topk: int = 5
    logits: bool = False
    #: images per Ray batch: large batches amortize Ray's per-batch cost (sizes are grouped inside)
    batch_size: int = 256
    #: actors (one Session each); None: as many as fit the CPUs Ray has, leaving room for the reads
    workers: int | None = None
    cpus_per_worker: float = 0.5
    #: "auto": RAY_ADDRESS if set, else a local Ray; or a cluster address ("ray://host:10001", "host:6379")
    address: str = "auto"
    trust_engine: bool = False
    #: runtime.preprocess's decoder: "exact" or "fast"
    decode: str = "exact"
    #: folders' sub-folders too (gap-run -r)
    recursive: bool = False
    #: CPU threads for each actor's model; None: one per CPU the actor asks for (--cpus-per-worker, rounded up)
    threads: int | None = None
    #: leave Ray's INFO and progress lines out of standard error (runtime.quiet.RAY_NOISE); gap-run --debug keeps them
    quiet: bool = True


@dataclass
class BatchResult:
    output: Path
    rows: int
    errors: list[dict]
    seconds: float
    workers: int
    #: images each actor classified (host:pid -> count): how the work was spread
    per_worker: dict[str, int] = field(default_factory=dict)


def block_count(images: int, workers: int, batch_size: int) -> int:
    """Blocks for ``images`` local paths: a batch's worth each, and at least one per actor (Ray hands an actor
    whole blocks: 300 images in one block went to one of 2 actors), at most 200 and never more than images."""
    return max(1, min(images, 200, max(workers, -(-images // max(1, batch_size)))))


def balanced_batch(images: int, workers: int, batch_size: int) -> int:
    """The batch size that gives each of ``workers`` actors a share of ``images``: ``batch_size``, or less when
    an equal share is smaller."""
    return max(1, min(batch_size, -(-images // max(1, workers))))


def expand_sources(sources: Sequence[str], *, recursive: bool = False) -> tuple[list[str], list[dict]]:
    """(image paths for Ray, error rows) from folders, files and globs. Remote URIs (s3://, gs://, ...) pass
    through to Ray's filesystems; local non-regular files (FIFOs, devices) become error rows, never reads."""
    paths: list[str] = []
    errors: list[dict] = []

    def local_file(path: str) -> None:
        try:
            mode = os.stat(path).st_mode
        except OSError as exc:
            errors.append(error_row(path, f"image {path} cannot be read: {exc.strerror or exc}."))
            return
        if stat.S_ISREG(mode):
            paths.append(os.path.abspath(path))
        else:
            errors.append(error_row(path, f"image {path} is not a regular file (a pipe, device or socket); "
                                          "it was not opened."))

    for source in sources:
        if "://" in source:
            paths.append(source)
        else:  # folders, globs and files by the listing gap-run uses without --ray (runtime.images)
            for path in image_paths([source], recursive=recursive):
                local_file(path)
    if not paths and not errors:
        raise InputError(no_images_message(sources, recursive=recursive))  # exit 1, as gap-run without --ray
    return paths, errors


def error_row(path: str, error: str) -> dict:
    return {"path": path, "height": -1, "width": -1, "top_labels": [], "top_indices": [], "top_scores": [],
            "error": error, "logits": []}


def schema(logits: bool):
    """The results' one Arrow schema: every block has it, all-error blocks included."""
    pa = require("pyarrow", purpose="for Parquet results")
    fields = [("path", pa.string()), ("height", pa.int64()), ("width", pa.int64()),
              ("top_labels", pa.list_(pa.string())), ("top_indices", pa.list_(pa.int64())),
              ("top_scores", pa.list_(pa.float64())), ("error", pa.string()),
              ("worker", pa.string())]  # host:pid of the actor that classified it (None: never reached one)
    if logits:
        fields.append(("logits", pa.list_(pa.float64())))
    return pa.schema(fields)


def to_table(rows: list[dict], logits: bool):
    pa = require("pyarrow", purpose="for Parquet results")
    names = schema(logits).names
    return pa.Table.from_pylist([{k: row.get(k) for k in names} for row in rows], schema=schema(logits))


class Classifier:
    """A Ray Data callable class: one Session per actor, one output row per image."""

    def __init__(self, artifact: str, backend: str | None, imgsz, topk: int, logits: bool, trust_engine: bool,
                 threads: int | None = None, decode: str = "exact"):
        from gap_deploy import runtime

        self.session = runtime.load(artifact, backend, trust_engine=trust_engine, threads=threads)
        self.topk, self.logits, self.decode = topk, logits, decode
        import socket

        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.channels = self.session.spec.channels
        # the model's preprocessing contract: the one implementation gap-run, gap-eval and Triton's client use
        self.contract = self.session.metadata.preprocessing(imgsz, self.channels)

    def __call__(self, batch: dict) -> dict:
        from gap_deploy.runtime.classify import top_classes
        from gap_deploy.runtime.validation import check_image

        paths = [str(p) for p in batch["path"]]
        contents = batch["bytes"] if "bytes" in batch else [None] * len(paths)
        rows: list[dict] = []
        ready: list[tuple[int, np.ndarray]] = []
        for index, (path, data) in enumerate(zip(paths, contents)):
            try:
                if data is None:  # a local (or shared) file: read here, as gap-run does
                    chw = self.contract.load(path, self.channels, decode=self.decode)
                else:  # bytes Ray read from another filesystem (s3://, gs://, ...)
                    chw = self.contract.decode(io.BytesIO(bytes(data)), self.channels, decode=self.decode, name=path)
                check_image(chw, self.session.input_spec)
                ready.append((index, chw))
                rows.append({"path": path, "height": int(chw.shape[1]), "width": int(chw.shape[2]), "error": None})
            except GapError as exc:
                rows.append(error_row(path, first_line(exc)))
            rows[-1]["worker"] = self.worker
        logits = self.session.run_many([chw for _, chw in ready]) if ready else []
        for (index, _), row in zip(ready, logits):
            top = top_classes(row, self.session.metadata, self.topk)
            rows[index].update(top_labels=[t["name"] for t in top], top_indices=[t["index"] for t in top],
                               top_scores=[t["prob"] for t in top], logits=[float(v) for v in row])
        return to_table(rows, self.logits)


#: seconds a cluster's address gets to answer before gap-run says so (ray.init itself waits for minutes)
CONNECT_TIMEOUT_S = 5.0


def probe_address(address: str, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Fail at once, with a message, when nothing listens at a Ray address (HOST:PORT or ray://HOST:PORT)."""
    from gap_deploy.runtime.waits import Deadline, reachable

    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"Ray address {address!r} is not HOST:PORT (or ray://HOST:PORT).",
                         hint="pass the address `ray start --head` printed, or --ray alone for a local Ray.")
    try:
        reachable(host.strip("[]"), int(port), Deadline(timeout_s, f"answer from a Ray cluster at {address}"))
    except OSError as exc:  # TimeoutError included
        raise GapError(f"no Ray cluster answers at {address} within {timeout_s:g} s: {exc.strerror or exc}.",
                       hint="start one with `ray start --head` and pass the address it prints (or set RAY_ADDRESS), "
                            "or use --ray without an address for a local one.") from None


def connect(address: str, num_cpus: int | None = None):
    """Join ``address`` (or RAY_ADDRESS) or start a local Ray; returns the ray module. An address nobody
    answers at fails within CONNECT_TIMEOUT_S instead of ray.init's minutes of retries."""
    ray = require("ray", purpose="for --ray", hint=f"pip install 'gap-deploy[ray]' (ray[data] >= {RAY_FLOOR}).")
    target = address if address != "auto" else os.environ.get("RAY_ADDRESS", "")
    if target and target != "auto":
        probe_address(target)  # also when this process already runs Ray: the address asked for must answer
    if ray.is_initialized():
        return ray
    kwargs = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if address == "auto" and not os.environ.get("RAY_ADDRESS"):
            ray.init(num_cpus=num_cpus, **kwargs)
        else:
            ray.init(address=None if address == "auto" else address, **kwargs)
    except Exception as exc:  # ConnectionError and Ray's own errors
        where = address if address != "auto" else os.environ.get("RAY_ADDRESS", "local")
        raise GapError(f"cannot join the Ray cluster at {where}: {first_line(exc)}",
                       hint="start one with `ray start --head` and pass the address it prints (or set RAY_ADDRESS), "
                            "or use --ray without an address for a local one.") from None
    return ray


def run_batch(job: BatchJob) -> BatchResult:
    """Classify every image of ``job.sources`` on Ray and write one Parquet row per image to ``job.output``.

    The output (a Parquet dataset folder) is written to a temporary folder beside it and moved into place
    when the job has finished, so a failed job leaves no partial output and never a half-replaced one.
    """
    from gap_deploy.runtime.bundle import check_artifact
    from gap_deploy.runtime.files import check_distinct, check_new_folder

    check_artifact(job.artifact)
    given = Path(job.output)
    # A link is written through: the folder it names is the output. An existing folder is never replaced:
    # it may be anything (an image folder, earlier results someone still needs).
    output = Path(os.path.realpath(given)) if given.is_symlink() else given
    if output.exists() and not output.is_dir():
        raise OutputPathError(f"output {given} exists and is not a folder.",
                              hint="choose a new path (a folder of Parquet files is written).")
    check_new_folder(output, "--output folder")
    local = {f"image source {s}": s for s in job.sources if "://" not in str(s)}
    check_distinct({"ARTIFACT": job.artifact, **local}, {"--output": output})
    paths, early_errors = expand_sources(job.sources, recursive=job.recursive)
    from gap_deploy.runtime.quiet import RAY_NOISE, dropped_lines

    with dropped_lines(RAY_NOISE, loggers=("ray", "ray.data")) if job.quiet else contextlib.nullcontext():
        return _run_on_ray(job, output, paths, early_errors)


def _run_on_ray(job: BatchJob, output: Path, paths: list[str], early_errors: list[dict]) -> BatchResult:
    from gap_deploy.runtime.publish import Publication

    ray = connect(job.address)
    data = require("ray.data", purpose="for --ray")
    gpu = facts(job.backend).ray_gpus if job.backend else 0  # the default picks per worker, reserving none
    cpus = float(ray.cluster_resources().get("CPU", 1))
    workers = job.workers or max(1, int((cpus - 1) / job.cpus_per_worker) if cpus > 1 else 1)
    if workers * job.cpus_per_worker > cpus:  # Ray would wait for them for ever
        raise UsageError(f"{workers} worker(s) x {job.cpus_per_worker:g} CPU(s) ask for "
                         f"{workers * job.cpus_per_worker:g} CPUs; the cluster has {cpus:g}.",
                         hint="lower --workers or --cpus-per-worker (or add nodes to the cluster first).")
    if gpu and workers > float(ray.cluster_resources().get("GPU", 0)):
        raise UsageError(f"{workers} worker(s) on backend {job.backend} need {workers} GPU(s); the cluster has "
                         f"{ray.cluster_resources().get('GPU', 0):g}.", hint="lower --workers, or use ort-cpu.")
    started = time.perf_counter()
    pub = Publication()
    try:
        staging = pub.folder(output, "--output folder")
        parts = []
        local = [p for p in paths if "://" not in p]
        remote = [p for p in paths if "://" in p]
        sources = []
        batch_size = job.batch_size
        if local:  # the workers open local files themselves: shipping the bytes through Ray costs more
            # every actor gets work: batches no larger than an equal share, and at least a block per actor (one
            # block of 300 images went to one of 2 actors, Ray warning about it, before)
            batch_size = balanced_batch(len(local), workers, job.batch_size)
            sources.append(data.from_items([{"path": p} for p in local],
                                           override_num_blocks=block_count(len(local), workers, batch_size)))
        if remote:
            sources.append(data.read_binary_files(remote, include_paths=True))
        for ds in sources:
            parts.append(ds.map_batches(
                Classifier, fn_constructor_args=(str(job.artifact), job.backend, job.imgsz, job.topk, job.logits,
                                                 job.trust_engine,
                                                 job.threads or max(1, math.ceil(job.cpus_per_worker)),
                                                 job.decode),
                batch_size=batch_size, batch_format="numpy", compute=data.ActorPoolStrategy(size=workers),
                num_cpus=job.cpus_per_worker, num_gpus=gpu))
        if early_errors:
            parts.append(data.from_arrow(to_table(early_errors, job.logits)))
        result = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
        result.write_parquet(str(staging))
        written = read_results(staging, columns=["path", "error", "worker"])
        errors = [{"file": row["path"], "error": row["error"]} for row in written if row["error"]]
        per_worker: dict[str, int] = {}
        for row in written:
            if row["worker"]:
                per_worker[row["worker"]] = per_worker.get(row["worker"], 0) + 1
        pub.commit()  # the results appear whole; an output folder that gained files meanwhile is kept
        return BatchResult(output, len(written), errors, time.perf_counter() - started, workers, per_worker)
    except GapError:
        raise
    except Exception as exc:  # Ray wraps worker failures (a model that does not load, ...) in its own errors
        raise GapError(f"the Ray job failed: {first_line(exc)}", hint="see the Ray log above.") from None
    finally:
        pub.discard()


def read_results(path: str | os.PathLike, columns: Sequence[str] | None = None) -> list[dict]:
    """The rows of a results dataset, sorted by path (for tests and small jobs)."""
    pq = require("pyarrow.parquet", purpose="to read Parquet results")
    rows = pq.read_table(str(path), columns=list(columns) if columns else None).to_pylist()
    return sorted(rows, key=lambda r: r["path"])
