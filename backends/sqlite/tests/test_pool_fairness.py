"""The pool hands a released connection to the longest waiter, never to a thread barging in.

Regression test: the benchmark found that with more threads than connections, a thread that
released and re-acquired in a loop kept winning, and a waiting thread could time out.
"""

from __future__ import annotations

import collections
import sqlite3
import threading
from pathlib import Path

import pytest

from cidx_jobs.errors import StorageUnavailableError
from cidx_jobs_sqlite._pool import ConnectionPool


def test_a_waiter_gets_the_next_released_connection(tmp_path: Path) -> None:
    connections: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(tmp_path / "pool.db", check_same_thread=False)
        connections.append(conn)
        return conn

    pool = ConnectionPool(connect, size=1, wait_timeout=10, describe="pool.db")
    held = pool.acquire()
    waiting = threading.Event()
    got: list[sqlite3.Connection] = []

    def waiter() -> None:
        waiting.set()
        got.append(pool.acquire())

    thread = threading.Thread(target=waiter)
    thread.start()
    waiting.wait()
    while not pool._queue:  # the waiter has queued up
        threading.Event().wait(0.001)
    # The holder releases and immediately asks again, as a busy worker loop does.
    pool.release(held)
    barged: list[sqlite3.Connection] = []

    def barge() -> None:
        barged.append(pool.acquire())

    barger = threading.Thread(target=barge)
    barger.start()
    thread.join(5)
    assert got == [held]  # the waiter got it, not the thread that came later
    pool.release(got[0])
    barger.join(5)
    assert barged == [held]
    pool.release(barged[0])
    pool.close()
    for conn in connections:
        conn.close()


# release() gives a connection back without the lock while nobody is queued. The two
# tests below force the two interleavings where that could leave a waiter asleep next to
# an idle connection; the wait timeout is long, so a lost wake-up shows as a waiter that
# is still waiting when the (much shorter) join gives up.
_LONG_WAIT = 120.0


def _one_connection_pool(tmp_path: Path) -> tuple[ConnectionPool, list[sqlite3.Connection]]:
    connections: list[sqlite3.Connection] = []

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(tmp_path / "pool.db", check_same_thread=False)
        connections.append(conn)
        return conn

    return ConnectionPool(connect, size=1, wait_timeout=_LONG_WAIT, describe="pool.db"), connections


def _close(pool: ConnectionPool, connections: list[sqlite3.Connection]) -> None:
    pool.close()
    for conn in connections:
        conn.close()


def test_a_waiter_that_queues_while_a_release_is_under_way_is_woken(tmp_path: Path) -> None:
    pool, connections = _one_connection_pool(tmp_path)
    held = pool.acquire()
    got: list[sqlite3.Connection] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()), daemon=True)

    class QueueFirst(list):  # type: ignore[type-arg]
        def append(self, conn: sqlite3.Connection) -> None:
            # The releaser found nobody queued; a waiter queues before the append lands.
            waiter.start()
            while not pool._queue:
                threading.Event().wait(0.001)
            super().append(conn)

    pool._idle = QueueFirst(pool._idle)
    pool.release(held)
    waiter.join(10)
    assert got == [held], "the waiter was left asleep next to an idle connection"
    pool._idle = list(pool._idle)
    pool.release(got[0])
    _close(pool, connections)


def test_a_release_that_lands_while_a_waiter_queues_is_seen(tmp_path: Path) -> None:
    pool, connections = _one_connection_pool(tmp_path)
    held = pool.acquire()
    released = threading.Event()

    class ReleaseFirst(collections.deque):  # type: ignore[type-arg]
        def append(self, slot: object) -> None:
            # The waiter found nothing idle; the connection comes back before it queues.
            releaser = threading.Thread(target=lambda: (pool.release(held), released.set()))
            releaser.start()
            releaser.join(10)
            super().append(slot)

    pool._queue = ReleaseFirst()
    got: list[sqlite3.Connection] = []
    waiter = threading.Thread(target=lambda: got.append(pool.acquire()), daemon=True)
    waiter.start()
    waiter.join(10)
    assert released.is_set()
    assert got == [held], "the waiter slept although the connection was idle"
    pool._queue = collections.deque()
    pool.release(got[0])
    _close(pool, connections)


def test_closing_the_pool_wakes_a_waiter_and_closes_every_connection(tmp_path: Path) -> None:
    pool, connections = _one_connection_pool(tmp_path)
    held = pool.acquire()
    errors: list[Exception] = []

    def wait() -> None:
        try:
            pool.acquire()
        except StorageUnavailableError as error:
            errors.append(error)

    waiter = threading.Thread(target=wait, daemon=True)
    waiter.start()
    while not pool._queue:
        threading.Event().wait(0.001)
    pool.close()
    waiter.join(10)
    assert len(errors) == 1
    assert "closed" in str(errors[0])
    assert not pool._queue  # the waiter took its place in the queue with it
    pool.release(held)  # comes back after close(): closed, not kept
    assert pool.open_count == 0
    with pytest.raises(sqlite3.ProgrammingError):
        held.execute("SELECT 1")
    _close(pool, connections)
