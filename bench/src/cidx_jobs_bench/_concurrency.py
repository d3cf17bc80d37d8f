"""Throughput and errors with many threads, and with several processes, on one file.

Each worker runs a mix for a fixed time: 20% save_job, 25% load_job, 15%
update_job_status, 20% update_job_progress, 10% save_checkpoint, 10% a user's page of 50.
The floor runs the same statements through raw sqlite3, one connection per worker (what
a hand-written app would do). Every exception is counted; "locked" counts those whose
message says the database was locked or busy, the error the target says no caller sees.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from cidx_jobs import JobFilter, JobPersistence, JobStatus
from cidx_jobs_sqlite import _codec
from cidx_jobs_sqlite._options import DEFAULT_POOL_SIZE

from . import _data, _memory, _report, _sqlite
from ._report import Report
from ._settings import Settings
from ._timing import percentile

SQLITE, MEMORY, FLOOR = "sqlite", "memory", "floor"
_OPS = (
    ("save", 20),
    ("load", 25),
    ("status", 15),
    ("progress", 20),
    ("checkpoint", 10),
    ("query", 10),
)
_CHOICES = [name for name, weight in _OPS for _ in range(weight)]
_DATA = {"files_done": 10, "last": "src/app/main.py"}
_DATA_JSON = json.dumps(_DATA, separators=(",", ":"))


@dataclass
class Tally:
    """What one worker did."""

    ops: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    #: Operations done by each worker (unequal counts mean some workers were starved).
    per_worker: list[int] = field(default_factory=list)

    def merge(self, other: Tally) -> None:
        """Add another worker's tally to this one."""
        self.ops += other.ops
        self.per_worker.extend(other.per_worker or [other.ops])
        self.seconds = max(self.seconds, other.seconds)
        self.latencies.extend(other.latencies)
        for key, value in other.errors.items():
            self.errors[key] = self.errors.get(key, 0) + value

    @property
    def locked(self) -> int:
        """Errors that say the database was locked or busy."""
        return sum(v for k, v in self.errors.items() if "locked" in k or "busy" in k.lower())


class _Api:
    """The mix through the public API of a store."""

    def __init__(
        self, store: JobPersistence, seed: int, users: int, known: list[str], saves: int
    ) -> None:
        self.store = store
        self.jobs = _data.new_jobs(seed=seed, count=saves, users=users)
        self.next = 0
        self.known = known[:]
        self.users = users

    def op(self, name: str, rng: random.Random) -> None:
        store = self.store
        if name == "save" and self.next < len(self.jobs):
            job = self.jobs[self.next]
            self.next += 1
            store.save_job(job)
            self.known.append(job.id)
            return
        job_id = self.known[rng.randrange(len(self.known))]
        if name == "load" or name == "save":
            store.load_job(job_id)
        elif name == "status":
            store.update_job_status(job_id, JobStatus.RUNNING)
        elif name == "progress":
            store.update_job_progress(job_id, rng.randrange(100), "indexing")
        elif name == "checkpoint":
            store.save_checkpoint(job_id, "indexing", _DATA)
        else:
            store.query_page(
                JobFilter(
                    user_id=_data.user_name(rng.randrange(self.users)),
                    created_after=_data.NOW - timedelta(days=14),
                    limit=50,
                )
            )


