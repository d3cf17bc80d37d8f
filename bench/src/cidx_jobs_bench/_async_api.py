"""The async API (issue 12): what a call costs through it, and what it spares the event loop.

Two measurements, on SQLite and, when a server answers, on PostgreSQL:

* **Overhead per call.** The same store called two ways from inside a running event loop,
  one call at a time: the sync :class:`~cidx_jobs.JobPersistence` called directly, and an
  :class:`~cidx_jobs.AsyncJobPersistence` wrapping that very store, awaited (so the only
  difference is the hop to the store's thread pool and back). Interleaved rounds, the
  collector off while calls are timed, as in the ``ops`` section. The ``no-op`` row times the
  hop alone: ``AsyncJobPersistence``'s own call path running a function that does nothing,
  against calling that function; the ``asyncio.to_thread`` row the standard library's hop,
  for reference (what a thread hop costs on the machine).
* **Event-loop lag.** A FastAPI app with two ``async def`` endpoints (``GET /jobs/{id}``:
  ``load_job``; ``POST /jobs/{id}/progress``: ``update_job_progress``) runs under uvicorn in
  a thread of this process, in two variants: awaiting an ``AsyncJobPersistence``, or calling
  the sync store inside the ``async def`` handlers. A ticker task in the server's loop
  (started by the app's lifespan) sleeps 1 ms at a time and records how late it wakes: the
  loop's lag, which every other request on that loop waits too. Another process
  (:func:`._load.drive`) keeps ``clients`` keep-alive connections busy, half GETs and half
  POSTs, paced at a total rate the server keeps up with, then in a closed loop that
  saturates it; each with no lock held elsewhere, and while a third process holds a lock
  the POSTs need for 300 ms at a time (SQLite: the file's write lock, ``BEGIN IMMEDIATE``;
  PostgreSQL: the rows of the jobs the POSTs update, ``SELECT ... FOR UPDATE``), with 100 ms
  between holds. The lag is also reported idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import math
import multiprocessing
import os
import random
import secrets
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cidx_jobs import AsyncJobPersistence, JobPersistence, open_persistence
from cidx_jobs.backend import StoreConfig

from . import _data, _load, _report, _sqlite
from ._ops import CHECKPOINT_DATA
from ._report import Report
from ._settings import Settings
from ._timing import Samples, percentile

SQLITE, POSTGRES = "sqlite", "postgresql"
SYNC, ASYNC = "sync", "async"
#: The ticker's period: it sleeps this long and records how late it woke.
TICK = 0.001
#: How long the lock holder holds its lock each time, and how long it lets go between holds.
HOLD, PAUSE = 0.3, 0.1
#: Jobs in the lag runs' store; the POSTs update the first HOT of them (which the
#: PostgreSQL lock holder locks), the GETs read any.
LAG_JOBS, HOT = 1000, 200
#: Seconds the ticker runs with no load before the loaded runs.
IDLE_SECONDS = 1.0
#: The target of issue 12 for the overhead per call on SQLite, in µs.
OVERHEAD_BUDGET_US = 100.0
#: The target of issue 12 for the loop's p99 lag with the async API, in ms.
LAG_BUDGET_MS = 5.0

OVERHEAD_HEADERS = [
    "backend",
    "operation",
    "sync median µs",
    "sync p99 µs",
    "async median µs",
    "async p99 µs",
    "overhead median µs",
    "overhead p99 µs",
    "round spread (sync, async)",
]
LAG_HEADERS = [
    "backend",
    "API",
    "load",
    "ticks",
    "lag p50 ms",
    "lag p99 ms",
    "lag max ms",
    "requests/s",
    "GET p50 ms",
    "GET p99 ms",
    "POST p50 ms",
    "POST p99 ms",
    "errors",
]


# -- overhead per call ------------------------------------------------------------------------


def _noop() -> None:
    return None


async def _interleave(
    contenders: Mapping[str, Sequence[Callable[[], object]]], rounds: int
) -> dict[str, Samples]:
    """:func:`._timing.interleave` from inside the running loop: a call that returns an
    awaitable is awaited, and the await is timed with it."""
    names = list(contenders)
    result = {name: Samples() for name in names}
    clock = time.perf_counter_ns
    isawaitable = inspect.isawaitable
    gc.collect()
    gc.freeze()
    try:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                calls = contenders[name]
                size = math.ceil(len(calls) / rounds)
                chunk = calls[r * size : (r + 1) * size]
                if not chunk:
                    continue
                gc.collect(1)
                gc.disable()
                times = []
                for call in chunk:
                    start = clock()
                    outcome = call()
                    if isawaitable(outcome):
                        await outcome
                    times.append(clock() - start)
                gc.enable()
                result[name].times_ns.extend(times)
                result[name].round_medians_ns.append(statistics.median(times))
    finally:
        gc.unfreeze()
        gc.enable()
    return result


def _bind(fn: Callable[..., object], *args: Any) -> Callable[[], object]:
    return lambda: fn(*args)


async def _overhead_samples(
    store: JobPersistence, n: int, rounds: int, users: int
) -> dict[str, dict[str, Samples]]:
    astore = AsyncJobPersistence(store)
    try:
        sync_jobs = _data.new_jobs(seed=201, count=n, users=users)
        async_jobs = _data.new_jobs(seed=202, count=n, users=users)
        # Warm both paths (the pool's connections, the statement caches, the executor's
        # thread) on jobs of their own before anything is timed.
        for job in _data.new_jobs(seed=203, count=20, users=users):
            store.save_job(job)
            await astore.load_job(job.id)
            store.load_job(job.id)
        sync_ids = [job.id for job in sync_jobs]
        async_ids = [job.id for job in async_jobs]
        random.Random(7).shuffle(sync_ids)
        random.Random(8).shuffle(async_ids)
        found: dict[str, dict[str, Samples]] = {}
        found["no-op (the hop alone)"] = await _interleave(
            {
                SYNC: [_noop] * n,
                ASYNC: [_bind(astore._run, _noop) for _ in range(n)],
            },
            rounds,
        )
        found["no-op, asyncio.to_thread (reference)"] = await _interleave(
            {SYNC: [_noop] * n, ASYNC: [_bind(asyncio.to_thread, _noop) for _ in range(n)]},
            rounds,
        )
        found["save_job"] = await _interleave(
            {
                SYNC: [_bind(store.save_job, job) for job in sync_jobs],
                ASYNC: [_bind(astore.save_job, job) for job in async_jobs],
            },
            rounds,
        )
        found["load_job"] = await _interleave(
            {
                SYNC: [_bind(store.load_job, i) for i in sync_ids],
                ASYNC: [_bind(astore.load_job, i) for i in async_ids],
            },
            rounds,
        )
        found["update_job_progress"] = await _interleave(
            {
                SYNC: [_bind(store.update_job_progress, i, 40, "indexing") for i in sync_ids],
                ASYNC: [_bind(astore.update_job_progress, i, 40, "indexing") for i in async_ids],
            },
            rounds,
        )
        found["save_checkpoint"] = await _interleave(
            {
                SYNC: [
                    _bind(store.save_checkpoint, i, "indexing", CHECKPOINT_DATA) for i in sync_ids
                ],
                ASYNC: [
                    _bind(astore.save_checkpoint, i, "indexing", CHECKPOINT_DATA) for i in async_ids
                ],
            },
            rounds,
        )
        for ids in (sync_ids, async_ids):
            stored = store.load_job(ids[0])
            if stored is None or stored.progress != 40:
                raise RuntimeError(f"the progress update of {ids[0]} was not stored: {stored}")
            if store.load_checkpoint(ids[0], "indexing") != CHECKPOINT_DATA:
                raise RuntimeError(f"the checkpoint of {ids[0]} was not stored")
        return found
    finally:
        await astore.aclose()  # closes the sync store too


def _overhead_rows(
    section: _report.Section, backend: str, found: dict[str, dict[str, Samples]]
) -> None:
    for operation, samples in found.items():
        sync, asynch = samples[SYNC], samples[ASYNC]
        overhead = asynch.median_us() - sync.median_us()
        overhead_p99 = asynch.p99_us() - sync.p99_us()
        spreads = [sync.spread(), asynch.spread()]
        section.add(
            [
                backend,
                operation,
                _report.us(sync.median_us()),
                _report.us(sync.p99_us()),
                _report.us(asynch.median_us()),
                _report.us(asynch.p99_us()),
                _report.us(overhead),
                _report.us(overhead_p99),
                ", ".join(_report.pct(s) for s in spreads),
            ],
            backend=backend,
            operation=operation,
            sync_median_us=sync.median_us(),
            sync_p99_us=sync.p99_us(),
            async_median_us=asynch.median_us(),
            async_p99_us=asynch.p99_us(),
            overhead_median_us=overhead,
            overhead_p99_us=overhead_p99,
            round_spread_sync=spreads[0],
            round_spread_async=spreads[1],
            calls=sync.n,
        )


# -- event-loop lag ---------------------------------------------------------------------------


@dataclass
class Ticker:
    """Sleeps :data:`TICK` at a time in the server's loop and records how late it woke."""

    lags: list[float] = field(default_factory=list)
    recording: bool = False

    async def run(self) -> None:
        """Tick until cancelled."""
        clock = time.perf_counter
        while True:
            start = clock()
            await asyncio.sleep(TICK)
            if self.recording:
                self.lags.append(max(0.0, clock() - start - TICK))

    def start(self) -> None:
        """Forget what was recorded, and record from now on."""
        self.lags = []
        self.recording = True

    def stop(self) -> list[float]:
        """Stop recording; return the lags (seconds) since :meth:`start`."""
        self.recording = False
        return self.lags


