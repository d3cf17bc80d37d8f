"""Cleanup: 1,000 expired jobs with 3 checkpoints each, and a large cleanup racing a writer.

The floor is raw sqlite3 running the backend's batched DELETE (``rowid IN (SELECT ...
LIMIT 1000)``, with the foreign key's cascade deleting the checkpoints) until a batch
deletes nothing: the loop of the facade (``JobPersistence._delete_expired``, which calls
the storage's ``delete_expired`` until a batch comes back empty), so the floor also ends
with one empty DELETE. The backend runs the same
statement with smaller batches that adapt to hold the write lock about 20 ms each, and a
WAL checkpoint after each full batch, so that other writers never wait long: that is what its ratio
to the floor pays for. ``floor one DELETE`` is the unbounded single statement, for
reference.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from cidx_jobs import JobPersistence, JobStatus
from cidx_jobs_sqlite import _codec

from . import _data, _memory, _report, _sqlite
from ._ops import CHECKPOINT_DATA
from ._report import Report
from ._settings import Settings
from ._timing import interleave, percentile, time_once

SQLITE, MEMORY, FLOOR, SINGLE = "sqlite", "memory", "floor", "floor one DELETE"
BATCH = 1000
EXPIRED = 1000
#: Jobs finished before this are expired (the generated history spans 30 days).
CUTOFF = _data.NOW - timedelta(days=60)
CUTOFF_US = _codec.encode_time(CUTOFF)


def _insert_expired(conn: Any, seed: int, count: int, users: int) -> list[str]:
    rows = _data.expired_rows(seed, count, users)
    ids = [row[_data.ID] for row in rows]
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_sqlite.INSERT_JOB, rows)
    conn.executemany(_sqlite.INSERT_CHECKPOINT, _data.checkpoint_rows(seed, ids))
    conn.execute("COMMIT")
    return ids


def _raw_delete_loop(conn: Any, batches: list[float] | None = None) -> int:
    """Delete batches of :data:`BATCH` expired jobs until one deletes nothing, as the facade
    loops over the storage's ``delete_expired``; returns the jobs deleted."""
    sql = _sqlite.delete_batch_sql()
    params = [*_sqlite.delete_params(CUTOFF_US), BATCH]
    total = 0
    while True:
        start = time.perf_counter()
        deleted = int(conn.execute(sql, params).rowcount)
        if batches is not None:
            batches.append(time.perf_counter() - start)
        if deleted <= 0:
            return total
        total += deleted


