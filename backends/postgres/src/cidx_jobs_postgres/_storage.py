"""PostgresStorage: the storage interface over a per-process pool of connections to one
PostgreSQL database, with its tables in their own schema."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

import psycopg

from cidx_jobs import ACTIVE_STATUSES, Checkpoint, JobFilter, JobStatus, SyncJob
from cidx_jobs.backend import BackendConfig, HealthCheck, StatusChange, Storage, StorageInfo
from cidx_jobs.errors import (
    CidxJobsError,
    DuplicateJobError,
    SchemaVersionError,
    StorageCorruptError,
    UnsupportedOperationError,
)

from . import _codec, _health
from ._errors import translate
from ._options import PostgresOptions
from ._runner import ALL, NONE, ONE, ROWCOUNT, Execute, PostgresFaultInjector, Runner
from ._schema import (
    CREATE_VERSION_TABLE,
    LOCK_KEY_SQL,
    MIGRATIONS,
    SCHEMA_VERSION,
    VERSION_TABLE,
)
from ._statements import Statements, checkpoint_params, expired_params

logger = logging.getLogger("cidx_jobs.postgres")

#: What decoding a row this backend did not write can raise.
_UNREADABLE = (ValueError, StopIteration, KeyError, TypeError, OverflowError, CidxJobsError)


class PostgresStorage(Storage):
    """Jobs and checkpoints in one PostgreSQL database, in the tables of one schema; safe to
    share between threads, processes and hosts.

    Open it with ``cidx_jobs.open_persistence("postgresql://user@host:5432/db")``, which
    wraps it in a :class:`~cidx_jobs.JobPersistence` (reach it again as ``store.storage``).
    Opening connects once, creates the schema when it is missing and migrates it to
    :data:`~cidx_jobs_postgres.SCHEMA_VERSION` (under an advisory lock, so that processes
    starting at once migrate once). The connection pool is made at the first call, in the
    process that makes it.

    Every method raises a :class:`~cidx_jobs.errors.StorageError` subclass when the storage
    fails, never a psycopg exception, and such a call wrote nothing, except
    :class:`~cidx_jobs.errors.StorageOutcomeUnknownError` (the connection was lost while a
    COMMIT was in flight):

    * :class:`~cidx_jobs.errors.StorageBusyError`: a lock or statement timeout, a deadlock
      victim, a serialization failure inside a transaction block, or no free connection
      in the pool within ``connect_timeout``; retry later.
    * :class:`~cidx_jobs.errors.StorageUnavailableError`: the server cannot be reached, the
      connection was lost, the server is read-only (25006), or the store is closed.
    * :class:`~cidx_jobs.errors.StorageFullError`: the server is out of disk space (53100).
    * :class:`~cidx_jobs.errors.StoragePermissionError`: permission denied (42501), a
      wrong password, an unknown role.
    * :class:`~cidx_jobs.errors.StorageCorruptError`: the server reports damaged data.
    """

    def __init__(self, options: PostgresOptions) -> None:
        """Connect to the database ``options`` names and bring its schema up to date.

        :raises SchemaVersionError: the schema was written by a newer release.
        :raises StorageUnavailableError: the server cannot be reached, or the database does
            not exist (the message says so).
        :raises StoragePermissionError: the password or role is refused, or the role may not
            create the schema.
        :raises StorageError: PostgreSQL failed otherwise.
        """
        #: The options the storage was opened with.
        self.options = options
        self._runner = Runner(options)
        self._run = self._runner.run
        self._sql = Statements(options.schema)
        self._faults = PostgresFaultInjector(self._runner)
        self._pid = os.getpid()
        self._version = self._open()

    @classmethod
    def from_config(cls, config: BackendConfig) -> PostgresStorage:
        """The storage for a ``postgresql://`` or ``postgres://`` URL, or a mapping.

        :raises ConfigError: an option is unknown or invalid (the error names it), or the
            database name is missing; nothing was connected.
        :raises StorageError: as the constructor.
        """
        return cls(PostgresOptions.from_config(config))

    @property
    def schema(self) -> str:
        """The PostgreSQL schema that holds the tables."""
        return self.options.schema

    def __repr__(self) -> str:
        return f"<PostgresStorage {self.options.location}>"

    # -- opening and migrating -----------------------------------------------------------------

    def _open(self) -> int:
        conn = self._runner.connect("opening the job store")
        try:
            version = self._read_version(conn)
            if version > SCHEMA_VERSION:
                raise self._newer(version)
            if version < SCHEMA_VERSION and self.options.migrate:
                version = self._migrate(conn)[1]
            return version
        except psycopg.Error as error:
            raise translate(error, self._runner.where, "opening the job store") from error
        finally:
            conn.close()

    def _read_version(self, conn: psycopg.Connection[Any]) -> int:
        schema = self.options.schema
        # The catalog read as a table, with this statement's snapshot: to_regclass() would
        # use the catalog cache, which waiting for an advisory lock does not refresh, and so
        # miss the table that the process holding the lock just created.
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s)",
            (schema, VERSION_TABLE),
        ).fetchone()
        if row is None or not row[0]:
            return 0
        found = conn.execute(f'SELECT version FROM "{schema}".{VERSION_TABLE}').fetchone()
        return 0 if found is None else int(found[0])

    def _newer(self, version: int) -> SchemaVersionError:
        return SchemaVersionError(
            f"{self._runner.where} has schema version {version}, written by a newer release "
            f"of cidx-jobs-postgres; this release reads schema versions 1 to {SCHEMA_VERSION}. "
            "Upgrade cidx-jobs-postgres here (or use another schema); nothing was changed"
        )

    def _migrate(self, conn: psycopg.Connection[Any]) -> tuple[int, int]:
        """Apply the pending migrations in one transaction under the schema's advisory lock.

        :raises SchemaVersionError: the schema is newer than this release, or the schema
            holds tables but no version (not made by this backend).
        :raises psycopg.Error: PostgreSQL failed; nothing was changed.
        """
        schema = self.options.schema
        with conn.transaction():
            # Everyone starting at once queues here; the lock goes with the commit.
            conn.execute(LOCK_KEY_SQL, (f"cidx_jobs schema {schema}",))
            before = self._read_version(conn)
            if before > SCHEMA_VERSION:
                raise self._newer(before)
            if before == SCHEMA_VERSION:
                return before, before
            if before == 0:
                conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
                self._check_unversioned(conn)
                conn.execute(CREATE_VERSION_TABLE.format(schema=f'"{schema}"'))
                conn.execute(f'INSERT INTO "{schema}".{VERSION_TABLE} (version) VALUES (0)')
            for migration in MIGRATIONS:
                if migration.version <= before:
                    continue
                for statement in migration.statements:
                    conn.execute(statement.format(schema=f'"{schema}"'))
            conn.execute(f'UPDATE "{schema}".{VERSION_TABLE} SET version = %s', (SCHEMA_VERSION,))
        if before == 0:
            logger.info("created the job schema (version %d) in %s", SCHEMA_VERSION, self)
        else:
            logger.info("migrated %s from schema version %d to %d", self, before, SCHEMA_VERSION)
        return before, SCHEMA_VERSION

    def _check_unversioned(self, conn: psycopg.Connection[Any]) -> None:
        """Refuse to add tables to a schema some other program made."""
        rows = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm')",
            (self.options.schema,),
        ).fetchall()
        if rows:
            names = ", ".join(sorted(str(row[0]) for row in rows))
            raise SchemaVersionError(
                f"{self._runner.where}: the schema holds tables ({names}) but no cidx-jobs "
                "schema version; it was not made by cidx-jobs-postgres. Choose another "
                "schema with the option schema=...; nothing was changed"
            )

    # -- jobs ----------------------------------------------------------------------------------

    def insert_job(self, job: SyncJob, metadata_json: str) -> None:
        count = self._run(
            ROWCOUNT, self._sql.insert_job, _codec.job_params(job, metadata_json), "saving a job"
        )
        if count == 0:
            raise DuplicateJobError(job.id)

    def get_job(self, job_id: str) -> SyncJob | None:
        row = self._run(ONE, self._sql.select_job, (job_id,), "loading a job")
        return None if row is None else self._decode(row)

    def _decode(self, row: tuple[Any, ...]) -> SyncJob:
        try:
            return _codec.decode_job(row)
        except _UNREADABLE as error:
            raise self._unreadable(repr(row[0]), error) from error

    def set_status(self, job_id: str, change: StatusChange) -> bool:
        statement, params = self._sql.status_statement(job_id, change)
        count: int = self._run(ROWCOUNT, statement, params, "updating a job's status")
        return count > 0

    def set_progress(
        self, job_id: str, progress: int, phase: str | None, *, fence: str | None = None
    ) -> bool:
        sql = self._sql
        params: tuple[Any, ...]
        if fence is not None:
            if phase is None:
                statement, params = sql.set_progress_fenced, (progress, job_id, fence)
            else:
                statement, params = sql.set_progress_phase_fenced, (progress, phase, job_id, fence)
        elif phase is None:
            statement, params = sql.set_progress, (progress, job_id)
        else:
            statement, params = sql.set_progress_phase, (progress, phase, job_id)
        count: int = self._run(ROWCOUNT, statement, params, "updating a job's progress")
        return count > 0

    def select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        statement, params = self._sql.select_statement(filter, after, limit)
        rows = self._run(ALL, statement, params, "querying jobs")
        return [self._decode(row) for row in rows]

    def count_jobs(self, filter: JobFilter) -> int:
        statement, params = self._sql.count_statement(filter)
        return int(self._run(ONE, statement, params, "counting jobs")[0])

    def count_expired(self, cutoffs: Mapping[JobStatus, datetime]) -> tuple[int, int]:
        if not cutoffs:
            return 0, 0
        row = self._run(
            ONE,
            self._sql.count_expired_sql(len(cutoffs)),
            expired_params(cutoffs),
            "counting expired jobs",
        )
        return int(row[0]), int(row[1])

    def delete_expired(self, cutoffs: Mapping[JobStatus, datetime], limit: int) -> tuple[int, int]:
        """Delete one batch of at most ``limit`` expired jobs and their checkpoints, in one
        transaction that first takes the schema's cleanup advisory lock (so the cleanups of
        several instances take turns batch by batch) and skips rows other writers hold.
        """
        if not cutoffs:
            return 0, 0
        sql = self._sql
        params = [*expired_params(cutoffs), limit]

        def batch(execute: Execute) -> tuple[int, int]:
            execute(NONE, sql.cleanup_lock, (sql.cleanup_lock_key,))
            row = execute(ONE, sql.delete_expired_sql(len(cutoffs)), params)
            return int(row[0]), int(row[1])

        return self._runner.unit("deleting expired jobs", batch)

    # -- checkpoints ---------------------------------------------------------------------------

    def upsert_checkpoint(
        self, checkpoint: Checkpoint, data_json: str, *, fence: str | None = None
    ) -> bool:
        params = checkpoint_params(checkpoint, data_json)
        if fence is None:
            statement = self._sql.upsert_checkpoint
        else:
            statement, params = self._sql.upsert_checkpoint_fenced, (*params, fence)
        count: int = self._run(ROWCOUNT, statement, params, "saving a checkpoint")
        return count > 0

    def get_checkpoint(self, job_id: str, phase: str) -> Checkpoint | None:
        row = self._run(ONE, self._sql.select_checkpoint, (job_id, phase), "loading a checkpoint")
        if row is None:
            return None
        try:
            _codec.check_time("created_at", row[1])
            return Checkpoint.from_trusted(
                job_id=job_id, phase=phase, data=_codec.checkpoint_data(row[0]), created_at=row[1]
            )
        except _UNREADABLE as error:
            raise self._unreadable(f"{job_id!r}, {phase!r}", error) from error

    def get_checkpoint_data(self, job_id: str, phase: str) -> dict[str, Any] | None:
        row = self._run(
            ONE, self._sql.select_checkpoint_data, (job_id, phase), "loading a checkpoint"
        )
        if row is None:
            return None
        try:
            return _codec.checkpoint_data(row[0])
        except _UNREADABLE as error:
            raise self._unreadable(f"{job_id!r}, {phase!r}", error) from error

    def get_checkpoints(self, job_id: str) -> list[Checkpoint]:
        rows = self._run(ALL, self._sql.select_checkpoints, (job_id,), "listing checkpoints")
        try:
            for _, _, created_at in rows:
                _codec.check_time("created_at", created_at)
            return [
                Checkpoint.from_trusted(
                    job_id=job_id,
                    phase=phase,
                    data=_codec.checkpoint_data(data),
                    created_at=created_at,
                )
                for phase, data, created_at in rows
            ]
        except _UNREADABLE as error:
            raise self._unreadable(repr(job_id), error) from error

    # -- leases --------------------------------------------------------------------------------

    def renew_leases(self, owner: str, now: datetime) -> int:
        count: int = self._run(
            ROWCOUNT, self._sql.renew_leases, (now, owner), "renewing job leases"
        )
        return count

    def find_stale(self, before: datetime, exclude_owner: str, limit: int) -> list[SyncJob]:
        rows = self._run(
            ALL,
            self._sql.find_stale,
            (exclude_owner, before, limit),
            "finding jobs with expired leases",
        )
        return [self._decode(row) for row in rows]

    def take_over(self, job: SyncJob, status: JobStatus, owner: str, now: datetime) -> bool:
        sql = self._sql
        statement = sql.take_over_interrupted if status is JobStatus.INTERRUPTED else sql.take_over
        params = {
            "status": status.value,
            "owner": owner,
            "now": now,
            "id": job.id,
            "old_status": job.status.value,
            "old_owner": job.owner_id,
            "old_heartbeat": job.heartbeat_at,
        }
        count: int = self._run(ROWCOUNT, statement, params, "taking over a job")  # type: ignore[arg-type]
        return count > 0

    # -- the rest of the interface -------------------------------------------------------------

    def max_concurrency(self) -> int:
        """The option ``pool_max`` (1 to 100, default 10): the most connections the pool of
        this process opens, so the most calls it serves at once. Raises nothing, also after
        :meth:`close`."""
        return self.options.pool_max

    def transaction(self) -> AbstractContextManager[None]:
        """A block on one connection in REPEATABLE READ: its reads see one snapshot, and a
        block that writes a row another transaction changed since fails with
        :class:`~cidx_jobs.errors.StorageBusyError` (nothing stored; retry the block),
        so a read-then-write block never loses an update.

        :raises StorageBusyError: a serialization failure, deadlock, or lock or statement
            timeout; nothing of the block was stored.
        :raises StorageError: the commit failed, or a failure inside the block doomed it.
        """
        return self._runner.transaction()

    def close(self) -> None:
        """Close the pool; idempotent. Afterwards every method raises
        :class:`~cidx_jobs.errors.StorageUnavailableError`."""
        self._runner.close()

    def fault_injector(self) -> PostgresFaultInjector:
        """The seam through which tests make the next statement fail."""
        return self._faults

    # -- operator methods ----------------------------------------------------------------------

    def server_time(self) -> datetime:
        """The database server's clock (``now()``), aware and in UTC.

        :raises StorageError: PostgreSQL failed.
        """
        row = self._run(ONE, self._sql.server_time, (), "reading the server's clock")
        value: datetime = row[0]
        return value

    def top_users(self, limit: int) -> list[tuple[str, int]]:
        """The users with the most jobs, in one grouped query.

        :raises StorageError: PostgreSQL failed.
        """
        rows = self._run(ALL, self._sql.top_users, (limit,), "counting jobs per user")
        return [(str(user), int(count)) for user, count in rows]

    def oldest_active(self) -> SyncJob | None:
        """The active job created first, in one indexed query per active status.

        :raises StorageError: PostgreSQL failed.
        """
        found: list[SyncJob] = []
        for status in sorted(ACTIVE_STATUSES):
            row = self._run(
                ONE, self._sql.oldest_active, (status.value,), "finding the oldest active job"
            )
            if row is not None:
                found.append(self._decode(row))
        return min(found, key=lambda job: (job.created_at, job.id), default=None)

    def check_health(self, *, thorough: bool = False) -> list[HealthCheck]:
        """The backend's read-only self-check for ``cidx-jobs doctor``: the schema's tables
        and indexes, the server, connections, long transactions, lock waits, vacuum and
        the settings; with ``thorough``, exact row counts and amcheck's ``bt_index_check``.

        :raises StorageError: PostgreSQL failed.
        """
        return _health.check_health(self, thorough=thorough)

    def describe(self) -> StorageInfo:
        """The server, database and schema, the schema version and the settings in force.

        :raises StorageError: PostgreSQL failed.
        """
        options = self.options
        pending = tuple(
            f"{migration.version}: {migration.description}"
            for migration in MIGRATIONS
            if migration.version > self._version
        )
        size = self._run(
            ONE,
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s "
            "AND c.relkind = 'r'",
            (options.schema,),
            "measuring the schema",
        )
        return StorageInfo(
            location=options.location,
            size_bytes=int(size[0]),
            schema_version=self._version,
            latest_schema_version=SCHEMA_VERSION,
            pending_migrations=pending,
            settings={
                "pool_min": str(options.pool_min),
                "pool_max": str(options.pool_max),
                "connect_timeout": str(options.connect_timeout),
                "statement_timeout_ms": str(options.statement_timeout_ms),
                "lock_timeout_ms": str(options.lock_timeout_ms),
                "idle_in_transaction_timeout_ms": str(options.idle_in_transaction_timeout_ms),
                "prepare_threshold": str(options.prepare_threshold),
                "check_connections": str(options.check_connections).lower(),
                "keepalives": str(options.keepalives).lower(),
                "keepalives_idle": str(options.keepalives_idle),
                "keepalives_interval": str(options.keepalives_interval),
                "keepalives_count": str(options.keepalives_count),
                "tcp_user_timeout_ms": str(options.tcp_user_timeout_ms),
            },
        )

    def migrate(self) -> tuple[int, int]:
        """Apply the pending migrations, all or nothing, under the schema's advisory lock.

        :returns: the schema version before and after.
        :raises SchemaVersionError: the schema is newer than this release, or not ours.
        :raises StorageError: PostgreSQL failed; nothing was changed.
        """
        conn = self._runner.connect("migrating the job schema")
        try:
            before, after = self._migrate(conn)
        except psycopg.Error as error:
            raise translate(error, self._runner.where, "migrating the job schema") from error
        finally:
            conn.close()
        self._version = after
        return before, after

    def backup(self, target: str | os.PathLike[str]) -> None:
        """Not offered: a server's data is backed up with its own tools.

        :raises UnsupportedOperationError: always; the message names pg_dump.
        """
        raise UnsupportedOperationError(
            f"back up PostgreSQL with its own tools: pg_dump -Fc -n {self.options.schema} "
            f"{self.options.database} (or a base backup); cidx-jobs cannot copy a server's "
            "data to a file",
            operation="backup",
        )

    def _unreadable(self, where: str, error: BaseException) -> StorageCorruptError:
        """A stored row this backend cannot have written (edited by hand, or damaged)."""
        state = self._runner._state
        if state.conn is not None and state.aborted is None:
            state.aborted = f"an unreadable row ({where})"
        return StorageCorruptError(
            f"{self._runner.where} holds a row this backend cannot read ({where}): {error!r}. "
            "It was changed outside cidx-jobs; fix or delete the row"
        )


__all__ = ["PostgresStorage"]
