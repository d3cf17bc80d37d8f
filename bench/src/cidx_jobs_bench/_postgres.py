"""The PostgreSQL section: the backend against raw psycopg running its SQL over a pool made
like the backend's (issue 11, item 7).

Everything runs in one throwaway schema ``cidx_bench_<random>`` of the server the async
section also uses (``--postgres-url``, else ``$CIDX_JOBS_POSTGRES_URL``, else the local test
server), made by the store when it opens and dropped at the end, also when a part fails or
the run is interrupted. The schema is filled with ``--postgres-jobs`` jobs (1,000,000; quick
100,000) by one ``INSERT ... SELECT FROM generate_series`` with the secondary indexes
dropped, then the backend's own indexes are built again from their definitions and the
tables analyzed (as autovacuum would, minutes after such a load). Every part works on it:

* **the floor** is raw psycopg on a :class:`psycopg_pool.ConnectionPool` made as the
  backend's is (``Runner.connect_kwargs``: the same connection parameters, autocommit,
  ``prepare_threshold`` and adapters; ``Runner.configure``: the same session settings; the
  same ``pool_min``, ``pool_max`` and ``timeout``), executing the statements of
  ``cidx_jobs_postgres._statements`` with the parameters the backend binds, computed before
  the timed calls, in binary as the backend runs them, fetching tuples;
* **check**: each operation once through the backend and once through the floor, every
  statement and its parameters recorded where it meets psycopg; "yes" means the same;
* **ops**: save, load, status and progress updates, checkpoint save and load;
* **query**: one user's newest 100 completed jobs of the last 14 days;
* **cleanup** of 1,000 expired jobs (3 checkpoints each), and of ``--large-cleanup`` of them
  while another thread keeps writing through the same store;
* **concurrency**: ``--processes`` processes of ``--threads`` threads each, a mixed workload;
* **peer**: procrastinate (:mod:`._pg_peer`) where it has a comparable operation.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import random
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

from cidx_jobs import (
    Checkpoint,
    Hooks,
    JobFilter,
    JobPersistence,
    JobStatus,
    StoreSettings,
    SyncJob,
    open_persistence,
)

from . import _data, _report
from ._cleanup import _Writer
from ._concurrency import Tally, _Api, _row, _saves, _work
from ._ops import CHECKPOINT_DATA, HEADERS, add_rows
from ._report import Report
from ._settings import Settings
from ._timing import Call, Samples, interleave, time_once

API, PRIMITIVE, FLOOR, DECODED = "postgresql", "postgresql primitive", "floor", "floor decoded"
PEER = "procrastinate"
#: Jobs finished before this are expired (the generated history spans 30 days).
CUTOFF = _data.NOW - timedelta(days=60)
#: When the expired jobs of the cleanups were created.
EXPIRED_AT = _data.NOW - timedelta(days=90)
EXPIRED = 1000
BATCH = 1000
#: The finished statuses, as the facade's delete_expired_jobs() names them to the storage.
FINISHED = [status for status in JobStatus if not status.is_active]
_CHECKPOINT_JSON = json.dumps(CHECKPOINT_DATA, ensure_ascii=False, separators=(",", ":"))


def _encode(value: dict[str, Any]) -> str:
    # What core binds: compact JSON, UTF-8 kept.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# -- the floor --------------------------------------------------------------------------------


class Floor:
    """Raw psycopg over a pool made exactly as the backend's: the floor of every ratio.

    :param options: the backend's options (``store.storage.options``) for the same schema.
    """

    def __init__(self, options: Any) -> None:
        import psycopg_pool

        from cidx_jobs_postgres._runner import Runner

        # The backend's runner only lends its connection parameters and session setup
        # here; its own pool is never made.
        shape = Runner(options)
        self.pool: Any = psycopg_pool.ConnectionPool(
            kwargs=shape.connect_kwargs(),
            min_size=options.pool_min,
            max_size=options.pool_max,
            open=False,
            configure=shape.configure,
            timeout=options.connect_timeout,
            name="cidx-jobs-bench floor",
            num_workers=2,
        )
        self.pool.open(wait=True)
        #: When a list, every statement run is appended as (sql, params) (the check).
        self.trace: list[tuple[str, list[Any]]] | None = None

    def _note(self, sql: str, params: Sequence[Any]) -> None:
        if self.trace is not None:
            self.trace.append((sql, list(params)))

    def one(self, sql: str, params: Sequence[Any]) -> Any:
        """Run one statement on a pooled connection; its first row."""
        if self.trace is not None:
            self._note(sql, params)
        pool = self.pool
        conn = pool.getconn()
        try:
            return conn.execute(sql, params, binary=True).fetchone()
        finally:
            pool.putconn(conn)

    def all(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """Run one statement on a pooled connection; every row."""
        if self.trace is not None:
            self._note(sql, params)
        pool = self.pool
        conn = pool.getconn()
        try:
            rows: list[Any] = conn.execute(sql, params, binary=True).fetchall()
            return rows
        finally:
            pool.putconn(conn)

    def write(self, sql: str, params: Sequence[Any]) -> int:
        """Run one statement on a pooled autocommit connection; its row count."""
        if self.trace is not None:
            self._note(sql, params)
        pool = self.pool
        conn = pool.getconn()
        try:
            count: int = conn.execute(sql, params, binary=True).rowcount
            return count
        finally:
            pool.putconn(conn)

    def cleanup_batch(self, statements: Any, params: Sequence[Any]) -> int:
        """One cleanup batch as the backend runs it: BEGIN, the cleanup's advisory lock, the
        batched DELETE, COMMIT, on one connection; the jobs it deleted."""
        lock, key = statements.cleanup_lock, statements.cleanup_lock_key
        sql = statements.delete_expired_sql(len(FINISHED))
        if self.trace is not None:
            for step, step_params in (("BEGIN", ()), (lock, (key,)), (sql, params), ("COMMIT", ())):
                self._note(step, step_params)
        pool = self.pool
        conn = pool.getconn()
        try:
            conn.execute("BEGIN", (), binary=True)
            conn.execute(lock, (key,), binary=True)
            row = conn.execute(sql, params, binary=True).fetchone()
            conn.execute("COMMIT", (), binary=True)
            return int(row[0])
        finally:
            pool.putconn(conn)

    def cleanup(self, statements: Any, batches: list[float] | None = None) -> int:
        """Batches of :data:`BATCH` until one deletes nothing (the facade's loop)."""
        params = [*expired_params(), BATCH]
        total = 0
        while True:
            start = time.perf_counter()
            deleted = self.cleanup_batch(statements, params)
            if batches is not None:
                batches.append(time.perf_counter() - start)
            if deleted <= 0:
                return total
            total += deleted

    def close(self) -> None:
        """Close the pool."""
        self.pool.close()


def expired_params() -> list[Any]:
    """The cleanup's (status, cutoff) parameters for :data:`CUTOFF` on every finished status
    (``_statements.expired_params``, the order the backend binds them)."""
    from cidx_jobs_postgres._statements import expired_params as build

    return build(dict.fromkeys(FINISHED, CUTOFF))


# -- the throwaway schema and its data --------------------------------------------------------


@contextlib.contextmanager
def scratch(base: str) -> Iterator[tuple[str, str]]:
    """A fresh schema name and the configuration that names it; the schema (which the store
    creates when it opens) is dropped with everything in it at the end, also on an error or
    Ctrl-C."""
    from cidx_jobs_postgres._plugin import _with_schema, drop_schema

    schema = f"cidx_bench_{secrets.token_hex(4)}"
    config = _with_schema(base, schema)
    assert isinstance(config, str)
    try:
        yield config, schema
    finally:
        drop_schema(base, schema)


def _h(k: int) -> str:
    """A deterministic non-negative 63-bit hash of the row number ``g``, the ``k``-th one."""
    return f"(hashint8extended(g, {k}) & 9223372036854775807)"


#: The statuses in the generated mix, as a CASE on a hash in 0..99 (the mix of _data).
_STATUS_CASE = (
    "CASE WHEN s < 85 THEN 'completed' WHEN s < 93 THEN 'failed' WHEN s < 96 THEN "
    "'cancelled' WHEN s = 96 THEN 'interrupted' WHEN s = 97 THEN 'running' WHEN s = 98 "
    "THEN 'pending' ELSE 'queued' END"
)
_TERMINAL = "('completed', 'failed', 'cancelled')"
_PHASES = "ARRAY['git_pull', 'change_detection', 'indexing', 'validation']"
_COLUMNS = (
    "id, user_id, project_id, status, progress, phase, created_at, started_at, "
    "completed_at, error_message, metadata, owner_id, heartbeat_at"
)


def fill_sql(jobs: str, count: int, users: int, tag: str) -> str:
    """One INSERT of ``count`` generated jobs: the mix of ``_data.job_rows`` (about
    ``users`` users, 200 projects, 30 days before ``_data.NOW``, mostly completed, metadata
    of about 150 bytes), deterministic for ``tag``."""
    history_us = _data.HISTORY_DAYS * 86_400_000_000
    return f"""
INSERT INTO {jobs} ({_COLUMNS})
SELECT id, user_id, project_id, status,
       CASE WHEN status = 'completed' THEN 100 ELSE (r % 100)::int END,
       CASE WHEN status IN {_TERMINAL} THEN 'validation' ELSE ({_PHASES})[1 + r % 4] END,
       created,
       CASE WHEN status IN ('pending', 'queued') THEN NULL
            ELSE created + interval '1 second' END,
       CASE WHEN status IN {_TERMINAL}
            THEN created + (1 + r % 600000000) * interval '1 microsecond' END,
       CASE WHEN status = 'failed' THEN 'git fetch failed: connection reset' END,
       '{{"repo":"https://git.example.com/org/repo' || (r % 1000) || '.git","branch":"main",'
           || '"commit":"' || md5(id) || left(md5(user_id || id), 8) || '","files":'
           || (r % 10000) || '}}',
       NULL, NULL
FROM (
    SELECT md5('{tag}:' || g)::uuid::text AS id,
           'user' || lpad(({_h(1)} % {users})::text, 4, '0') AS user_id,
           'project' || lpad(({_h(2)} % 200)::text, 3, '0') AS project_id,
           {_STATUS_CASE} AS status,
           timestamptz '{_data.NOW.isoformat()}'
               - ({_h(4)} % {history_us}) * interval '1 microsecond' AS created,
           {_h(5)} AS r
    FROM (SELECT g, {_h(3)} % 100 AS s FROM generate_series(1, {count}) AS g) AS numbered
) AS generated
"""


def expired_sql(jobs: str, checkpoints: str, count: int, users: int, tag: str) -> str:
    """``count`` finished jobs created about 90 days before ``_data.NOW`` (one in ten failed,
    cancelled or interrupted), with 3 checkpoints each, in one statement."""
    return f"""
WITH new_jobs AS (
    INSERT INTO {jobs} ({_COLUMNS})
    SELECT md5('{tag}:' || g)::uuid::text,
           'user' || lpad(({_h(1)} % {users})::text, 4, '0'),
           'project' || lpad(({_h(2)} % 200)::text, 3, '0'),
           status, 100, 'validation', created, created + interval '1 second',
           created + interval '60 seconds', NULL, '{{}}', NULL, NULL
    FROM (
        SELECT g,
               CASE WHEN g % 10 = 0 THEN
                   (ARRAY['completed', 'failed', 'cancelled', 'interrupted'])[1 + (g / 10) % 4]
               ELSE 'completed' END AS status,
               timestamptz '{EXPIRED_AT.isoformat()}' - g * interval '50 milliseconds' AS created
        FROM generate_series(1, {count}) AS g
    ) AS generated
    RETURNING id, created_at
)
INSERT INTO {checkpoints} (job_id, phase, data, created_at)
SELECT id, phase, '{{"files_done":120,"last":"src/app/main.py"}}', created_at
FROM new_jobs, unnest(ARRAY['git_pull', 'indexing', 'validation']) AS phase
"""


def fill(conn: Any, statements: Any, count: int, users: int) -> float:
    """Fill the schema's empty ``sync_jobs`` with ``count`` generated jobs, fast: the
    secondary indexes are dropped, the rows inserted by one statement, the indexes built
    again from their own definitions (so they are exactly the backend's), then ANALYZE.

    :returns: the seconds it took.
    """
    start = time.perf_counter()
    schema = statements.schema
    indexes = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %s AND tablename = "
        "'sync_jobs' AND indexname NOT IN (SELECT conname FROM pg_constraint) ORDER BY 1",
        (schema,),
    ).fetchall()
    conn.execute("SET maintenance_work_mem = '256MB'")
    for name, _ in indexes:
        conn.execute(f'DROP INDEX "{schema}"."{name}"')
    conn.execute(fill_sql(statements.jobs, count, users, "base"))
    for _, definition in indexes:
        conn.execute(definition)
    conn.execute(f"ANALYZE {statements.jobs}")
    conn.execute(f"ANALYZE {statements.checkpoints}")
    return time.perf_counter() - start


