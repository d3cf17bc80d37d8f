"""Deliberately broken storages: each breaks one rule of the contract, and the suite must notice.

Each is the memory backend's storage with one public :class:`~cidx_jobs.backend.Storage`
method (or two) done wrong, as a backend author might. ``CAPABILITIES`` is what
the storage declares. Not a test module (no ``test_`` prefix); the teeth tests
import it into the pytest runs they start.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from datetime import datetime, timezone
from typing import Any, TypeVar

import attrs

from cidx_jobs import ACTIVE_STATUSES, Checkpoint, JobFilter, JobStatus, SyncJob
from cidx_jobs.backend import Fault, FaultInjector, StatusChange, Storage
from cidx_jobs.errors import (
    StorageBusyError,
    StorageCorruptError,
    StorageError,
    StorageFullError,
    StoragePermissionError,
    StorageUnavailableError,
)
from cidx_jobs_memory import MemoryStorage

_F = TypeVar("_F", bound=Callable[..., Any])

#: What the memory backend declares, and so what a broken storage declares by default.
MEMORY_CAPABILITIES = ("concurrent_threads",)


class IgnoresUserFilter(MemoryStorage):
    """Queries and counts forget the user: every user sees everyone's jobs."""

    def select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        return super().select_jobs(attrs.evolve(filter, user_id=None, cursor=None), after, limit)

    def count_jobs(self, filter: JobFilter) -> int:
        return super().count_jobs(attrs.evolve(filter, user_id=None, cursor=None))


def _with_active(cutoffs: Mapping[JobStatus, datetime]) -> dict[JobStatus, datetime]:
    if not cutoffs:
        return dict(cutoffs)
    return {**dict.fromkeys(ACTIVE_STATUSES, max(cutoffs.values())), **cutoffs}


class DeletesActiveJobs(MemoryStorage):
    """Cleanup also deletes pending, queued and running jobs that are old enough."""

    def delete_expired(self, cutoffs: Mapping[JobStatus, datetime], limit: int) -> tuple[int, int]:
        return super().delete_expired(_with_active(cutoffs), limit)

    def count_expired(self, cutoffs: Mapping[JobStatus, datetime]) -> tuple[int, int]:
        return super().count_expired(_with_active(cutoffs))


class KeepsOldCheckpoint(MemoryStorage):
    """Saving a phase that has a checkpoint keeps the old one instead of replacing it."""

    def upsert_checkpoint(self, checkpoint: Checkpoint, data_json: str) -> bool:
        if self.get_checkpoint(checkpoint.job_id, checkpoint.phase) is not None:
            return True
        return super().upsert_checkpoint(checkpoint, data_json)


class KeysetOffByOne(MemoryStorage):
    """A cursor page starts *at* the last job of the previous page, repeating it."""

    def select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        if after is not None:
            after = (after[0], after[1] + "\x00")  # <= instead of <
        return super().select_jobs(filter, after, limit)


class OffsetOffByOne(MemoryStorage):
    """An offset page skips one job too many, leaving a gap between pages."""

    def select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        if filter.offset:
            filter = attrs.evolve(filter, offset=filter.offset + 1)
        return super().select_jobs(filter, after, limit)


class NoTerminalGuard(MemoryStorage):
    """A late "running" revives a finished job (last write wins without the guard)."""

    def set_status(self, job_id: str, change: StatusChange) -> bool:
        if change.expected is None:
            change = attrs.evolve(change, expected=frozenset(JobStatus))
        return super().set_status(job_id, change)


class NoRollback(MemoryStorage):
    """A transaction that raises keeps the writes made before the exception."""

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._locked():
            yield


class SharesMetadata(MemoryStorage):
    """Keeps and hands out the job objects themselves, so callers can change stored state."""

    def insert_job(self, job: SyncJob, metadata_json: str) -> None:
        with self._locked():
            if job.id in self._jobs:
                super().insert_job(job, metadata_json)  # raises DuplicateJobError
            self._put(job, metadata_json)

    def get_job(self, job_id: str) -> SyncJob | None:
        with self._locked():
            row = self._jobs.get(job_id)
            return None if row is None else row[0]


class ClosedRaisesStorageError(MemoryStorage):
    """After close(), calls raise a plain StorageError instead of StorageUnavailableError."""

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise StorageError("the store is closed")
            yield


# -- cleanup -------------------------------------------------------------------------