def make_app(api: str, store: JobPersistence, ticker: Ticker) -> Any:
    """The FastAPI app of the lag runs: ``async def`` endpoints on ``store``, awaited through
    an ``AsyncJobPersistence`` (``api="async"``) or called directly (``"sync"``). Its
    lifespan runs ``ticker`` and closes the store at shutdown."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    astore = AsyncJobPersistence(store) if api == ASYNC else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(ticker.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            if astore is not None:
                await astore.aclose()
            else:
                store.close()

    app = FastAPI(lifespan=lifespan)

    def job_response(job: Any) -> JSONResponse:
        if job is None:
            return JSONResponse({"detail": "no such job"}, status_code=404)
        return JSONResponse({"id": job.id, "status": job.status.value, "progress": job.progress})

    def updated_response(updated: bool) -> JSONResponse:
        if not updated:
            return JSONResponse({"detail": "no such job"}, status_code=404)
        return JSONResponse({"updated": True})

    if astore is not None:
        store_async = astore

        @app.get("/jobs/{job_id}")
        async def get_job(job_id: str) -> JSONResponse:
            return job_response(await store_async.load_job(job_id))

        @app.post("/jobs/{job_id}/progress")
        async def post_progress(job_id: str, value: int) -> JSONResponse:
            return updated_response(
                await store_async.update_job_progress(job_id, value, "indexing")
            )

    else:

        @app.get("/jobs/{job_id}")
        async def get_job_sync(job_id: str) -> JSONResponse:
            return job_response(store.load_job(job_id))

        @app.post("/jobs/{job_id}/progress")
        async def post_progress_sync(job_id: str, value: int) -> JSONResponse:
            return updated_response(store.update_job_progress(job_id, value, "indexing"))

    return app


@contextlib.contextmanager
def serving(app: Any) -> Iterator[int]:
    """Run ``app`` under uvicorn (h11, the asyncio loop) in a thread of this process, on a
    free port of 127.0.0.1; yield the port; stop the server at the end."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        access_log=False,
        loop="asyncio",
        http="h11",
        backlog=2048,
        timeout_keep_alive=60,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the uvicorn server did not start")
            time.sleep(0.01)
        yield port
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