def add_expired(conn: Any, statements: Any, count: int, users: int, tag: str) -> None:
    """Insert ``count`` expired jobs with 3 checkpoints each (committed)."""
    conn.execute(expired_sql(statements.jobs, statements.checkpoints, count, users, tag))


# -- the section ------------------------------------------------------------------------------


def run(settings: Settings, report: Report) -> None:
    """Measure every part on one throwaway schema, dropped at the end."""
    from . import _async_api

    base, why_not = _async_api.postgres_base(settings)
    if base is None:
        section = report.section("pg-ops", "PostgreSQL: not measured", ["why"])
        section.add([why_not], note=why_not)
        settings.log(f"postgres: {why_not}")
        return
    with scratch(base) as (config, schema):
        settings.log(f"postgres: schema {schema} ...")
        store = open_persistence(config)
        try:
            _measure(settings, report, config, store)
        finally:
            store.close()


def _measure(settings: Settings, report: Report, config: str, store: JobPersistence) -> None:
    from cidx_jobs_postgres._plugin import _connect

    storage: Any = store.storage
    options, statements = storage.options, storage._sql
    n = settings.postgres_jobs
    with _connect(config) as admin:
        settings.log(f"postgres: filling {n:,} jobs ...")
        seconds = fill(admin, statements, n, settings.users)
        settings.log(f"postgres: filled in {seconds:.1f} s")
        report.meta["postgres_fill_seconds"] = round(seconds, 1)
        server = admin.execute("SHOW server_version").fetchone()
        report.meta["postgres_server"] = str(server[0]) if server else None
        floor = Floor(options)
        try:
            parts: list[tuple[str, Callable[[], None]]] = [
                ("check", lambda: _check(settings, report, storage, floor)),
                ("ops", lambda: _ops(settings, report, config, store, floor)),
                ("query", lambda: _query(settings, report, store, floor)),
                ("cleanup", lambda: _cleanup(settings, report, store, floor, admin)),
                ("large cleanup", lambda: _large(settings, report, store, floor, admin)),
                ("concurrency", lambda: _concurrency(settings, report, config, admin)),
            ]
            for name, part in parts:
                t0 = time.perf_counter()
                try:
                    part()
                except Exception as error:
                    # A broken part must not cost the others' figures; the report says so.
                    failed = report.section(
                        f"pg-{name.replace(' ', '-')}-failed",
                        f"PostgreSQL {name}: failed",
                        ["error"],
                    )
                    failed.add([f"{type(error).__name__}: {error}"], error=repr(error))
                    settings.log(f"postgres {name} failed: {error!r}")
                settings.log(f"postgres {name}: {time.perf_counter() - t0:.1f} s")
        finally:
            floor.close()


