"""The schema and its forward migrations, versioned with ``PRAGMA user_version``.

A database's schema is built by applying :data:`MIGRATIONS` in order, from the
version it has to :data:`SCHEMA_VERSION`, in one ``BEGIN IMMEDIATE``
transaction; a fresh database is simply one at version 0. So a migrated
database and a fresh one are built by the same statements, and the tests
compare them anyway.

To change the schema, append a :class:`Migration` with the next version number;
never edit a released one. A step that rebuilds a table (SQLite's twelve-step
``ALTER TABLE`` procedure) sets ``rebuilds_tables`` so that foreign keys are
switched off around it and checked before the commit.

Every secondary index costs each write that touches it (3 to 10 µs per insert on
the benchmark machine) and is kept because a query shape needs it: what each one
costs and what removing it would cost are measured by ``python -m cidx_jobs_bench
--only indexes`` and shown in docs/performance.md ("Indexes: what each one costs
and buys"). Measure a new index, or a changed one, the same way before adding it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import attrs

from cidx_jobs.errors import SchemaVersionError, StorageError

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "apply_migrations", "read_version"]

logger = logging.getLogger("cidx_jobs.sqlite")

#: The terminal statuses, as SQL literals (kept in step with cidx_jobs.TERMINAL_STATUSES).
TERMINAL_SQL = "('cancelled', 'completed', 'failed')"
#: The active statuses, as SQL literals (kept in step with cidx_jobs.ACTIVE_STATUSES; the
#: benchmark's query shapes use it).
ACTIVE_SQL = "('pending', 'queued', 'running')"
#: The statuses whose job holds a lease (kept in step with cidx_jobs.LEASED_STATUSES: the
#: active ones and interrupted), as SQL literals. The lease statements name them exactly as
#: the WHERE clause of the partial index ``sync_jobs_active_owner`` does since schema version
#: 6: SQLite uses a partial index only for a query whose WHERE clause contains the index's
#: own terms (``status IN`` the active statuses alone does not imply this list).
LEASED_SQL = "('interrupted', 'pending', 'queued', 'running')"
#: The statuses that are not active, as SQL literals (kept in step with
#: cidx_jobs.FINISHED_STATUSES): a job of one of them has stopped, at its ``completed_at``.
FINISHED_SQL = "('cancelled', 'completed', 'failed', 'interrupted')"

# Datetimes are INTEGER microseconds since 1970-01-01 UTC: exact, compact, ordered, and
# free of the numeric-affinity trap of columns declared TIMESTAMP or JSON. Text columns are
# declared TEXT for the same reason.
_V1 = (
    """CREATE TABLE sync_jobs (
    id            TEXT    NOT NULL PRIMARY KEY,
    user_id       TEXT    NOT NULL,
    project_id    TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    progress      INTEGER NOT NULL DEFAULT 0,
    phase         TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    completed_at  INTEGER,
    error_message TEXT,
    metadata      TEXT    NOT NULL DEFAULT '{}'
)""",
    """CREATE TABLE job_checkpoints (
    job_id     TEXT    NOT NULL REFERENCES sync_jobs (id) ON DELETE CASCADE,
    phase      TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, phase)
)""",
    # A user's page, filtered by status and date, newest first. Ties on created_at (rare at
    # microsecond resolution) are ordered by id in a small sort; leaving id out of the
    # indexes halves their size.
    "CREATE INDEX sync_jobs_user_status_created ON sync_jobs (user_id, status, created_at DESC)",
    # A user's page over every status.
    "CREATE INDEX sync_jobs_user_created ON sync_jobs (user_id, created_at DESC)",
    # Every user's jobs of some status (e.g. all running jobs), newest first.
    "CREATE INDEX sync_jobs_status_created ON sync_jobs (status, created_at DESC)",
    # Every job, newest first, and date ranges without a user.
    "CREATE INDEX sync_jobs_created ON sync_jobs (created_at DESC)",
    # Cleanup: finished jobs of a status by the time they finished. Matches the expression
    # in the cleanup's WHERE clause exactly, so SQLite can use it.
    "CREATE INDEX sync_jobs_status_finished ON sync_jobs (status, coalesce(completed_at, created_at))",
)

# Job leases. Rows of version 1 get NULL in both columns: no owner, and a lease that
# recovery treats as expired, which is right for jobs from before leases existed.
_V2 = (
    # The store instance that owns the job (host:pid:random).
    "ALTER TABLE sync_jobs ADD COLUMN owner_id TEXT",
    # When the owner last renewed its lease (microseconds since the epoch, UTC).
    "ALTER TABLE sync_jobs ADD COLUMN heartbeat_at INTEGER",
    # heartbeat(): an owner's active jobs (owner_id = ?), and recovery at start: the active
    # jobs whose lease expired, read from this index alone, without touching a row that
    # does not qualify. Only active jobs are in it, so it stays small however long the
    # history grows, and finishing a job removes it from the index.
    "CREATE INDEX sync_jobs_active_owner ON sync_jobs (owner_id, heartbeat_at) "
    "WHERE status IN ('pending', 'queued', 'running')",
)


# Every job, newest first, with id as the tie-breaker the order needs: with both keys in
# the index, a page by offset walks index entries and reads only the rows it returns
# (see 'page 500 by offset' in docs/performance.md); without id, SQLite sorts every skipped row.
_V3 = (
    "DROP INDEX sync_jobs_created",
    "CREATE INDEX sync_jobs_created ON sync_jobs (created_at DESC, id DESC)",
)


# Fenced leases: the token of the lease a worker holds on a running job (JobPersistence.
# claim_job). Rows of earlier versions get NULL: no lease, which no fenced write matches.
_V4 = ("ALTER TABLE sync_jobs ADD COLUMN lease_token TEXT",)


#: Gives every interrupted job without a ``completed_at`` the best estimate of when it
#: stopped: its last sign of life. For a job recovery interrupted, ``heartbeat_at`` is
#: exactly the take-over (recovery sets it, and the releases that wrote such rows, before
#: version 6, renewed only active jobs); for one
#: interrupted by a status change, its owner's last heartbeat before. Releases before
#: version 5 left ``completed_at`` empty on a move to interrupted, so cleanup measured such a
#: job's retention from ``created_at`` and could delete, with its checkpoints, a job recovery
#: had just handed out. A data change only: no column or index changes (the index
#: ``sync_jobs_status_finished`` is updated with the rows). Idempotent, so that it can also
#: serve rows salvaged from a file written before version 5.
STAMP_INTERRUPTED = (
    "UPDATE sync_jobs SET completed_at = coalesce(heartbeat_at, started_at, created_at) "
    "WHERE status = 'interrupted' AND completed_at IS NULL"
)
_V5 = (STAMP_INTERRUPTED,)


# Interrupted jobs hold a lease too (cidx_jobs.LEASED_STATUSES): heartbeat() renews the
# interrupted jobs of its owner, and recovery takes over those whose owner died, so the
# lease index holds them beside the active ones. SQLite cannot alter an index's WHERE
# clause: the index is built again, under the same name (the lease statements name it in
# INDEXED BY). An interrupted job stays in it only until it is resumed, finished, or deleted
# by cleanup a retention after its interruption, so the index still holds no history.
_V6 = (
    "DROP INDEX sync_jobs_active_owner",
    "CREATE INDEX sync_jobs_active_owner ON sync_jobs (owner_id, heartbeat_at) "
    f"WHERE status IN {LEASED_SQL}",
)


@attrs.frozen(kw_only=True)
class Migration:
    """One forward step of the schema.

    :ivar version: the schema version the database has after this step.
    :ivar description: what the step changes, for the log.
    :ivar statements: the SQL statements of the step, run in order.
    :ivar run: an optional function run after the statements (for data changes).
    :ivar rebuilds_tables: the step recreates a table; foreign keys are off around it.
    """

    version: int
    description: str
    statements: tuple[str, ...]
    run: Callable[[sqlite3.Connection], None] | None = None
    rebuilds_tables: bool = False


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="create sync_jobs and job_checkpoints with their indexes",
        statements=_V1,
    ),
    Migration(
        version=2,
        description="add the job lease columns owner_id and heartbeat_at, and their index",
        statements=_V2,
    ),
    Migration(
        version=3,
        description="order the index sync_jobs_created by id as well, for deep offset pages",
        statements=_V3,
    ),
    Migration(
        version=4,
        description="add the lease token column lease_token, for fenced writes",
        statements=_V4,
    ),
    Migration(
        version=5,
        description="stamp completed_at of interrupted jobs that have none with their last "
        "heartbeat (or start, or creation), so their retention counts from the interruption",
        statements=_V5,
    ),
    Migration(
        version=6,
        description="rebuild the lease index sync_jobs_active_owner with interrupted jobs in "
        "it, which heartbeats now renew and recovery takes over",
        statements=_V6,
    ),
)

#: The schema version this release writes; it reads databases of versions 0 to this one.
SCHEMA_VERSION = MIGRATIONS[-1].version

#: The tables this backend owns.
TABLES = ("sync_jobs", "job_checkpoints")


def read_version(conn: sqlite3.Connection) -> int:
    """The database's schema version (``PRAGMA user_version``)."""
    row = conn.execute("PRAGMA user_version").fetchone()
    return int(row[0])


