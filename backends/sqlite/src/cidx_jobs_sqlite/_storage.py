"""SqliteStorage: the storage interface over a pool of connections to one SQLite file."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any

from cidx_jobs import Checkpoint, JobFilter, JobStatus, SyncJob
from cidx_jobs.backend import BackendConfig, HealthCheck, StatusChange, Storage, StorageInfo
from cidx_jobs.errors import (
    CidxJobsError,
    DuplicateJobError,
    StorageCorruptError,
    StorageError,
    StorageFullError,
    StoragePermissionError,
)

from . import _codec, _operations, _undecodable
from . import _statements as sql
from ._codec import EPOCH, MICROSECOND, decode_job
from ._connection import Connector
from ._errors import ConstraintError, UnreadableTextError
from ._options import SqliteOptions, check_backup_target
from ._pool import Connection, ConnectionPool
from ._recovery import RecoveryReport, create_like
from ._runner import ALL, CHANGES, ONE, ROWCOUNT, Runner, SqliteFaultInjector

logger = logging.getLogger("cidx_jobs.sqlite")

#: How long one cleanup batch should hold the write lock (seconds), and the first batch's
#: size, before its timing is known. On the benchmark machine's disk a job with 3
#: checkpoints took 0.05 to 0.2 ms to delete: 250 jobs take 12 to 50 ms, and a small
#: cleanup is done in a few statements.
BATCH_SECONDS = 0.02
FIRST_BATCH = 250
#: What decoding a row this backend did not write can raise (bad JSON, an unknown status,
#: a NULL or mistyped column).
_UNREADABLE = (ValueError, StopIteration, KeyError, TypeError, OverflowError, CidxJobsError)


class _CleanupState(threading.local):
    #: The cutoffs of the cleanup whose batches this thread is deleting, if one is under way.
    cutoffs: Mapping[JobStatus, datetime] | None = None
    #: The size of its next batch.
    size: int = FIRST_BATCH


class SqliteStorage(Storage):
    """Jobs and checkpoints in one SQLite database file; safe to share between threads and
    between processes that open the same file.

    Open it with ``cidx_jobs.open_persistence("sqlite:///path/to/jobs.db")``, which wraps
    it in a :class:`~cidx_jobs.JobPersistence` (reach it again as ``store.storage``), or
    directly with ``JobPersistence(SqliteStorage(SqliteOptions.parse(path, {...})))``.
    Opening creates the file and its folders, checks the file for damage (and, by
    default, recovers a damaged one: see :attr:`recovery`), switches it to WAL mode, and
    migrates its schema to :data:`~cidx_jobs_sqlite.SCHEMA_VERSION`.

    Every method raises a :class:`~cidx_jobs.errors.StorageError` subclass when the
    storage fails, and such a call wrote nothing:

    * :class:`~cidx_jobs.errors.StoragePermissionError`: the file or its folder is not
      readable and writable by this process.
    * :class:`~cidx_jobs.errors.StorageFullError`: the disk or ``max_size_mb`` is full.
    * :class:`~cidx_jobs.errors.StorageCorruptError`: the file is damaged.
    * :class:`~cidx_jobs.errors.StorageBusyError`: another connection held the write lock,
      or every pooled connection stayed in use, for ``busy_timeout_ms``.
    * :class:`~cidx_jobs.errors.StorageUnavailableError`: an I/O error, the file was
      removed or replaced, or the storage is closed. Later calls reconnect.

    Beyond the storage interface: :meth:`backup`, :attr:`recovery`, :attr:`path` and
    :attr:`options`; and the operator methods :meth:`describe`, :meth:`check_health`,
    :meth:`top_users` and :meth:`migrate` (with the option ``migrate=false``, the store
    opens without migrating and creates nothing).
    """

    #: The class of every connection (tests substitute one that injects faults or traces).
    _connection_class: type[Connection] = Connection

    def __init__(self, options: SqliteOptions) -> None:
        """Open (creating if needed) the database that ``options`` names.

        :raises StoragePermissionError: the file or a folder cannot be created, read or written.
        :raises StorageCorruptError: the file is damaged and ``recover_corrupt`` is off, or
            the path holds a file that is not an SQLite database.
        :raises SchemaVersionError: the file was written by a newer release, or by another
            program.
        :raises StorageError: SQLite failed otherwise.
        """
        #: The options the storage was opened with.
        self.options = options
        self._path = options.path
        self._closed = False
        connector = Connector(options, self._connection_class)
        pool = ConnectionPool(
            connector.connect, options.pool_size, options.busy_timeout, str(options.path)
        )
        pool.add(connector.open())
        self._connector = connector
        #: What the recovery at open kept and lost, if the file was damaged; else ``None``.
        self.recovery: RecoveryReport | None = connector.recovery
        self._pool = pool
        self._runner = Runner(pool, options.path, options.busy_timeout)
        self._run = self._runner.run
        self._faults = SqliteFaultInjector(self._runner)
        self._cleanup = _CleanupState()

    @classmethod
    def from_config(cls, config: BackendConfig) -> SqliteStorage:
        """The storage for a ``sqlite://`` URL or a mapping with ``backend: sqlite``.

        :raises ConfigError: an option is unknown or invalid (the error names it), or the
            configuration names a host, port, user name or password.
        :raises StorageError: as the constructor.
        """
        return cls(SqliteOptions.from_config(config))

    @property
    def path(self) -> Path:
        """The absolute path of the database file."""
        return self._path

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<SqliteStorage {self._path}{state}>"

    # -- jobs ----------------------------------------------------------------------------------

    def insert_job(self, job: SyncJob, metadata_json: str) -> None:
        try:
            self._run(
                ROWCOUNT, sql.INSERT_JOB, _codec.job_params(job, metadata_json), "saving a job"
            )
        except ConstraintError as error:
            if error.kind == "unique":
                raise DuplicateJobError(job.id) from error
            raise

    def get_job(self, job_id: str) -> SyncJob | None:
        try:
            row = self._run(ONE, sql.SELECT_JOB, (job_id,), "loading a job")
        except UnreadableTextError as error:  # text that is not UTF-8: name the job
            raise _undecodable.row_error(self._path, (job_id,), error) from error
        if row is None:
            return None
        try:
            return decode_job(row)
        except _UNREADABLE as error:
            raise self._unreadable(row, error) from error

    def set_status(self, job_id: str, change: StatusChange) -> bool:
        statement, params = sql.status_statement(job_id, change)
        count: int = self._run(ROWCOUNT, statement, params, "updating a job's status")
        return count > 0

    def set_progress(
        self, job_id: str, progress: int, phase: str | None, *, fence: str | None = None
    ) -> bool:
        count: int
        if fence is not None:
            params: tuple[Any, ...]
            if phase is None:
                statement, params = sql.SET_PROGRESS_FENCED, (progress, job_id, fence)
            else:
                statement = sql.SET_PROGRESS_PHASE_FENCED
                params = (progress, phase, job_id, fence)
            count = self._run(ROWCOUNT, statement, params, "updating a job's progress")
        elif phase is None:
            count = self._run(
                ROWCOUNT, sql.SET_PROGRESS, (progress, job_id), "updating a job's progress"
            )
        else:
            count = self._run(
                ROWCOUNT,
                sql.SET_PROGRESS_PHASE,
                (progress, phase, job_id),
                "updating a job's progress",
            )
        return count > 0

    def select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        statement, params = sql.select_statement(filter, after, limit)
        try:
            rows = self._run(ALL, statement, params, "querying jobs")
        except UnreadableTextError as error:  # text that is not UTF-8: name the jobs
            raise _undecodable.listing_error(
                self._runner, self._path, statement, params, error
            ) from error
        try:
            return [decode_job(row) for row in rows]
        except _UNREADABLE as error:
            raise self._unreadable(None, error) from error

    def count_jobs(self, filter: JobFilter) -> int:
        statement, params = sql.count_statement(filter)
        return int(self._run(ONE, statement, params, "counting jobs")[0])

    def count_expired(self, cutoffs: Mapping[JobStatus, datetime]) -> tuple[int, int]:
        if not cutoffs:
            return 0, 0
        row = self._run(
            ONE,
            sql.count_expired_sql(len(cutoffs)),
            sql.expired_params(cutoffs),
            "counting expired jobs",
        )
        return int(row[0]), int(row[1])

    def delete_expired(self, cutoffs: Mapping[JobStatus, datetime], limit: int) -> tuple[int, int]:
        """Delete one batch of expired jobs, one statement, of at most ``limit`` jobs.

        A batch holds the write lock while it runs, so every other writer waits for it. A
        batch's cost per job depends on the disk and on how scattered the expired rows
        are, so the batch size adapts: the first batch of a cleanup deletes
        :data:`FIRST_BATCH` jobs (or ``limit``, if smaller), and each next batch of the
        same cleanup (the facade calls again with the same ``cutoffs``) is scaled from the
        previous one's duration toward :data:`BATCH_SECONDS`; ``limit`` only caps it.
        After a full batch, outside a transaction, the write-ahead log is checkpointed.
        """
        if not cutoffs:
            return 0, 0
        state = self._cleanup
        size = state.size if state.cutoffs is cutoffs else FIRST_BATCH
        size = max(1, min(size, limit))
        started = time.monotonic()
        # total_changes also counts the rows the foreign key's cascade deleted.
        deleted, changed = self._run(
            CHANGES,
            sql.delete_expired_sql(len(cutoffs)),
            [*sql.expired_params(cutoffs), size],
            "deleting expired jobs",
        )
        elapsed = time.monotonic() - started
        if deleted < size:
            # Nothing of this cleanup is left: the next one starts afresh.
            state.cutoffs = None
        else:
            # Holding the cleanup's cutoffs keeps their identity from being reused.
            state.cutoffs = cutoffs
            state.size = next_batch_size(size, elapsed, limit)
            if not self._runner.in_transaction:
                self._checkpoint_wal()
        return deleted, changed - deleted

    def _checkpoint_wal(self) -> None:
        """Copy the write-ahead log into the database now, without waiting for anyone.

        A cleanup calls this after each full batch: otherwise the next writer whose commit
        finds the log past its autocheckpoint size copies the cleanup's pages itself, and
        waits that long for its own small write. It only saves time: a failure is logged
        and the cleanup goes on (a broken disk fails its next batch with a typed error).
        """
        try:
            self._run(ALL, sql.WAL_CHECKPOINT, (), "checkpointing the WAL")
        except StorageError as error:
            logger.debug("the WAL checkpoint after a cleanup batch failed: %s", error)

    # -- checkpoints ---------------------------------------------------------------------------

    def upsert_checkpoint(
        self, checkpoint: Checkpoint, data_json: str, *, fence: str | None = None
    ) -> bool:
        if fence is not None:
            count: int = self._run(
                ROWCOUNT,
                sql.INSERT_CHECKPOINT_FENCED,
                (*sql.checkpoint_params(checkpoint, data_json), checkpoint.job_id, fence),
                "saving a checkpoint",
            )
            return count > 0
        try:
            self._run(
                ROWCOUNT,
                sql.INSERT_CHECKPOINT,
                sql.checkpoint_params(checkpoint, data_json),
                "saving a checkpoint",
            )
        except ConstraintError as error:
            if error.kind == "foreign_key":
                return False  # no such job
            raise
        return True

    def get_checkpoint(self, job_id: str, phase: str) -> Checkpoint | None:
        row = self._run(ONE, sql.SELECT_CHECKPOINT, (job_id, phase), "loading a checkpoint")
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

    def get_checkpoint_data(self, job_id: str, phase: str) -> dict[str, Any] | None:
        # load_checkpoint's own read: the data without building a Checkpoint around it.
        row = self._run(ONE, sql.SELECT_CHECKPOINT_DATA, (job_id, phase), "loading a checkpoint")
        if row is None:
            return None
        try:
            return _checkpoint_data(row[0])
        except _UNREADABLE as error:
            raise self._unreadable((job_id, phase), error) from error

    def get_checkpoints(self, job_id: str) -> list[Checkpoint]:
        rows = self._run(ALL, sql.SELECT_CHECKPOINTS, (job_id,), "listing checkpoints")
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

    # -- leases --------------------------------------------------------------------------------

    def renew_leases(self, owner: str, now: datetime) -> int:
        count: int = self._run(
            ROWCOUNT, sql.RENEW_LEASES, ((now - EPOCH) // MICROSECOND, owner), "renewing job leases"
        )
        return count

    def find_stale(self, before: datetime, exclude_owner: str, limit: int) -> list[SyncJob]:
        params = (exclude_owner, (before - EPOCH) // MICROSECOND, limit)
        try:
            rows = self._run(ALL, sql.FIND_STALE, params, "finding jobs with expired leases")
        except UnreadableTextError as error:  # text that is not UTF-8: name the jobs
            raise _undecodable.listing_error(
                self._runner, self._path, sql.FIND_STALE, params, error
            ) from error
        try:
            return [decode_job(row) for row in rows]
        except _UNREADABLE as error:
            raise self._unreadable(None, error) from error

    def take_over(self, job: SyncJob, status: JobStatus, owner: str, now: datetime) -> bool:
        # Only the move to interrupted (from running, or of a job already interrupted, which
        # is handed out again) stamps completed_at.
        stamp = (now - EPOCH) // MICROSECOND
        expected = (
            job.id,
            job.status.value,
            job.owner_id,
            _codec.encode_optional_time(job.heartbeat_at),
        )
        params: tuple[Any, ...]
        if status is JobStatus.INTERRUPTED:
            statement, params = (
                sql.TAKE_OVER_INTERRUPTED,
                (status.value, owner, stamp, stamp, *expected),
            )
        else:
            statement, params = sql.TAKE_OVER, (status.value, owner, stamp, *expected)
        count: int = self._run(ROWCOUNT, statement, params, "taking over a job")
        return count > 0

    # -- the rest of the interface -------------------------------------------------------------

    def max_concurrency(self) -> int:
        """The option ``pool_size`` (5 to 10, default 10): the most connections the storage
        opens, so the most calls it serves at once (writes then still take turns on the
        file's write lock). Raises nothing, also after :meth:`close`."""
        return self.options.pool_size

    def transaction(self) -> AbstractContextManager[None]:
        """A block on one connection that holds the write lock from its start (``BEGIN
        IMMEDIATE``): its reads see a consistent state, and a read-then-write in it never
        loses an update to another writer. Other threads' writes wait for it.

        :raises StorageBusyError: the write lock stayed taken for ``busy_timeout_ms``.
        :raises StorageError: the commit failed, or a storage failure inside the block (disk
            full, an I/O error, an unreadable row) doomed it, even if the caller caught that
            error; nothing of the block was stored.
        """
        return self._runner.transaction()

    def close(self) -> None:
        """Close every connection (one in use when it is given back); idempotent."""
        self._closed = True
        self._runner.close()

    def fault_injector(self) -> SqliteFaultInjector:
        """The seam through which tests make the next statement fail (see
        :class:`~cidx_jobs.backend.FaultInjector`)."""
        return self._faults

    # -- beyond the interface ------------------------------------------------------------------

    def backup(self, target: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the database to ``target`` while the store stays in use
        (SQLite's online backup; an existing file at ``target`` is overwritten). A new
        ``target`` gets the database's mode and owner (the owner only when run as root), an
        existing one loses any permission the database lacks.

        :raises ValidationError: ``target`` is the database or one of its ``-wal``, ``-shm``
            or ``-journal`` files (or those of another database), a folder, or a file that
            is not an SQLite database; nothing was written.
        :raises StoragePermissionError: ``target`` cannot be written.
        :raises StorageFullError: no space is left for ``target``.
        :raises StorageError: the copy failed; ``target`` may be incomplete.
        """
        destination = Path(target).absolute()
        check_backup_target(self._path, destination)
        with self._runner.connection(f"backing up {self._path}", destination) as conn:
            # The copy holds what the database holds: a new one gets the database's mode and
            # owner, and one it overwrites is never left readable by more users than that.
            try:
                if os.path.exists(destination):
                    keep = os.stat(destination).st_mode & os.stat(self._path).st_mode
                    os.chmod(destination, stat.S_IMODE(keep))
                else:  # a dangling link's target is created where the link points
                    create_like(Path(os.path.realpath(destination)), self._path)
            except OSError as error:
                raise _backup_error(destination, error) from error
            with contextlib.closing(sqlite3.connect(destination)) as copy:
                conn.backup(copy)

    # -- operator (the optional Storage methods; see _operations.py) --------------------

    def describe(self) -> StorageInfo:
        """The file, its size with the WAL, its schema version (and the migrations pending
        when the store was opened with ``migrate=false``) and the settings in force.

        :raises StorageError: SQLite failed.
        """
        return _operations.describe(self)

    def check_health(self, *, thorough: bool = False) -> list[HealthCheck]:
        """Integrity (``PRAGMA quick_check``, or ``integrity_check`` and
        ``foreign_key_check`` when ``thorough``), a recovery at open or damaged copies
        left beside the file, WAL mode and the WAL's size, the permissions and owners of
        the file, its ``-wal``/``-shm`` and its folder, free disk space, ``max_size_mb``,
        free pages and the settings in force. Reads only.

        :raises StorageError: SQLite failed (damage found by the check is a finding).
        """
        return _operations.check_health(self, thorough=thorough)

    def oldest_active(self) -> SyncJob | None:
        """The active job created first, in one indexed query per active status.

        :raises StorageError: SQLite failed.
        """
        return _operations.oldest_active(self)

    def top_users(self, limit: int) -> list[tuple[str, int]]:
        """The users with the most jobs, in one grouped query.

        :raises StorageError: SQLite failed.
        """
        return _operations.top_users(self, limit)

    def migrate(self) -> tuple[int, int]:
        """Switch the file to WAL mode and apply the pending migrations, in one transaction
        (for a store opened with ``migrate=false``; otherwise the open did it already).

        :returns: the schema version before and after.
        :raises SchemaVersionError: the file is newer than this release, or not ours.
        :raises StorageError: SQLite failed; the schema was not changed.
        """
        return _operations.migrate(self)

    def _unreadable(self, row: Any, error: BaseException) -> StorageCorruptError:
        """A stored row this backend cannot have written (edited by hand, or damaged).

        A storage failure like any other: it dooms the calling thread's open block.
        """
        where = f" (row {row[0]!r})" if row else ""
        self._runner.doom(f"an unreadable row{where}: {error!r}")
        return StorageCorruptError(
            f"{self._path} holds a row this backend cannot read{where}: {error!r}. It was "
            "changed outside cidx-jobs or is damaged; fix or delete the row, or restore the "
            "file from a backup"
        )


def _backup_error(target: Path, error: OSError) -> StorageError:
    """The cidx-jobs error for ``error``, raised while creating the backup file ``target``."""
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return StorageFullError(
            f"cannot create the backup {target}: no space is left on its disk "
            f"({error.strerror}); free space there or back up to another disk"
        )
    if isinstance(error, PermissionError) or error.errno == errno.EROFS:
        return StoragePermissionError(
            f"cannot create the backup {target}: {error.strerror}; back up to a folder the "
            "service user can write to"
        )
    return StorageError(f"cannot create the backup {target}: {error}")


def next_batch_size(size: int, elapsed: float, cap: int) -> int:
    """The size of the cleanup batch after one of ``size`` jobs that took ``elapsed`` seconds:
    scaled toward :data:`BATCH_SECONDS`, at most doubled or halved at a time (one slow
    or fast batch is often noise), and within 1..``cap``."""
    wanted = int(size * BATCH_SECONDS / max(elapsed, 1e-6))
    return max(1, min(cap, size * 2, max(size // 2, wanted)))


def _checkpoint_data(text: str) -> dict[str, Any]:
    # Stored data was validated on the way in; a row that is not a JSON object is damage.
    data = _codec.loads(text)
    if type(data) is not dict:
        raise ValueError(f"checkpoint data is a {type(data).__name__}, not a JSON object")
    return data