# -- check ------------------------------------------------------------------------------------


@contextlib.contextmanager
def traced_storage(storage: Any) -> Iterator[list[tuple[str, list[Any]]]]:
    """Record every statement ``storage`` runs, with its parameters, where it meets psycopg
    (``Runner._execute``, the one place the backend's SQL reaches the driver)."""
    runner = storage._runner
    original = runner._execute
    trace: list[tuple[str, list[Any]]] = []

    def recording(conn: Any, mode: int, sql: str, params: Sequence[Any]) -> Any:
        trace.append((sql, list(params)))
        return original(conn, mode, sql, params)

    runner._execute = recording
    try:
        yield trace
    finally:
        del runner._execute


def _check(settings: Settings, report: Report, storage: Any, floor: Floor) -> None:
    """Each operation once through the backend (a facade with a fixed clock over the same
    storage) and once through the floor, with the same values."""
    from cidx_jobs_postgres import _codec
    from cidx_jobs_postgres._statements import checkpoint_params

    settings.log("postgres: checking that the floor runs the backend's SQL ...")
    facade = JobPersistence(storage, hooks=Hooks(), settings=StoreSettings(clock=lambda: _data.NOW))
    sql = storage._sql
    owner = facade.owner_id
    job = _data.new_jobs(seed=3, count=1, users=settings.users)[0]
    stamped = _leased(job, owner)
    meta = _encode(job.metadata)
    week = _data.NOW - timedelta(days=7)
    page = JobFilter(
        user_id=job.user_id,
        statuses={JobStatus.COMPLETED},
        created_after=week,
        created_before=_data.NOW,
        limit=100,
    )
    status_sql, status_params = sql.status_statement(job.id, _running(owner))
    checkpoint = Checkpoint(
        job_id=job.id, phase="indexing", data=CHECKPOINT_DATA, created_at=_data.NOW
    )
    page_sql, page_params = sql.select_statement(page, None, page.limit + 1)
    cases: list[tuple[str, Call, Call]] = [
        (
            "save_job",
            lambda: facade.save_job(job),
            lambda: floor.write(sql.insert_job, _codec.job_params(stamped, meta)),
        ),
        ("load_job", lambda: facade.load_job(job.id), lambda: floor.one(sql.select_job, (job.id,))),
        (
            "update_job_status",
            lambda: facade.update_job_status(job.id, JobStatus.RUNNING),
            lambda: floor.write(status_sql, status_params),
        ),
        (
            "update_job_progress",
            lambda: facade.update_job_progress(job.id, 40, "indexing"),
            lambda: floor.write(sql.set_progress_phase, (40, "indexing", job.id)),
        ),
        (
            "save_checkpoint",
            lambda: facade.save_checkpoint(job.id, "indexing", CHECKPOINT_DATA),
            lambda: floor.write(
                sql.upsert_checkpoint, checkpoint_params(checkpoint, _CHECKPOINT_JSON)
            ),
        ),
        (
            "load_checkpoint",
            lambda: facade.load_checkpoint(job.id, "indexing"),
            lambda: floor.one(sql.select_checkpoint_data, (job.id, "indexing")),
        ),
        ("query 100", lambda: facade.query_page(page), lambda: floor.all(page_sql, page_params)),
        (
            "delete_expired_jobs",
            lambda: facade.delete_expired_jobs(CUTOFF),
            lambda: floor.cleanup(sql),
        ),
    ]
    section = report.section(
        "pg-check",
        "PostgreSQL: same SQL check (each operation recorded once through the backend and the "
        "floor)",
        ["operation", "same SQL", "statements (backend)", "statements (floor)"],
    )
    for name, ours, theirs in cases:
        with traced_storage(storage) as got:
            ours()
        floor.trace = []
        try:
            # The floor repeats the backend's write on the same row: take it back first.
            if name == "save_job":
                floor.write(f"DELETE FROM {sql.jobs} WHERE id = %s", (job.id,))
                floor.trace = []
            theirs()
            want = floor.trace
        finally:
            floor.trace = None
        same = got == want
        section.add(
            [name, "yes" if same else "**NO**", str(len(got)), str(len(want))],
            operation=name,
            same=same,
            backend=[[s, _plain(p)] for s, p in got],
            floor=[[s, _plain(p)] for s, p in want],
        )
        if not same:
            section.notes.append(
                f"- {name}: the backend ran {got!r}; the floor ran {want!r}. The floor is out "
                "of date with the backend: its ratios are not like for like."
            )
    floor.write(f"DELETE FROM {sql.jobs} WHERE id = %s", (job.id,))
    section.notes.append(
        "Recorded where each statement meets psycopg (the backend's Runner._execute; the "
        "floor's own calls): the SQL text and every parameter must be equal. The floor then "
        "runs the same statements with the parameters computed before the timed calls."
    )


