"""Rows to models and back: datetimes as integer microseconds since the epoch, UTC."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

from cidx_jobs import JobStatus, SyncJob

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MICROSECOND = timedelta(microseconds=1)

#: The columns of sync_jobs in the order every SELECT and INSERT names them.
JOB_COLUMNS = (
    "id",
    "user_id",
    "project_id",
    "status",
    "progress",
    "phase",
    "created_at",
    "started_at",
    "completed_at",
    "error_message",
    "metadata",
    "owner_id",
    "heartbeat_at",
)
JOB_COLUMNS_SQL = ", ".join(JOB_COLUMNS)

STATUS_BY_VALUE: dict[str, JobStatus] = {status.value: status for status in JobStatus}
_from_trusted = SyncJob.from_trusted
# The stored JSON is what json.dumps wrote (compact, one value, no surrounding
# whitespace), so the scanner can read it directly: json.loads spends more time
# checking its argument and skipping whitespace than decoding a small object.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads(text: str) -> Any:
    """Decode JSON this backend stored (as json.loads would, faster)."""
    return _scan_json(text, 0)[0]


def encode_time(value: datetime) -> int:
    """An aware datetime as integer microseconds since 1970-01-01 UTC (exact)."""
    return (value - EPOCH) // MICROSECOND


def encode_optional_time(value: datetime | None) -> int | None:
    """:func:`encode_time`, or ``None`` for ``None``."""
    return None if value is None else (value - EPOCH) // MICROSECOND


def decode_time(value: int) -> datetime:
    """The aware UTC datetime of integer microseconds since the epoch."""
    return EPOCH + MICROSECOND * value


def job_params(job: SyncJob, metadata_json: str) -> tuple[Any, ...]:
    """The INSERT parameters of a job, in :data:`JOB_COLUMNS` order."""
    started = job.started_at
    completed = job.completed_at
    heartbeat = job.heartbeat_at
    return (
        job.id,
        job.user_id,
        job.project_id,
        job.status.value,
        job.progress,
        job.phase,
        (job.created_at - EPOCH) // MICROSECOND,
        None if started is None else (started - EPOCH) // MICROSECOND,
        None if completed is None else (completed - EPOCH) // MICROSECOND,
        job.error_message,
        metadata_json,
        job.owner_id,
        None if heartbeat is None else (heartbeat - EPOCH) // MICROSECOND,
    )


def decode_job(row: tuple[Any, ...]) -> SyncJob:
    """The job of a row selected with :data:`JOB_COLUMNS` (trusted: this backend wrote it)."""
    (
        job_id,
        user_id,
        project_id,
        status,
        progress,
        phase,
        created_at,
        started_at,
        completed_at,
        error_message,
        metadata,
        owner_id,
        heartbeat_at,
    ) = row
    return _from_trusted(
        id=job_id,
        user_id=user_id,
        project_id=project_id,
        status=STATUS_BY_VALUE[status],
        progress=progress,
        phase=phase,
        created_at=EPOCH + MICROSECOND * created_at,
        started_at=None if started_at is None else EPOCH + MICROSECOND * started_at,
        completed_at=None if completed_at is None else EPOCH + MICROSECOND * completed_at,
        error_message=error_message,
        metadata={} if metadata == "{}" else _scan_json(metadata, 0)[0],
        owner_id=owner_id,
        heartbeat_at=None if heartbeat_at is None else EPOCH + MICROSECOND * heartbeat_at,
    )
