"""Third-party chatter kept out of gap-deploy's own output: lines written to standard error (by Python or by a
library's C++ core alike) that match a known pattern are dropped while a block runs; every other line passes,
so a real warning or error still shows. Commands keep everything under --debug (GAP_DEBUG=1)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator

#: what Ray prints that says nothing to a gap-run user: Ray Data's INFO log and progress lines ("2026-12-05
#: 12:42:23,240\tINFO streaming_executor.py:215 -- Starting execution ..."), the token-authentication notice of
#: a local cluster, and the core worker's note on actor constructor arguments (gap-run's are a few strings)
RAY_NOISE = (
    re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+\s+INFO "),
    re.compile(r"^Token authentication is enabled for this Ray cluster\."),
    re.compile(r"^\[[^\]]*\] core_worker\.cc:\d+: Actor with class name: .* has constructor arguments in the "
               r"object store"),
)
#: how long the end of a block waits for the line filter to pass on what is left
DRAIN_TIMEOUT_S = 2.0


@contextlib.contextmanager
def dropped_lines(patterns: Iterable[re.Pattern], *, loggers: Iterable[str] = ()) -> Iterator[None]:
    """While the block runs, file descriptor 2 goes through a filter that drops each line matching one of
    ``patterns`` and passes every other line on at once; the named Python loggers are raised to WARNING. Both
    are restored afterwards. A process started inside the block that keeps descriptor 2 open past it keeps
    writing through the filter (a daemon thread) rather than losing its lines."""
    patterns = tuple(patterns)
    saved_levels = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved_levels:
        logger.setLevel(logging.WARNING)
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    saved = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=_pass_on, args=(read_end, saved, patterns), name="gap-stderr-filter",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end here: the filter sees its end once children let go too
        thread.join(DRAIN_TIMEOUT_S)
        if not thread.is_alive():
            os.close(saved)
        for logger, level in saved_levels:
            logger.setLevel(level)


def _pass_on(read_end: int, out: int, patterns: tuple[re.Pattern, ...]) -> None:
    with os.fdopen(read_end, "rb") as lines:
        for raw in lines:
            text = raw.decode("utf-8", "replace")
            if not any(p.search(text) for p in patterns):
                try:
                    os.write(out, raw)
                except OSError:
                    return