class StopsAfterFirstBatch(MemoryStorage):
    """Cleanup deletes its first batch, then reports (and deletes) nothing ever after."""

    def __init__(self) -> None:
        super().__init__()
        self._cleaned = False

    def delete_expired(self, cutoffs: Mapping[JobStatus, datetime], limit: int) -> tuple[int, int]:
        if self._cleaned:
            return 0, 0
        self._cleaned = True
        return super().delete_expired(cutoffs, limit)


class IgnoresBatchLimit(MemoryStorage):
    """Cleanup deletes every expired job in one go, however small the policy's batch_size."""

    def delete_expired(self, cutoffs: Mapping[JobStatus, datetime], limit: int) -> tuple[int, int]:
        return super().delete_expired(cutoffs, 1_000_000)


# -- transactions and threads ----------------------------------------------------------


class _BlocksWithoutTheLock(MemoryStorage):
    """A block holds the storage's lock only during each of its calls (undo log per thread)."""

    def __init__(self) -> None:
        self._local = threading.local()
        super().__init__()

    @property  # type: ignore[override]
    def _undo(self) -> list[Callable[[], None]] | None:
        undo: list[Callable[[], None]] | None = getattr(self._local, "undo", None)
        return undo

    @_undo.setter
    def _undo(self, value: list[Callable[[], None]] | None) -> None:
        self._local.undo = value

    def _between_blocks(self) -> AbstractContextManager[object]:
        return nullcontext()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._between_blocks():
            with self._locked():  # raises when closed
                undos: list[Callable[[], None]] = []
                self._undo = undos
            try:
                yield
            except BaseException:
                with self._lock:
                    self._undo = None
                    for undo in reversed(undos):
                        undo()
                raise
            finally:
                self._undo = None


class ReadsUncommitted(_BlocksWithoutTheLock):
    """Blocks wait for each other, but other threads' reads do not wait for a block: they
    see its writes before it commits (and writes it then rolls back)."""

    def __init__(self) -> None:
        super().__init__()
        self._blocks = threading.Lock()

    def _between_blocks(self) -> AbstractContextManager[object]:
        return self._blocks


class LosesUpdates(_BlocksWithoutTheLock):
    """Blocks on several threads interleave call by call: a read-modify-write loses updates."""


# -- leases ---------------------------------------------------------------------------


class IgnoresHeartbeatInTakeOver(MemoryStorage):
    """A take-over compares status and owner only: it takes a job whose lease was just renewed."""

    def take_over(self, job: SyncJob, status: JobStatus, owner: str, now: datetime) -> bool:
        with self._locked():
            row = self._jobs.get(job.id)
            if row is None or (row[0].status, row[0].owner_id) != (job.status, job.owner_id):
                return False
            self._put(attrs.evolve(row[0], status=status, owner_id=owner, heartbeat_at=now), row[1])
            return True


class TakeOverKeepsCompletedAt(MemoryStorage):
    """A take-over to interrupted leaves ``completed_at`` empty, so cleanup measures the
    retention from ``created_at`` and deletes an old job that recovery just handed out."""

    def take_over(self, job: SyncJob, status: JobStatus, owner: str, now: datetime) -> bool:
        with self._locked():
            row = self._jobs.get(job.id)
            if row is None or (row[0].status, row[0].owner_id, row[0].heartbeat_at) != (
                job.status,
                job.owner_id,
                job.heartbeat_at,
            ):
                return False
            self._put(attrs.evolve(row[0], status=status, owner_id=owner, heartbeat_at=now), row[1])
            self._set_lease(job.id, None)
            return True


class InterruptKeepsCompletedAt(MemoryStorage):
    """A status change to interrupted keeps ``completed_at`` as it was (empty for a job that
    was running), as the rules before the interruption stamp did."""

    def set_status(self, job_id: str, change: StatusChange) -> bool:
        with self._locked():
            before = self._jobs.get(job_id)
            if not super().set_status(job_id, change):
                return False
            if change.status is JobStatus.INTERRUPTED and before is not None:
                job, metadata_json = self._jobs[job_id]
                self._put(attrs.evolve(job, completed_at=before[0].completed_at), metadata_json)
            return True


