"""Every SQL statement the storage runs, and the builders of those that depend on the call.

The text lives here, apart from the code that runs it, so that what reaches SQLite reads
in one place (and the benchmark's raw-sqlite3 floor imports exactly these statements).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cidx_jobs import ACTIVE_STATUSES, TERMINAL_STATUSES, Checkpoint, JobFilter, JobStatus
from cidx_jobs.backend import StatusChange

from ._codec import EPOCH, JOB_COLUMNS, JOB_COLUMNS_SQL, MICROSECOND, encode_time
from ._schema import FINISHED_SQL, LEASED_SQL, TERMINAL_SQL

# -- fixed statements --------------------------------------------------------------------------

INSERT_JOB = (
    f"INSERT INTO sync_jobs ({JOB_COLUMNS_SQL}) VALUES ({', '.join('?' * len(JOB_COLUMNS))})"
)
INSERT_CHECKPOINT = (
    "INSERT INTO job_checkpoints (job_id, phase, data, created_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (job_id, phase) DO UPDATE SET data = excluded.data, "
    "created_at = excluded.created_at"
)
SELECT_JOB = f"SELECT {JOB_COLUMNS_SQL} FROM sync_jobs WHERE id = ?"
SET_PROGRESS = "UPDATE sync_jobs SET progress = ? WHERE id = ?"
SET_PROGRESS_PHASE = "UPDATE sync_jobs SET progress = ?, phase = ? WHERE id = ?"
# Fenced writes: the lease is checked in the statement that writes, so no other writer can
# come between the check and the write.
FENCE = "status = 'running' AND lease_token = ?"
SET_PROGRESS_FENCED = f"{SET_PROGRESS} AND {FENCE}"
SET_PROGRESS_PHASE_FENCED = f"{SET_PROGRESS_PHASE} AND {FENCE}"
# INSERT ... SELECT needs its WHERE for SQLite to parse the ON CONFLICT clause after it.
INSERT_CHECKPOINT_FENCED = (
    "INSERT INTO job_checkpoints (job_id, phase, data, created_at) SELECT ?, ?, ?, ? "
    f"WHERE EXISTS (SELECT 1 FROM sync_jobs WHERE id = ? AND {FENCE}) "
    "ON CONFLICT (job_id, phase) DO UPDATE SET data = excluded.data, "
    "created_at = excluded.created_at"
)
SELECT_CHECKPOINT = "SELECT data, created_at FROM job_checkpoints WHERE job_id = ? AND phase = ?"
SELECT_CHECKPOINT_DATA = "SELECT data FROM job_checkpoints WHERE job_id = ? AND phase = ?"
SELECT_CHECKPOINTS = (
    "SELECT phase, data, created_at FROM job_checkpoints WHERE job_id = ? "
    "ORDER BY created_at, phase"
)
# The lease statements read the partial index sync_jobs_active_owner, which holds only the
# jobs that carry a lease: active and interrupted ones (cidx_jobs.LEASED_STATUSES, schema
# version 6). They name those statuses exactly as its WHERE clause does (SQLite uses a
# partial index only then), and INDEXED BY pins the plan: left to itself the planner
# prefers the equality on status of sync_jobs_status_finished, which reads every active
# row, and a term that stopped matching the index would fail loudly ("no query solution")
# instead of silently scanning.
RENEW_LEASES = (
    "UPDATE sync_jobs INDEXED BY sync_jobs_active_owner SET heartbeat_at = ? "
    f"WHERE owner_id = ? AND status IN {LEASED_SQL}"
)
# Recovery scans the small index, tests owner and heartbeat in it, and reads only the rows
# of stale jobs.
FIND_STALE = (
    f"SELECT {JOB_COLUMNS_SQL} FROM sync_jobs INDEXED BY sync_jobs_active_owner "
    f"WHERE status IN {LEASED_SQL} AND owner_id IS NOT ? "
    "AND (heartbeat_at IS NULL OR heartbeat_at < ?) LIMIT ?"
)
# A compare-and-set on the lease as FIND_STALE read it (status included, so it takes an
# active or an interrupted job alike); IS compares NULLs as equal.
TAKE_OVER = (
    "UPDATE sync_jobs SET status = ?, owner_id = ?, heartbeat_at = ?, lease_token = NULL "
    "WHERE id = ? AND status = ? AND owner_id IS ? AND heartbeat_at IS ?"
)
# The take-over to interrupted also stamps completed_at (with the same time as heartbeat_at,
# given twice: numbered parameters with a sequence are deprecated from Python 3.12): the
# retention of a job recovery hands out counts from the hand-out, not from a created_at
# that may be older than the retention. Unconditionally, unlike StatusChange's rule for a
# move from interrupted to interrupted: a job already interrupted that recovery takes from
# a dead owner is handed out again, and cleanup must not delete it before it is resumed.
TAKE_OVER_INTERRUPTED = (
    "UPDATE sync_jobs SET status = ?, owner_id = ?, heartbeat_at = ?, completed_at = ?, "
    "lease_token = NULL WHERE id = ? AND status = ? AND owner_id IS ? AND heartbeat_at IS ?"
)
#: Copies the write-ahead log into the database without waiting for readers or writers.
WAL_CHECKPOINT = "PRAGMA wal_checkpoint(PASSIVE)"
#: Writes take the write lock at the start: a deferred read-then-write transaction fails
#: with "database is locked" at once, busy timeout or not.
BEGIN = "BEGIN IMMEDIATE"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"

ORDER = "ORDER BY created_at DESC, id DESC"
_ALL_STATUSES = len(JobStatus)


def checkpoint_params(checkpoint: Checkpoint, data_json: str) -> tuple[Any, ...]:
    """The parameters of :data:`INSERT_CHECKPOINT`."""
    return (
        checkpoint.job_id,
        checkpoint.phase,
        data_json,
        (checkpoint.created_at - EPOCH) // MICROSECOND,
    )


# -- status changes ----------------------------------------------------------------------------


def status_sql(
    status: JobStatus,
    has_error: bool,
    expected: frozenset[JobStatus] | None,
    takes_lease: bool = False,
    fenced: bool = False,
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
            sets.append("lease_token = ?")
    if status in TERMINAL_STATUSES:
        # Entering a terminal status stamps completed_at; moving between terminal
        # statuses keeps it.
        sets.append(
            f"completed_at = CASE WHEN status IN {TERMINAL_SQL} AND completed_at IS NOT NULL "
            "THEN completed_at ELSE ? END"
        )
    elif status in ACTIVE_STATUSES:
        sets.append("completed_at = NULL")
    else:
        # Interrupted: stamped when the job stops (from an active status), so that its
        # retention counts from the interruption; a finished job keeps its stamp.
        sets.append(
            f"completed_at = CASE WHEN status IN {FINISHED_SQL} AND completed_at IS NOT NULL "
            "THEN completed_at ELSE ? END"
        )
    if has_error:
        sets.append("error_message = ?")
    where = "id = ?"
    if expected is not None:
        allowed = ", ".join(f"'{value}'" for value in sorted(s.value for s in expected))
        where += f" AND status IN ({allowed})"
    elif status in ACTIVE_STATUSES:
        # Last write wins, but a finished job never goes back to an active status.
        where += f" AND status NOT IN {TERMINAL_SQL}"
    if fenced:
        where += f" AND {FENCE}"
    return f"UPDATE sync_jobs SET {', '.join(sets)} WHERE {where}"


_status_cache: dict[tuple[JobStatus, bool, frozenset[JobStatus] | None, bool, bool], str] = {}


def status_statement(job_id: str, change: StatusChange) -> tuple[str, list[Any]]:
    """The UPDATE of :func:`status_sql` for ``change`` (cached by its shape) and its parameters."""
    status = change.status
    has_error = change.error_message is not None
    owner = change.owner
    takes_lease = owner is not None and status is JobStatus.RUNNING
    fenced = change.fence is not None
    key = (status, has_error, change.expected, takes_lease, fenced)
    sql = _status_cache.get(key)
    if sql is None:
        # A plain dict, not lru_cache: the shapes are few, and a dict read is the cheapest.
        sql = _status_cache[key] = status_sql(
            status, has_error, change.expected, takes_lease, fenced
        )
    now = (change.now - EPOCH) // MICROSECOND
    params: list[Any] = [status.value]
    if status is JobStatus.RUNNING:
        params.append(now)
        if takes_lease:
            params.append(owner)
            params.append(now)
            params.append(change.lease)
    if status not in ACTIVE_STATUSES:
        params.append(now)
    if has_error:
        params.append(change.error_message)
    params.append(job_id)
    if fenced:
        params.append(change.fence)
    return sql, params


# -- queries -----------------------------------------------------------------------------------


def status_values(statuses: frozenset[JobStatus] | None) -> list[str]:
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
    if filter.owner_id is not None:
        params.append(filter.owner_id)
    if filter.created_after is not None:
        params.append(encode_time(filter.created_after))
    if filter.created_before is not None:
        params.append(encode_time(filter.created_before))
    if after is not None:
        params.append(encode_time(after[0]))
        params.append(after[1])
    return params


def _common_conditions(
    user: bool, project: bool, owner: bool, created_after: bool, created_before: bool, keyset: bool
) -> list[str]:
    conditions = []
    if user:
        conditions.append("user_id = ?")
    if project:
        conditions.append("project_id = ?")
    if owner:
        conditions.append("owner_id = ?")
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
def select_sql(
    user: bool,
    project: bool,
    created_after: bool,
    created_before: bool,
    keyset: bool,
    statuses: int,
    owner: bool = False,
) -> str:
    """The SELECT of one page for a filter of this shape.

    With several statuses, each status is read newest first from its own index range
    (user, status, created_at) and the ranges are merged: reading one range in order
    with a filter could scan a user's whole history to find a rare status, and an
    IN list over the index would sort every match before the LIMIT applies.
    """
    common = _common_conditions(user, project, owner, created_after, created_before, keyset)
    if statuses <= 1:
        conditions = (["status = ?"] if statuses == 1 else []) + common
        return (
            f"SELECT {JOB_COLUMNS_SQL} FROM sync_jobs{_where(conditions)} {ORDER} LIMIT ? OFFSET ?"
        )
    branch = (
        "SELECT * FROM (SELECT rowid AS r, created_at AS c, id AS i FROM sync_jobs"
        f"{_where(['status = ?', *common])} {ORDER} LIMIT ?)"
    )
    merged = " UNION ALL ".join([branch] * statuses)
    return (
        f"SELECT {JOB_COLUMNS_SQL} FROM sync_jobs WHERE rowid IN "
        f"(SELECT r FROM ({merged} ORDER BY c DESC, i DESC LIMIT ? OFFSET ?)) {ORDER}"
    )


def select_statement(
    filter: JobFilter, after: tuple[datetime, str] | None, limit: int
) -> tuple[str, list[Any]]:
    """The SELECT of :func:`select_sql` for one page of ``filter`` and its parameters."""
    statuses = status_values(filter.statuses)
    common = _common_params(filter, after)
    sql = select_sql(
        filter.user_id is not None,
        filter.project_id is not None,
        filter.created_after is not None,
        filter.created_before is not None,
        after is not None,
        len(statuses),
        filter.owner_id is not None,
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
    return sql, params


@functools.lru_cache(maxsize=128)
def count_sql(
    user: bool,
    project: bool,
    created_after: bool,
    created_before: bool,
    statuses: int,
    owner: bool = False,
) -> str:
    """The count of the jobs that match a filter of this shape."""
    conditions = _common_conditions(user, project, owner, created_after, created_before, False)
    if statuses == 1:
        conditions.insert(0, "status = ?")
    elif statuses > 1:
        conditions.insert(0, f"status IN ({', '.join('?' * statuses)})")
    return f"SELECT count(*) FROM sync_jobs{_where(conditions)}"


def count_statement(filter: JobFilter) -> tuple[str, list[Any]]:
    """The count of :func:`count_sql` for ``filter`` and its parameters."""
    statuses = status_values(filter.statuses)
    sql = count_sql(
        filter.user_id is not None,
        filter.project_id is not None,
        filter.created_after is not None,
        filter.created_before is not None,
        len(statuses),
        filter.owner_id is not None,
    )
    return sql, [*statuses, *_common_params(filter, None)]


# -- cleanup -----------------------------------------------------------------------------------


def _expired_where(statuses: int) -> str:
    # One term per status, matching the expression of the index sync_jobs_status_finished
    # exactly, so that SQLite reads each status's range of it.
    return " OR ".join(
        "(status = ? AND coalesce(completed_at, created_at) < ?)" for _ in range(statuses)
    )


@functools.lru_cache(maxsize=16)
def delete_expired_sql(statuses: int) -> str:
    """The DELETE of one cleanup batch over ``statuses`` (status, cutoff) pairs; the last
    parameter is the batch size. The checkpoints go by the foreign key's cascade."""
    return (
        "DELETE FROM sync_jobs WHERE rowid IN "
        f"(SELECT rowid FROM sync_jobs WHERE {_expired_where(statuses)} LIMIT ?)"
    )


@functools.lru_cache(maxsize=16)
def count_expired_sql(statuses: int) -> str:
    """What a dry-run cleanup counts: the jobs :func:`delete_expired_sql` would delete in all,
    and their checkpoints."""
    return (
        "SELECT count(*), coalesce(sum((SELECT count(*) FROM job_checkpoints AS c "
        "WHERE c.job_id = j.id)), 0) FROM sync_jobs AS j WHERE "
        f"{_expired_where(statuses)}"
    )


def expired_params(cutoffs: Mapping[JobStatus, datetime]) -> list[Any]:
    """The (status, cutoff) parameters of the cleanup statements, statuses sorted by name."""
    params: list[Any] = []
    for status in sorted(cutoffs, key=lambda status: status.value):
        params.append(status.value)
        params.append(encode_time(cutoffs[status]))
    return params