@dataclass
class Locker:
    """What the lock holder locks: ``kind`` (sqlite or postgresql), the file or the base
    configuration, the schema (PostgreSQL) and the job ids (PostgreSQL's rows)."""

    kind: str
    target: str
    schema: str | None
    ids: list[str]


def _get(queue: Any, timeout: float, who: str) -> Any:
    kind, value = queue.get(timeout=timeout)
    if kind == "error":
        raise RuntimeError(f"{who} failed: {value}")
    return value


def _loaded_window(
    settings: Settings,
    ticker: Ticker,
    port: int,
    ids: list[str],
    rate: float | None,
    locker: Locker | None,
) -> dict[str, Any]:
    """One load run: the lock holder (if any) holding, the driver connected, then the ticker
    recording while the driver runs."""
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    go = context.Event()
    stop = context.Event()
    lock_out = context.Queue()
    procs = []
    holds = None
    try:
        if locker is not None:
            holder = context.Process(
                target=_load.hold_lock,
                args=(
                    locker.kind,
                    locker.target,
                    locker.schema,
                    locker.ids,
                    HOLD,
                    PAUSE,
                    stop,
                    lock_out,
                ),
                daemon=True,
            )
            holder.start()
            procs.append(holder)
            _get(lock_out, 60, "the lock holder")
        driver = context.Process(
            target=_load.drive,
            args=(
                port,
                ids,
                ids[:HOT],
                settings.async_clients,
                settings.lag_duration,
                rate,
                go,
                out,
            ),
            daemon=True,
        )
        driver.start()
        procs.append(driver)
        _get(out, 120, "the load")
        ticker.start()
        go.set()
        figures: dict[str, Any] = _get(out, settings.lag_duration + 120, "the load")
        figures["lags"] = ticker.stop()
        stop.set()
        if locker is not None:
            holds = _get(lock_out, 60, "the lock holder")
    finally:
        ticker.stop()
        stop.set()
        go.set()
        for proc in procs:
            proc.join(30)
            if proc.is_alive():  # pragma: no cover - a child that hangs
                proc.kill()
    figures["holds"] = holds
    return figures