def _plain(params: list[Any]) -> list[Any]:
    return [value.isoformat() if isinstance(value, datetime) else value for value in params]


def _leased(job: SyncJob, owner: str) -> SyncJob:
    """The job as ``save_job`` stores it: stamped with its owner's lease starting now."""
    import attrs

    if job.owner_id is not None and job.heartbeat_at is not None:
        return job
    return attrs.evolve(job, owner_id=job.owner_id or owner, heartbeat_at=_data.NOW)


def _running(owner: str) -> Any:
    """The StatusChange core hands the storage for ``update_job_status(id, RUNNING)``."""
    from cidx_jobs.backend import StatusChange

    return StatusChange(
        status=JobStatus.RUNNING, error_message=None, expected=None, now=_data.NOW, owner=owner
    )


# -- single-row operations --------------------------------------------------------------------


def _ops(
    settings: Settings, report: Report, config: str, store: JobPersistence, floor: Floor
) -> None:
    from cidx_jobs_postgres import _codec
    from cidx_jobs_postgres._statements import checkpoint_params

    from . import _pg_peer

    n, rounds = settings.postgres_ops, settings.rounds
    settings.log(f"postgres: single-row operations ({n:,} calls each) ...")
    primitive = open_persistence(config)
    peer = _pg_peer.open_peer(store.storage.options, settings) if settings.postgres_peer else None  # type: ignore[attr-defined]
    section = report.section(
        "pg-ops",
        f"PostgreSQL: single-row operations (one call = one statement, autocommit; "
        f"{settings.postgres_jobs:,} jobs; µs per call)",
        HEADERS,
    )
    try:
        storage: Any = primitive.storage
        sql = storage._sql
        owner = store.owner_id
        jobs = {
            name: _data.new_jobs(seed=seed, count=n, users=settings.users)
            for name, seed in ((API, 701), (PRIMITIVE, 702), (FLOOR, 703))
        }
        ids = {name: [job.id for job in group] for name, group in jobs.items()}
        for group in ids.values():
            random.Random(5).shuffle(group)
        meta = {name: [_encode(job.metadata) for job in group] for name, group in jobs.items()}
        prim_owner = primitive.owner_id
        leased = [_leased(job, prim_owner) for job in jobs[PRIMITIVE]]
        floor_params = [
            _codec.job_params(_leased(job, owner), text)
            for job, text in zip(jobs[FLOOR], meta[FLOOR], strict=True)
        ]

        def bind(fn: Callable[..., object], *args: Any) -> Call:
            return lambda: fn(*args)

        def timed(operation: str, contenders: dict[str, Sequence[Call]], why: str = "") -> None:
            samples = interleave(contenders, rounds)
            add_rows(section, operation, samples)
            if peer is not None and PEER not in samples:
                section.add(
                    [operation, PEER, *[_report.NA] * 6],
                    operation=operation,
                    contender=PEER,
                    note=why,
                )

        def with_peer(calls: dict[str, Sequence[Call]], peer_calls: Any) -> dict[str, Any]:
            if peer is not None and peer_calls is not None:
                calls[PEER] = peer_calls
            return calls

        timed(
            "save_job",
            with_peer(
                {
                    API: [bind(store.save_job, job) for job in jobs[API]],
                    PRIMITIVE: [
                        bind(storage.insert_job, job, text)
                        for job, text in zip(leased, meta[PRIMITIVE], strict=True)
                    ],
                    FLOOR: [bind(floor.write, sql.insert_job, p) for p in floor_params],
                },
                peer.save_calls(jobs[API]) if peer is not None else None,
            ),
        )
        timed(
            "load_job",
            with_peer(
                {
                    API: [bind(store.load_job, i) for i in ids[API]],
                    PRIMITIVE: [bind(storage.get_job, i) for i in ids[PRIMITIVE]],
                    FLOOR: [bind(floor.one, sql.select_job, (i,)) for i in ids[FLOOR]],
                },
                peer.load_calls() if peer is not None else None,
            ),
        )
        change = _running(prim_owner)
        floor_status = [sql.status_statement(i, _running(owner)) for i in ids[FLOOR]]
        timed(
            "update_job_status",
            with_peer(
                {
                    API: [bind(store.update_job_status, i, JobStatus.RUNNING) for i in ids[API]],
                    PRIMITIVE: [bind(storage.set_status, i, change) for i in ids[PRIMITIVE]],
                    FLOOR: [bind(floor.write, s, p) for s, p in floor_status],
                },
                peer.status_calls() if peer is not None else None,
            ),
        )
        timed(
            "update_job_progress",
            {
                API: [bind(store.update_job_progress, i, 40, "indexing") for i in ids[API]],
                PRIMITIVE: [bind(storage.set_progress, i, 40, "indexing") for i in ids[PRIMITIVE]],
                FLOOR: [
                    bind(floor.write, sql.set_progress_phase, (40, "indexing", i))
                    for i in ids[FLOOR]
                ],
            },
            "a procrastinate job has no progress or phase to update",
        )
        checkpoints = [
            Checkpoint(job_id=i, phase="indexing", data=CHECKPOINT_DATA, created_at=_data.NOW)
            for i in ids[PRIMITIVE]
        ]
        floor_checkpoints = [
            checkpoint_params(
                Checkpoint(job_id=i, phase="indexing", data=CHECKPOINT_DATA, created_at=_data.NOW),
                _CHECKPOINT_JSON,
            )
            for i in ids[FLOOR]
        ]
        no_checkpoints = "procrastinate keeps no data by key beside a job (its args are fixed)"
        timed(
            "save_checkpoint",
            {
                API: [
                    bind(store.save_checkpoint, i, "indexing", CHECKPOINT_DATA) for i in ids[API]
                ],
                PRIMITIVE: [
                    bind(storage.upsert_checkpoint, c, _CHECKPOINT_JSON) for c in checkpoints
                ],
                FLOOR: [bind(floor.write, sql.upsert_checkpoint, p) for p in floor_checkpoints],
            },
            no_checkpoints,
        )
        again = {name: group[::-1] for name, group in ids.items()}
        timed(
            "load_checkpoint",
            {
                API: [bind(store.load_checkpoint, i, "indexing") for i in again[API]],
                PRIMITIVE: [
                    bind(storage.get_checkpoint_data, i, "indexing") for i in again[PRIMITIVE]
                ],
                FLOOR: [
                    bind(floor.one, sql.select_checkpoint_data, (i, "indexing"))
                    for i in again[FLOOR]
                ],
            },
            no_checkpoints,
        )
        _check_stored(store, floor, sql, ids[API][0], ids[FLOOR][0])
    finally:
        primitive.close()
        if peer is not None:
            peer.close()
    section.notes.append(
        f"{n:,} calls per contender and operation in {rounds} interleaved rounds, on one "
        f"schema of {settings.postgres_jobs:,} jobs (each contender saves and then works on "
        "jobs of its own). x floor: median / the floor's median (target ≤ 1.3x for "
        "postgresql). CPU µs: this thread's CPU time per call (the server's work and the "
        "wait for it are left out, so it shows what the Python side costs). floor: raw "
        "psycopg running the backend's own statement (cidx_jobs_postgres._statements) with "
        "the parameters the backend binds, on a psycopg_pool.ConnectionPool made as the "
        "backend's (its connect_kwargs, configure, pool_min, pool_max, timeout): getconn, "
        "execute in binary, fetch tuples, putconn. postgresql primitive: the backend's "
        "storage method without core's validation, encoding, hooks and events (diagnostic)."
        + (
            " procrastinate: its sync API on its own schema's tables in the same throwaway "
            "schema and server (see the peer notes); x floor is against our floor."
            if peer is not None
            else ""
        )
    )
    if peer is not None:
        section.notes.append(_pg_peer.OPS_NOTE)