def run(settings: Settings, report: Report) -> None:
    """Time the deletion of 1,000 expired jobs (3 checkpoints each) from a populated store."""
    base = _sqlite.query_db(settings.cache_dir, settings.ops_db_size, settings.users, settings.log)
    settings.log(f"cleanup of {EXPIRED:,} expired jobs among {settings.ops_db_size:,} ...")
    paths = {
        name: _sqlite.copy_db(base, settings.work_dir / f"cleanup-{i}.db")
        for i, name in enumerate((SQLITE, FLOOR, SINGLE))
    }
    store = _sqlite.open_store(paths[SQLITE])
    setup_conns = {name: _sqlite.raw_connect(path) for name, path in paths.items()}
    floor = _sqlite.raw_connect(paths[FLOOR])
    single = _sqlite.raw_connect(paths[SINGLE])
    memory = _memory.from_db(base)
    deleted: dict[str, list[int]] = {name: [] for name in (SQLITE, MEMORY, FLOOR, SINGLE)}

    def setup(name: str, round_: int) -> None:
        seed = 10_000 + round_
        if name == MEMORY:
            rows = _data.expired_rows(seed, EXPIRED, settings.users)
            _memory.fill(memory, rows)
            _memory.fill_checkpoints(
                memory, _data.checkpoint_rows(seed, [r[_data.ID] for r in rows])
            )
            return
        _insert_expired(setup_conns[name], seed, EXPIRED, settings.users)
        setup_conns[name].execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def ours(target: JobPersistence, name: str) -> Callable[[], object]:
        return lambda: deleted[name].append(target.delete_expired_jobs(CUTOFF))

    def floor_call() -> None:
        deleted[FLOOR].append(_raw_delete_loop(floor))

    single_sql = _sqlite.delete_batch_sql(batched=False)
    single_params = _sqlite.delete_params(CUTOFF_US)

    def single_call() -> None:
        deleted[SINGLE].append(int(single.execute(single_sql, single_params).rowcount))

    rounds = settings.cleanup_rounds
    try:
        samples = interleave(
            {
                SQLITE: [ours(store, SQLITE)] * rounds,
                MEMORY: [ours(memory, MEMORY)] * rounds,
                FLOOR: [floor_call] * rounds,
                SINGLE: [single_call] * rounds,
            },
            rounds,
            setup=setup,
        )
        orphans = {
            name: conn.execute(
                "SELECT count(*) FROM job_checkpoints WHERE job_id NOT IN (SELECT id FROM sync_jobs)"
            ).fetchone()[0]
            for name, conn in setup_conns.items()
        }
    finally:
        store.close()
        memory.close()
        for conn in (*setup_conns.values(), floor, single):
            conn.close()
        for path in paths.values():
            _sqlite.remove_db(path)

    section = report.section(
        "cleanup",
        f"Cleanup of {EXPIRED:,} expired jobs with 3 checkpoints each "
        f"(among {settings.ops_db_size:,} jobs; ms per cleanup)",
        ["contender", "median ms", "p99 ms", "x floor", "jobs deleted", "orphan checkpoints"],
    )
    floor_median = samples[FLOOR].median_us()
    for name, sample in samples.items():
        median = sample.median_us()
        counts = sorted(set(deleted[name]))
        section.add(
            [
                name,
                _report.ms(median / 1000),
                _report.ms(sample.p99_us() / 1000),
                _report.ratio(median / floor_median),
                "/".join(str(c) for c in counts),
                _report.count(orphans.get(name)) if name != MEMORY else "0",
            ],
            contender=name,
            median_ms=median / 1000,
            p99_ms=sample.p99_us() / 1000,
            ratio_to_floor=median / floor_median,
            runs=sample.n,
            deleted=deleted[name],
            orphan_checkpoints=orphans.get(name, 0),
        )
    section.notes.append(
        f"{rounds} runs each, interleaved; each run deletes {EXPIRED:,} fresh expired jobs "
        "and their 3,000 checkpoints (the foreign key's ON DELETE CASCADE) with "
        "delete_expired_jobs() or the floor's statement. The WAL is checkpointed before each "
        "timed run. The floor deletes 1,000 jobs per statement; the backend starts at "
        f"{_sqlite.FIRST_CLEANUP_BATCH} and adapts each batch to hold the write lock about "
        "20 ms, with a WAL checkpoint after each full batch. Both stop at the first batch "
        "that deletes nothing (the facade's loop), so each ends with one empty DELETE. "
        "Target: sqlite ≤ 1.5x floor."
    )


class _Writer(threading.Thread):
    """Keeps writing (save, status, checkpoint, progress) until stopped; times each call."""

    def __init__(self, write: Callable[[int], None], pause: float) -> None:
        super().__init__(daemon=True)
        self._write = write
        self._pause = pause
        self.stop = threading.Event()
        self.started_writing = threading.Event()
        self.times: list[float] = []
        self.errors: dict[str, int] = {}

    def run(self) -> None:
        clock = time.perf_counter
        for i in itertools.count():
            if self.stop.is_set():
                return
            start = clock()
            try:
                self._write(i)
            except Exception as error:
                key = f"{type(error).__name__}: {str(error)[:80]}"
                self.errors[key] = self.errors.get(key, 0) + 1
            self.times.append(clock() - start)
            self.started_writing.set()
            time.sleep(self._pause)


def _large_template(settings: Settings) -> Path:
    n = settings.large_cleanup
    live = settings.ops_db_size

    def build(path: Path) -> float:
        expired = _data.expired_rows(77, n, settings.users)
        checkpoints = _data.checkpoint_rows(77, [row[_data.ID] for row in expired])
        return _sqlite.build_db(
            path,
            itertools.chain(_data.job_rows(live, live, settings.users), expired),
            checkpoints,
        )

    return _sqlite.cached_db(
        settings.cache_dir, f"cleanup-{n}-live{live}-u{settings.users}", build, settings.log
    )


