"""A quick benchmark of the SQLite backend against raw sqlite3 running the same SQL.

Not a test: run it by hand, and quote its table. For each operation it times the
backend's public call and raw ``sqlite3`` executing the very statement the backend
executes, with the same pragmas, on a database of the same shape, and prints the
medians and their ratio (the budget is 1.5x). It also times a user's page on a large
database and measures the file size against the JSON the jobs make.

    python backends/sqlite/bench_quick.py                # about a minute
    python backends/sqlite/bench_quick.py --jobs 1000000 # the 1,000,000-job query figure
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from statistics import median
from typing import Any

import attrs

from cidx_jobs import (
    Checkpoint,
    Hooks,
    JobFilter,
    JobStatus,
    StatusChange,
    SyncJob,
    get_plugin_manager,
    serialization,
)
from cidx_jobs_sqlite import (  # the backend's own SQL, to run it raw
    SqliteJobStore,
    SqliteOptions,
    _codec,
    _store,
)
from cidx_jobs_sqlite._schema import apply_migrations

UTC = timezone.utc
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
STATUS_MIX = [JobStatus.COMPLETED] * 85 + [JobStatus.FAILED] * 8 + [JobStatus.CANCELLED] * 3
STATUS_MIX += [JobStatus.INTERRUPTED, JobStatus.RUNNING, JobStatus.PENDING, JobStatus.QUEUED]


def metadata(rng: random.Random) -> dict[str, Any]:
    return {
        "repo": f"https://git.example.com/org/repo{rng.randrange(1000)}.git",
        "branch": "main",
        "commit": f"{rng.getrandbits(48):012x}",
        "files": rng.randrange(10_000),
    }


def make_job(rng: random.Random, index: int, users: int, *, days: int = 30) -> SyncJob:
    status = rng.choice(STATUS_MIX)
    created = NOW - timedelta(microseconds=rng.randrange(days * 86_400_000_000))
    finished = created + timedelta(seconds=rng.randrange(600))
    return SyncJob(
        id=f"{rng.getrandbits(128):032x}-{index}",
        user_id=f"user{rng.randrange(users):03d}",
        project_id=f"project{rng.randrange(200):03d}",
        status=status,
        progress=100 if status is JobStatus.COMPLETED else rng.randrange(100),
        phase="validation",
        created_at=created,
        started_at=created + timedelta(seconds=1),
        completed_at=finished if status.is_terminal else None,
        error_message="git fetch failed" if status is JobStatus.FAILED else None,
        metadata=metadata(rng),
        # Every job has a lease (save_job stamps one); given here, all three sides store it.
        owner_id="bench-host:1:0123abcd",
        heartbeat_at=created + timedelta(seconds=1),
    )


def open_store(path: Path) -> SqliteJobStore:
    # No entry points: the benchmark measures the backend, not plugin discovery.
    hooks = Hooks(get_plugin_manager(load_entrypoints=False))
    return SqliteJobStore(SqliteOptions.parse(str(path)), hooks=hooks)


def open_raw(path: Path) -> sqlite3.Connection:
    """A plain sqlite3 connection with exactly the backend's pragmas."""
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, cached_statements=256, timeout=5
    )
    conn.execute("PRAGMA journal_mode = WAL")
    for pragma in _store.connection_pragmas(SqliteOptions.parse(str(path))):
        conn.execute(pragma)
    # The same tables and indexes as the backend's.
    apply_migrations(conn, path, lambda c: c.execute("BEGIN IMMEDIATE").close())
    return conn


Sample = tuple[list[float], list[float]]  # wall and CPU microseconds per call


def timed(calls: list[Callable[[], object]]) -> Sample:
    wall, cpu = [], []
    wall_clock, cpu_clock = time.perf_counter_ns, time.thread_time_ns
    for call in calls:
        w, c = wall_clock(), cpu_clock()
        call()
        cpu.append((cpu_clock() - c) / 1000)
        wall.append((wall_clock() - w) / 1000)
    return wall, cpu


def compare(*call_lists: list[Callable[[], object]], chunk: int = 100) -> list[Sample]:
    """Time each list of calls, interleaved in chunks so that drift hits them alike."""
    gc.collect()
    gc.disable()
    try:
        samples: list[Sample] = [([], []) for _ in call_lists]
        for start in range(0, max(len(calls) for calls in call_lists), chunk):
            for sample, calls in zip(samples, call_lists, strict=True):
                wall, cpu = timed(calls[start : start + chunk])
                sample[0].extend(wall)
                sample[1].extend(cpu)
        return samples
    finally:
        gc.enable()


def fill(paths: list[Path], jobs: list[SyncJob]) -> None:
    """The same jobs into each database, in bulk, through plain connections."""
    rows = [_codec.job_params(job, _json(job)) for job in jobs]
    for path in paths:
        conn = sqlite3.connect(path, isolation_level=None, timeout=5)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_codec.INSERT_JOB_SQL, rows)
        conn.execute("COMMIT")
        conn.close()


def _json(job: SyncJob) -> str:
    return _json_value(job.metadata)