def _load_name(settings: Settings, rate: float | None, locker: Locker | None) -> str:
    pace = f"{rate:,.0f} req/s" if rate else "closed loop"
    lock = (
        "" if locker is None else " + " + ("write lock" if locker.kind == SQLITE else "row locks")
    )
    return f"{settings.async_clients} clients, {pace}{lock}"


def _lag_row(
    section: _report.Section, backend: str, api: str, load: str, figures: dict[str, Any]
) -> None:
    lags_ms = [lag * 1000 for lag in figures["lags"]]
    latencies: dict[str, list[float]] | None = figures.get("latencies")
    ms = {kind: [x * 1000 for x in (latencies or {}).get(kind, [])] for kind in ("get", "post")}
    done = len(ms["get"]) + len(ms["post"])
    seconds = figures.get("seconds")
    rate = done / seconds if seconds else None
    errors: dict[str, int] = figures.get("errors", {})

    def pct(values: list[float], p: float) -> float | None:
        return percentile(values, p) if values else None

    section.add(
        [
            backend,
            api,
            load,
            _report.count(len(lags_ms)),
            _report.ms(pct(lags_ms, 50)),
            _report.ms(pct(lags_ms, 99)),
            _report.ms(max(lags_ms) if lags_ms else None),
            f"{rate:,.0f}" if rate else _report.NA,
            _report.ms(pct(ms["get"], 50)),
            _report.ms(pct(ms["get"], 99)),
            _report.ms(pct(ms["post"], 50)),
            _report.ms(pct(ms["post"], 99)),
            _report.count(sum(errors.values())) if latencies is not None else _report.NA,
        ],
        backend=backend,
        api=api,
        load=load,
        ticks=len(lags_ms),
        lag_p50_ms=pct(lags_ms, 50),
        lag_p99_ms=pct(lags_ms, 99),
        lag_max_ms=max(lags_ms) if lags_ms else None,
        requests=done,
        requests_per_second=rate,
        get_p50_ms=pct(ms["get"], 50),
        get_p99_ms=pct(ms["get"], 99),
        post_p50_ms=pct(ms["post"], 50),
        post_p99_ms=pct(ms["post"], 99),
        errors=errors,
        lock_holds=figures.get("holds"),
        idle=latencies is None,
        offered_rate=figures.get("rate"),
        saturating=latencies is not None and figures.get("rate") is None,
        contended=figures.get("contended", False),
    )


