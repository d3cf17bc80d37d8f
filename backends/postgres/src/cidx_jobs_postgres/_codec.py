"""Rows to models and back.

Results are read in psycopg's binary format, with a ``timestamptz`` loader of our own:
the server sends microseconds since 2000-01-01 UTC, which become an aware UTC datetime
exactly, whatever the session's TimeZone (PgBouncer in transaction mode does not keep a
``SET TimeZone``), and without the per-row time-zone lookup of psycopg's own loader.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
from psycopg.adapt import AdaptersMap, Buffer, Loader
from psycopg.pq import Format

from cidx_jobs import JobStatus, SyncJob

UTC = timezone.utc
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_INT8 = struct.Struct("!q")


class UtcTimestamptzLoader(Loader):
    """``timestamptz`` in binary as an aware UTC datetime, exact to the microsecond."""

    format = Format.BINARY

    def load(self, data: Buffer) -> datetime:
        return PG_EPOCH + timedelta(microseconds=_INT8.unpack(data)[0])


#: The adapters every connection of this backend uses.
ADAPTERS = AdaptersMap(psycopg.adapters)
ADAPTERS.register_loader("timestamptz", UtcTimestamptzLoader)

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
# The stored JSON is exactly what core's encoder wrote (compact, one value), so the scanner
# reads it directly, as the SQLite backend does.
_scan_json: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def loads(text: str) -> Any:
    """Decode JSON this backend stored."""
    return _scan_json(text, 0)[0]


def job_params(job: SyncJob, metadata_json: str) -> tuple[Any, ...]:
    """The INSERT parameters of a job, in :data:`JOB_COLUMNS` order."""
    return (
        job.id,
        job.user_id,
        job.project_id,
        job.status.value,
        job.progress,
        job.phase,
        job.created_at,
        job.started_at,
        job.completed_at,
        job.error_message,
        metadata_json,
        job.owner_id,
        job.heartbeat_at,
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
        created_at=created_at,
        started_at=started_at,
        completed_at=completed_at,
        error_message=error_message,
        metadata={} if metadata == "{}" else _scan_json(metadata, 0)[0],
        owner_id=owner_id,
        heartbeat_at=heartbeat_at,
    )


def checkpoint_data(text: str) -> dict[str, Any]:
    """Stored checkpoint data; a row that is not a JSON object is damage."""
    data = loads(text)
    if type(data) is not dict:
        raise ValueError(f"checkpoint data is a {type(data).__name__}, not a JSON object")
    return data
