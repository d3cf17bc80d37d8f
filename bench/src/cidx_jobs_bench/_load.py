"""The processes of the event-loop lag runs: the HTTP load and the lock holder.

Both run in processes of their own (``spawn``), so that neither shares the server's
interpreter (its GIL, its event loop): what the server's loop sees of them is requests and
locks, as a server in production would. This module imports the standard library only, so
that a spawned child starts quickly; the lock holder imports psycopg when it needs it.

* :func:`drive`: ``clients`` keep-alive HTTP/1.1 connections over asyncio streams, each with
  one request in flight at a time, half ``GET /jobs/{id}`` and half
  ``POST /jobs/{id}/progress``, for ``duration`` seconds: paced (all together ``rate``
  requests per second, each client one every ``clients / rate`` seconds from a random
  start, at once when it is late) or, with no rate, a closed loop (the next request as soon
  as the response is in), which saturates the server.
* :func:`hold_lock`: holds a lock for ``hold`` seconds at a time with ``pause`` seconds
  between holds, until told to stop: SQLite's write lock (``BEGIN IMMEDIATE``) on the file,
  or PostgreSQL row locks (``SELECT ... FOR UPDATE``) on the jobs the POSTs update.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections.abc import Sequence
from typing import Any

#: Each client's share of GETs (the rest are POSTs of progress).
GET_SHARE = 0.5


async def _response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response; return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if length:
        await reader.readexactly(length)
    return status


def _requests(
    port: int, get_ids: Sequence[str], post_ids: Sequence[str]
) -> tuple[list[bytes], list[bytes]]:
    host = f"Host: 127.0.0.1:{port}\r\n"
    gets = [f"GET /jobs/{i} HTTP/1.1\r\n{host}\r\n".encode() for i in get_ids]
    posts = [
        f"POST /jobs/{i}/progress?value={n % 100} HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n".encode()
        for n, i in enumerate(post_ids)
    ]
    return gets, posts


async def _drive(
    port: int,
    get_ids: Sequence[str],
    post_ids: Sequence[str],
    clients: int,
    duration: float,
    rate: float | None,
    go: Any,
    out: Any,
) -> dict[str, Any]:
    gets, posts = _requests(port, get_ids, post_ids)
    connections = []
    for _ in range(clients):
        connections.append(await asyncio.open_connection("127.0.0.1", port))
    out.put(("ready", None))
    loop = asyncio.get_running_loop()
    started = await loop.run_in_executor(None, go.wait, 120)
    if not started:
        raise RuntimeError("the benchmark never said go")
    clock = time.perf_counter
    begun = clock()
    stop = begun + duration
    latencies: dict[str, list[float]] = {"get": [], "post": []}
    errors: dict[str, int] = {}

    period = clients / rate if rate else 0.0

    async def client(index: int) -> None:
        reader, writer = connections[index]
        rng = random.Random(index)
        due = begun + rng.random() * period
        while True:
            if period:
                if due >= stop:
                    break
                delay = due - clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                due = max(due + period, clock())
            if clock() >= stop:
                break
            if rng.random() < GET_SHARE:
                kind, request = "get", gets[rng.randrange(len(gets))]
            else:
                kind, request = "post", posts[rng.randrange(len(posts))]
            t0 = clock()
            try:
                writer.write(request)
                status = await _response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                key = f"{type(error).__name__}: {str(error)[:80]}"
                errors[key] = errors.get(key, 0) + 1
                return  # the connection is gone
            latencies[kind].append(clock() - t0)
            if status != 200:
                key = f"HTTP {status}"
                errors[key] = errors.get(key, 0) + 1
        writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return {"seconds": clock() - begun, "latencies": latencies, "errors": errors}


def drive(
    port: int,
    get_ids: Sequence[str],
    post_ids: Sequence[str],
    clients: int,
    duration: float,
    rate: float | None,
    go: Any,
    out: Any,
) -> None:
    """The load process: connect every client, say ``("ready", None)`` on ``out``, wait for
    ``go``, run for ``duration`` s (``rate`` requests per second in all, or a closed loop
    if None), then put ``("done", figures)`` (or ``("error", text)``)."""
    try:
        figures = asyncio.run(_drive(port, get_ids, post_ids, clients, duration, rate, go, out))
    except Exception as error:
        out.put(("error", f"{type(error).__name__}: {error}"))
        return
    out.put(("done", figures))


def hold_lock(
    kind: str,
    target: str,
    schema: str | None,
    ids: Sequence[str],
    hold: float,
    pause: float,
    stop: Any,
    out: Any,
) -> None:
    """The lock holder: say ``("ready", None)`` once it holds its first lock, then hold it
    ``hold`` s at a time (``pause`` s between holds) until ``stop`` is set; finally put
    ``("done", holds)``, the number of holds, or ``("error", text)``.

    :param kind: ``sqlite`` (``target`` is the file; ``BEGIN IMMEDIATE`` takes the write
        lock) or ``postgresql`` (``target`` the base configuration; the rows of ``ids`` in
        ``schema`` are locked ``FOR UPDATE``).
    """
    try:
        holds = (_hold_sqlite if kind == "sqlite" else _hold_postgres)(
            target, schema, ids, hold, pause, stop, out
        )
    except Exception as error:
        out.put(("error", f"{type(error).__name__}: {error}"))
        return
    out.put(("done", holds))


def _hold_sqlite(
    path: str,
    schema: str | None,
    ids: Sequence[str],
    hold: float,
    pause: float,
    stop: Any,
    out: Any,
) -> int:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    holds = 0
    try:
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            holds += 1
            if holds == 1:
                out.put(("ready", None))
            time.sleep(hold)
            conn.execute("COMMIT")
            stop.wait(pause)
    finally:
        conn.close()
    return holds


def _hold_postgres(
    base: str,
    schema: str | None,
    ids: Sequence[str],
    hold: float,
    pause: float,
    stop: Any,
    out: Any,
) -> int:
    from cidx_jobs_postgres._plugin import _connect

    sql = f"SELECT id FROM {schema}.sync_jobs WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
    holds = 0
    with _connect(base) as conn:
        while not stop.is_set():
            with conn.transaction():
                locked = conn.execute(sql, (list(ids),)).fetchall()
                if len(locked) != len(ids):
                    raise RuntimeError(f"locked {len(locked)} rows of {len(ids)}")
                holds += 1
                if holds == 1:
                    out.put(("ready", None))
                time.sleep(hold)
            stop.wait(pause)
    return holds
