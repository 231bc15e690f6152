"""runtime.waits: the one bounded wait ends a blocked call at its deadline, whatever the other side does."""

import socket
import time

import pytest

from gap_deploy.runtime.waits import Deadline, reachable, shutdown


def test_a_recv_that_would_block_for_ever_returns_at_the_deadline():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        client = socket.create_connection(server.getsockname())  # accepted by the backlog; nothing is ever sent
        try:
            deadline = Deadline(0.5, "answer")
            started = time.perf_counter()
            with deadline.enforce(lambda: shutdown(client)):
                data = client.recv(1)  # no timeout set: without the deadline this never returns
            assert data == b"" and deadline.expired
            assert 0.4 < time.perf_counter() - started < 5
            assert str(deadline.error()) == "no answer within 0.5 s"
        finally:
            client.close()


def test_a_finished_block_is_not_cut_later():
    deadline = Deadline(0.2, "answer")
    cut = []
    with deadline.enforce(lambda: cut.append(1)):
        pass
    time.sleep(0.4)
    assert cut == []


def test_reachable_fails_fast_where_nothing_listens():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the call: connection refused
    started = time.perf_counter()
    with pytest.raises(OSError):
        reachable("127.0.0.1", port, Deadline(5, "answer"))
    assert time.perf_counter() - started < 2