#: A store for one lag run, and what its lock holder locks (given the POSTed jobs' ids).
Lab = Callable[
    [], contextlib.AbstractContextManager[tuple[JobPersistence, Callable[[list[str]], Locker]]]
]


def _lag_runs(settings: Settings, section: _report.Section, backend: str, lab: Lab) -> None:
    for api in (ASYNC, SYNC):
        with lab() as (store, locker_for):
            try:
                jobs = _data.new_jobs(seed=301, count=LAG_JOBS, users=settings.users)
                for job in jobs:
                    store.save_job(job)
                ids = [job.id for job in jobs]
                ticker = Ticker()
                with serving(make_app(api, store, ticker)) as port:
                    settings.log(f"{backend}, {api} API: idle ...")
                    ticker.start()
                    time.sleep(IDLE_SECONDS)
                    _lag_row(section, backend, api, "idle", {"lags": ticker.stop()})
                    locker = locker_for(ids[:HOT])
                    for rate in (settings.async_rate, None):
                        for lock in (None, locker):
                            load = _load_name(settings, rate, lock)
                            settings.log(f"{backend}, {api} API: {load} ...")
                            figures = _loaded_window(settings, ticker, port, ids, rate, lock)
                            figures["rate"] = rate
                            figures["contended"] = lock is not None
                            _lag_row(section, backend, api, load, figures)
            finally:
                store.close()  # the app's lifespan closed it already, unless it never started


# -- PostgreSQL -------------------------------------------------------------------------------


def postgres_base(settings: Settings) -> tuple[str | None, str]:
    """The PostgreSQL configuration to measure, or ``None`` and why not: ``--postgres-url``,
    else ``$CIDX_JOBS_POSTGRES_URL``, else the local test server if it answers."""
    if not settings.postgres:
        return None, "skipped (--no-postgres)"
    try:
        import psycopg  # noqa: F401

        from cidx_jobs_postgres._plugin import DEFAULT_TEST_URL, TEST_URL_ENV, _connect
    except ImportError:
        return None, (
            "the PostgreSQL backend is not installed here (pip install cidx-jobs-bench[postgres])"
        )
    url = settings.postgres_url or os.environ.get(TEST_URL_ENV) or DEFAULT_TEST_URL
    try:
        with _connect(url) as conn:
            conn.execute("SELECT 1")
    except Exception as error:
        return (
            None,
            f"no PostgreSQL server answers ({type(error).__name__}: {' '.join(str(error).split())[:160]})",
        )
    return url, ""


@contextlib.contextmanager
def postgres_scratch(base: str) -> Iterator[tuple[StoreConfig, str]]:
    """A throwaway schema ``cidx_bench_<random>`` of the database ``base`` names (the store
    creates it when it opens); dropped with everything in it at the end."""
    from cidx_jobs_postgres._plugin import _with_schema, drop_schema

    schema = f"cidx_bench_{secrets.token_hex(4)}"
    try:
        yield _with_schema(base, schema), schema
    finally:
        drop_schema(base, schema)


# -- the section ------------------------------------------------------------------------------