class _Raw:
    """The same mix through raw sqlite3 on a connection of its own."""

    def __init__(self, path: Path, seed: int, users: int, known: list[str], saves: int) -> None:
        self.conn = _sqlite.raw_connect(path)
        jobs = _data.new_jobs(seed=seed, count=saves, users=users)
        self.params = [
            _sqlite.insert_params(
                job, json.dumps(job.metadata, separators=(",", ":")), _sqlite.FLOOR_OWNER, _data.NOW
            )
            for job in jobs
        ]
        self.next = 0
        self.known = known[:]
        self.users = users
        self.status_sql = _sqlite.status_sql(JobStatus.RUNNING)
        self.query_sql = _sqlite.select_sql(user=True, created_after=True)
        self.after = _codec.encode_time(_data.NOW - timedelta(days=14))

    def op(self, name: str, rng: random.Random) -> None:
        conn = self.conn
        if name == "save" and self.next < len(self.params):
            params = self.params[self.next]
            self.next += 1
            conn.execute(_sqlite.INSERT_JOB, params)
            self.known.append(params[0])
            return
        job_id = self.known[rng.randrange(len(self.known))]
        if name == "load" or name == "save":
            conn.execute(_sqlite.SELECT_JOB, (job_id,)).fetchone()
        elif name == "status":
            conn.execute(
                self.status_sql,
                _sqlite.status_params(JobStatus.RUNNING, _data.NOW_US, job_id, _sqlite.FLOOR_OWNER),
            )
        elif name == "progress":
            conn.execute(_sqlite.SET_PROGRESS_PHASE, (rng.randrange(100), "indexing", job_id))
        elif name == "checkpoint":
            conn.execute(_sqlite.INSERT_CHECKPOINT, (job_id, "indexing", _DATA_JSON, _data.NOW_US))
        else:
            user = _data.user_name(rng.randrange(self.users))
            conn.execute(self.query_sql, (user, self.after, 51, 0)).fetchall()


def _work(op: Callable[[str, random.Random], None], seed: int, start: float, stop: float) -> Tally:
    rng = random.Random(seed)
    tally = Tally()
    clock = time.perf_counter
    while time.time() < start:
        time.sleep(0.001)
    begun = clock()
    while time.time() < stop:
        name = _CHOICES[rng.randrange(len(_CHOICES))]
        t0 = clock()
        try:
            op(name, rng)
        except Exception as error:
            key = f"{type(error).__name__}: {str(error)[:100]}"
            tally.errors[key] = tally.errors.get(key, 0) + 1
        tally.latencies.append(clock() - t0)
        tally.ops += 1
    tally.seconds = clock() - begun
    return tally


def _saves(duration: float) -> int:
    """New jobs a worker has at hand (beyond them, a save turns into a load)."""
    return 300 + int(duration * 600)


def _known_ids(path: Path, count: int = 2000) -> list[str]:
    conn = _sqlite.raw_connect(path)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM sync_jobs LIMIT ?", (count,))]
    finally:
        conn.close()


def _threads(workers: Sequence[Callable[[str, random.Random], None]], duration: float) -> Tally:
    start = time.time() + 0.2
    stop = start + duration
    results: list[Tally] = [Tally() for _ in workers]

    def target(i: int) -> None:
        results[i] = _work(workers[i], 1000 + i, start, stop)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(len(workers))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = Tally()
    for tally in results:
        total.merge(tally)
    return total


def _process_main(
    kind: str,
    path: str,
    index: int,
    users: int,
    known: list[str],
    duration: float,
    go: Any,
    start_at: Any,
    out: Any,
) -> None:
    """One worker process: open its own store (or raw connection), say it is ready, wait
    for the common start, and run the mix."""
    try:
        store: JobPersistence | None = None
        if kind == SQLITE:
            store = _sqlite.open_store(Path(path))
            op = _Api(store, 2000 + index, users, known, _saves(duration)).op
        else:
            raw = _Raw(Path(path), 2000 + index, users, known, _saves(duration))
            op = raw.op
        out.put(("ready", index))
        go.wait(60)
        tally = _work(op, 3000 + index, start_at.value, start_at.value + duration)
        if store is not None:
            store.close()
        else:
            raw.conn.close()
    except Exception as error:  # opening failed: report it as the worker's error
        out.put(("ready", index))
        tally = Tally(errors={f"{type(error).__name__}: {str(error)[:100]}": 1})
    out.put(("done", tally))


def _processes(kind: str, path: Path, count: int, users: int, duration: float) -> Tally:
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    go = context.Event()
    start_at = context.Value("d", 0.0)
    known = _known_ids(path)
    procs = [
        context.Process(
            target=_process_main,
            args=(kind, str(path), i, users, known, duration, go, start_at, out),
        )
        for i in range(count)
    ]
    for proc in procs:
        proc.start()
    # Spawned interpreters import the library first: start together once all are ready.
    for _ in procs:
        out.get(timeout=120)
    start_at.value = time.time() + 0.05
    go.set()
    total = Tally()
    for _ in procs:
        _, tally = out.get(timeout=duration + 120)
        total.merge(tally)
    for proc in procs:
        proc.join(timeout=30)
    return total


