"""The raw-sqlite3 floor, the SQL it shares with the backend, and cached databases.

"Same SQL": every statement the floor runs is imported from the backend's modules
(``cidx_jobs_sqlite._statements``, ``._connection``, ``._codec``, ``._schema``: private,
but this is the same repository), the cleanup's batched DELETE included;
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
from cidx_jobs_sqlite import (
    SqliteOptions,
    SqliteStorage,
    _codec,
    _connection,
    _statements,
    _storage,
)
from cidx_jobs_sqlite._pool import Connection
from cidx_jobs_sqlite._schema import MIGRATIONS, SCHEMA_VERSION

from . import _data

# -- the shared SQL ---------------------------------------------------------------------------

#: INSERT of one job (``_statements.INSERT_JOB``).
INSERT_JOB = _statements.INSERT_JOB
#: Upsert of one checkpoint (``_statements.INSERT_CHECKPOINT``).
INSERT_CHECKPOINT = _statements.INSERT_CHECKPOINT
#: SELECT of one job by id (``_statements.SELECT_JOB``).
SELECT_JOB = _statements.SELECT_JOB
#: UPDATE of progress and phase (``_statements.SET_PROGRESS_PHASE``).
SET_PROGRESS_PHASE = _statements.SET_PROGRESS_PHASE
#: The size of the backend's first cleanup batch (``_storage.FIRST_BATCH``; later ones
#: adapt to their timing).
FIRST_CLEANUP_BATCH = _storage.FIRST_BATCH
#: What load_checkpoint runs: the data of one checkpoint
#: (``_statements.SELECT_CHECKPOINT_DATA``).
SELECT_CHECKPOINT = _statements.SELECT_CHECKPOINT_DATA
#: The columns every job SELECT returns, in order, and as they are written in SQL.
JOB_COLUMNS = _codec.JOB_COLUMNS
JOB_COLUMNS_SQL = _codec.JOB_COLUMNS_SQL
#: Finished statuses, in the order the backend sorts them for the cleanup.
FINISHED = sorted((s for s in JobStatus if not s.is_active), key=lambda s: s.value)
#: heartbeat(): renew the leases of an owner's active jobs (``_statements.RENEW_LEASES``).
RENEW_LEASES = _statements.RENEW_LEASES
#: Recovery: active jobs whose lease expired (``_statements.FIND_STALE``).
FIND_STALE = _statements.FIND_STALE


#: Whether this release of core and backend keeps leases (``owner_id``, ``heartbeat_at``):
#: a job saved or started running is stamped with its owner, so the floor binds them too.
LEASES = "owner_id" in attrs.fields_dict(SyncJob) and (
    "takes_lease" in inspect.signature(_statements.status_sql).parameters
)
#: The owner the floor stamps when the backend would stamp its own (same length of id).
FLOOR_OWNER = "bench-host:4242:0123abcd"


def status_sql(status: JobStatus) -> str:
    """The UPDATE the backend runs for ``update_job_status(id, status)`` (no error, no CAS;
    a move to running takes the lease where the backend keeps leases)."""
    if LEASES and status is JobStatus.RUNNING:
        return _statements.status_sql(status, False, None, True)
    return _statements.status_sql(status, False, None)


def status_params(status: JobStatus, now_us: int, job_id: str, owner: str) -> list[Any]:
    """The parameters of :func:`status_sql`, in the order the backend binds them."""
    params: list[Any] = [status.value]
    if status is JobStatus.RUNNING:
        params.append(now_us)
        if LEASES:
            params.append(owner)
            params.append(now_us)
            params.append(None)  # an unfenced move to running clears the lease token
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
    from cidx_jobs.backend import StatusChange

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
    project: bool = False,
    created_after: bool = False,
    created_before: bool = False,
    keyset: bool = False,
    statuses: int = 0,
) -> str:
    """The SELECT of one page, as the backend builds it (``_statements.select_sql``)."""
    return _statements.select_sql(user, project, created_after, created_before, keyset, statuses)


def count_sql(
    *,
    user: bool = False,
    project: bool = False,
    created_after: bool = False,
    created_before: bool = False,
    statuses: int = 0,
) -> str:
    """The count of a filter, as the backend builds it (``_statements.count_sql``)."""
    return _statements.count_sql(user, project, created_after, created_before, statuses)


def page_params(
    statuses: Sequence[str], common: Sequence[Any], limit: int, offset: int = 0
) -> list[Any]:
    """The parameters of :func:`select_sql` in the order the backend binds them
    (``_statements.select_statement``): with several statuses, each status's branch gets the
    status, the common parameters (user, project, dates, cursor) and ``offset + limit``."""
    params: list[Any] = []
    if len(statuses) > 1:
        for status in statuses:
            params.append(status)
            params.extend(common)
            params.append(offset + limit)
    else:
        params.extend(statuses)
        params.extend(common)
    params.append(limit)
    params.append(offset)
    return params


def delete_batch_sql(statuses: int = len(FINISHED), *, batched: bool = True) -> str:
    """The cleanup's DELETE of one batch, as the backend builds it
    (``_statements.delete_expired_sql``): ``rowid IN (SELECT ... LIMIT ?)`` around
    :func:`cleanup_where`. With ``batched`` false, the single unbounded DELETE a
    hand-written purge would run.
    """
    if batched:
        return _statements.delete_expired_sql(statuses)
    return f"DELETE FROM sync_jobs WHERE {cleanup_where(statuses)}"


def cleanup_where(statuses: int = len(FINISHED)) -> str:
    """The WHERE clause of the cleanup's DELETE (and of its dry-run count), as the backend
    builds it (``_statements._expired_where``): one term per status, joined by OR, each
    matching the expression index ``sync_jobs_status_finished``."""
    return _statements._expired_where(statuses)


def count_expired_sql(statuses: int = len(FINISHED)) -> str:
    """The cleanup's dry run, as the backend builds it (``_statements.count_expired_sql``):
    how many jobs and checkpoints the DELETE would remove."""
    return _statements.count_expired_sql(statuses)


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
        cached_statements=_connection.CACHED_STATEMENTS,
    )
    for pragma in _connection.connection_pragmas(options):
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


class TracedStorage(SqliteStorage):
    """The SQLite backend's storage on connections that report their statements."""

    _connection_class = TracingConnection


