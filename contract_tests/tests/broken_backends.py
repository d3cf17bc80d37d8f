"""Deliberately broken backends: each breaks one rule of the contract, and the suite must notice.

Not a test module (no ``test_`` prefix); the teeth tests import it into the
pytest runs they start.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime

import attrs

from cidx_jobs import ACTIVE_STATUSES, Checkpoint, JobFilter, JobStatus, StatusChange, SyncJob
from cidx_jobs_memory import MemoryJobStore


class IgnoresUserFilter(MemoryJobStore):
    """Queries and counts forget the user: every user sees everyone's jobs."""

    def _select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        return super()._select_jobs(attrs.evolve(filter, user_id=None, cursor=None), after, limit)

    def _count_jobs(self, filter: JobFilter) -> int:
        return super()._count_jobs(attrs.evolve(filter, user_id=None, cursor=None))


class DeletesActiveJobs(MemoryJobStore):
    """Cleanup also deletes pending, queued and running jobs that are old enough."""

    def _delete_finished(
        self, cutoffs: Mapping[JobStatus, datetime], *, batch_size: int, dry_run: bool
    ) -> tuple[int, int]:
        if cutoffs:
            latest = max(cutoffs.values())
            cutoffs = {**dict.fromkeys(ACTIVE_STATUSES, latest), **cutoffs}
        return super()._delete_finished(cutoffs, batch_size=batch_size, dry_run=dry_run)


class KeepsOldCheckpoint(MemoryJobStore):
    """Saving a phase that has a checkpoint keeps the old one instead of replacing it."""

    def _upsert_checkpoint(self, checkpoint: Checkpoint, data_json: str) -> bool:
        if self._get_checkpoint(checkpoint.job_id, checkpoint.phase) is not None:
            return True
        return super()._upsert_checkpoint(checkpoint, data_json)


class KeysetOffByOne(MemoryJobStore):
    """A cursor page starts *at* the last job of the previous page, repeating it."""

    def _select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        if after is not None:
            after = (after[0], after[1] + "\x00")  # <= instead of <
        return super()._select_jobs(filter, after, limit)


class OffsetOffByOne(MemoryJobStore):
    """An offset page skips one job too many, leaving a gap between pages."""

    def _select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        if filter.offset:
            filter = attrs.evolve(filter, offset=filter.offset + 1)
        return super()._select_jobs(filter, after, limit)


class NoTerminalGuard(MemoryJobStore):
    """A late "running" revives a finished job (last write wins without the guard)."""

    def _set_status(self, job_id: str, change: StatusChange) -> bool:
        if change.expected is None:
            change = attrs.evolve(change, expected=frozenset(JobStatus))
        return super()._set_status(job_id, change)


class NoRollback(MemoryJobStore):
    """A transaction that raises keeps the writes made before the exception."""

    @contextmanager
    def _begin(self) -> Iterator[None]:
        with self._lock:
            yield


class SharesMetadata(MemoryJobStore):
    """Hands out the stored objects themselves, so callers can change stored state."""

    def _insert_job(self, job: SyncJob, metadata_json: str) -> None:
        with self._locked():
            if job.id in self._jobs:
                super()._insert_job(job, metadata_json)  # raises DuplicateJobError
            self._put(job, metadata_json)

    def _get_job(self, job_id: str) -> SyncJob | None:
        with self._locked():
            row = self._jobs.get(job_id)
            return None if row is None else row[0]


BROKEN = {
    cls.__name__: cls
    for cls in (
        IgnoresUserFilter,
        DeletesActiveJobs,
        KeepsOldCheckpoint,
        KeysetOffByOne,
        OffsetOffByOne,
        NoTerminalGuard,
        NoRollback,
        SharesMetadata,
    )
}
