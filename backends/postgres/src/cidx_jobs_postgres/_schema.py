"""The schema in its own PostgreSQL schema, and its versioned forward migrations.

A database is brought to :data:`SCHEMA_VERSION` by applying :data:`MIGRATIONS` in order,
in one transaction that first takes a transaction-scoped advisory lock on the schema's
name: N processes starting at once queue on that lock, and each one after the first finds
the version current and changes nothing. A fresh schema is one at version 0, so a migrated
database and a fresh one are built by the same statements.

Design choices, each against a trap:

* Times are ``timestamptz`` (UTC microseconds on disk): exact over years 1..9999, sorted
  correctly, and read back in UTC whatever the session's TimeZone (see ``_codec``).
* Metadata and checkpoint data are ``text`` holding core's exact JSON, not ``jsonb``:
  jsonb turns 1e300 into an integer, -0.0 into 0, reorders keys and rejects ``\\u0000``.
* Ids, user, project and phase are ``text COLLATE "C"``: pages are ordered by id, and
  core and the contract suite order ids by code point, which "C" on UTF-8 is; a database
  whose default collation is a locale's would order them differently.
* Checkpoints reference their job ``ON DELETE CASCADE``: a checkpoint never outlives its
  job, and cleanup deletes the jobs only.
* The indexes mirror the SQLite backend's query shapes (``cidx_jobs_sqlite._schema``), with
  ``id`` as a second key everywhere: PostgreSQL cannot finish a top-N with a small sort
  after an index scan as cheaply as SQLite does, and an index on ``(…, created_at DESC,
  id DESC)`` serves ``ORDER BY created_at DESC, id DESC LIMIT n`` and the keyset cursor
  ``(created_at, id) < (…)`` as one ordered index scan that stops at the limit.
"""

from __future__ import annotations

import attrs

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration"]

#: The active statuses, as SQL literals (kept in step with cidx_jobs.ACTIVE_STATUSES): the
#: predicate of the lease index as schema version 1 built it.
ACTIVE_SQL = "('pending', 'queued', 'running')"
#: The statuses whose job holds a lease, as SQL literals (kept in step with
#: cidx_jobs.LEASED_STATUSES: the active ones and interrupted). The lease statements name
#: them exactly as the predicate of the partial index sync_jobs_active_owner does since
#: schema version 2, so that the planner can prove the index applies.
LEASED_SQL = "('interrupted', 'pending', 'queued', 'running')"
TERMINAL_SQL = "('cancelled', 'completed', 'failed')"
FINISHED_SQL = "('cancelled', 'completed', 'failed', 'interrupted')"

_V1 = (
    """CREATE TABLE {schema}.sync_jobs (
    id            text COLLATE "C" NOT NULL PRIMARY KEY,
    user_id       text COLLATE "C" NOT NULL,
    project_id    text COLLATE "C" NOT NULL,
    status        text COLLATE "C" NOT NULL,
    progress      integer NOT NULL DEFAULT 0,
    phase         text,
    created_at    timestamptz NOT NULL,
    started_at    timestamptz,
    completed_at  timestamptz,
    error_message text,
    metadata      text NOT NULL DEFAULT '{{}}',
    owner_id      text COLLATE "C",
    heartbeat_at  timestamptz,
    lease_token   text COLLATE "C"
)""",
    """CREATE TABLE {schema}.job_checkpoints (
    job_id     text COLLATE "C" NOT NULL
               REFERENCES {schema}.sync_jobs (id) ON DELETE CASCADE,
    phase      text COLLATE "C" NOT NULL,
    data       text NOT NULL,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, phase)
)""",
    # A user's page, newest first: the job page of the server. One ordered index scan
    # that stops at LIMIT, for offset and keyset pages alike.
    "CREATE INDEX sync_jobs_user_created ON {schema}.sync_jobs (user_id, created_at DESC, id DESC)",
    # A user's page of one status (each status of several is read as its own range).
    "CREATE INDEX sync_jobs_user_status_created ON {schema}.sync_jobs "
    "(user_id, status, created_at DESC, id DESC)",
    # Every user's jobs of one status (all running jobs), newest first.
    "CREATE INDEX sync_jobs_status_created ON {schema}.sync_jobs "
    "(status, created_at DESC, id DESC)",
    # Every job newest first, and date ranges without a user.
    "CREATE INDEX sync_jobs_created ON {schema}.sync_jobs (created_at DESC, id DESC)",
    # Cleanup: finished jobs of a status by the time they finished; the expression is the
    # one in the cleanup's WHERE clause, so the planner matches it.
    "CREATE INDEX sync_jobs_status_finished ON {schema}.sync_jobs "
    "(status, (coalesce(completed_at, created_at)))",
    # heartbeat() (owner_id = ?) and recovery (stale leases) read only active jobs: the
    # partial index stays small however long the history grows.
    "CREATE INDEX sync_jobs_active_owner ON {schema}.sync_jobs (owner_id, heartbeat_at) "
    f"WHERE status IN {ACTIVE_SQL}",
)

# Interrupted jobs hold a lease too (cidx_jobs.LEASED_STATUSES): heartbeat() renews the
# interrupted jobs of its owner and recovery takes over those whose owner died, so the lease
# index holds them beside the active ones. An index's predicate cannot be altered: it is
# built again under the same name, in the migration's transaction (CREATE INDEX
# CONCURRENTLY cannot run in one); its DROP INDEX takes an ACCESS EXCLUSIVE lock, so reads
# and writes of sync_jobs wait until the build, which reads the table once, commits. An interrupted job stays in it only until it is resumed, finished, or deleted by
# cleanup a retention after its interruption, so the index still holds no history.
_V2 = (
    "DROP INDEX {schema}.sync_jobs_active_owner",
    "CREATE INDEX sync_jobs_active_owner ON {schema}.sync_jobs (owner_id, heartbeat_at) "
    f"WHERE status IN {LEASED_SQL}",
)


@attrs.frozen(kw_only=True)
class Migration:
    """One forward step of the schema.

    :ivar version: the schema version after this step.
    :ivar description: what the step changes, for the log and ``migrate --check``.
    :ivar statements: its SQL, with ``{schema}`` for the quoted schema name.
    """

    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="create sync_jobs and job_checkpoints with their indexes",
        statements=_V1,
    ),
    Migration(
        version=2,
        description="rebuild the lease index sync_jobs_active_owner with interrupted jobs in "
        "it, which heartbeats now renew and recovery takes over",
        statements=_V2,
    ),
)

#: The schema version this release writes; it reads versions 1 to this one.
SCHEMA_VERSION = MIGRATIONS[-1].version

#: The table that records the schema version: one row.
VERSION_TABLE = "cidx_schema_version"
CREATE_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS {schema}.cidx_schema_version "
    "(version integer NOT NULL, singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton))"
)
#: The advisory lock key of a schema's migrations: a 64-bit hash of its name, in the
#: lock space of this backend (two schemas migrate independently).
LOCK_KEY_SQL = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))"
