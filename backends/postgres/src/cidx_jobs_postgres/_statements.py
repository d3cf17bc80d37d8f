"""Every SQL statement the storage runs, for one schema, and the builders of those that
depend on the call.

The text lives here, apart from the code that runs it, so that what reaches PostgreSQL
reads in one place. Every statement that can meet an expected outcome (a duplicate id, a
missing job, a lost lease, a checkpoint racing its job's deletion) reports it by its row
count, never by a server error: on PostgreSQL an error inside a transaction block aborts
the rest of the block, and a duplicate inside a block must leave the block usable.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cidx_jobs import ACTIVE_STATUSES, TERMINAL_STATUSES, Checkpoint, JobFilter, JobStatus
from cidx_jobs.backend import StatusChange

from ._codec import JOB_COLUMNS, JOB_COLUMNS_SQL
from ._schema import FINISHED_SQL, LEASED_SQL, TERMINAL_SQL

_ALL_STATUSES = len(JobStatus)
ORDER = "ORDER BY created_at DESC, id DESC"
BEGIN = "BEGIN"
#: Blocks of several calls read a snapshot and fail with a serialization failure (40001,
#: StorageBusyError) if another transaction changed a row they then write: so a block that
#: reads a job and writes it back never loses a concurrent update. REPEATABLE READ rather
#: than SERIALIZABLE: it raises only for rows both wrote, never for neighbouring index
#: pages, so independent blocks never fail each other.
BEGIN_BLOCK = "BEGIN ISOLATION LEVEL REPEATABLE READ"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"
#: The fenced write's condition: the job is running and holds this lease's token. Part of
#: the statement that writes, so no take-over can come between the check and the write; on
#: a row a concurrent statement changed, PostgreSQL checks it again on the newest version.
FENCE = "status = 'running' AND lease_token = %s"


class Statements:
    """The statements of one schema (its name quoted into each, once)."""

    def __init__(self, schema: str) -> None:
        self.schema = schema
        jobs = self.jobs = f'"{schema}".sync_jobs'
        checkpoints = self.checkpoints = f'"{schema}".job_checkpoints'
        # ON CONFLICT DO NOTHING: a duplicate id is a row count of 0, not an error.
        self.insert_job = (
            f"INSERT INTO {jobs} ({JOB_COLUMNS_SQL}) "
            f"VALUES ({', '.join(['%s'] * len(JOB_COLUMNS))}) ON CONFLICT (id) DO NOTHING"
        )
        self.select_job = f"SELECT {JOB_COLUMNS_SQL} FROM {jobs} WHERE id = %s"
        self.set_progress = f"UPDATE {jobs} SET progress = %s WHERE id = %s"
        self.set_progress_phase = f"UPDATE {jobs} SET progress = %s, phase = %s WHERE id = %s"
        self.set_progress_fenced = f"{self.set_progress} AND {FENCE}"
        self.set_progress_phase_fenced = f"{self.set_progress_phase} AND {FENCE}"
        # The checkpoint is written only if its job exists, in one statement: FOR KEY SHARE
        # locks the job row as the foreign key's own check would, so a concurrent delete
        # either waits for this insert or, having committed first, leaves no row to select
        # (a row count of 0: "no such job") instead of failing the foreign key.
        upsert = (
            "ON CONFLICT (job_id, phase) DO UPDATE SET data = excluded.data, "
            "created_at = excluded.created_at"
        )
        self.upsert_checkpoint = (
            f"INSERT INTO {checkpoints} (job_id, phase, data, created_at) "
            f"SELECT id, %s, %s, %s FROM {jobs} WHERE id = %s FOR KEY SHARE {upsert}"
        )
        # FOR SHARE, not FOR KEY SHARE: the fence must wait for a take-over (an UPDATE of the
        # row) in flight and be checked again on the row it commits, as the fenced UPDATEs
        # are; KEY SHARE does not conflict with it and would let a late checkpoint in.
        self.upsert_checkpoint_fenced = (
            f"INSERT INTO {checkpoints} (job_id, phase, data, created_at) "
            f"SELECT id, %s, %s, %s FROM {jobs} WHERE id = %s AND {FENCE} FOR SHARE {upsert}"
        )
        self.select_checkpoint = (
            f"SELECT data, created_at FROM {checkpoints} WHERE job_id = %s AND phase = %s"
        )
        self.select_checkpoint_data = (
            f"SELECT data FROM {checkpoints} WHERE job_id = %s AND phase = %s"
        )
        self.select_checkpoints = (
            f"SELECT phase, data, created_at FROM {checkpoints} WHERE job_id = %s "
            "ORDER BY created_at, phase"
        )
        # The lease statements name the statuses that hold a lease (active and interrupted)
        # as the partial index sync_jobs_active_owner does, so that the planner can use it.
        self.renew_leases = (
            f"UPDATE {jobs} SET heartbeat_at = %s WHERE owner_id = %s AND status IN {LEASED_SQL}"
        )
        # SKIP LOCKED: a job another recoverer is taking over right now (or whose owner is
        # renewing it) is not a candidate; NO KEY UPDATE, the lock take_over's UPDATE takes,
        # does not block a checkpoint's KEY SHARE on the same job. ORDER BY the keys of the
        # partial index sync_jobs_active_owner: its ordered scan, which holds only the leased
        # jobs, then serves the LIMIT; without it, once leased jobs are a fair share of the
        # table, the planner reads the whole table (with all its history) when none is stale.
        self.find_stale = (
            f"SELECT {JOB_COLUMNS_SQL} FROM {jobs} WHERE status IN {LEASED_SQL} "
            "AND owner_id IS DISTINCT FROM %s AND (heartbeat_at IS NULL OR heartbeat_at < %s) "
            "ORDER BY owner_id, heartbeat_at LIMIT %s FOR NO KEY UPDATE SKIP LOCKED"
        )
        # A compare-and-set on the lease as find_stale read it (status included, so it takes
        # an active or an interrupted job alike); IS NOT DISTINCT FROM compares NULLs as equal.
        take_over_where = (
            "WHERE id = %(id)s AND status = %(old_status)s "
            "AND owner_id IS NOT DISTINCT FROM %(old_owner)s "
            "AND heartbeat_at IS NOT DISTINCT FROM %(old_heartbeat)s"
        )
        self.take_over = (
            f"UPDATE {jobs} SET status = %(status)s, owner_id = %(owner)s, "
            f"heartbeat_at = %(now)s, lease_token = NULL {take_over_where}"
        )
        # The take-over to interrupted stamps completed_at, unconditionally: the job's
        # retention counts from the hand-out, also for a job already interrupted that is
        # taken from a dead owner (so cleanup cannot delete it before it is resumed).
        self.take_over_interrupted = (
            f"UPDATE {jobs} SET status = %(status)s, owner_id = %(owner)s, "
            f"heartbeat_at = %(now)s, completed_at = %(now)s, lease_token = NULL "
            f"{take_over_where}"
        )
        # Cleanups of several instances take turns, one batch at a time: the lock is
        # transaction-scoped, so it is released with each batch's commit and a writer
        # never waits on it.
        self.cleanup_lock = "SELECT pg_advisory_xact_lock(hashtextextended(%s, 1))"
        self.cleanup_lock_key = f"cidx_jobs cleanup {schema}"
        # The time of the reading, not now(): that is the start of the transaction, which a
        # reading inside a long block would report as its time.
        self.server_time = "SELECT clock_timestamp()"
        self.top_users = (
            f"SELECT user_id, count(*) FROM {jobs} GROUP BY user_id "
            "ORDER BY count(*) DESC, user_id LIMIT %s"
        )
        self.oldest_active = (
            f"SELECT {JOB_COLUMNS_SQL} FROM {jobs} WHERE status = %s "
            "ORDER BY created_at, id LIMIT 1"
        )

    # -- status changes ------------------------------------------------------------------------

    def status_sql(
        self,
        status: JobStatus,
        has_error: bool,
        expected: frozenset[JobStatus] | None,
        takes_lease: bool,
        fenced: bool,
    ) -> str:
        """One UPDATE applying StatusChange's rules: what depends on the new status is
        decided here, what depends on the stored row is a CASE (SET sees the old row)."""
        return _status_sql(self.jobs, status, has_error, expected, takes_lease, fenced)

    def status_statement(self, job_id: str, change: StatusChange) -> tuple[str, list[Any]]:
        """The UPDATE of :meth:`status_sql` for ``change`` and its parameters."""
        status = change.status
        has_error = change.error_message is not None
        takes_lease = change.owner is not None and status is JobStatus.RUNNING
        fenced = change.fence is not None
        sql = self.status_sql(status, has_error, change.expected, takes_lease, fenced)
        now = change.now
        params: list[Any] = [status.value]
        if status is JobStatus.RUNNING:
            params.append(now)
            if takes_lease:
                params += [change.owner, now, change.lease]
        if status not in ACTIVE_STATUSES:
            params.append(now)
        if has_error:
            params.append(change.error_message)
        params.append(job_id)
        if fenced:
            params.append(change.fence)
        return sql, params

    # -- queries -------------------------------------------------------------------------------

    def _where(
        self, filter: JobFilter, after: tuple[datetime, str] | None, statuses: list[str]
    ) -> tuple[str, list[Any]]:
        conditions: list[str] = []
        params: list[Any] = []
        if filter.user_id is not None:
            conditions.append("user_id = %s")
            params.append(filter.user_id)
        if len(statuses) == 1:
            conditions.append("status = %s")
            params.append(statuses[0])
        elif statuses:
            conditions.append("status = ANY(%s)")
            params.append(statuses)
        if filter.project_id is not None:
            conditions.append("project_id = %s")
            params.append(filter.project_id)
        if filter.owner_id is not None:
            conditions.append("owner_id = %s")
            params.append(filter.owner_id)
        if filter.created_after is not None:
            conditions.append("created_at >= %s")
            params.append(filter.created_after)
        if filter.created_before is not None:
            conditions.append("created_at < %s")
            params.append(filter.created_before)
        if after is not None:
            # A row comparison: one range of the (…, created_at DESC, id DESC) indexes.
            conditions.append("(created_at, id) < (%s, %s)")
            params += [after[0], after[1]]
        where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
        return where, params

    def select_statement(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> tuple[str, list[Any]]:
        """One page of ``filter``, newest first.

        With several statuses, each status is read newest first from its own index range
        ((user_id,) status, created_at, id), at most ``offset + limit`` rows each, and the
        few rows read are merged: ``status = ANY(...)`` would either scan a user's whole
        history in order to find a rare status, or sort every match before the LIMIT.
        """
        statuses = status_values(filter.statuses)
        tail = " LIMIT %s" + (" OFFSET %s" if filter.offset else "")
        tail_params: list[Any] = [limit] + ([filter.offset] if filter.offset else [])
        if len(statuses) <= 1:
            where, params = self._where(filter, after, statuses)
            sql = f"SELECT {JOB_COLUMNS_SQL} FROM {self.jobs}{where} {ORDER}{tail}"
            return sql, params + tail_params
        branches: list[str] = []
        params = []
        for status in statuses:
            where, branch_params = self._where(filter, after, [status])
            branches.append(f"(SELECT {JOB_COLUMNS_SQL} FROM {self.jobs}{where} {ORDER} LIMIT %s)")
            params += [*branch_params, filter.offset + limit]
        sql = f"SELECT * FROM ({' UNION ALL '.join(branches)}) AS page {ORDER}{tail}"
        return sql, params + tail_params

    def count_statement(self, filter: JobFilter) -> tuple[str, list[Any]]:
        """How many jobs match ``filter``."""
        where, params = self._where(filter, None, status_values(filter.statuses))
        return f"SELECT count(*) FROM {self.jobs}{where}", params

    # -- cleanup -------------------------------------------------------------------------------

    @staticmethod
    def _expired_where(statuses: int) -> str:
        # One term per status, on the expression of the index sync_jobs_status_finished.
        return " OR ".join(
            "(status = %s AND coalesce(completed_at, created_at) < %s)" for _ in range(statuses)
        )

    def delete_expired_sql(self, statuses: int) -> str:
        """One cleanup batch over ``statuses`` (status, cutoff) pairs; the last parameter is
        the batch size. Returns (jobs, checkpoints) deleted.

        SKIP LOCKED: a job some writer holds right now is left for a later batch rather
        than waited for. The checkpoints are deleted in the same statement (the cascade
        then finds none) so that the batch can count them.
        """
        return (
            f"WITH doomed AS (SELECT id FROM {self.jobs} WHERE {self._expired_where(statuses)} "
            "LIMIT %s FOR UPDATE SKIP LOCKED), "
            f"gone_checkpoints AS (DELETE FROM {self.checkpoints} "
            "WHERE job_id IN (SELECT id FROM doomed) RETURNING 1), "
            f"gone_jobs AS (DELETE FROM {self.jobs} WHERE id IN (SELECT id FROM doomed) "
            "RETURNING 1) "
            "SELECT (SELECT count(*) FROM gone_jobs), (SELECT count(*) FROM gone_checkpoints)"
        )

    def count_expired_sql(self, statuses: int) -> str:
        """The jobs :meth:`delete_expired_sql` would delete in all, and their checkpoints."""
        return (
            f"SELECT count(*), coalesce(sum((SELECT count(*) FROM {self.checkpoints} AS c "
            f"WHERE c.job_id = j.id)), 0)::bigint FROM {self.jobs} AS j WHERE "
            f"{self._expired_where(statuses)}"
        )


@functools.lru_cache(maxsize=512)
def _status_sql(
    jobs: str,
    status: JobStatus,
    has_error: bool,
    expected: frozenset[JobStatus] | None,
    takes_lease: bool,
    fenced: bool,
) -> str:
    sets = ["status = %s"]
    if status is JobStatus.RUNNING:
        sets.append("started_at = coalesce(started_at, %s)")
        if takes_lease:
            sets += ["owner_id = %s", "heartbeat_at = %s", "lease_token = %s"]
    if status in TERMINAL_STATUSES:
        sets.append(
            f"completed_at = CASE WHEN status IN {TERMINAL_SQL} AND completed_at IS NOT "
            "NULL THEN completed_at ELSE %s END"
        )
    elif status in ACTIVE_STATUSES:
        sets.append("completed_at = NULL")
    else:
        sets.append(
            f"completed_at = CASE WHEN status IN {FINISHED_SQL} AND completed_at IS NOT "
            "NULL THEN completed_at ELSE %s END"
        )
    if has_error:
        sets.append("error_message = %s")
    where = "id = %s"
    if expected is not None:
        allowed = ", ".join(f"'{value}'" for value in sorted(s.value for s in expected))
        where += f" AND status IN ({allowed})"
    elif status in ACTIVE_STATUSES:
        # Last write wins, but a finished job never goes back to an active status.
        where += f" AND status NOT IN {TERMINAL_SQL}"
    if fenced:
        where += f" AND {FENCE}"
    return f"UPDATE {jobs} SET {', '.join(sets)} WHERE {where}"


def status_values(statuses: frozenset[JobStatus] | None) -> list[str]:
    """The statuses to filter on, sorted; empty when every status matches."""
    if statuses is None or len(statuses) == _ALL_STATUSES:
        return []
    return sorted(status.value for status in statuses)


def checkpoint_params(checkpoint: Checkpoint, data_json: str) -> tuple[Any, ...]:
    """The parameters of the checkpoint upsert (before the job id)."""
    return (checkpoint.phase, data_json, checkpoint.created_at, checkpoint.job_id)


def expired_params(cutoffs: Mapping[JobStatus, datetime]) -> list[Any]:
    """The (status, cutoff) parameters of the cleanup statements, statuses sorted by name."""
    params: list[Any] = []
    for status in sorted(cutoffs, key=lambda status: status.value):
        params += [status.value, cutoffs[status]]
    return params