def bench(args: argparse.Namespace) -> None:
    rng = random.Random(7)
    folder = Path(tempfile.mkdtemp(prefix="cidx-bench-"))
    # The raw connections open the store's own files, so both sides run on the very same
    # tables, indexes and WAL, interleaved.
    store = open_store(folder / "jobs.db")
    raw = open_raw(folder / "jobs.db")
    bulk_paths = [folder / "bulk.db"]
    store_bulk = open_store(bulk_paths[0])
    raw_bulk = open_raw(bulk_paths[0])
    rows: list[tuple[str, list[Sample]]] = []
    n = args.ops
    now = _codec.encode_time(NOW)

    # Three sets of jobs, in one database: through the public API, through the backend's
    # primitive (the backend's own overhead, without core's validation and hooks), and raw.
    public, primitive, raw_jobs = ([make_job(rng, i, 50) for i in range(n)] for _ in range(3))
    raw_rows = [_codec.job_params(job, _json(job)) for job in raw_jobs]
    a, b, r = ([job.id for job in jobs] for jobs in (public, primitive, raw_jobs))

    rows.append(
        (
            "save_job",
            compare(
                [lambda job=job: store.save_job(job) for job in public],
                [
                    lambda job=job, text=text: store._insert_job(job, text)
                    for job, text in zip(primitive, map(_json, primitive), strict=True)
                ],
                [lambda row=row: raw.execute(_codec.INSERT_JOB_SQL, row) for row in raw_rows],
            ),
        )
    )
    select = _store._SELECT_JOB
    rows.append(
        (
            "load_job",
            compare(
                [lambda i=i: store.load_job(i) for i in a * 2],
                [lambda i=i: store._get_job(i) for i in b * 2],
                [lambda i=i: raw.execute(select, (i,)).fetchone() for i in r * 2],
            ),
        )
    )
    # A move to running takes the job's lease: the store's owner and heartbeat are set too.
    owner = store.owner_id
    change = StatusChange(
        status=JobStatus.RUNNING, error_message=None, expected=None, now=NOW, owner=owner
    )
    status_sql = _store._status_sql(JobStatus.RUNNING, False, None, True)
    rows.append(
        (
            "update_job_status",
            compare(
                [lambda i=i: store.update_job_status(i, JobStatus.RUNNING) for i in a],
                [lambda i=i: store._set_status(i, change) for i in b],
                [lambda i=i: raw.execute(status_sql, ("running", now, owner, now, i)) for i in r],
            ),
        )
    )
    progress_sql = _store._SET_PROGRESS_PHASE
    rows.append(
        (
            "update_job_progress",
            compare(
                [lambda i=i: store.update_job_progress(i, 50, "indexing") for i in a],
                [lambda i=i: store._set_progress(i, 50, "indexing") for i in b],
                [lambda i=i: raw.execute(progress_sql, (50, "indexing", i)) for i in r],
            ),
        )
    )
    data = {"files_done": 1200, "last": "src/app/main.py"}
    data_json = _json_value(data)
    rows.append(
        (
            "save_checkpoint",
            compare(
                [lambda i=i: store.save_checkpoint(i, "indexing", data) for i in a],
                [
                    lambda checkpoint=checkpoint: store._upsert_checkpoint(checkpoint, data_json)
                    for checkpoint in [
                        Checkpoint(job_id=i, phase="indexing", data=data, created_at=NOW) for i in b
                    ]
                ],
                [
                    lambda i=i: raw.execute(
                        _codec.INSERT_CHECKPOINT_SQL, (i, "indexing", data_json, now)
                    )
                    for i in r
                ],
            ),
        )
    )

    # A user's page on a larger database: 100 jobs of one status in the last 7 days.
    total = args.jobs
    print(f"filling a database with {total:,} jobs ...", file=sys.stderr)
    batch = 20_000
    for start in range(0, total, batch):
        fill(
            bulk_paths,
            [make_job(rng, start + i, args.users) for i in range(min(batch, total - start))],
        )
    week = _codec.encode_time(NOW - timedelta(days=7))
    one = JobFilter(
        user_id="user007",
        statuses={JobStatus.COMPLETED},
        created_after=NOW - timedelta(days=7),
        created_before=NOW,
        limit=100,
    )
    sql1 = _store._select_sql(True, False, True, True, False, 1)
    params1 = ["completed", "user007", week, now, 101, 0]
    two = attrs.evolve(one, statuses={JobStatus.FAILED, JobStatus.CANCELLED})
    sql2 = _store._select_sql(True, False, True, True, False, 2)
    params2 = ["cancelled", "user007", week, now, 101, "failed", "user007", week, now, 101]
    params2 += [101, 0]
    for label, query, sql, params in (
        ("1 status", one, sql1, params1),
        ("2 statuses", two, sql2, params2),
    ):
        for _ in range(5):  # warm both caches alike
            store_bulk.query_jobs(query)
            raw_bulk.execute(sql, params).fetchall()
        rows.append(
            (
                f"query 100 of {total:,} ({label})",
                compare(
                    [lambda query=query: store_bulk.query_jobs(query)] * args.queries,
                    [lambda query=query: store_bulk._select_jobs(query, None, 101)] * args.queries,
                    [lambda sql=sql, params=params: raw_bulk.execute(sql, params).fetchall()]
                    * args.queries,
                    chunk=20,
                ),
            )
        )

    # Cleanup: 1,000 expired jobs with a checkpoint each, among the bulk data.
    cutoff = NOW - timedelta(days=60)
    cutoffs = dict.fromkeys((s for s in JobStatus if not s.is_active), cutoff)
    statuses = sorted(cutoffs, key=lambda status: status.value)
    where = " OR ".join("(status = ? AND coalesce(completed_at, created_at) < ?)" for _ in statuses)
    delete_sql = (
        f"DELETE FROM sync_jobs WHERE rowid IN (SELECT rowid FROM sync_jobs WHERE {where} LIMIT ?)"
    )
    delete_params = [x for s in statuses for x in (s.value, _codec.encode_time(cutoff))] + [1000]
    samples: list[Sample] = [([], []), ([], []), ([], [])]
    for run in range(args.cleanup_runs):
        for kind in range(3):
            old = [
                SyncJob(
                    id=f"old-{run}-{kind}-{i}",
                    user_id=f"user{i % 50:03d}",
                    project_id="p",
                    status=JobStatus.COMPLETED,
                    created_at=NOW - timedelta(days=90, minutes=i),
                    completed_at=NOW - timedelta(days=89, minutes=i),
                    metadata=metadata(rng),
                )
                for i in range(1000)
            ]
            path = bulk_paths[0]
            fill([path], old)
            conn = sqlite3.connect(path, isolation_level=None, timeout=5)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                _codec.INSERT_CHECKPOINT_SQL,
                [(job.id, "indexing", '{"files":1}', now) for job in old],
            )
            conn.execute("COMMIT")
            conn.close()
            calls: list[Callable[[], object]] = [
                lambda: store_bulk.delete_expired_jobs(cutoff),
                lambda: store_bulk._delete_finished(cutoffs, batch_size=1000, dry_run=False),
                # The backend's statement, run until a batch comes back short, as it does.
                lambda: [raw_bulk.execute(delete_sql, delete_params) for _ in range(2)],
            ]
            wall, cpu = timed([calls[kind]])
            samples[kind][0].extend(wall)
            samples[kind][1].extend(cpu)
    rows.append(("cleanup 1,000 jobs + 1,000 checkpoints", samples))

    print()
    print(
        f"{'median per call':<38} {'public API':>11} {'primitive':>11} {'raw sqlite3':>11} "
        f"{'ratio':>6} {'(CPU)':>6}"
    )
    for name, (ours, prim, theirs) in rows:
        ratio = median(ours[0]) / median(theirs[0])
        cpu_ratio = median(ours[1]) / median(theirs[1])
        print(
            f"{name:<38} {_fmt(median(ours[0])):>11} {_fmt(median(prim[0])):>11} "
            f"{_fmt(median(theirs[0])):>11} {ratio:>5.2f}x {cpu_ratio:>5.2f}x"
        )
    print(
        "ratio: public API / raw, wall-clock medians; (CPU): the same with thread CPU time,\n"
        "which a busy machine disturbs less. primitive: the backend's own method, without\n"
        "core's validation, policy hooks and events."
    )

    # Size: 10,000 jobs against the JSON they make.
    size_path = folder / "size.db"
    size_store = open_store(size_path)
    size_jobs = [make_job(rng, i, 50) for i in range(10_000)]
    json_bytes = sum(len(serialization.to_json(job).encode()) for job in size_jobs)
    with size_store.transaction():
        for job in size_jobs:
            size_store.save_job(job)
    size_store.close()
    file_bytes = size_path.stat().st_size
    print(
        f"\nsize of 10,000 jobs: file {file_bytes / 1e6:.2f} MB, their JSON {json_bytes / 1e6:.2f} MB, "
        f"ratio {file_bytes / json_bytes:.2f}x"
    )
    print(
        f"({n} calls per single-row operation, {args.queries} queries; SQLite "
        f"{sqlite3.sqlite_version}, Python {sys.version.split()[0]})"
    )
    for closing in (store, store_bulk):
        closing.close()
    raw.close()
    raw_bulk.close()
    shutil.rmtree(folder)


def _json_value(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _fmt(microseconds: float) -> str:
    if microseconds >= 1000:
        return f"{microseconds / 1000:.2f} ms"
    return f"{microseconds:.1f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=3000, help="calls per single-row operation")
    parser.add_argument("--jobs", type=int, default=200_000, help="jobs in the query database")
    parser.add_argument("--users", type=int, default=50, help="users the jobs belong to")
    parser.add_argument("--queries", type=int, default=300, help="repetitions of each query")
    parser.add_argument("--cleanup-runs", type=int, default=7, help="cleanup repetitions")
    bench(parser.parse_args())


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