def newer_version_error(path: Path, version: int) -> SchemaVersionError:
    return SchemaVersionError(
        f"{path} has schema version {version}, written by a newer release of "
        f"cidx-jobs-sqlite; this release reads schema versions 1 to {SCHEMA_VERSION}. "
        "Upgrade cidx-jobs-sqlite on this machine (or open another file); the database "
        "was not changed"
    )


def apply_migrations(
    conn: sqlite3.Connection,
    path: Path,
    begin: Callable[[sqlite3.Connection], None],
    target: int = SCHEMA_VERSION,
) -> tuple[int, int]:
    """Bring the database up to ``target`` in one transaction; idempotent.

    :param begin: starts the write transaction (``BEGIN IMMEDIATE``, retrying while busy).
    :param target: the version to stop at (tests build old versions with it).
    :returns: (version before, version after).
    :raises SchemaVersionError: the database is newer than this release, or it is not a
        cidx-jobs database.
    :raises sqlite3.Error: SQLite failed; nothing was changed.
    """
    version = read_version(conn)
    if version > SCHEMA_VERSION:
        raise newer_version_error(path, version)
    if version >= target:
        return version, version
    steps = [m for m in MIGRATIONS if m.version <= target]
    rebuild = any(m.rebuilds_tables for m in steps if m.version > version)
    if rebuild:
        # Only possible outside a transaction; checked with foreign_key_check before commit.
        conn.execute("PRAGMA foreign_keys = OFF")
    try:
        begin(conn)
        try:
            # Another process may have migrated while this one waited for the lock.
            version = read_version(conn)
            if version > SCHEMA_VERSION:
                raise newer_version_error(path, version)
            if version >= target:
                conn.execute("ROLLBACK")
                return version, version
            if version == 0:
                _check_unversioned(conn, path)
            for migration in steps:
                if migration.version <= version:
                    continue
                for statement in migration.statements:
                    conn.execute(statement)
                if migration.run is not None:
                    migration.run(conn)
            if rebuild and conn.execute("PRAGMA foreign_key_check").fetchone() is not None:
                raise StorageError(
                    f"migrating {path} would break foreign keys; the database was not changed"
                )
            # PRAGMA takes no parameters; target is an int.
            conn.execute(f"PRAGMA user_version = {int(target)}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        if rebuild:
            conn.execute("PRAGMA foreign_keys = ON")
    if version == 0:
        logger.info("created the job database schema (version %d) in %s", target, path)
    elif version < target:
        logger.info(
            "migrated the job database %s from schema version %d to %d", path, version, target
        )
    return version, target


def _check_unversioned(conn: sqlite3.Connection, path: Path) -> None:
    """Refuse to add tables to a database some other program made."""
    names = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    if names:
        raise SchemaVersionError(
            f"{path} is an SQLite database without a cidx-jobs schema version (it has the "
            f"tables {', '.join(sorted(names))}); it was not made by cidx-jobs-sqlite. "
            "Point the sqlite backend at a new file; the database was not changed"
        )