def _check_stored(
    store: JobPersistence, floor: Floor, sql: Any, api_id: str, floor_id: str
) -> None:
    """The calls really stored what they claim (a benchmark of a no-op proves nothing)."""
    loaded = store.load_job(api_id)
    if loaded is None or loaded.status is not JobStatus.RUNNING or loaded.progress != 40:
        raise RuntimeError(f"the postgresql backend did not store the updates of {api_id}")
    if store.load_checkpoint(api_id, "indexing") != CHECKPOINT_DATA:
        raise RuntimeError("the postgresql backend did not store the checkpoint")
    row = floor.one(sql.select_job, (floor_id,))
    if row is None or row[3] != "running" or row[4] != 40:
        raise RuntimeError(f"the floor did not store the updates of {floor_id}: {row}")


# -- query ------------------------------------------------------------------------------------


def _query(settings: Settings, report: Report, store: JobPersistence, floor: Floor) -> None:
    from cidx_jobs_postgres._codec import JOB_COLUMNS

    sql = store.storage._sql  # type: ignore[attr-defined]
    reps = settings.query_reps
    settings.log(f"postgres: query 100 ({reps} calls each) ...")
    rng = random.Random(11)
    after = _data.NOW - timedelta(days=14)
    filters = [
        JobFilter(
            user_id=_data.user_name(rng.randrange(settings.users)),
            statuses={JobStatus.COMPLETED},
            created_after=after,
            limit=100,
        )
        for _ in range(reps)
    ]
    statements = [sql.select_statement(f, None, f.limit + 1) for f in filters]
    rows_seen: dict[str, int] = {}

    def api(f: JobFilter) -> Call:
        def call() -> None:
            rows_seen[API] = len(store.query_page(f).jobs)

        return call

    def raw(s: str, p: Sequence[Any]) -> Call:
        def call() -> None:
            rows_seen[FLOOR] = len(floor.all(s, p))

        return call

    def decoded(s: str, p: Sequence[Any]) -> Call:
        def call() -> None:
            rows = [dict(zip(JOB_COLUMNS, row, strict=True)) for row in floor.all(s, p)]
            for row in rows:
                row["metadata"] = json.loads(row["metadata"])
            rows_seen[DECODED] = len(rows)

        return call

    samples = interleave(
        {
            API: [api(f) for f in filters],
            FLOOR: [raw(s, p) for s, p in statements],
            DECODED: [decoded(s, p) for s, p in statements],
        },
        settings.rounds,
    )
    plan = floor.all("EXPLAIN " + statements[0][0], statements[0][1])
    section = report.section(
        "pg-query",
        f"PostgreSQL: one user's newest 100 completed jobs of the last 14 days "
        f"({settings.postgres_jobs:,} jobs; µs per call)",
        ["contender", "median µs", "p99 µs", "x floor", "x decoded floor", "rows", "round spread"],
    )
    floor_median = samples[FLOOR].median_us()
    decoded_median = samples[DECODED].median_us()
    for name, sample in samples.items():
        median = sample.median_us()
        section.add(
            [
                name,
                _report.us(median),
                _report.us(sample.p99_us()),
                _report.ratio(median / floor_median),
                _report.ratio(median / decoded_median),
                _report.count(rows_seen.get(name)),
                _report.pct(sample.spread()),
            ],
            contender=name,
            jobs=settings.postgres_jobs,
            median_us=median,
            p99_us=sample.p99_us(),
            ratio_to_floor=median / floor_median,
            ratio_to_decoded_floor=median / decoded_median,
            rows=rows_seen.get(name),
            round_spread=sample.spread(),
            calls=sample.n,
        )
    section.notes.append(
        f"{reps} calls each over random users of about {settings.users:,}, interleaved; the "
        "backend and the floor fetch 101 rows to know whether a next page exists. floor "
        "decoded also builds a dict per row and parses its metadata. The plan: "
        + _plan(plan)
        + ". procrastinate: n/a, its list_jobs has no LIMIT, no date filter and no user "
        "(it returns every job that matches, ordered by id)."
    )