def run_large(settings: Settings, report: Report) -> None:
    """A large cleanup while another thread keeps writing: the writer's worst wait."""
    n = settings.large_cleanup
    template = _large_template(settings)
    section = report.section(
        "large-cleanup",
        f"Cleanup of {n:,} expired jobs (3 checkpoints each) while another thread keeps writing",
        [
            "contender",
            "cleanup s",
            "jobs deleted",
            "writes during it",
            "write median ms",
            "write p99 ms",
            "writer's worst wait ms",
            "writer errors",
        ],
    )
    contenders = (SQLITE, FLOOR) if settings.large_cleanup_floor else (SQLITE,)
    for name in contenders:
        settings.log(f"large cleanup ({n:,} expired jobs), {name} ...")
        path = _sqlite.copy_db(template, settings.work_dir / "large-cleanup.db")
        try:
            if name == SQLITE:
                figures = _large_sqlite(path, settings)
            else:
                figures = _large_floor(path, settings)
        finally:
            _sqlite.remove_db(path)
        times = figures["write_times"]
        section.add(
            [
                name,
                f"{figures['seconds']:.2f}",
                _report.count(figures["deleted"]),
                _report.count(len(times)),
                _report.ms(percentile(times, 50) * 1000 if times else None),
                _report.ms(percentile(times, 99) * 1000 if times else None),
                _report.ms(max(times) * 1000 if times else None),
                _report.count(sum(figures["errors"].values())),
            ],
            contender=name,
            expired=n,
            cleanup_seconds=figures["seconds"],
            deleted=figures["deleted"],
            writes=len(times),
            write_median_ms=percentile(times, 50) * 1000 if times else None,
            write_p99_ms=percentile(times, 99) * 1000 if times else None,
            writer_worst_wait_ms=max(times) * 1000 if times else None,
            writer_errors=figures["errors"],
            longest_batch_ms=figures.get("longest_batch_ms"),
        )
    section.notes.append(
        f"The store holds {settings.ops_db_size:,} live jobs besides the expired ones. The "
        "writer (one thread; a save_job, update_job_status, save_checkpoint or "
        "update_job_progress every millisecond or so) shares the store with the cleanup; "
        "the floor's writer runs the same statements on its own raw connection. "
        "Target: no write waits more than 100 ms."
    )


def _large_sqlite(path: Path, settings: Settings) -> dict[str, Any]:
    store = _sqlite.open_store(path)
    jobs = _data.new_jobs(seed=501, count=20_000, users=settings.users)

    def write(i: int) -> None:
        job = jobs[(i // 4) % len(jobs)]
        step = i % 4
        if step == 0:
            if i // 4 >= len(jobs):
                store.update_job_progress(job.id, 10, "git_pull")
            else:
                store.save_job(job)
        elif step == 1:
            store.update_job_status(job.id, JobStatus.RUNNING)
        elif step == 2:
            store.save_checkpoint(job.id, "indexing", CHECKPOINT_DATA)
        else:
            store.update_job_progress(job.id, 50, "indexing")

    writer = _Writer(write, pause=0.001)
    try:
        writer.start()
        writer.started_writing.wait(5)
        result: list[int] = []
        ns = time_once(lambda: result.append(store.delete_expired_jobs(CUTOFF)))
        writer.stop.set()
        writer.join()
    finally:
        writer.stop.set()
        store.close()
    return {
        "seconds": ns / 1e9,
        "deleted": result[0] if result else 0,
        "write_times": writer.times,
        "errors": writer.errors,
    }


def _large_floor(path: Path, settings: Settings) -> dict[str, Any]:
    main = _sqlite.raw_connect(path)
    side = _sqlite.raw_connect(path)
    jobs = _data.new_jobs(seed=501, count=20_000, users=settings.users)
    params = [
        _sqlite.insert_params(
            job, json.dumps(job.metadata, separators=(",", ":")), _sqlite.FLOOR_OWNER, _data.NOW
        )
        for job in jobs
    ]
    status_sql = _sqlite.status_sql(JobStatus.RUNNING)
    data_json = json.dumps(CHECKPOINT_DATA, separators=(",", ":"))

    def write(i: int) -> None:
        k = (i // 4) % len(jobs)
        job_id = jobs[k].id
        step = i % 4
        if step == 0:
            if i // 4 >= len(jobs):
                side.execute(_sqlite.SET_PROGRESS_PHASE, (10, "git_pull", job_id))
            else:
                side.execute(_sqlite.INSERT_JOB, params[k])
        elif step == 1:
            side.execute(
                status_sql,
                _sqlite.status_params(JobStatus.RUNNING, _data.NOW_US, job_id, _sqlite.FLOOR_OWNER),
            )
        elif step == 2:
            side.execute(_sqlite.INSERT_CHECKPOINT, (job_id, "indexing", data_json, _data.NOW_US))
        else:
            side.execute(_sqlite.SET_PROGRESS_PHASE, (50, "indexing", job_id))

    writer = _Writer(write, pause=0.001)
    batches: list[float] = []
    try:
        writer.start()
        writer.started_writing.wait(5)
        result: list[int] = []
        ns = time_once(lambda: result.append(_raw_delete_loop(main, batches)))
        writer.stop.set()
        writer.join()
    finally:
        writer.stop.set()
        main.close()
        side.close()
    return {
        "seconds": ns / 1e9,
        "deleted": result[0] if result else 0,
        "write_times": writer.times,
        "errors": writer.errors,
        "longest_batch_ms": max(batches) * 1000 if batches else None,
    }
