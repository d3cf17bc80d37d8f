"""SqliteJobStore: the JobPersistence primitives over a pool of SQLite connections."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn, cast

from cidx_jobs import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    BackendConfig,
    Checkpoint,
    Hooks,
    JobFilter,
    JobPersistence,
    JobStatus,
    StatusChange,
    StoreSettings,
    SyncJob,
)
from cidx_jobs.errors import (
    CidxJobsError,
    DuplicateJobError,
    StorageCorruptError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
)

from . import _codec
from ._codec import EPOCH, MICROSECOND, decode_job
from ._errors import (
    BROKEN,
    CORRUPT,
    IOERR,
    NOTADB,
    PROTOCOL,
    READONLY,
    RETRYABLE,
    error_code,
    permission_problem,
)
from ._errors import translate as _translate
from ._options import SqliteOptions
from ._pool import Connection, ConnectionPool
from ._recovery import (
    RecoveryReport,
    file_identity,
    folder_lock,
    looks_like_sqlite,
    probe,
    recover,
)
from ._schema import (
    ACTIVE_SQL,
    SCHEMA_VERSION,
    TERMINAL_SQL,
    apply_migrations,
    newer_version_error,
    read_version,
)

logger = logging.getLogger("cidx_jobs.sqlite")

_SELECT_JOB = f"SELECT {_codec.JOB_COLUMNS_SQL} FROM sync_jobs WHERE id = ?"
_SET_PROGRESS = "UPDATE sync_jobs SET progress = ? WHERE id = ?"
_SET_PROGRESS_PHASE = "UPDATE sync_jobs SET progress = ?, phase = ? WHERE id = ?"
_SELECT_CHECKPOINT = "SELECT data, created_at FROM job_checkpoints WHERE job_id = ? AND phase = ?"
_SELECT_CHECKPOINT_DATA = "SELECT data FROM job_checkpoints WHERE job_id = ? AND phase = ?"
_SELECT_CHECKPOINTS = (
    "SELECT phase, data, created_at FROM job_checkpoints WHERE job_id = ? "
    "ORDER BY created_at, phase"
)
# The lease statements read the partial index sync_jobs_active_owner, which holds only
# active jobs. They name the active statuses exactly as its WHERE clause does (SQLite uses
# a partial index only then), and INDEXED BY pins the plan: left to itself the planner
# prefers the equality on status of sync_jobs_status_finished, which reads every active
# row, and a term that stopped matching the index would fail loudly ("no query solution")
# instead of silently scanning.
_RENEW_LEASES = (
    "UPDATE sync_jobs INDEXED BY sync_jobs_active_owner SET heartbeat_at = ? "
    f"WHERE owner_id = ? AND status IN {ACTIVE_SQL}"
)
# Recovery scans the small index, tests owner and heartbeat in it, and reads only the rows
# of stale jobs.
_FIND_STALE = (
    f"SELECT {_codec.JOB_COLUMNS_SQL} FROM sync_jobs INDEXED BY sync_jobs_active_owner "
    f"WHERE status IN {ACTIVE_SQL} AND owner_id IS NOT ? "
    "AND (heartbeat_at IS NULL OR heartbeat_at < ?) LIMIT ?"
)
# A compare-and-set on the lease as _find_stale read it; IS compares NULLs as equal.
_TAKE_OVER = (
    "UPDATE sync_jobs SET status = ?, owner_id = ?, heartbeat_at = ? "
    "WHERE id = ? AND status = ? AND owner_id IS ? AND heartbeat_at IS ?"
)
_ORDER = "ORDER BY created_at DESC, id DESC"
_ALL_STATUSES = len(JobStatus)
#: How often (seconds) reads check that the path still names the file the pool opened.
_IDENTITY_CHECK_INTERVAL = 1.0
_JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024
_CACHED_STATEMENTS = 256
#: UPSERT (ON CONFLICT DO UPDATE) arrived in 3.24; row values and DESC indexes earlier.
MIN_SQLITE = (3, 24, 0)

_ONE, _ALL, _ROWCOUNT, _CHANGES = range(4)
#: How long one cleanup batch should hold the write lock (seconds), and the first batch's
#: size, before its timing is known. On the benchmark machine's disk a job with 3
#: checkpoints took 0.05 to 0.2 ms to delete: 250 jobs take 12 to 50 ms, and a small
#: cleanup is done in a few statements.
_BATCH_SECONDS = 0.02
_FIRST_BATCH = 250
#: What decoding a row this backend did not write can raise (bad JSON, an unknown status,
#: a NULL or mistyped column).
_UNREADABLE = (ValueError, StopIteration, KeyError, TypeError, OverflowError, CidxJobsError)


class _Constraint(Exception):
    """An INSERT or UPDATE broke a constraint; the primitive decides what that means."""


class _ThreadState(threading.local):
    #: The connection of this thread's transaction() block, if one is open.
    conn: Connection | None = None
    #: Why SQLite rolled back the open block, if it did.
    aborted: str | None = None


class SqliteJobStore(JobPersistence):
    """The job store on one SQLite database file; safe to share between threads and
    between processes that open the same file.

    Open it with ``cidx_jobs.open_persistence("sqlite:///path/to/jobs.db")`` or directly
    with ``SqliteJobStore(SqliteOptions.parse(path, {...}))``. Opening creates the
    file and its folders, checks the file for damage (and, by default, recovers a
    damaged one: see :attr:`recovery`), switches it to WAL mode, and migrates its
    schema to :data:`SCHEMA_VERSION`.

    Every method raises, besides what :class:`~cidx_jobs.JobPersistence` documents,
    a :class:`~cidx_jobs.errors.StorageError` subclass when the storage fails, and
    such a call wrote nothing:

    * :class:`~cidx_jobs.errors.StoragePermissionError`: the file or its folder is not
      readable and writable by this process.
    * :class:`~cidx_jobs.errors.StorageFullError`: the disk or ``max_size_mb`` is full.
    * :class:`~cidx_jobs.errors.StorageCorruptError`: the file is damaged.
    * :class:`~cidx_jobs.errors.StorageUnavailableError`: an I/O error, the file was
      removed or replaced, the write lock stayed taken for ``busy_timeout_ms``, or the
      store is closed. Later calls reconnect.
    """

    #: The class of every connection (tests substitute one that injects faults).
    _connection_class: type[Connection] = Connection

    def __init__(
        self,
        options: SqliteOptions,
        *,
        hooks: Hooks | None = None,
        settings: StoreSettings | None = None,
    ) -> None:
        """Open (creating if needed) the database that ``options`` names.

        :raises StoragePermissionError: the file or a folder cannot be created, read or written.
        :raises StorageCorruptError: the file is damaged and ``recover_corrupt`` is off, or
            the path holds a file that is not an SQLite database.
        :raises SchemaVersionError: the file was written by a newer release, or by another
            program.
        :raises StorageError: SQLite failed otherwise.
        """
        super().__init__(hooks=hooks, settings=settings)
        self.options = options
        self._path = options.path
        self._path_str = str(options.path)
        self._busy = options.busy_timeout
        self._tls = _ThreadState()
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._reported: set[tuple[int, int] | None] = set()
        self._status_sql: dict[tuple[JobStatus, bool, frozenset[JobStatus] | None, bool], str] = {}
        self._pragmas = connection_pragmas(options)
        self._closed = False
        #: What the recovery at open kept and lost, if the file was damaged.
        self.recovery: RecoveryReport | None = None
        self._pool = ConnectionPool(self._connect, options.pool_size, self._busy, self._path_str)
        self._pool.add(self._open())

    @classmethod
    def from_config(cls, config: BackendConfig) -> SqliteJobStore:
        """The store for a ``sqlite://`` URL or a mapping with ``backend: sqlite``.

        :raises ConfigError: an option is unknown or invalid (the error names it).
        :raises StorageError: as the constructor.
        """
        return cls(SqliteOptions.from_config(config), hooks=config.hooks, settings=config.settings)

    @property
    def path(self) -> Path:
        """The absolute path of the database file."""
        return self._path

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<SqliteJobStore {self._path_str}{state}>"

    # -- opening and connecting ----------------------------------------------------------

    def _bare_connect(self) -> Connection:
        """A connection with no pragmas applied yet (some read the file's header)."""
        try:
            return sqlite3.connect(
                self._path_str,
                timeout=self._busy,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=_CACHED_STATEMENTS,
                factory=self._connection_class,
            )
        except sqlite3.Error as error:
            raise _translate(error, self._path, "opening the database") from error

    def _configure(self, conn: Connection) -> None:
        try:
            for pragma in self._pragmas:
                conn.execute(pragma)
        except sqlite3.Error as error:
            raise _translate(error, self._path, "configuring a connection") from error

    def _make_folder(self) -> None:
        folder = self._path.parent
        if folder.is_dir():
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except PermissionError as error:
            problem = permission_problem(self._path)
            raise StoragePermissionError(
                problem or f"cannot create the folder {folder}: {error.strerror}"
            ) from error
        except OSError as error:
            raise StorageUnavailableError(
                f"cannot create the folder {folder} for the job database: {error}"
            ) from error

    def _open(self) -> Connection:
        """The first connection, after checking (and if need be recovering) the file."""
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StorageError(
                f"the sqlite backend needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer; "
                f"this Python has SQLite {sqlite3.sqlite_version}"
            )
        self._make_folder()
        problem = permission_problem(self._path)
        if problem is not None:
            raise StoragePermissionError(problem)
        conn = self._bare_connect()
        try:
            damage = self._check(conn)
            if damage is not None:
                conn.close()
                conn = self._recover(damage)
            self._configure(conn)
            self._setup(conn, initial=True)
        except BaseException:
            conn.close()
            raise
        return conn

    def _check(self, conn: Connection) -> str | None:
        """What is damaged in the file, or ``None``; refuses files of newer releases."""
        try:
            version = read_version(conn)
            if version > SCHEMA_VERSION:
                raise newer_version_error(self._path, version)
            return probe(conn, self.options.check_on_open)
        except sqlite3.Error as error:
            if error_code(error) in (CORRUPT, NOTADB):
                return str(error)
            raise _translate(error, self._path, "checking the database") from error

    def _recover(self, damage: str) -> Connection:
        path = self._path
        if not looks_like_sqlite(path):
            raise StorageCorruptError(
                f"{path} is not an SQLite database ({damage}); it was left untouched. Check "
                "that the configured path names the job database"
            )
        if not self.options.recover_corrupt:
            raise StorageCorruptError(
                f"{path} is damaged ({damage}) and recover_corrupt is off. Restore it from a "
                "backup, or open it with recover_corrupt=true to move it aside and salvage "
                "every readable job into a fresh database"
            )
        with folder_lock(path.parent):
            # Another process may have recovered the file while this one waited.
            conn = self._bare_connect()
            try:
                damage_now = self._check(conn)
            except BaseException:
                conn.close()
                raise
            if damage_now is None:
                return conn
            conn.close()
            try:
                self.recovery = recover(path, damage_now)
            except sqlite3.Error as error:
                raise _translate(error, path, "salvaging the damaged database") from error
            except PermissionError as error:
                raise StoragePermissionError(
                    f"cannot recover the damaged {path}: {error}; grant write permission on "
                    f"the folder {path.parent}"
                ) from error
            except OSError as error:
                raise StorageError(f"cannot recover the damaged {path}: {error}") from error
        return self._bare_connect()

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self._busy
        delay = 0.001
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                now = time.monotonic()
                if error_code(error) not in RETRYABLE or now >= deadline:
                    raise
                time.sleep(min(delay, deadline - now) * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 0.1)

    def _setup(self, conn: Connection, *, initial: bool) -> None:
        """Bring a new connection's file up to date (WAL, schema) and remember the file."""
        path = self._path
        try:
            version = read_version(conn)
            if initial or version != SCHEMA_VERSION:
                with self._lock:
                    self._enable_wal(conn)
                    apply_migrations(conn, path, self._begin_immediate)
            limit = self.options.max_page_count(int(conn.execute("PRAGMA page_size").fetchone()[0]))
            if limit is not None:
                conn.execute(f"PRAGMA max_page_count = {limit}")
        except sqlite3.Error as error:
            raise _translate(error, path, "preparing the database") from error
        identity = file_identity(path)
        if identity is None:
            raise StorageUnavailableError(f"{path} vanished while it was being opened")
        conn.identity = identity

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self._busy
        while True:
            try:
                mode = str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0])
                break
            except sqlite3.OperationalError as error:
                if error_code(error) not in RETRYABLE or time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)
        if mode.lower() != "wal":
            logger.warning(
                "%s could not be switched to WAL mode (it is in %s mode): readers will wait "
                "for writers. Keep the database on a local file system",
                self._path,
                mode,
            )

    def _connect(self) -> Connection:
        """A new pooled connection (the pool calls this lazily, and after invalidating)."""
        self._make_folder()
        conn = self._bare_connect()
        try:
            self._configure(conn)
            self._setup(conn, initial=False)
        except BaseException:
            conn.close()
            raise
        return conn

    # -- running statements ----------------------------------------------------------------

    def _fetchone(self, sql: str, params: Sequence[Any], doing: str) -> Any:
        conn = self._tls.conn
        if conn is not None:
            return self._in_transaction(conn, _ONE, sql, params, doing)
        pool = self._pool
        conn = pool.acquire()
        try:
            row = conn.execute(sql, params).fetchone()
            if time.monotonic() >= self._next_check:
                self._check_identity(conn)
        except sqlite3.Error as error:
            return self._slow(conn, error, _ONE, sql, params, doing)
        except BaseException:
            pool.release(conn)
            raise
        pool.release(conn)
        return row

    def _fetchall(self, sql: str, params: Sequence[Any], doing: str) -> list[Any]:
        conn = self._tls.conn
        if conn is not None:
            result: list[Any] = self._in_transaction(conn, _ALL, sql, params, doing)
            return result
        pool = self._pool
        conn = pool.acquire()
        try:
            rows = conn.execute(sql, params).fetchall()
            if time.monotonic() >= self._next_check:
                self._check_identity(conn)
        except sqlite3.Error as error:
            return cast("list[Any]", self._slow(conn, error, _ALL, sql, params, doing))
        except BaseException:
            pool.release(conn)
            raise
        pool.release(conn)
        return rows

    def _write(self, sql: str, params: Sequence[Any], doing: str) -> int:
        """Run one writing statement (atomic on its own); returns the rows it changed."""
        conn = self._tls.conn
        if conn is not None:
            count: int = self._in_transaction(conn, _ROWCOUNT, sql, params, doing)
            return count
        pool = self._pool
        conn = pool.acquire()
        try:
            count = conn.execute(sql, params).rowcount
            # The write is committed; make sure it went into the file at the path.
            stat = os.stat(self._path_str)
            if (stat.st_dev, stat.st_ino) != conn.identity:
                self._file_changed()
        except sqlite3.Error as error:
            return int(self._slow(conn, error, _ROWCOUNT, sql, params, doing))
        except FileNotFoundError:
            pool.release(conn)
            self._file_changed()
        except BaseException:
            pool.release(conn)
            raise
        pool.release(conn)
        return count

    def _run(self, conn: Connection, mode: int, sql: str, params: Sequence[Any]) -> Any:
        if mode == _CHANGES:
            before = conn.total_changes
            count = conn.execute(sql, params).rowcount
            result: Any = (count, conn.total_changes - before)
        else:
            cursor = conn.execute(sql, params)
            if mode == _ONE:
                return cursor.fetchone()
            if mode == _ALL:
                return cursor.fetchall()
            result = cursor.rowcount
        if self._tls.conn is None:
            self._check_written(conn)
        return result

    def _execute(self, mode: int, sql: str, params: Sequence[Any], doing: str) -> Any:
        """The general (not hot) path: any mode, inside a transaction or not."""
        conn = self._tls.conn
        if conn is not None:
            return self._in_transaction(conn, mode, sql, params, doing)
        pool = self._pool
        conn = pool.acquire()
        try:
            result = self._run(conn, mode, sql, params)
        except sqlite3.Error as error:
            return self._slow(conn, error, mode, sql, params, doing)
        except BaseException:
            pool.release(conn)
            raise
        pool.release(conn)
        return result

    def _slow(
        self,
        conn: Connection,
        error: sqlite3.Error,
        mode: int,
        sql: str,
        params: Sequence[Any],
        doing: str,
    ) -> Any:
        """After a failed statement: retry while the database is busy, reconnect after an
        I/O error, and turn everything else into a typed error. Owns ``conn``."""
        pool = self._pool
        deadline: float | None = None
        delay = 0.001
        while True:
            if isinstance(error, sqlite3.IntegrityError):
                pool.release(conn)
                raise _Constraint(str(error)) from error
            code = error_code(error)
            if code in RETRYABLE:
                # The statement rolled back on its own; run it again once the lock is free.
                pool.release(conn)
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._busy
                if now >= deadline:
                    raise _translate(error, self._path, doing) from error
                time.sleep(min(delay, deadline - now) * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 0.1)
            else:
                if code == READONLY and file_identity(self._path) != conn.identity:
                    pool.release(conn)
                    self._file_changed()
                if code in BROKEN or isinstance(error, sqlite3.ProgrammingError):
                    pool.discard(conn)
                    if code in (IOERR, PROTOCOL):
                        # The disk failed under every connection; start afresh next call.
                        pool.invalidate()
                else:
                    pool.release(conn)
                raise _translate(error, self._path, doing) from error
            conn = pool.acquire()
            try:
                result = self._run(conn, mode, sql, params)
            except sqlite3.Error as again:
                error = again
                continue
            except BaseException:
                pool.release(conn)
                raise
            pool.release(conn)
            return result

    def _in_transaction(
        self, conn: Connection, mode: int, sql: str, params: Sequence[Any], doing: str
    ) -> Any:
        state = self._tls
        if state.aborted is not None:
            raise StorageError(
                f"the transaction was rolled back by an earlier error ({state.aborted}); "
                "nothing of it is stored: leave the transaction() block and retry it"
            )
        try:
            return self._run(conn, mode, sql, params)
        except sqlite3.Error as error:
            if not conn.in_transaction:
                # SQLite rolled the whole transaction back (disk full, I/O error): later
                # calls in the block must not run outside it.
                state.aborted = str(error)
            if isinstance(error, sqlite3.IntegrityError):
                raise _Constraint(str(error)) from error
            raise _translate(error, self._path, doing) from error

    def _check_written(self, conn: Connection) -> None:
        if file_identity(self._path) != conn.identity:
            self._file_changed()

    def _check_identity(self, conn: Connection) -> None:
        self._next_check = time.monotonic() + _IDENTITY_CHECK_INTERVAL
        if file_identity(self._path) != conn.identity:
            self._file_changed()

    def _file_changed(self) -> NoReturn:
        """The path no longer names the file the pool opened: retire every connection."""
        identity = file_identity(self._path)
        with self._lock:
            first = identity not in self._reported
            self._reported.add(identity)
        if first:
            logger.error(
                "the job database %s was removed or replaced while open; writes made through "
                "the old file since then are lost. Reopening %s (a new, empty database if it "
                "is gone); restore it from a backup if it was removed by mistake",
                self._path,
                self._path,
            )
        self._pool.invalidate()
        raise StorageUnavailableError(
            f"the job database {self._path} was removed or replaced while open; this call "
            "was not stored in it. The store reopens the file on the next call"
        )

    # -- the primitives ----------------------------------------------------------------------

    def _insert_job(self, job: SyncJob, metadata_json: str) -> None:
        try:
            self._write(
                _codec.INSERT_JOB_SQL, _codec.job_params(job, metadata_json), "saving a job"
            )
        except _Constraint as error:
            if "UNIQUE" in str(error) or "PRIMARY KEY" in str(error):
                raise DuplicateJobError(job.id) from error
            raise StorageError(f"saving job {job.id!r} broke a constraint: {error}") from error

    def _get_job(self, job_id: str) -> SyncJob | None:
        row = self._fetchone(_SELECT_JOB, (job_id,), "loading a job")
        if row is None:
            return None
        try:
            return decode_job(row)
        except _UNREADABLE as error:
            raise self._unreadable(row, error) from error

    def _set_status(self, job_id: str, change: StatusChange) -> bool:
        status = change.status
        has_error = change.error_message is not None
        owner = change.owner
        takes_lease = owner is not None and status is JobStatus.RUNNING
        key = (status, has_error, change.expected, takes_lease)
        sql = self._status_sql.get(key)
        if sql is None:
            sql = self._status_sql[key] = _status_sql(
                status, has_error, change.expected, takes_lease
            )
        now = (change.now - EPOCH) // MICROSECOND
        params: list[Any] = [status.value]
        if status is JobStatus.RUNNING:
            params.append(now)
            if takes_lease:
                params.append(owner)
                params.append(now)
        if status in TERMINAL_STATUSES:
            params.append(now)
        if has_error:
            params.append(change.error_message)
        params.append(job_id)
        return self._write(sql, params, "updating a job's status") > 0

    def _set_progress(self, job_id: str, progress: int, phase: str | None) -> bool:
        if phase is None:
            count = self._write(_SET_PROGRESS, (progress, job_id), "updating a job's progress")
        else:
            count = self._write(
                _SET_PROGRESS_PHASE, (progress, phase, job_id), "updating a job's progress"
            )
        return count > 0

    def _renew_leases(self, owner: str, now: datetime) -> int:
        return self._write(
            _RENEW_LEASES, ((now - EPOCH) // MICROSECOND, owner), "renewing job leases"
        )

    def _find_stale(self, before: datetime, exclude_owner: str, limit: int) -> list[SyncJob]:
        rows = self._fetchall(
            _FIND_STALE,
            (exclude_owner, (before - EPOCH) // MICROSECOND, limit),
            "finding jobs with expired leases",
        )
        try:
            return [decode_job(row) for row in rows]
        except _UNREADABLE as error:
            raise self._unreadable(None, error) from error

    def _take_over(self, job: SyncJob, status: JobStatus, owner: str, now: datetime) -> bool:
        try:
            count = self._write(
                _TAKE_OVER,
                (
                    status.value,
                    owner,
                    (now - EPOCH) // MICROSECOND,
                    job.id,
                    job.status.value,
                    job.owner_id,
                    _codec.encode_optional_time(job.heartbeat_at),
                ),
                "taking over a job",
            )
        except _Constraint as error:
            raise StorageError(f"taking over job {job.id!r} broke a constraint: {error}") from error
        return count > 0

    def _select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        statuses = _status_values(filter.statuses)
        common = _common_params(filter, after)
        sql = _select_sql(
            filter.user_id is not None,
            filter.project_id is not None,
            filter.created_after is not None,
            filter.created_before is not None,
            after is not None,
            len(statuses),
        )
        params: list[Any] = []
        if len(statuses) > 1:
            branch_limit = filter.offset + limit
            for status in statuses:
                params.append(status)
                params.extend(common)
                params.append(branch_limit)
        else:
            params.extend(statuses)
            params.extend(common)
        params.append(limit)
        params.append(filter.offset)
        rows = self._fetchall(sql, params, "querying jobs")
        try:
            return [decode_job(row) for row in rows]
        except _UNREADABLE as error:
            raise self._unreadable(None, error) from error

    def _count_jobs(self, filter: JobFilter) -> int:
        statuses = _status_values(filter.statuses)
        sql = _count_sql(
            filter.user_id is not None,
            filter.project_id is not None,
            filter.created_after is not None,
            filter.created_before is not None,
            len(statuses),
        )
        params = [*statuses, *_common_params(filter, None)]
        row = self._fetchone(sql, params, "counting jobs")
        return int(row[0])

    def _delete_finished(
        self, cutoffs: Mapping[JobStatus, datetime], *, batch_size: int, dry_run: bool
    ) -> tuple[int, int]:
        if not cutoffs:
            return 0, 0
        statuses = sorted(cutoffs, key=lambda status: status.value)
        where = " OR ".join(
            "(status = ? AND coalesce(completed_at, created_at) < ?)" for _ in statuses
        )
        params: list[Any] = []
        for status in statuses:
            params.append(status.value)
            params.append(_codec.encode_time(cutoffs[status]))
        if dry_run:
            row = self._fetchone(
                "SELECT count(*), coalesce(sum((SELECT count(*) FROM job_checkpoints AS c "
                f"WHERE c.job_id = j.id)), 0) FROM sync_jobs AS j WHERE {where}",
                params,
                "counting expired jobs",
            )
            return int(row[0]), int(row[1])
        sql = (
            "DELETE FROM sync_jobs WHERE rowid IN "
            f"(SELECT rowid FROM sync_jobs WHERE {where} LIMIT ?)"
        )
        jobs = checkpoints = 0
        # Each batch is one statement: atomic on its own, and it holds the write lock while
        # it runs, so every other writer waits for it. A batch's cost per job depends on the
        # disk and on how scattered the expired rows are, so the size adapts to keep each
        # batch near _BATCH_SECONDS; the policy's batch_size only caps it.
        size = min(batch_size, _FIRST_BATCH)
        outside = self._tls.conn is None
        while True:
            started = time.monotonic()
            # total_changes also counts the rows the foreign key's cascade deleted.
            deleted, changed = self._execute(
                _CHANGES, sql, [*params, size], "deleting expired jobs"
            )
            elapsed = time.monotonic() - started
            jobs += deleted
            checkpoints += changed - deleted
            if deleted < size:
                return jobs, checkpoints
            if outside:
                self._checkpoint_wal()
            size = next_batch_size(size, elapsed, batch_size)

    def _checkpoint_wal(self) -> None:
        """Copy the write-ahead log into the database now, without waiting for anyone.

        A cleanup calls this after each full batch: otherwise the next writer whose commit finds
        the log past its autocheckpoint size copies the cleanup's pages itself, and waits
        that long for its own small write. It only saves time: a failure is logged and
        the cleanup goes on (a broken disk fails its next batch with a typed error).
        """
        try:
            self._execute(_ALL, "PRAGMA wal_checkpoint(PASSIVE)", (), "checkpointing the WAL")
        except StorageError as error:
            logger.debug("the WAL checkpoint after a cleanup batch failed: %s", error)

    def _upsert_checkpoint(self, checkpoint: Checkpoint, data_json: str) -> bool:
        try:
            self._write(
                _codec.INSERT_CHECKPOINT_SQL,
                (
                    checkpoint.job_id,
                    checkpoint.phase,
                    data_json,
                    (checkpoint.created_at - EPOCH) // MICROSECOND,
                ),
                "saving a checkpoint",
            )
        except _Constraint as error:
            if "FOREIGN KEY" in str(error):
                return False  # no such job
            raise StorageError(f"saving a checkpoint broke a constraint: {error}") from error
        return True

    def _get_checkpoint(self, job_id: str, phase: str) -> Checkpoint | None:
        row = self._fetchone(_SELECT_CHECKPOINT, (job_id, phase), "loading a checkpoint")
        if row is None:
            return None
        try:
            return Checkpoint.from_trusted(
                job_id=job_id,
                phase=phase,
                data=_checkpoint_data(row[0]),
                created_at=EPOCH + MICROSECOND * row[1],
            )
        except _UNREADABLE as error:
            raise self._unreadable((job_id, phase), error) from error

    def _get_checkpoint_data(self, job_id: str, phase: str) -> dict[str, Any] | None:
        # load_checkpoint's own read: the data without building a Checkpoint around it.
        row = self._fetchone(_SELECT_CHECKPOINT_DATA, (job_id, phase), "loading a checkpoint")
        if row is None:
            return None
        try:
            return _checkpoint_data(row[0])
        except _UNREADABLE as error:
            raise self._unreadable((job_id, phase), error) from error

    def _get_checkpoints(self, job_id: str) -> list[Checkpoint]:
        rows = self._fetchall(_SELECT_CHECKPOINTS, (job_id,), "listing checkpoints")
        try:
            return [
                Checkpoint.from_trusted(
                    job_id=job_id,
                    phase=phase,
                    data=_checkpoint_data(data),
                    created_at=EPOCH + MICROSECOND * created_at,
                )
                for phase, data, created_at in rows
            ]
        except _UNREADABLE as error:
            raise self._unreadable((job_id,), error) from error

    def _unreadable(self, row: Any, error: BaseException) -> StorageCorruptError:
        """A stored row this backend cannot have written (edited by hand, or damaged)."""
        where = f" (row {row[0]!r})" if row else ""
        return StorageCorruptError(
            f"{self._path} holds a row this backend cannot read{where}: {error!r}. It was "
            "changed outside cidx-jobs or is damaged; fix or delete the row, or restore the "
            "file from a backup"
        )

    @contextlib.contextmanager
    def _begin(self) -> Iterator[None]:
        state = self._tls
        pool = self._pool
        conn = pool.acquire()
        try:
            self._begin_immediate(conn)
        except sqlite3.Error as error:
            self._give_back(conn, error)
            raise _translate(error, self._path, "starting a transaction") from error
        except BaseException:
            pool.release(conn)
            raise
        state.conn = conn
        state.aborted = None
        try:
            yield
        except BaseException:
            state.conn = None
            self._rollback(conn)
            raise
        state.conn = None
        aborted = _take_aborted(state)
        if aborted is not None:
            self._rollback(conn)
            raise StorageError(
                f"the transaction was rolled back by an earlier error ({aborted}); nothing "
                "of it is stored"
            )
        self._commit(conn)

    def _commit(self, conn: Connection) -> None:
        pool = self._pool
        deadline = time.monotonic() + self._busy
        while True:
            try:
                conn.execute("COMMIT")
                break
            except sqlite3.Error as error:
                # COMMIT can wait for readers only outside WAL mode; it keeps the
                # transaction open, so retrying is safe.
                if (
                    error_code(error) in RETRYABLE
                    and conn.in_transaction
                    and time.monotonic() < deadline
                ):
                    time.sleep(0.002)
                    continue
                self._rollback(conn, release=False)
                self._give_back(conn, error)
                raise _translate(error, self._path, "committing a transaction") from error
            except BaseException:
                self._rollback(conn)
                raise
        try:
            self._check_written(conn)
        finally:
            pool.release(conn)

    def _rollback(self, conn: Connection, *, release: bool = True) -> None:
        try:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
        except sqlite3.Error:
            # A connection that cannot roll back is not trusted with anything else.
            if release:
                self._pool.discard(conn)
            return
        if release:
            self._pool.release(conn)

    def _give_back(self, conn: Connection, error: sqlite3.Error) -> None:
        if error_code(error) in BROKEN:
            self._pool.discard(conn)
        else:
            self._pool.release(conn)

    def _close(self) -> None:
        self._closed = True
        self._pool.close()

    # -- operations beyond the interface ---------------------------------------------------

    def backup(self, target: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the database to ``target`` while the store stays in use
        (SQLite's online backup; an existing file at ``target`` is overwritten).

        :raises StoragePermissionError: ``target`` cannot be written.
        :raises StorageError: the copy failed; ``target`` may be incomplete.
        """
        destination = Path(target).absolute()
        pool = self._pool
        conn = pool.acquire()
        try:
            with contextlib.closing(sqlite3.connect(destination)) as copy:
                conn.backup(copy)
        except sqlite3.Error as error:
            self._give_back(conn, error)
            raise _translate(error, destination, f"backing up {self._path}") from error
        except BaseException:
            pool.release(conn)
            raise
        pool.release(conn)


def _take_aborted(state: _ThreadState) -> str | None:
    """Why SQLite rolled back the thread's block (set by a statement inside it), cleared."""
    aborted, state.aborted = state.aborted, None
    return aborted


def next_batch_size(size: int, elapsed: float, cap: int) -> int:
    """The size of the cleanup batch after one of ``size`` jobs that took ``elapsed`` seconds:
    scaled toward :data:`_BATCH_SECONDS`, at most doubled or halved at a time (one slow
    or fast batch is often noise), and within 1..``cap``."""
    wanted = int(size * _BATCH_SECONDS / max(elapsed, 1e-6))
    return max(1, min(cap, size * 2, max(size // 2, wanted)))


def connection_pragmas(options: SqliteOptions) -> tuple[str, ...]:
    """The pragmas every connection runs first (they hold per connection, not per file)."""
    return (
        # Off by default and per connection: without it the cascade to checkpoints silently
        # does nothing.
        "PRAGMA foreign_keys = ON",
        f"PRAGMA synchronous = {options.synchronous.upper()}",
        # Keep a WAL that a big cleanup grew from staying big on disk.
        f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}",
        # Zeroing every deleted row (this build's default) makes a cleanup write each page
        # twice; FAST zeroes only what costs no extra I/O. The rows are no secret beyond
        # the file's own permissions.
        "PRAGMA secure_delete = FAST",
    )


# -- SQL builders ----------------------------------------------------------------------------


def _status_sql(
    status: JobStatus,
    has_error: bool,
    expected: frozenset[JobStatus] | None,
    takes_lease: bool = False,
) -> str:
    """One UPDATE applying StatusChange's rules. What depends on the new status is decided
    here; what depends on the stored row is a CASE (SET expressions see the old row).

    ``takes_lease``: a move to running with an owner also sets ``owner_id`` and
    ``heartbeat_at`` (parameters right after ``started_at``'s)."""
    sets = ["status = ?"]
    if status is JobStatus.RUNNING:
        sets.append("started_at = coalesce(started_at, ?)")
        if takes_lease:
            sets.append("owner_id = ?")
            sets.append("heartbeat_at = ?")
    if status in TERMINAL_STATUSES:
        # Entering a terminal status stamps completed_at; moving between terminal
        # statuses keeps it.
        sets.append(
            f"completed_at = CASE WHEN status IN {TERMINAL_SQL} AND completed_at IS NOT NULL "
            "THEN completed_at ELSE ? END"
        )
    elif status in ACTIVE_STATUSES:
        sets.append("completed_at = NULL")
    if has_error:
        sets.append("error_message = ?")
    where = "id = ?"
    if expected is not None:
        allowed = ", ".join(f"'{value}'" for value in sorted(s.value for s in expected))
        where += f" AND status IN ({allowed})"
    elif status in ACTIVE_STATUSES:
        # Last write wins, but a finished job never goes back to an active status.
        where += f" AND status NOT IN {TERMINAL_SQL}"
    return f"UPDATE sync_jobs SET {', '.join(sets)} WHERE {where}"


def _status_values(statuses: frozenset[JobStatus] | None) -> list[str]:
    """The statuses to filter on, sorted; empty when every status matches."""
    if statuses is None or len(statuses) == _ALL_STATUSES:
        return []
    return sorted(status.value for status in statuses)


def _common_params(filter: JobFilter, after: tuple[datetime, str] | None) -> list[Any]:
    params: list[Any] = []
    if filter.user_id is not None:
        params.append(filter.user_id)
    if filter.project_id is not None:
        params.append(filter.project_id)
    if filter.created_after is not None:
        params.append(_codec.encode_time(filter.created_after))
    if filter.created_before is not None:
        params.append(_codec.encode_time(filter.created_before))
    if after is not None:
        params.append(_codec.encode_time(after[0]))
        params.append(after[1])
    return params


def _common_conditions(
    user: bool, project: bool, created_after: bool, created_before: bool, keyset: bool
) -> list[str]:
    conditions = []
    if user:
        conditions.append("user_id = ?")
    if project:
        conditions.append("project_id = ?")
    if created_after:
        conditions.append("created_at >= ?")
    if created_before:
        conditions.append("created_at < ?")
    if keyset:
        conditions.append("(created_at, id) < (?, ?)")
    return conditions


def _where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


@functools.lru_cache(maxsize=256)
def _select_sql(
    user: bool,
    project: bool,
    created_after: bool,
    created_before: bool,
    keyset: bool,
    statuses: int,
) -> str:
    """The SELECT of one page for a filter of this shape.

    With several statuses, each status is read newest first from its own index range
    (user, status, created_at) and the ranges are merged: reading one range in order
    with a filter could scan a user's whole history to find a rare status, and an
    IN list over the index would sort every match before the LIMIT applies.
    """
    common = _common_conditions(user, project, created_after, created_before, keyset)
    if statuses <= 1:
        conditions = (["status = ?"] if statuses == 1 else []) + common
        return (
            f"SELECT {_codec.JOB_COLUMNS_SQL} FROM sync_jobs{_where(conditions)} "
            f"{_ORDER} LIMIT ? OFFSET ?"
        )
    branch = (
        "SELECT * FROM (SELECT rowid AS r, created_at AS c, id AS i FROM sync_jobs"
        f"{_where(['status = ?', *common])} {_ORDER} LIMIT ?)"
    )
    merged = " UNION ALL ".join([branch] * statuses)
    return (
        f"SELECT {_codec.JOB_COLUMNS_SQL} FROM sync_jobs WHERE rowid IN "
        f"(SELECT r FROM ({merged} ORDER BY c DESC, i DESC LIMIT ? OFFSET ?)) {_ORDER}"
    )


@functools.lru_cache(maxsize=128)
def _count_sql(
    user: bool, project: bool, created_after: bool, created_before: bool, statuses: int
) -> str:
    conditions = _common_conditions(user, project, created_after, created_before, False)
    if statuses == 1:
        conditions.insert(0, "status = ?")
    elif statuses > 1:
        conditions.insert(0, f"status IN ({', '.join('?' * statuses)})")
    return f"SELECT count(*) FROM sync_jobs{_where(conditions)}"


def _checkpoint_data(text: str) -> dict[str, Any]:
    # Stored data was validated on the way in; a row that is not a JSON object is damage.
    data = _codec.loads(text)
    if type(data) is not dict:
        raise ValueError(f"checkpoint data is a {type(data).__name__}, not a JSON object")
    return data
