"""ReferenceModel: the plainest possible job store, to compare a backend with.

It deliberately shares no logic with the backends or with ``cidx_jobs``'
status rules and filter matching: dictionaries, list comprehensions and
``sorted``, so that a bug in either shows up as a difference.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from cidx_jobs import Checkpoint, JobFilter, JobStatus, SyncJob
from cidx_jobs.errors import DuplicateJobError, ValidationError

_ACTIVE = {"pending", "queued", "running"}
_TERMINAL = {"completed", "failed", "cancelled"}

Key = tuple[datetime, str]


def _frozen_json(value: Mapping[str, Any], max_bytes: int | None) -> dict[str, Any]:
    """A deep copy of a JSON object, checked against the size limit (compact UTF-8 JSON)."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if max_bytes is not None and len(text.encode()) > max_bytes:
        raise ValidationError(f"{len(text.encode())} bytes is over the limit of {max_bytes}")
    copied: dict[str, Any] = json.loads(text)
    return copied


@attrs.define
class ReferenceModel:
    """An in-Python model of a job store, following the documented contract literally.

    Times come from the caller (``now``); nothing reads a clock. ``max_bytes``
    is the store's ``max_metadata_bytes`` (``None``: no limit).
    """

    max_bytes: int | None = None
    jobs: dict[str, SyncJob] = attrs.field(factory=dict)
    #: job id -> phase -> checkpoint
    checkpoints: dict[str, dict[str, Checkpoint]] = attrs.field(factory=dict)

    def copy(self) -> ReferenceModel:
        """An independent copy, for rolling back a transaction."""
        return ReferenceModel(
            self.max_bytes, dict(self.jobs), {k: dict(v) for k, v in self.checkpoints.items()}
        )

    # -- writes ---------------------------------------------------------------------

    def save_job(self, job: SyncJob) -> bool:
        """Store a new job.

        :raises ValidationError: the metadata is over the size limit.
        :raises DuplicateJobError: the id exists.
        """
        metadata = _frozen_json(job.metadata, self.max_bytes)
        if job.id in self.jobs:
            raise DuplicateJobError(job.id)
        self.jobs[job.id] = attrs.evolve(job, metadata=metadata)
        return True

    def update_job_status(
        self,
        job_id: str,
        status: JobStatus,
        error_message: str | None,
        expected: frozenset[JobStatus] | None,
        now: datetime,
    ) -> bool:
        """Apply a status change by the documented rules; ``False`` if it does not apply."""
        job = self.jobs.get(job_id)
        if job is None:
            return False
        old, new = job.status.value, status.value
        if expected is not None:
            if job.status not in expected:
                return False
        elif old in _TERMINAL and new in _ACTIVE:
            return False
        started_at = job.started_at
        if new == "running" and started_at is None:
            started_at = now
        completed_at = job.completed_at
        if new in _TERMINAL:
            if old not in _TERMINAL or completed_at is None:
                completed_at = now
        elif new in _ACTIVE:
            completed_at = None
        elif old in _ACTIVE or completed_at is None:
            # interrupted: stamped when the job stops, kept while it stays stopped
            completed_at = now
        self.jobs[job_id] = attrs.evolve(
            job,
            status=status,
            started_at=started_at,
            completed_at=completed_at,
            error_message=job.error_message if error_message is None else error_message,
        )
        return True

    def update_job_progress(self, job_id: str, progress: int, phase: str | None) -> bool:
        """Set progress (and phase unless ``None``); ``False`` for an unknown job."""
        job = self.jobs.get(job_id)
        if job is None:
            return False
        self.jobs[job_id] = attrs.evolve(
            job, progress=progress, phase=job.phase if phase is None else phase
        )
        return True

    def save_checkpoint(
        self, job_id: str, phase: str, data: Mapping[str, Any], now: datetime
    ) -> bool:
        """Replace the checkpoint of ``phase``; ``False`` for an unknown job.

        :raises ValidationError: the data is over the size limit.
        """
        data = _frozen_json(data, self.max_bytes)
        if job_id not in self.jobs:
            return False
        self.checkpoints.setdefault(job_id, {})[phase] = Checkpoint(
            job_id=job_id, phase=phase, data=data, created_at=now
        )
        return True

    def delete_finished(
        self, cutoffs: Mapping[JobStatus, datetime], *, dry_run: bool = False
    ) -> tuple[int, int]:
        """Delete jobs of a status in ``cutoffs`` that finished before its cutoff.

        :returns: (jobs, checkpoints) deleted.
        """
        doomed = [
            job.id
            for job in self.jobs.values()
            if job.status.value not in _ACTIVE
            and job.status in cutoffs
            and (job.completed_at if job.completed_at is not None else job.created_at)
            < cutoffs[job.status]
        ]
        checkpoints = sum(len(self.checkpoints.get(job_id, {})) for job_id in doomed)
        if not dry_run:
            for job_id in doomed:
                del self.jobs[job_id]
                self.checkpoints.pop(job_id, None)
        return len(doomed), checkpoints

    # -- reads ----------------------------------------------------------------------

    def load_job(self, job_id: str) -> SyncJob | None:
        """The job, or ``None``."""
        return self.jobs.get(job_id)

    def load_checkpoint(self, job_id: str, phase: str) -> dict[str, Any] | None:
        """The data of one checkpoint, or ``None``."""
        found = self.checkpoints.get(job_id, {}).get(phase)
        return None if found is None else found.data

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """A job's checkpoints, oldest first, then by phase."""
        return sorted(
            self.checkpoints.get(job_id, {}).values(), key=lambda c: (c.created_at, c.phase)
        )

    def matching(self, filter: JobFilter) -> list[SyncJob]:
        """Every job meeting ``filter``'s criteria, newest first, then by id descending."""
        found = [
            job
            for job in self.jobs.values()
            if (filter.user_id is None or job.user_id == filter.user_id)
            and (filter.project_id is None or job.project_id == filter.project_id)
            and (filter.statuses is None or job.status in filter.statuses)
            and (filter.created_after is None or job.created_at >= filter.created_after)
            and (filter.created_before is None or job.created_at < filter.created_before)
        ]
        return sorted(found, key=lambda job: (job.created_at, job.id), reverse=True)

    def query(self, filter: JobFilter, after: Key | None = None) -> list[SyncJob]:
        """One page: the matching jobs (strictly after ``after``), skipping ``offset``."""
        found = self.matching(filter)
        if after is not None:
            found = [job for job in found if (job.created_at, job.id) < after]
        return found[filter.offset : filter.offset + filter.limit]

    def count(self, filter: JobFilter) -> int:
        """How many jobs match ``filter``."""
        return len(self.matching(filter))
