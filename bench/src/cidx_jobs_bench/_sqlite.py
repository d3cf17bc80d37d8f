"""The raw-sqlite3 floor, the SQL it shares with the backend, and cached databases.

"Same SQL": every statement the floor runs is imported from the backend's modules
(``cidx_jobs_sqlite._codec``, ``._store``, ``._schema``: private, but this is the same
repository). The one statement the backend builds inline (the cleanup's batched
DELETE, in ``SqliteJobStore._delete_finished``) is rebuilt here by :func:`delete_batch_sql`;
:mod:`._check` runs every operation once on a traced connection and compares what the
backend executed with what the floor executes, so a drift shows in the report.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import attrs

from cidx_jobs import Hooks, JobPersistence, JobStatus, StoreSettings, SyncJob, open_persistence
from cidx_jobs_sqlite import SqliteJobStore, SqliteOptions, _codec, _store
from cidx_jobs_sqlite._pool import Connection
from cidx_jobs_sqlite._schema import MIGRATIONS, SCHEMA_VERSION

from . import _data

# -- the shared SQL ---------------------------------------------------------------------------

#: INSERT of one job (``_codec.INSERT_JOB_SQL``).
INSERT_JOB = _codec.INSERT_JOB_SQL
#: Upsert of one checkpoint (``_codec.INSERT_CHECKPOINT_SQL``).
INSERT_CHECKPOINT = _codec.INSERT_CHECKPOINT_SQL
#: SELECT of one job by id (``_store._SELECT_JOB``).
SELECT_JOB = _store._SELECT_JOB
#: UPDATE of progress and phase (``_store._SET_PROGRESS_PHASE``).
SET_PROGRESS_PHASE = _store._SET_PROGRESS_PHASE
#: The size of the backend's first cleanup batch (later ones adapt to their timing).
FIRST_CLEANUP_BATCH = _store._FIRST_BATCH
#: What load_checkpoint runs: the data of one checkpoint (``_store._SELECT_CHECKPOINT_DATA``).
SELECT_CHECKPOINT = _store._SELECT_CHECKPOINT_DATA
#: The columns every job SELECT returns, in order.
JOB_COLUMNS = _codec.JOB_COLUMNS
#: Finished statuses, in the order the backend sorts them for the cleanup.
FINISHED = sorted((s for s in JobStatus if not s.is_active), key=lambda s: s.value)


#: Whether this release of core and backend keeps leases (``owner_id``, ``heartbeat_at``):
#: a job saved or started running is stamped with its owner, so the floor binds them too.
LEASES = "owner_id" in attrs.fields_dict(SyncJob) and (
    "takes_lease" in inspect.signature(_store._status_sql).parameters
)
#: The owner the floor stamps when the backend would stamp its own (same length of id).
FLOOR_OWNER = "bench-host:4242:0123abcd"


def status_sql(status: JobStatus) -> str:
    """The UPDATE the backend runs for ``update_job_status(id, status)`` (no error, no CAS;
    a move to running takes the lease where the backend keeps leases)."""
    if LEASES and status is JobStatus.RUNNING:
        return _store._status_sql(status, False, None, True)
    return _store._status_sql(status, False, None)


def status_params(status: JobStatus, now_us: int, job_id: str, owner: str) -> list[Any]:
    """The parameters of :func:`status_sql`, in the order the backend binds them."""
    params: list[Any] = [status.value]
    if status is JobStatus.RUNNING:
        params.append(now_us)
        if LEASES:
            params.append(owner)
            params.append(now_us)
    if status.is_terminal:
        params.append(now_us)
    params.append(job_id)
    return params


def leased(job: SyncJob, owner: str, now: Any) -> SyncJob:
    """The job as ``save_job`` stores it: stamped with its owner's lease (where leases exist)."""
    if not LEASES or job.owner_id is not None:  # type: ignore[attr-defined,unused-ignore]
        return job
    return attrs.evolve(job, owner_id=owner, heartbeat_at=now)  # type: ignore[call-arg,unused-ignore]


def status_change(status: JobStatus, now: Any, owner: str) -> Any:
    """The ``StatusChange`` core hands the backend for ``update_job_status(id, status)``."""
    from cidx_jobs import StatusChange

    extra: dict[str, Any] = {"owner": owner} if LEASES else {}
    return StatusChange(status=status, error_message=None, expected=None, now=now, **extra)


def owner_of(store: JobPersistence) -> str:
    """The owner id a store stamps on the jobs it saves (where leases exist)."""
    return str(getattr(store, "owner_id", FLOOR_OWNER))