def open_traced(path: Path, clock: Callable[[], Any]) -> JobPersistence:
    """A traced backend on ``path`` whose clock is fixed (so "now" parameters match)."""
    return JobPersistence(
        TracedStorage(options_for(path)), hooks=Hooks(), settings=StoreSettings(clock=clock)
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


# -- schema variants (the indexes section) ----------------------------------------------------

#: The "story schema" of issue 14: the two indexes the original design named, one composite
#: ``(user_id, status, created_at)`` for a user's pages and one on ``created_at`` for every
#: job newest first. The baseline that ``save_job`` is also reported against.
STORY_INDEXES = (
    "CREATE INDEX story_user_status_created ON sync_jobs (user_id, status, created_at)",
    "CREATE INDEX story_created ON sync_jobs (created_at)",
)


def secondary_indexes(conn: sqlite3.Connection, table: str = "sync_jobs") -> dict[str, str]:
    """The explicitly created indexes of ``table`` (name -> CREATE statement), in the
    order the schema created them (not the automatic primary-key index)."""
    return {
        str(name): str(sql)
        for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
            "AND sql IS NOT NULL ORDER BY rowid",
            (table,),
        )
    }


def backend_indexes(cache_dir: Path) -> dict[str, str]:
    """The secondary indexes of ``sync_jobs`` in the backend's current schema (read from an
    empty database the backend made, so this follows every migration)."""
    path = cache_dir / f"empty-{schema_key()}.db"
    if not path.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        building = path.with_name(path.name + ".building")
        remove_db(building)
        create_empty(building)
        os.replace(building, path)
    conn = sqlite3.connect(str(path))
    try:
        return secondary_indexes(conn)
    finally:
        conn.close()


def variant_db(
    cache_dir: Path,
    base: Path,
    name: str,
    drop: Sequence[str],
    create: Sequence[str],
    log: Callable[[str], None],
) -> Path:
    """The cached database ``base`` with the indexes ``drop`` dropped and the statements
    ``create`` run, then vacuumed, so that it is laid out as if built with that schema.

    Its rows are ``base``'s; it is never opened through the backend (whose schema it no
    longer has), only through :func:`raw_connect`.
    """
    stem = base.name.removesuffix(f"-{schema_key()}.db")

    def build(path: Path) -> float:
        start = time.perf_counter()
        building = path.with_name(path.name + ".building")
        copy_db(base, building)
        conn = sqlite3.connect(str(building), isolation_level=None)
        try:
            conn.execute("BEGIN")
            for index in drop:
                conn.execute(f"DROP INDEX {index}")
            for statement in create:
                conn.execute(statement)
            conn.execute("COMMIT")
            conn.execute("VACUUM")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            conn.close()
        remove_db(path)
        os.replace(building, path)
        for suffix in ("-wal", "-shm"):
            Path(f"{building}{suffix}").unlink(missing_ok=True)
        return time.perf_counter() - start

    return cached_db(cache_dir, f"{stem}-{name}", build, log)


def drop_index(conn: sqlite3.Connection, name: str) -> str:
    """Drop index ``name`` (committed); returns its CREATE statement, to put it back."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise LookupError(f"no index {name}")
    conn.execute(f"DROP INDEX {name}")
    return str(row[0])