def run(settings: Settings, report: Report) -> None:
    """Measure the thread and process runs."""
    base = _sqlite.query_db(settings.cache_dir, settings.ops_db_size, settings.users, settings.log)
    section = report.section(
        "concurrency",
        f"Concurrency: mixed writes and reads on one file "
        f"({settings.ops_db_size:,} jobs, {settings.duration:g} s per run)",
        [
            "workers",
            "contender",
            "ops/s",
            "ops",
            "p99 ms",
            "worst ms",
            "ops per worker",
            "errors",
            "database is locked",
        ],
    )
    known = _known_ids(base)
    n = settings.threads
    saves = _saves(settings.duration)
    for name in (SQLITE, MEMORY, FLOOR):
        settings.log(f"{n} threads, {name} ...")
        path = _sqlite.copy_db(base, settings.work_dir / "concurrency.db")
        try:
            if name == SQLITE:
                pool = {} if settings.pool_size is None else {"pool_size": settings.pool_size}
                store = _sqlite.open_store(path, **pool)
                try:
                    ops = [_Api(store, 100 + i, settings.users, known, saves).op for i in range(n)]
                    tally = _threads(ops, settings.duration)
                finally:
                    store.close()
            elif name == MEMORY:
                memory = _memory.from_db(base)
                try:
                    ops = [_Api(memory, 100 + i, settings.users, known, saves).op for i in range(n)]
                    tally = _threads(ops, settings.duration)
                finally:
                    memory.close()
            else:
                raws = [_Raw(path, 100 + i, settings.users, known, saves) for i in range(n)]
                try:
                    tally = _threads([raw.op for raw in raws], settings.duration)
                finally:
                    for raw in raws:
                        raw.conn.close()
        finally:
            _sqlite.remove_db(path)
        _row(section, f"{n} threads", name, tally)

    p = settings.processes
    for name in (SQLITE, FLOOR):
        settings.log(f"{p} processes, {name} ...")
        path = _sqlite.copy_db(base, settings.work_dir / "concurrency.db")
        try:
            tally = _processes(name, path, p, settings.users, settings.duration)
        finally:
            _sqlite.remove_db(path)
        _row(section, f"{p} processes", name, tally)
    section.add(
        [f"{p} processes", MEMORY, *[_report.NA] * 7],
        workers=f"{p} processes",
        contender=MEMORY,
        note="n/a: a memory store lives in one process",
    )
    section.notes.append(
        "Mix: 20% save_job, 25% load_job, 15% update_job_status, 20% update_job_progress, "
        "10% save_checkpoint, 10% a user's page of 50. Threads share one store (its pool of "
        f"{settings.pool_size or DEFAULT_POOL_SIZE} connections); "
        "each process opens its own. The floor gives each worker its own raw connection "
        "with the backend's pragmas and busy timeout. ops per worker: the least and the "
        "most one worker did (a wide range means some were starved). "
        "Target: no 'database is locked'."
    )


def _row(section: _report.Section, workers: str, name: str, tally: Tally) -> None:
    lat = tally.latencies
    throughput = tally.ops / tally.seconds if tally.seconds else None
    section.add(
        [
            workers,
            name,
            f"{throughput:,.0f}" if throughput else _report.NA,
            _report.count(tally.ops),
            _report.ms(percentile(lat, 99) * 1000 if lat else None),
            _report.ms(max(lat) * 1000 if lat else None),
            f"{min(tally.per_worker):,}-{max(tally.per_worker):,}" if tally.per_worker else "",
            _report.count(sum(tally.errors.values())),
            _report.count(tally.locked),
        ],
        workers=workers,
        contender=name,
        ops_per_second=throughput,
        ops=tally.ops,
        p99_ms=percentile(lat, 99) * 1000 if lat else None,
        worst_ms=max(lat) * 1000 if lat else None,
        errors=tally.errors,
        locked=tally.locked,
        ops_per_worker=tally.per_worker,
    )