class LeasesOnlyActiveJobs(MemoryStorage):
    """Leases as they were before interrupted jobs held one: heartbeats renew, and recovery
    finds, active jobs only, so a job left interrupted by a dead owner (or handed over) is
    never resumed elsewhere."""

    def renew_leases(self, owner: str, now: datetime) -> int:
        with self._locked():
            mine = [
                row
                for row in self._jobs.values()
                if row[0].owner_id == owner and row[0].status in ACTIVE_STATUSES
            ]
            for job, metadata_json in mine:
                self._put(attrs.evolve(job, heartbeat_at=now), metadata_json)
            return len(mine)

    def find_stale(self, before: datetime, exclude_owner: str, limit: int) -> list[SyncJob]:
        return [
            job
            for job in super().find_stale(before, exclude_owner, limit)
            if job.status in ACTIVE_STATUSES
        ]


class TakesLiveInterruptedJobs(MemoryStorage):
    """Recovery finds every interrupted job of another owner, whether its lease expired or not
    (as a lookup that tests the heartbeat of active jobs only would)."""

    def find_stale(self, before: datetime, exclude_owner: str, limit: int) -> list[SyncJob]:
        found = super().find_stale(before, exclude_owner, limit)
        with self._locked():
            seen = {job.id for job in found}
            live = [
                self._decode(*row)
                for row in self._jobs.values()
                if row[0].status is JobStatus.INTERRUPTED
                and row[0].owner_id != exclude_owner
                and row[0].id not in seen
            ]
        return (found + live)[:limit]


class TakeOverKeepsInterruptedStamp(MemoryStorage):
    """A take-over to interrupted stamps ``completed_at`` of a running job only, as a status
    change from interrupted to interrupted does: an interrupted job handed out again keeps its
    old stamp, and cleanup may delete it before the new owner resumes it."""

    def take_over(self, job: SyncJob, status: JobStatus, owner: str, now: datetime) -> bool:
        with self._locked():
            before = self._jobs.get(job.id)
            if not super().take_over(job, status, owner, now):
                return False
            if before is not None and before[0].status is JobStatus.INTERRUPTED:
                taken, metadata_json = self._jobs[job.id]
                self._put(attrs.evolve(taken, completed_at=before[0].completed_at), metadata_json)
            return True


# -- times -----------------------------------------------------------------------------

_FLOOR = datetime(1900, 1, 1, tzinfo=timezone.utc)
_CEILING = datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone.utc)


def _clamp(value: datetime) -> datetime:
    return min(max(value, _FLOOR), _CEILING)


def _clamp_optional(value: datetime | None) -> datetime | None:
    return None if value is None else _clamp(value)


class ClampsTimes(MemoryStorage):
    """Like a time column that holds only the years 1900 to 2999: other times are clamped."""

    def insert_job(self, job: SyncJob, metadata_json: str) -> None:
        super().insert_job(
            attrs.evolve(
                job,
                created_at=_clamp(job.created_at),
                started_at=_clamp_optional(job.started_at),
                completed_at=_clamp_optional(job.completed_at),
                heartbeat_at=_clamp_optional(job.heartbeat_at),
            ),
            metadata_json,
        )

    def set_status(self, job_id: str, change: StatusChange) -> bool:
        return super().set_status(job_id, attrs.evolve(change, now=_clamp(change.now)))

    def upsert_checkpoint(self, checkpoint: Checkpoint, data_json: str) -> bool:
        clamped = attrs.evolve(checkpoint, created_at=_clamp(checkpoint.created_at))
        return super().upsert_checkpoint(clamped, data_json)

    def renew_leases(self, owner: str, now: datetime) -> int:
        return super().renew_leases(owner, _clamp(now))

    def take_over(self, job: SyncJob, status: JobStatus, owner: str, now: datetime) -> bool:
        return super().take_over(job, status, owner, _clamp(now))


# -- a fake driver, for storage failures -------------------------------------------------------


class FakeDriverError(Exception):
    """What a database driver raises: an error code, and no cidx_jobs type."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code


#: The error code the fake driver raises for each fault, as a server's driver would.
_DRIVER_CODES = {
    Fault.CONNECTION_LOST: ("08006", "server closed the connection unexpectedly"),
    Fault.LOCK_TIMEOUT: ("40P01", "deadlock detected"),
    Fault.DISK_FULL: ("53100", "could not extend file: No space left on device"),
    Fault.PERMISSION_DENIED: ("42501", "permission denied for table sync_jobs"),
    Fault.CORRUPT: ("XX001", "invalid page in block 7 of relation sync_jobs"),
}
#: The backend's error translation: driver error code -> typed error.
_TRANSLATION: dict[str, type[StorageError]] = {
    "08006": StorageUnavailableError,
    "40P01": StorageBusyError,
    "53100": StorageFullError,
    "42501": StoragePermissionError,
    "XX001": StorageCorruptError,
}


class FakeDriver(FaultInjector):
    """A stand-in for a database driver: each statement calls :meth:`execute` first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: Fault | None = None
        self._after = 0

    def fail_next(self, fault: Fault, *, after: int = 0) -> None:
        with self._lock:
            self._armed, self._after = fault, after

    def clear(self) -> bool:
        with self._lock:
            pending = self._armed is not None
            self._armed = None
        return pending

    def execute(self) -> None:
        """Send one statement: raises the driver's error if it is the one a fault is armed for."""
        with self._lock:
            fault = self._armed
            if fault is None:
                return
            if self._after:
                self._after -= 1
                return
            self._armed = None
        raise FakeDriverError(*_DRIVER_CODES[fault])


