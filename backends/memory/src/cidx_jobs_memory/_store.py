"""MemoryStorage: dicts, sorted indexes and one re-entrant lock."""

from __future__ import annotations

import bisect
import itertools
import json
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime

import attrs

from cidx_jobs import LEASED_STATUSES, Checkpoint, JobFilter, JobStatus, SyncJob
from cidx_jobs.backend import BackendConfig, StatusChange, Storage
from cidx_jobs.errors import ConfigError, DuplicateJobError, StorageUnavailableError

_Key = tuple[datetime, str]  # (created_at, id): the query order, ascending


def _key(job: SyncJob) -> _Key:
    return (job.created_at, job.id)


class MemoryStorage(Storage):
    """A job storage held in this process's memory.

    Stored values are kept as JSON text and decoded on every read, so a
    returned job or checkpoint never aliases stored state. Jobs are indexed in
    query order overall, per user and per project, so a query reads only the
    jobs of the narrowest index it can use.

    One re-entrant lock serializes calls; :meth:`transaction` holds it for the
    whole block and undoes the block's changes on an exception. After
    :meth:`close`, every call raises :class:`~cidx_jobs.errors.StorageUnavailableError`.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._jobs: dict[str, tuple[SyncJob, str]] = {}
        self._checkpoints: dict[str, dict[str, tuple[datetime, str]]] = {}
        #: Each job's lease token (absent: none), kept beside the job as a database would.
        self._leases: dict[str, str] = {}
        self._order: list[_Key] = []
        self._by_user: dict[str, list[_Key]] = {}
        self._by_project: dict[str, list[_Key]] = {}
        self._undo: list[Callable[[], None]] | None = None
        self._closed = False

    @classmethod
    def from_config(cls, config: BackendConfig) -> MemoryStorage:
        """The storage for ``memory://`` (it takes no options of its own).

        :raises ConfigError: an option was given, or a path or host.
        """
        if config.path:
            raise ConfigError(
                f"the memory backend takes no path (got {config.path!r}); use 'memory://'",
                option="path",
            )
        config.reject_location(why="use 'memory://'")
        config.reader().finish()
        return cls()

    # -- internal mutation, each recording its inverse inside a transaction -----------

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if self._closed:
                raise StorageUnavailableError("the memory job store is closed")
            yield

    def _record(self, undo: Callable[[], None]) -> None:
        if self._undo is not None:
            self._undo.append(undo)

    def _set_lease(self, job_id: str, token: str | None) -> None:
        previous = self._leases.pop(job_id, None)
        if token is not None:
            self._leases[job_id] = token
        self._record(lambda: self._set_lease(job_id, previous))

    def _holds(self, job: SyncJob, fence: str | None) -> bool:
        return fence is None or (
            job.status is JobStatus.RUNNING and self._leases.get(job.id) == fence
        )

    def _index_add(self, job: SyncJob) -> None:
        key = _key(job)
        bisect.insort(self._order, key)
        bisect.insort(self._by_user.setdefault(job.user_id, []), key)
        bisect.insort(self._by_project.setdefault(job.project_id, []), key)

    def _index_remove(self, job: SyncJob) -> None:
        key = _key(job)
        del self._order[bisect.bisect_left(self._order, key)]
        for index, name in ((self._by_user, job.user_id), (self._by_project, job.project_id)):
            keys = index[name]
            del keys[bisect.bisect_left(keys, key)]
            if not keys:
                del index[name]

    def _put(self, job: SyncJob, metadata_json: str) -> None:
        previous = self._jobs.get(job.id)
        self._jobs[job.id] = (job, metadata_json)
        if previous is None:
            self._index_add(job)
            self._record(lambda: self._drop(job.id))
        else:
            self._record(lambda: self._put(*previous))

    def _drop(self, job_id: str) -> None:
        job, metadata_json = self._jobs.pop(job_id)
        self._index_remove(job)
        checkpoints = self._checkpoints.pop(job_id, None)
        self._set_lease(job_id, None)

        def undo() -> None:
            self._put(job, metadata_json)
            if checkpoints is not None:
                self._checkpoints[job_id] = checkpoints

        self._record(undo)

    @staticmethod
    def _decode(job: SyncJob, metadata_json: str) -> SyncJob:
        return SyncJob.from_trusted(
            id=job.id,
            user_id=job.user_id,
            project_id=job.project_id,
            status=job.status,
            progress=job.progress,
            phase=job.phase,
            created_at=job.created_at,
            started_at=job.started_at,
            completed_at=job.completed_at,
            error_message=job.error_message,
            metadata=json.loads(metadata_json),
            owner_id=job.owner_id,
            heartbeat_at=job.heartbeat_at,
        )

    # -- primitives --------------------------------------------------------------------

    def insert_job(self, job: SyncJob, metadata_json: str) -> None:
        with self._locked():
            if job.id in self._jobs:
                raise DuplicateJobError(job.id)
            # Strip the caller's metadata dict so later mutations of it cannot leak in.
            self._put(self._decode(job, "{}"), metadata_json)

    def get_job(self, job_id: str) -> SyncJob | None:
        with self._locked():
            row = self._jobs.get(job_id)
            return None if row is None else self._decode(*row)

    def set_status(self, job_id: str, change: StatusChange) -> bool:
        with self._locked():
            row = self._jobs.get(job_id)
            if row is None or not self._holds(row[0], change.fence):
                return False
            updated = change.apply(row[0])
            if updated is None:
                return False
            self._put(updated, row[1])
            if change.takes_lease:
                self._set_lease(job_id, change.lease)
            return True

    def set_progress(
        self, job_id: str, progress: int, phase: str | None, *, fence: str | None = None
    ) -> bool:
        with self._locked():
            row = self._jobs.get(job_id)
            if row is None or not self._holds(row[0], fence):
                return False
            job = row[0]
            self._put(
                SyncJob.from_trusted(
                    id=job.id,
                    user_id=job.user_id,
                    project_id=job.project_id,
                    status=job.status,
                    progress=progress,
                    phase=job.phase if phase is None else phase,
                    created_at=job.created_at,
                    started_at=job.started_at,
                    completed_at=job.completed_at,
                    error_message=job.error_message,
                    metadata=job.metadata,
                    owner_id=job.owner_id,
                    heartbeat_at=job.heartbeat_at,
                ),
                row[1],
            )
            return True

    def _candidates(self, filter: JobFilter) -> list[_Key]:
        if filter.user_id is not None:
            return self._by_user.get(filter.user_id, [])
        if filter.project_id is not None:
            return self._by_project.get(filter.project_id, [])
        return self._order

    def _matching(self, filter: JobFilter, after: tuple[datetime, str] | None) -> Iterator[SyncJob]:
        """Matching jobs newest first, narrowed by the index and the date range."""
        keys = self._candidates(filter)
        # Keys are (created_at, id) ascending; walk down from the newest allowed.
        end = len(keys)
        if filter.created_before is not None:
            end = bisect.bisect_left(keys, (filter.created_before, ""))
        if after is not None:
            end = min(end, bisect.bisect_left(keys, after))
        start = 0
        if filter.created_after is not None:
            start = bisect.bisect_left(keys, (filter.created_after, ""))
        jobs = self._jobs
        for position in range(end - 1, start - 1, -1):
            job = jobs[keys[position][1]][0]
            if filter.matches(job):
                yield job

    def select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        with self._locked():
            result: list[SyncJob] = []
            skip = filter.offset
            for job in self._matching(filter, after):
                if skip:
                    skip -= 1
                    continue
                result.append(self._decode(*self._jobs[job.id]))
                if len(result) >= limit:
                    break
            return result

    def count_jobs(self, filter: JobFilter) -> int:
        with self._locked():
            return sum(1 for _ in self._matching(filter, None))

    def _expired(self, cutoffs: Mapping[JobStatus, datetime]) -> Iterator[str]:
        for job, _ in self._jobs.values():
            if job.status in cutoffs and (job.completed_at or job.created_at) < cutoffs[job.status]:
                yield job.id

    def delete_expired(self, cutoffs: Mapping[JobStatus, datetime], limit: int) -> tuple[int, int]:
        with self._locked():
            doomed = list(itertools.islice(self._expired(cutoffs), limit))
            checkpoints = sum(len(self._checkpoints.get(job_id, ())) for job_id in doomed)
            for job_id in doomed:
                self._drop(job_id)
            return len(doomed), checkpoints

    def count_expired(self, cutoffs: Mapping[JobStatus, datetime]) -> tuple[int, int]:
        with self._locked():
            doomed = list(self._expired(cutoffs))
            return len(doomed), sum(len(self._checkpoints.get(job_id, ())) for job_id in doomed)

    def upsert_checkpoint(
        self, checkpoint: Checkpoint, data_json: str, *, fence: str | None = None
    ) -> bool:
        with self._locked():
            row = self._jobs.get(checkpoint.job_id)
            if row is None or not self._holds(row[0], fence):
                return False
            phases = self._checkpoints.setdefault(checkpoint.job_id, {})
            previous = phases.get(checkpoint.phase)
            phases[checkpoint.phase] = (checkpoint.created_at, data_json)

            def undo() -> None:
                if previous is None:
                    del phases[checkpoint.phase]
                else:
                    phases[checkpoint.phase] = previous

            self._record(undo)
            return True

    def get_checkpoint(self, job_id: str, phase: str) -> Checkpoint | None:
        with self._locked():
            found = self._checkpoints.get(job_id, {}).get(phase)
            if found is None:
                return None
            return Checkpoint(
                job_id=job_id, phase=phase, data=json.loads(found[1]), created_at=found[0]
            )

    def get_checkpoints(self, job_id: str) -> list[Checkpoint]:
        with self._locked():
            phases = self._checkpoints.get(job_id, {})
            return [
                Checkpoint(job_id=job_id, phase=phase, data=json.loads(data), created_at=created)
                for phase, (created, data) in sorted(
                    phases.items(), key=lambda item: (item[1][0], item[0])
                )
            ]

    def renew_leases(self, owner: str, now: datetime) -> int:
        with self._locked():
            mine = [
                row
                for row in self._jobs.values()
                if row[0].owner_id == owner and row[0].status in LEASED_STATUSES
            ]
            for job, metadata_json in mine:
                self._put(attrs.evolve(job, heartbeat_at=now), metadata_json)
            return len(mine)

    def find_stale(self, before: datetime, exclude_owner: str, limit: int) -> list[SyncJob]:
        with self._locked():
            stale = (
                row
                for row in self._jobs.values()
                if row[0].status in LEASED_STATUSES
                and row[0].owner_id != exclude_owner
                and (row[0].heartbeat_at is None or row[0].heartbeat_at < before)
            )
            return [self._decode(*row) for row in itertools.islice(stale, limit)]

    def take_over(self, job: SyncJob, status: JobStatus, owner: str, now: datetime) -> bool:
        with self._locked():
            row = self._jobs.get(job.id)
            if row is None:
                return False
            current = row[0]
            if (current.status, current.owner_id, current.heartbeat_at) != (
                job.status,
                job.owner_id,
                job.heartbeat_at,
            ):
                return False
            # A move to interrupted stops the job, or hands an interrupted one out again: its
            # retention counts from now, so cleanup cannot delete a job recovery just took.
            completed_at = now if status is JobStatus.INTERRUPTED else current.completed_at
            self._put(
                attrs.evolve(
                    current,
                    status=status,
                    owner_id=owner,
                    heartbeat_at=now,
                    completed_at=completed_at,
                ),
                row[1],
            )
            self._set_lease(job.id, None)
            return True

    @contextmanager
    def transaction(self) -> Iterator[None]:
        with self._locked():
            undos: list[Callable[[], None]] = []
            self._undo = undos
            try:
                yield
            except BaseException:
                self._undo = None
                for undo in reversed(undos):
                    undo()
                raise
            finally:
                self._undo = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._jobs.clear()
            self._leases.clear()
            self._checkpoints.clear()
            self._order.clear()
            self._by_user.clear()
            self._by_project.clear()

    def __repr__(self) -> str:
        return f"<MemoryStorage jobs={len(self._jobs)}{' closed' if self._closed else ''}>"