def run(settings: Settings, report: Report) -> None:
    """Measure the async API's overhead per call and the event loop's lag under load."""
    overhead = report.section(
        "async-overhead",
        "Async API: overhead per call, awaited one at a time from a running event loop "
        "(µs per call; the same store called directly and through AsyncJobPersistence)",
        OVERHEAD_HEADERS,
    )
    lag = report.section(
        "async-lag",
        f"Async API: event-loop lag of a FastAPI app under {settings.async_clients} concurrent "
        f"clients (a 1 ms ticker in the server's loop; {settings.lag_duration:g} s per loaded run)",
        LAG_HEADERS,
    )
    base, why_not = postgres_base(settings)

    counter = iter(range(1_000_000))

    @contextlib.contextmanager
    def sqlite_lab() -> Iterator[tuple[JobPersistence, Callable[[list[str]], Locker]]]:
        # A fresh temporary file per store, removed afterwards.
        path = settings.work_dir / f"async-{next(counter)}.db"
        _sqlite.remove_db(path)
        try:
            with _sqlite.open_store(path) as store:
                yield store, lambda ids: Locker(SQLITE, str(path), None, ids)
        finally:
            _sqlite.remove_db(path)

    @contextlib.contextmanager
    def postgres_lab() -> Iterator[tuple[JobPersistence, Callable[[list[str]], Locker]]]:
        # A throwaway schema per store, dropped afterwards.
        assert base is not None
        with postgres_scratch(base) as (config, schema), open_persistence(config) as store:
            yield store, lambda ids: Locker(POSTGRES, base, schema, ids)

    settings.log(f"async overhead, sqlite ({settings.async_ops:,} calls per operation and API) ...")
    with sqlite_lab() as (store, _):
        found = asyncio.run(
            _overhead_samples(store, settings.async_ops, settings.rounds, settings.users)
        )
    _overhead_rows(overhead, SQLITE, found)
    pg_ops = max(settings.rounds, settings.async_ops // 2)
    if base is not None:
        settings.log(f"async overhead, postgresql ({pg_ops:,} calls per operation and API) ...")
        with postgres_lab() as (store, _):
            found = asyncio.run(_overhead_samples(store, pg_ops, settings.rounds, settings.users))
        _overhead_rows(overhead, POSTGRES, found)
    else:
        overhead.add([POSTGRES, "all", *[_report.NA] * 7], backend=POSTGRES, note=why_not)

    _lag_runs(settings, lag, SQLITE, sqlite_lab)
    if base is not None:
        _lag_runs(settings, lag, POSTGRES, postgres_lab)
    else:
        lag.add([POSTGRES, "both", "all", *[_report.NA] * 10], backend=POSTGRES, note=why_not)
    if base is None:
        for section in (overhead, lag):
            section.notes.append(f"PostgreSQL: n/a, {why_not}.")

    overhead.notes.append(
        f"{settings.async_ops:,} calls per operation and API on SQLite ({pg_ops:,} on "
        f"PostgreSQL), in {settings.rounds} interleaved rounds, each call timed alone from "
        "inside the event loop: sync is the JobPersistence called directly (blocking the "
        "loop), async is `await` on an AsyncJobPersistence wrapping that same store (the call "
        "runs on the store's thread pool while the loop waits for its result). overhead: async "
        "minus sync, of the medians and of the p99s. no-op (the hop alone): the async store's "
        "call path running a function that does nothing; no-op, asyncio.to_thread: the "
        "standard library's hop to a thread, for reference (what any thread hop costs on this "
        "machine). Each API works on jobs of its own, saved by its save_job row; the SQLite "
        "store is a fresh temporary file, the PostgreSQL one a throwaway schema (dropped "
        f"after). Target: overhead ≤ {OVERHEAD_BUDGET_US:g} µs per call on SQLite."
    )
    lag.notes.append(
        "The app: two `async def` endpoints, GET /jobs/{id} (load_job) and "
        "POST /jobs/{id}/progress (update_job_progress), under uvicorn (h11, asyncio loop, one "
        "worker) in a thread of the benchmark's process; async: they await an "
        "AsyncJobPersistence (as many threads as the store's pool), sync: they call the "
        "JobPersistence directly. lag: how late a task that sleeps 1 ms at a time wakes up in "
        "the server's loop (ticks: how many times it woke); every request on the loop waits "
        f"as long. The load: another process keeps {settings.async_clients} keep-alive "
        "connections, each with one request in flight at a time (half GETs of any of "
        f"{LAG_JOBS:,} jobs, half POSTs of progress to the first {HOT} of them), paced at "
        f"{settings.async_rate:,.0f} requests per second in all, or in a closed loop (the "
        "next request as soon as the response is in), which saturates the server's CPU. "
        "write lock / row locks: a third process holds SQLite's write lock (BEGIN IMMEDIATE), "
        f"or on PostgreSQL row locks on the {HOT} POSTed jobs (SELECT ... FOR UPDATE), for "
        f"{HOLD * 1000:.0f} ms at a time, {PAUSE * 1000:.0f} ms apart. errors: responses other "
        f"than 200 and broken connections. Target: lag p99 ≤ {LAG_BUDGET_MS:g} ms with the "
        "async API, under a load the server keeps up with (the paced rows)."
    )