def insert_params(job: SyncJob, metadata_json: str, owner: str, now: Any) -> tuple[Any, ...]:
    """The INSERT parameters the backend binds when ``save_job(job)`` runs."""
    return _codec.job_params(leased(job, owner, now), metadata_json)


def select_sql(
    *,
    user: bool = False,
    created_after: bool = False,
    created_before: bool = False,
    keyset: bool = False,
    statuses: int = 0,
) -> str:
    """The SELECT of one page, as the backend builds it (``_store._select_sql``)."""
    return _store._select_sql(user, False, created_after, created_before, keyset, statuses)


def delete_batch_sql(statuses: int = len(FINISHED), *, batched: bool = True) -> str:
    """The cleanup's DELETE, rebuilt from ``SqliteJobStore._delete_finished``
    (backends/sqlite/src/cidx_jobs_sqlite/_store.py), which builds it inline:
    one ``(status = ? AND coalesce(completed_at, created_at) < ?)`` term per status,
    joined by OR, and ``rowid IN (SELECT ... LIMIT ?)`` around it. With ``batched``
    false, the single unbounded DELETE a hand-written purge would run.
    """
    where = " OR ".join(
        "(status = ? AND coalesce(completed_at, created_at) < ?)" for _ in range(statuses)
    )
    if not batched:
        return f"DELETE FROM sync_jobs WHERE {where}"
    return (
        f"DELETE FROM sync_jobs WHERE rowid IN (SELECT rowid FROM sync_jobs WHERE {where} LIMIT ?)"
    )


def delete_params(cutoff_us: int) -> list[Any]:
    """The DELETE's parameters for one cutoff applied to every finished status."""
    params: list[Any] = []
    for status in FINISHED:
        params.append(status.value)
        params.append(cutoff_us)
    return params


# -- connections ------------------------------------------------------------------------------


def options_for(path: Path, **options: object) -> SqliteOptions:
    """The backend's options for ``path`` (defaults unless given)."""
    return SqliteOptions.parse(str(path), options)


def raw_connect(path: Path, options: SqliteOptions | None = None) -> sqlite3.Connection:
    """A plain sqlite3 connection with exactly the pragmas the backend's connections run.

    The journal mode (WAL) is a property of the file, set when the backend opened it.
    """
    if options is None:
        options = options_for(path)
    conn = sqlite3.connect(
        str(path),
        timeout=options.busy_timeout,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=_store._CACHED_STATEMENTS,
    )
    for pragma in _store.connection_pragmas(options):
        conn.execute(pragma)
    return conn


def open_store(path: Path, **options: object) -> JobPersistence:
    """The backend as a server opens it: ``open_persistence`` with the installed plugins."""
    config: dict[str, object] = {"backend": "sqlite", "path": str(path), **options}
    return open_persistence(config)


def create_empty(path: Path) -> None:
    """A new database with the backend's schema, made by the backend itself."""
    open_store(path).close()


def checkpoint_wal(path: Path) -> None:
    """Fold the WAL into the database file, so a timed call never pays for a checkpoint
    that earlier, untimed setup left due."""
    conn = raw_connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    finally:
        conn.close()


def file_bytes(path: Path) -> int:
    """The size of a database file plus its WAL, if any."""
    total = path.stat().st_size
    wal = Path(f"{path}-wal")
    if wal.exists():
        total += wal.stat().st_size
    return total


def remove_db(path: Path) -> None:
    """Delete a database and its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def copy_db(source: Path, target: Path) -> Path:
    """A copy of a closed database (no WAL) at ``target``."""
    remove_db(target)
    shutil.copyfile(source, target)
    return target


# -- a traced store, to see the SQL the backend runs ------------------------------------------

_trace: list[str] | None = None


def _record(statement: str) -> None:
    if _trace is not None:
        _trace.append(statement)


class TracingConnection(Connection):
    """A pooled connection that reports every statement to :func:`traced`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.set_trace_callback(_record)


class TracedStore(SqliteJobStore):
    """The SQLite backend on connections that report their statements."""

    _connection_class = TracingConnection


def open_traced(path: Path, clock: Callable[[], Any]) -> TracedStore:
    """A traced backend on ``path`` whose clock is fixed (so "now" parameters match)."""
    return TracedStore(
        options_for(path),
        hooks=Hooks(),
        settings=StoreSettings(clock=clock),
    )