def _sends_a_statement(method: _F) -> _F:
    @functools.wraps(method)
    def send(self: TranslatesDriverErrors, *args: Any, **kwargs: Any) -> Any:
        with self._translated():
            self.driver.execute()
            return method(self, *args, **kwargs)

    return send  # type: ignore[return-value]


class TranslatesDriverErrors(MemoryStorage):
    """The correct control: a storage over a fake driver whose failures it translates into
    the typed errors, and whose failure inside a block dooms the block (it rolls back
    and raises when the block ends). It must pass the fault tests."""

    CAPABILITIES = ("concurrent_threads", "fault_injection")

    def __init__(self) -> None:
        super().__init__()
        self.driver = FakeDriver()
        self._block_thread: int | None = None
        self._doomed = False

    def fault_injector(self) -> FaultInjector:
        return self.driver

    def _doom(self) -> None:
        if self._block_thread == threading.get_ident():
            self._doomed = True

    @contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except FakeDriverError as error:
            self._doom()
            raise _TRANSLATION[error.code](f"the database failed: {error}") from error

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._translated():
            self.driver.execute()  # BEGIN
        with super().transaction():  # holds the lock; undoes the block on an exception
            self._block_thread, self._doomed = threading.get_ident(), False
            try:
                yield
                if self._doomed:
                    raise StorageBusyError(
                        "the transaction was rolled back after a failure inside it"
                    )
                self._commit()
            finally:
                self._block_thread = None

    def _commit(self) -> None:
        with self._translated():
            self.driver.execute()  # COMMIT


for _name in (
    "insert_job",
    "get_job",
    "set_status",
    "set_progress",
    "select_jobs",
    "count_jobs",
    "delete_expired",
    "count_expired",
    "upsert_checkpoint",
    "get_checkpoint",
    "get_checkpoints",
    "renew_leases",
    "find_stale",
    "take_over",
):
    setattr(TranslatesDriverErrors, _name, _sends_a_statement(getattr(MemoryStorage, _name)))


class LeaksDriverErrors(TranslatesDriverErrors):
    """The driver's own exceptions escape untranslated."""

    @contextmanager
    def _translated(self) -> Iterator[None]:
        yield


class LeaksOnCommit(TranslatesDriverErrors):
    """Every statement's driver error is translated, except COMMIT's, which escapes as it is."""

    def _commit(self) -> None:
        self.driver.execute()  # COMMIT, untranslated


class LeaksInTakeOver(TranslatesDriverErrors):
    """Every statement's driver error is translated, except a take-over's (a recovery's
    second kind of statement, after the lookup of stale jobs)."""

    def take_over(self, job: SyncJob, status: JobStatus, owner: str, now: datetime) -> bool:
        self.driver.execute()  # untranslated
        return MemoryStorage.take_over(self, job, status, owner, now)


class CommitsAfterFault(TranslatesDriverErrors):
    """After a failure inside a block, the block goes on and commits what came before and after
    (as when a deadlock victim's next statement runs in autocommit)."""

    def _doom(self) -> None:
        pass


BROKEN: dict[str, type[Storage]] = {
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
        ClosedRaisesStorageError,
        StopsAfterFirstBatch,
        IgnoresBatchLimit,
        ReadsUncommitted,
        LosesUpdates,
        IgnoresHeartbeatInTakeOver,
        TakeOverKeepsCompletedAt,
        InterruptKeepsCompletedAt,
        LeasesOnlyActiveJobs,
        TakesLiveInterruptedJobs,
        TakeOverKeepsInterruptedStamp,
        ClampsTimes,
        LeaksDriverErrors,
        LeaksOnCommit,
        LeaksInTakeOver,
        CommitsAfterFault,
    )
}
