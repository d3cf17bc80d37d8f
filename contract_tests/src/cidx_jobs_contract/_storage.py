"""A storage that forwards every call to another: the base of the suite's spying wrappers."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from cidx_jobs import Checkpoint, JobFilter, JobStatus, SyncJob
from cidx_jobs.backend import FaultInjector, StatusChange, Storage


class ForwardingStorage(Storage):
    """Forwards every :class:`~cidx_jobs.backend.Storage` method to ``inner``.

    The suite builds a second facade over a wrapper of the backend's storage
    (``JobPersistence(Wrapper(store.storage), settings=...)``) to watch or steer
    the calls the facade makes; a test overrides the methods it spies on.
    :meth:`close` does nothing: the ``store`` fixture closes the storage itself.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner

    def insert_job(self, job: SyncJob, metadata_json: str) -> None:
        self.inner.insert_job(job, metadata_json)

    def get_job(self, job_id: str) -> SyncJob | None:
        return self.inner.get_job(job_id)

    def set_status(self, job_id: str, change: StatusChange) -> bool:
        return self.inner.set_status(job_id, change)

    def set_progress(
        self, job_id: str, progress: int, phase: str | None, *, fence: str | None = None
    ) -> bool:
        return self.inner.set_progress(job_id, progress, phase, fence=fence)

    def select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        return self.inner.select_jobs(filter, after, limit)

    def count_jobs(self, filter: JobFilter) -> int:
        return self.inner.count_jobs(filter)

    def delete_expired(self, cutoffs: Mapping[JobStatus, datetime], limit: int) -> tuple[int, int]:
        return self.inner.delete_expired(cutoffs, limit)

    def count_expired(self, cutoffs: Mapping[JobStatus, datetime]) -> tuple[int, int]:
        return self.inner.count_expired(cutoffs)

    def upsert_checkpoint(
        self, checkpoint: Checkpoint, data_json: str, *, fence: str | None = None
    ) -> bool:
        return self.inner.upsert_checkpoint(checkpoint, data_json, fence=fence)

    def get_checkpoint(self, job_id: str, phase: str) -> Checkpoint | None:
        return self.inner.get_checkpoint(job_id, phase)

    def get_checkpoint_data(self, job_id: str, phase: str) -> dict[str, Any] | None:
        return self.inner.get_checkpoint_data(job_id, phase)

    def get_checkpoints(self, job_id: str) -> list[Checkpoint]:
        return self.inner.get_checkpoints(job_id)

    def renew_leases(self, owner: str, now: datetime) -> int:
        return self.inner.renew_leases(owner, now)

    def find_stale(self, before: datetime, exclude_owner: str, limit: int) -> list[SyncJob]:
        return self.inner.find_stale(before, exclude_owner, limit)

    def take_over(self, job: SyncJob, status: JobStatus, owner: str, now: datetime) -> bool:
        return self.inner.take_over(job, status, owner, now)

    def transaction(self) -> AbstractContextManager[None]:
        return self.inner.transaction()

    def server_time(self) -> datetime:
        return self.inner.server_time()

    def fault_injector(self) -> FaultInjector | None:
        return self.inner.fault_injector()

    def close(self) -> None:
        """Nothing: the storage belongs to the ``store`` fixture, which closes it."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.inner!r}>"
