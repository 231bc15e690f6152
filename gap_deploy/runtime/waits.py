"""The one bounded wait: every wait on a network or a cluster (a Triton request, a Ray address) ends within
its deadline, whatever the other side does, with a message that says what was waited for.

A per-read timeout is no bound: a server that sends a byte just before each timeout holds the caller for ever.
``Deadline.enforce(unblock)`` calls ``unblock`` (closing a socket, say) when the time is up, so whatever
blocking call is in progress returns; ``expired`` then says the deadline ended it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator


class Deadline:
    def __init__(self, seconds: float, what: str):
        self.seconds, self.what = float(seconds), what
        self._end = time.monotonic() + self.seconds
        self._expired = threading.Event()

    def remaining(self) -> float:
        return max(0.0, self._end - time.monotonic())

    @property
    def expired(self) -> bool:
        return self._expired.is_set() or self.remaining() == 0.0

    def error(self) -> TimeoutError:
        return TimeoutError(f"no {self.what} within {self.seconds:g} s")

    @contextlib.contextmanager
    def enforce(self, unblock: Callable[[], None]) -> Iterator[Deadline]:
        """Run the block; at the deadline call ``unblock`` (from a timer thread) so a blocked call returns."""

        def fire() -> None:
            self._expired.set()
            unblock()

        timer = threading.Timer(self.remaining(), fire)
        timer.daemon = True
        timer.start()
        try:
            yield self
        finally:
            timer.cancel()


def shutdown(sock: socket.socket | None) -> None:
    """Unblock every recv/send on ``sock`` (what Deadline.enforce calls for a connection)."""
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def reachable(host: str, port: int, deadline: Deadline) -> None:
    """Return once something accepts a TCP connection at host:port; OSError (or the deadline's TimeoutError)."""
    try:
        with socket.create_connection((host, port), timeout=max(deadline.remaining(), 0.001)):
            return
    except OSError:
        if deadline.expired:
            raise deadline.error() from None
        raise
