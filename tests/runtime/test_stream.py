"""Streaming: decoded images held are bounded by the window (counted with weak references), the results are
the ones the load-everything path gives, in input order, and the stream says where its time went."""

from __future__ import annotations

import threading
import weakref

import numpy as np
import pytest

from gap_deploy.runtime.errors import ArtifactError, UsageError
from gap_deploy.runtime.stream import StreamStats, in_order, stream_batches


class Counting:
    """A loader that keeps a weak reference to every array it returns, so the live ones can be counted."""

    def __init__(self, make):
        self.make, self.refs, self.peak, self.lock = make, [], 0, threading.Lock()

    def __call__(self, item):
        array = self.make(item)
        with self.lock:
            self.refs = [r for r in self.refs if r() is not None]
            self.refs.append(weakref.ref(array))
            self.peak = max(self.peak, len(self.refs))
        return array


def sizes(i: int) -> tuple[int, int]:
    return [(8, 8), (9, 13), (8, 8), (16, 4), (8, 8)][i % 5]


def test_a_stream_far_larger_than_its_window_never_holds_more_than_the_window():
    load = Counting(lambda i: np.full((3, *sizes(i)), float(i), np.float32))
    stats = StreamStats()
    seen = []
    for batch in stream_batches(range(2000), load, batch_size=8, window=24, workers=2, stats=stats):
        assert len({a.shape for a in batch.images}) <= 1 and len(batch.images) <= 8
        assert [int(a[0, 0, 0]) for a in batch.images] == list(batch.indices)  # each image with its index
        seen += batch.indices
        del batch
    assert sorted(seen) == list(range(2000))
    assert stats.peak_held <= 24 and stats.images == 2000
    assert load.peak <= 24 + 8  # the window, plus the batch the consumer holds while it runs
    assert stats.decode_s > 0 and stats.wall_s > 0


def test_bad_items_fail_alone_and_the_window_must_hold_a_batch():
    def load(i):
        if i % 7 == 3:
            raise ArtifactError(f"item {i} is broken")
        return np.zeros((1, 4, 4), np.float32)

    batches = list(stream_batches(range(50), load, batch_size=4, window=10, workers=2))
    errors = [b for b in batches if b.error]
    assert [b.indices[0] for b in errors] == [i for i in range(50) if i % 7 == 3]
    assert "item 3 is broken" in errors[0].error
    assert sorted(i for b in batches for i in b.indices) == list(range(50))
    with pytest.raises(UsageError, match="must hold a batch"):
        list(stream_batches(range(5), load, batch_size=8, window=9, workers=2))


def test_results_come_out_in_input_order_as_soon_as_they_can():
    out = list(in_order([(2, "c"), (0, "a"), (1, "b"), (4, "e"), (3, "d")], 5))
    assert out == ["a", "b", "c", "d", "e"]
    with pytest.raises(RuntimeError, match="ended at item 1 of 3"):
        list(in_order([(0, "a"), (2, "c")], 3))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(5)
    for i in range(150):
        h, w = sizes(i)
        Image.fromarray(rng.integers(0, 256, (h * 2, w * 2, 3), dtype=np.uint8)).save(root / f"{i:03d}.png")
    (root / "999.png").write_bytes(b"not a png")
    return root


def load_everything(session, paths, topk=5, batch_size=16):
    """Today's path before streaming, written out: every image decoded first, then Session.run_many."""
    from gap_deploy.runtime.classify import top_classes
    from gap_deploy.runtime.preprocess import load_image, normalize
    from gap_deploy.runtime.validation import check_image

    ready, errors = [], []
    for path in paths:
        try:
            chw = normalize(load_image(path, 3), session.metadata)
            check_image(chw, session.input_spec)
            ready.append((path, chw))
        except ArtifactError:
            errors.append(str(path))
    logits = session.run_many([chw for _, chw in ready], max_batch=batch_size)
    return [{"file": str(p), "size": [int(c.shape[1]), int(c.shape[2])], "top": top_classes(r, session.metadata,
                                                                                               topk)}
            for (p, c), r in zip(ready, logits)], errors


def test_gap_run_s_stream_gives_today_s_results_in_order_with_a_bounded_window(folder, reference_onnx, monkeypatch):
    import gap_deploy.runtime.classify as classify
    from gap_deploy import runtime
    from gap_deploy.runtime.images import collect_images
    from gap_deploy.runtime.preprocess import Preprocess

    paths = collect_images([folder])
    real = Preprocess.load
    counting = Counting(lambda call: real(*call[0], **call[1]))
    monkeypatch.setattr(Preprocess, "load", lambda *args, **kwargs: counting((args, kwargs)))
    with runtime.load(reference_onnx, "ort-cpu") as session:
        expected, bad = load_everything(session, paths)
        stats = StreamStats()
        streamed = list(classify.iter_classify(session, paths, batch_size=16, window=40, workers=2, stats=stats))
    assert [item["file"] for item in streamed] == [str(p) for p in paths]  # input order, errors in place
    assert [item for item in streamed if "error" not in item] == expected  # identical, probabilities included
    assert [item["file"] for item in streamed if "error" in item] == bad
    assert stats.peak_held <= 40 and counting.peak <= 40 + 16 and stats.images == 150
    assert stats.infer_s > 0 and "images/s" in stats.summary()