def traced(call: Callable[[], object], conn: sqlite3.Connection | None = None) -> list[str]:
    """The statements ``call`` ran on traced connections (and on ``conn``, if given),
    without transaction control and pragmas."""
    global _trace
    _trace = []
    if conn is not None:
        conn.set_trace_callback(_record)
    try:
        call()
        statements = _trace
    finally:
        _trace = None
        if conn is not None:
            conn.set_trace_callback(None)
    skip = ("BEGIN", "COMMIT", "ROLLBACK", "PRAGMA", "SAVEPOINT", "RELEASE")
    return [s for s in statements if not s.lstrip().upper().startswith(skip)]


# -- cached databases -------------------------------------------------------------------------


def schema_key() -> str:
    """A short digest of the backend's schema, so that cached databases follow its changes."""
    text = "\n".join(s for m in MIGRATIONS for s in m.statements)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    return f"v{SCHEMA_VERSION}-{digest}-d{_data.DATA_VERSION}"


def _is_index(statement: str) -> bool:
    return statement.lstrip().upper().startswith(("CREATE INDEX", "CREATE UNIQUE INDEX"))


def _dropped_index(statement: str) -> str | None:
    """The name of the index a ``DROP INDEX name`` statement drops, else None."""
    words = statement.split()
    if len(words) == 3 and [w.upper() for w in words[:2]] == ["DROP", "INDEX"]:
        return words[2]
    return None


def _index_name(statement: str) -> str:
    # CREATE [UNIQUE] INDEX name ON ...
    words = statement.split()
    return words[words.index("ON") - 1]


def build_db(
    path: Path,
    job_rows: Iterable[tuple[Any, ...]],
    checkpoint_rows: Iterable[tuple[Any, ...]] = (),
) -> float:
    """Bulk-build a database with the backend's schema: one transaction of ``executemany``
    through raw sqlite3, the indexes created after the rows (a sort, not a million random
    inserts), then opened once through the backend so it runs its own setup (WAL,
    schema check). The backend runs no ANALYZE when it opens a file, so neither does this.

    :returns: the seconds it took.
    """
    start = time.perf_counter()
    building = path.with_name(path.name + ".building")
    remove_db(building)
    conn = sqlite3.connect(str(building), isolation_level=None)
    try:
        # Only for building; the file gets WAL when the backend opens it.
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -262144")
        conn.execute("BEGIN")
        simple = all(m.run is None and not m.rebuilds_tables for m in MIGRATIONS)
        deferred: list[str] = []
        for migration in MIGRATIONS:
            for statement in migration.statements:
                dropped = _dropped_index(statement) if simple else None
                if dropped is not None:
                    # A later migration rebuilds an index: never build the old one.
                    deferred = [d for d in deferred if _index_name(d) != dropped]
                elif simple and _is_index(statement):
                    deferred.append(statement)
                else:
                    conn.execute(statement)
            if migration.run is not None:
                migration.run(conn)
        for chunk in _chunks(job_rows, 50_000):
            conn.executemany(INSERT_JOB, chunk)
        for chunk in _chunks(checkpoint_rows, 50_000):
            conn.executemany(INSERT_CHECKPOINT, chunk)
        for statement in deferred:
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {int(SCHEMA_VERSION)}")
        conn.execute("COMMIT")
    finally:
        conn.close()
    # The backend's own setup: WAL mode and its schema check.
    open_store(building, check_on_open="off").close()
    remove_db(path)
    os.replace(building, path)
    for suffix in ("-wal", "-shm"):
        Path(f"{building}{suffix}").unlink(missing_ok=True)
    return time.perf_counter() - start


def _chunks(rows: Iterable[tuple[Any, ...]], size: int) -> Iterable[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def cached_db(
    cache_dir: Path,
    name: str,
    build: Callable[[Path], float],
    log: Callable[[str], None],
) -> Path:
    """The cached database ``name`` (keyed by the schema), built with ``build`` if missing."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{name}-{schema_key()}.db"
    if not path.exists():
        log(f"building {path.name} (cached for later runs) ...")
        seconds = build(path)
        log(f"built {path.name} in {seconds:.1f} s ({path.stat().st_size / 1e6:.0f} MB)")
    return path


def query_db(cache_dir: Path, size: int, users: int, log: Callable[[str], None]) -> Path:
    """A database of ``size`` jobs over ``users`` users, 30 days of history (cached)."""
    return cached_db(
        cache_dir,
        f"jobs-{size}-u{users}",
        lambda path: build_db(path, _data.job_rows(size, size, users)),
        log,
    )


def explain(conn: sqlite3.Connection, sql: str, params: Sequence[Any]) -> list[str]:
    """SQLite's query plan for ``sql``, one line per step."""
    return [str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params)]