def _plan(rows: Sequence[Any]) -> str:
    """The nodes of an EXPLAIN, outermost first: ``Limit > Index Scan using x on sync_jobs``."""
    nodes = []
    for row in rows:
        line = str(row[0]).strip().removeprefix("->").strip()
        if "(cost=" in line:
            nodes.append(line.split("  (cost=")[0].strip())
    return " > ".join(nodes)


# -- cleanup ----------------------------------------------------------------------------------


def _cleanup(
    settings: Settings,
    report: Report,
    store: JobPersistence,
    floor: Floor,
    admin: Any,
) -> None:
    from . import _pg_peer

    sql = store.storage._sql  # type: ignore[attr-defined]
    rounds = settings.cleanup_rounds
    settings.log(f"postgres: cleanup of {EXPIRED:,} ({rounds} runs each) ...")
    peer = (
        _pg_peer.open_cleanup_peer(store.storage.options, settings)  # type: ignore[attr-defined]
        if settings.postgres_peer
        else None
    )
    deleted: dict[str, list[int]] = {API: [], FLOOR: [], PEER: []}
    counter = iter(range(1_000_000))

    def setup(name: str, round_: int) -> None:
        tag = f"expired-{name}-{round_}-{next(counter)}"
        if name == PEER:
            assert peer is not None
            peer.add_expired(EXPIRED, tag)
        else:
            add_expired(admin, sql, EXPIRED, settings.users, tag)

    def ours() -> None:
        deleted[API].append(store.delete_expired_jobs(CUTOFF))

    def theirs() -> None:
        deleted[FLOOR].append(floor.cleanup(sql))

    contenders: dict[str, Sequence[Call]] = {API: [ours] * rounds, FLOOR: [theirs] * rounds}
    if peer is not None:
        contenders[PEER] = [peer.cleanup_call()] * rounds
    try:
        samples = interleave(contenders, rounds, setup=setup)
        orphans = admin.execute(
            f"SELECT count(*) FROM {sql.checkpoints} AS c WHERE NOT EXISTS (SELECT 1 FROM "
            f"{sql.jobs} AS j WHERE j.id = c.job_id)"
        ).fetchone()[0]
        if peer is not None:
            # Its call returns nothing: every run deleted its 1,000 if none is left.
            left = peer.expired_left()
            deleted[PEER] = [EXPIRED] * rounds if left == 0 else [-left]
    finally:
        if peer is not None:
            peer.close()
    section = report.section(
        "pg-cleanup",
        f"PostgreSQL: cleanup of {EXPIRED:,} expired jobs with 3 checkpoints each (among "
        f"{settings.postgres_jobs:,} jobs; ms per cleanup)",
        ["contender", "median ms", "p99 ms", "x floor", "jobs deleted", "orphan checkpoints"],
    )
    _cleanup_rows(section, samples, deleted, orphans)
    section.notes.append(
        f"{rounds} runs each, interleaved; before each run (untimed) {EXPIRED:,} expired jobs "
        "and their 3,000 checkpoints are inserted. postgresql: delete_expired_jobs(); floor: "
        "the backend's batch (BEGIN, its advisory lock, the DELETE of at most 1,000 expired "
        "jobs and their checkpoints, COMMIT) on one pooled connection, until a batch deletes "
        "nothing, as the facade loops (so both end with an empty batch)."
        + (" " + _pg_peer.CLEANUP_NOTE if peer is not None else "")
    )


