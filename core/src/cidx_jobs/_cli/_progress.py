"""A storage that reports each cleanup batch, so ``cidx-jobs cleanup`` can draw its bar.

The facade deletes in batches inside :meth:`~cidx_jobs.JobPersistence.run_cleanup`; the
command builds a second facade, over this wrapper of the same storage and with the same
hooks and settings, so the cleanup keeps the policy, the batching and the events while
the bar moves after every batch. Every other call goes straight to the wrapped storage.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from cidx_jobs._models import Checkpoint, JobFilter, JobStatus, SyncJob
from cidx_jobs.backend import FaultInjector, HealthCheck, StatusChange, Storage, StorageInfo


class BatchReporting(Storage):
    """``inner``, with ``on_batch(jobs)`` called after every batch of a cleanup."""

    def __init__(self, inner: Storage, on_batch: Callable[[int], None]) -> None:
        self._inner = inner
        self._on_batch = on_batch

    def delete_expired(self, cutoffs: Mapping[JobStatus, datetime], limit: int) -> tuple[int, int]:
        jobs, checkpoints = self._inner.delete_expired(cutoffs, limit)
        self._on_batch(jobs)
        return jobs, checkpoints

    # -- everything else, unchanged -------------------------------------------------------------

    def insert_job(self, job: SyncJob, metadata_json: str) -> None:
        self._inner.insert_job(job, metadata_json)

    def get_job(self, job_id: str) -> SyncJob | None:
        return self._inner.get_job(job_id)

    def set_status(self, job_id: str, change: StatusChange) -> bool:
        return self._inner.set_status(job_id, change)

    def set_progress(
        self, job_id: str, progress: int, phase: str | None, *, fence: str | None = None
    ) -> bool:
        return self._inner.set_progress(job_id, progress, phase, fence=fence)

    def select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        return self._inner.select_jobs(filter, after, limit)

    def count_jobs(self, filter: JobFilter) -> int:
        return self._inner.count_jobs(filter)

    def count_expired(self, cutoffs: Mapping[JobStatus, datetime]) -> tuple[int, int]:
        return self._inner.count_expired(cutoffs)

    def upsert_checkpoint(
        self, checkpoint: Checkpoint, data_json: str, *, fence: str | None = None
    ) -> bool:
        return self._inner.upsert_checkpoint(checkpoint, data_json, fence=fence)

    def get_checkpoint(self, job_id: str, phase: str) -> Checkpoint | None:
        return self._inner.get_checkpoint(job_id, phase)

    def get_checkpoint_data(self, job_id: str, phase: str) -> dict[str, Any] | None:
        return self._inner.get_checkpoint_data(job_id, phase)

    def get_checkpoints(self, job_id: str) -> list[Checkpoint]:
        return self._inner.get_checkpoints(job_id)

    def renew_leases(self, owner: str, now: datetime) -> int:
        return self._inner.renew_leases(owner, now)

    def find_stale(self, before: datetime, exclude_owner: str, limit: int) -> list[SyncJob]:
        return self._inner.find_stale(before, exclude_owner, limit)

    def take_over(self, job: SyncJob, status: JobStatus, owner: str, now: datetime) -> bool:
        return self._inner.take_over(job, status, owner, now)

    def transaction(self) -> AbstractContextManager[None]:
        return self._inner.transaction()

    def close(self) -> None:
        # The command closes the store it opened; this wrapper owns nothing.
        pass

    def fault_injector(self) -> FaultInjector | None:
        return self._inner.fault_injector()

    def describe(self) -> StorageInfo:
        return self._inner.describe()

    def check_health(self, *, thorough: bool = False) -> list[HealthCheck]:
        return self._inner.check_health(thorough=thorough)

    def server_time(self) -> datetime:
        return self._inner.server_time()

    def top_users(self, limit: int) -> list[tuple[str, int]]:
        return self._inner.top_users(limit)

    def backup(self, target: str | os.PathLike[str]) -> None:
        self._inner.backup(target)

    def migrate(self) -> tuple[int, int]:
        return self._inner.migrate()