def test_gap_run_prints_the_stream_s_figures(folder, reference_onnx):
    from click.testing import CliRunner

    from gap_deploy.runtime.cli.run import main

    result = CliRunner().invoke(main, [str(reference_onnx), str(folder)])
    assert result.exit_code == 1  # the broken file
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 150 and lines[0].startswith(str(folder / "000.png"))
    assert "150 image(s) in" in result.stderr and "decoding" in result.stderr and "inference" in result.stderr


def test_photos_of_different_sizes_are_held_within_the_memory_budget():
    """Issue 38, 4b: the window counted images, not bytes, so 40 PNGs near 3000x3000 of 40 different sizes (105 MiB
    each decoded) were all held before the first was classified: none shares a size, so no batch filled. Scaled
    down: 40 images of about 1 MB, each its own size, under an 8 MB budget. Failed before: all 40 were alive at
    once (40 MB)."""
    lock, live, peak = threading.Lock(), [], [0]

    def make(i):
        array = np.full((3, 300 + i, 300), float(i), np.float32)  # ~1.08 MB, a size of its own
        with lock:
            live[:] = [r for r in live if r() is not None]
            live.append(weakref.ref(array))
            peak[0] = max(peak[0], sum(r().nbytes for r in live if r() is not None))
        return array

    stats = StreamStats()
    seen = []
    budget = 8 << 20
    for batch in stream_batches(range(40), make, batch_size=8, window=256, workers=2, stats=stats,
                                budget_bytes=budget):
        seen += batch.indices
        del batch
    biggest = 3 * 339 * 300 * 4
    assert sorted(seen) == list(range(40))
    assert stats.peak_bytes <= budget and peak[0] <= budget + 3 * biggest  # the budget, the decodes in flight,
    # and the batch the consumer holds


@pytest.mark.parametrize("budget_mb", [1, 3, 5])
def test_a_tight_budget_never_drops_an_image(budget_mb):
    """Images of ~1 MB in groups of equal sizes under budgets of 1 to 5 images: every index comes out once, each
    batch of one size, whatever the budget does to the grouping."""
    items = range(60)

    def make(i):
        return np.full((3, 300 + i % 4, 300), float(i), np.float32)

    seen = []
    for batch in stream_batches(items, make, batch_size=8, window=64, workers=2, budget_bytes=budget_mb << 20):
        assert len({a.shape for a in batch.images}) <= 1
        assert [int(a[0, 0, 0]) for a in batch.images] == list(batch.indices)
        seen += batch.indices if batch.error is None else []
    assert sorted(seen) == list(items)


def test_the_packed_path_list_equals_the_listing_it_replaces(tmp_path):
    """image_paths packs the names (gap-run holds the list for a whole run): every path, in order, equals what
    a plain sorted listing spells (os.scandir's entry.path), sub-folders after their parent's files with -r,
    files and globs as given; indexing from the end, slices and out-of-range indexes behave as a list's."""
    import os

    from gap_deploy.runtime.images import PathList, image_paths

    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    names = ["z.png", "a b.jpg", "é.png", "1.webp", "notes.txt"]
    for folder in (tmp_path, tmp_path / "a", tmp_path / "b"):
        for name in names:
            (folder / name).write_bytes(b"")
    expected = []
    for folder in (tmp_path, tmp_path / "a", tmp_path / "b"):
        expected += sorted(e.path for e in os.scandir(folder) if e.is_file() and not e.name.endswith(".txt"))
    single = str(tmp_path / "a" / "z.png")
    paths = image_paths([tmp_path, single, str(tmp_path / "b" / "*.png")], recursive=True)
    assert isinstance(paths, PathList)
    assert list(paths) == [*expected, single, str(tmp_path / "b" / "z.png"), str(tmp_path / "b" / "é.png")]
    assert paths[-1] == str(tmp_path / "b" / "é.png") and paths[2:4] == expected[2:4] and len(paths) == 15
    with pytest.raises(IndexError):
        paths[15]
    assert list(image_paths([tmp_path])) == expected[:4] and len(image_paths([tmp_path / "nothing-here"])) == 1
