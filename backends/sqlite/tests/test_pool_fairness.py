"""The pool hands a released connection to the longest waiter, never to a thread barging in.

Regression test: the benchmark found that with more threads than connections, a thread that
released and re-acquired in a loop kept winning, and a waiting thread could time out.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

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