def _cleanup_rows(
    section: _report.Section,
    samples: dict[str, Samples],
    deleted: dict[str, list[int]],
    orphans: int,
) -> None:
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
                "/".join(str(c) for c in counts) or _report.NA,
                _report.count(orphans) if name != PEER else _report.NA,
            ],
            contender=name,
            median_ms=median / 1000,
            p99_ms=sample.p99_us() / 1000,
            ratio_to_floor=median / floor_median,
            runs=sample.n,
            deleted=deleted[name],
        )


def _large(
    settings: Settings, report: Report, store: JobPersistence, floor: Floor, admin: Any
) -> None:

    sql = store.storage._sql  # type: ignore[attr-defined]
    n = settings.large_cleanup
    section = report.section(
        "pg-large-cleanup",
        f"PostgreSQL: cleanup of {n:,} expired jobs (3 checkpoints each) while another thread "
        "keeps writing",
        [
            "contender",
            "cleanup s",
            "jobs deleted",
            "longest batch ms",
            "writes during it",
            "write median ms",
            "write p99 ms",
            "writer's worst wait ms",
            "writer errors",
        ],
    )
    for name, seed in ((API, 801), (FLOOR, 802)):
        settings.log(f"postgres: large cleanup ({n:,} expired jobs), {name} ...")
        add_expired(admin, sql, n, settings.users, f"large-{name}-{secrets.token_hex(3)}")
        admin.execute(f"VACUUM ANALYZE {sql.jobs}")
        admin.execute(f"VACUUM ANALYZE {sql.checkpoints}")
        ns, result, batches, writer = _large_one(name, seed, settings, store, floor)
        times = writer.times
        section.add(
            [
                name,
                f"{ns / 1e9:.2f}",
                _report.count(result[0] if result else None),
                _report.ms(max(batches) * 1000 if batches else None),
                _report.count(len(times)),
                _report.ms(_pct(times, 50)),
                _report.ms(_pct(times, 99)),
                _report.ms(max(times) * 1000 if times else None),
                _report.count(sum(writer.errors.values())),
            ],
            contender=name,
            expired=n,
            cleanup_seconds=ns / 1e9,
            deleted=result[0] if result else 0,
            longest_batch_ms=max(batches) * 1000 if batches else None,
            writes=len(times),
            write_median_ms=_pct(times, 50),
            write_p99_ms=_pct(times, 99),
            writer_worst_wait_ms=max(times) * 1000 if times else None,
            writer_errors=writer.errors,
        )
    section.notes.append(
        f"Among {settings.postgres_jobs:,} live jobs. The expired jobs are inserted, then the "
        "tables vacuumed and analyzed (untimed). The writer (one thread: a save_job or an "
        "update_job_progress about every millisecond) shares the store with the cleanup; the "
        "floor's writer runs the same statements on the floor's pool. Batches of at most "
        "1,000 jobs each commit on their own, so a writer never waits for more than one "
        "(SKIP LOCKED: a batch also never waits for a writer)."
    )


def _large_one(
    name: str, seed: int, settings: Settings, store: JobPersistence, floor: Floor
) -> tuple[int, list[int], list[float], _Writer]:
    """One large cleanup (the store's, or the floor's loop) while a writer thread writes
    through the same store (or the floor's pool)."""
    from cidx_jobs_postgres import _codec

    sql: Any = store.storage._sql  # type: ignore[attr-defined]
    jobs = _data.new_jobs(seed=seed, count=20_000, users=settings.users)
    batches: list[float] = []
    write: Callable[[int], None]
    clean: Callable[[], int]
    if name == API:

        def write(i: int) -> None:
            job = jobs[(i // 2) % len(jobs)]
            if i % 2 == 0 and i // 2 < len(jobs):
                store.save_job(job)
            else:
                store.update_job_progress(job.id, 50, "indexing")

        storage: Any = store.storage
        batch = storage.delete_expired

        def timed_batch(cutoffs: Any, limit: int) -> tuple[int, int]:
            # The facade's calls of the storage, one per batch: each timed (an instance
            # attribute over the method, removed afterwards).
            start = time.perf_counter()
            try:
                found: tuple[int, int] = batch(cutoffs, limit)
                return found
            finally:
                batches.append(time.perf_counter() - start)

        def clean() -> int:
            storage.delete_expired = timed_batch
            try:
                return store.delete_expired_jobs(CUTOFF)
            finally:
                del storage.delete_expired

    else:
        owner = store.owner_id
        params = [_codec.job_params(_leased(job, owner), _encode(job.metadata)) for job in jobs]

        def write(i: int) -> None:
            k = (i // 2) % len(jobs)
            if i % 2 == 0 and i // 2 < len(jobs):
                floor.write(sql.insert_job, params[k])
            else:
                floor.write(sql.set_progress_phase, (50, "indexing", jobs[k].id))

        def clean() -> int:
            return floor.cleanup(sql, batches)

    writer = _Writer(write, pause=0.001)
    result: list[int] = []
    try:
        writer.start()
        writer.started_writing.wait(5)
        ns = time_once(lambda: result.append(clean()))
    finally:
        writer.stop.set()
        writer.join()
    return ns, result, batches, writer


def _pct(times: list[float], pct: float) -> float | None:
    from ._timing import percentile

    return percentile(times, pct) * 1000 if times else None


# -- concurrency ------------------------------------------------------------------------------


class _PgRaw:
    """The concurrency mix through the floor: the backend's statements on a pool of its own
    per process, made like the backend's."""

    def __init__(
        self, floor: Floor, statements: Any, seed: int, users: int, known: list[str], saves: int
    ) -> None:
        from cidx_jobs_postgres import _codec

        self.floor = floor
        self.sql = statements
        jobs = _data.new_jobs(seed=seed, count=saves, users=users)
        owner = f"bench-floor:{seed}"
        self.params = [
            _codec.job_params(_leased(job, owner), _encode(job.metadata)) for job in jobs
        ]
        self.owner = owner
        self.next = 0
        self.known = known[:]
        self.users = users
        self.data = _encode({"files_done": 10, "last": "src/app/main.py"})

    def op(self, name: str, rng: random.Random) -> None:
        from cidx_jobs_postgres._statements import checkpoint_params

        floor, sql = self.floor, self.sql
        if name == "save" and self.next < len(self.params):
            params = self.params[self.next]
            self.next += 1
            floor.write(sql.insert_job, params)
            self.known.append(params[0])
            return
        job_id = self.known[rng.randrange(len(self.known))]
        if name == "load" or name == "save":
            floor.one(sql.select_job, (job_id,))
        elif name == "status":
            floor.write(*sql.status_statement(job_id, _running(self.owner)))
        elif name == "progress":
            floor.write(sql.set_progress_phase, (rng.randrange(100), "indexing", job_id))
        elif name == "checkpoint":
            checkpoint = Checkpoint(job_id=job_id, phase="indexing", data={}, created_at=_data.NOW)
            floor.write(sql.upsert_checkpoint, checkpoint_params(checkpoint, self.data))
        else:
            page = JobFilter(
                user_id=_data.user_name(rng.randrange(self.users)),
                created_after=_data.NOW - timedelta(days=14),
                limit=50,
            )
            floor.all(*sql.select_statement(page, None, 51))


def _process_main(
    kind: str,
    config: str,
    index: int,
    threads: int,
    users: int,
    known: list[str],
    duration: float,
    go: Any,
    start_at: Any,
    out: Any,
) -> None:
    """One worker process: its own store (or floor pool), ``threads`` threads, the mix."""
    saves = _saves(duration)
    try:
        store = open_persistence(config)
        closing: Callable[[], None] = store.close
        if kind == API:
            ops = [
                _Api(store, 5000 + 100 * index + t, users, known, saves).op for t in range(threads)
            ]
        else:
            storage: Any = store.storage
            floor = Floor(storage.options)
            statements = storage._sql
            store.close()
            closing = floor.close
            ops = [
                _PgRaw(floor, statements, 5000 + 100 * index + t, users, known, saves).op
                for t in range(threads)
            ]
        out.put(("ready", index))
        go.wait(60)
        tally = _threads_at(ops, start_at.value, start_at.value + duration, 7000 + 100 * index)
        closing()
    except Exception as error:  # opening failed: report it as the worker's error
        out.put(("ready", index))
        tally = Tally(errors={f"{type(error).__name__}: {str(error)[:100]}": 1})
    out.put(("done", tally))


def _threads_at(
    ops: Sequence[Callable[[str, random.Random], None]], start: float, stop: float, seed: int
) -> Tally:
    results = [Tally() for _ in ops]

    def target(i: int) -> None:
        results[i] = _work(ops[i], seed + i, start, stop)

    workers = [threading.Thread(target=target, args=(i,)) for i in range(len(ops))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    total = Tally()
    for tally in results:
        total.merge(tally)
    return total


def _concurrency(settings: Settings, report: Report, config: str, admin: Any) -> None:
    from cidx_jobs_postgres._statements import Statements

    p, t, duration = settings.processes, settings.threads, settings.duration
    section = report.section(
        "pg-concurrency",
        f"PostgreSQL: mixed writes and reads, {p} processes x {t} threads "
        f"({settings.postgres_jobs:,} jobs, {duration:g} s per run)",
        [
            "workers",
            "contender",
            "ops/s",
            "ops",
            "p99 ms",
            "worst ms",
            "ops per worker",
            "errors",
            "busy",
        ],
    )
    jobs = Statements(_schema_of(config)).jobs
    known = [str(row[0]) for row in admin.execute(f"SELECT id FROM {jobs} LIMIT 2000")]
    context = multiprocessing.get_context("spawn")
    for kind in (API, FLOOR):
        settings.log(f"postgres: {p} processes x {t} threads, {kind} ...")
        out = context.Queue()
        go = context.Event()
        start_at = context.Value("d", 0.0)
        procs = [
            context.Process(
                target=_process_main,
                args=(kind, config, i, t, settings.users, known, duration, go, start_at, out),
                daemon=True,
            )
            for i in range(p)
        ]
        for proc in procs:
            proc.start()
        try:
            for _ in procs:
                out.get(timeout=120)
            start_at.value = time.time() + 0.05
            go.set()
            total = Tally()
            for _ in procs:
                _, tally = out.get(timeout=duration + 120)
                total.merge(tally)
        finally:
            for proc in procs:
                proc.join(timeout=30)
                if proc.is_alive():
                    proc.kill()
        _row(section, f"{p} processes x {t} threads", kind, total)
    section.notes.append(
        "Mix: 20% save_job, 25% load_job, 15% update_job_status, 20% update_job_progress, "
        "10% save_checkpoint, 10% a user's page of 50 (the SQLite concurrency section's). "
        "Each process opens its own store (its pool: pool_max 10 connections) and runs "
        f"{t} threads on it; the floor's processes each make a floor pool like the "
        "backend's and run the backend's statements on it. busy: errors that say locked or "
        "busy (StorageBusyError: a lock or statement timeout, no free connection)."
    )


def _schema_of(config: str) -> str:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(config).query)["schema"][0]
