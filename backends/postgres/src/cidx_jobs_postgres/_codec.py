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


_INFINITY = 2**63 - 1
_MINUS_INFINITY = -(2**63)


class OutOfRange:
    """A stored time that no ``datetime`` holds: ``infinity``, ``-infinity``, or a year
    after 9999 (or before 1), written outside cidx-jobs. Decoding a row refuses it."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


class UtcTimestamptzLoader(Loader):
    """``timestamptz`` in binary as an aware UTC datetime, exact to the microsecond; a time
    outside years 1..9999 as an :class:`OutOfRange`, which the row's decoder refuses with
    an error that names the row (a loader cannot: it sees one value)."""

    format = Format.BINARY

    def load(self, data: Buffer) -> datetime | OutOfRange:
        micros = _INT8.unpack(data)[0]
        try:
            return PG_EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            if micros == _INFINITY:
                return OutOfRange("infinity")
            if micros == _MINUS_INFINITY:
                return OutOfRange("-infinity")
            return OutOfRange(f"{micros} microseconds from 2000-01-01, outside years 1 to 9999")


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
    """Decode JSON this backend stored: one value and nothing after it.

    :raises ValueError: the text is not one JSON value (the scanner alone would ignore
        what follows the first value; it raises StopIteration for no value at all).
    """
    value, end = _scan_json(text, 0)
    if end != len(text):
        raise ValueError(f"the JSON text goes on for {len(text) - end} characters after its value")
    return value


def check_time(name: str, value: Any) -> None:
    """Refuse a stored time no datetime holds (see :class:`OutOfRange`).

    :raises ValueError: ``value`` is one.
    """
    if type(value) is OutOfRange:
        raise ValueError(f"{name} is {value!r}, which cidx-jobs cannot represent")


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
    if OutOfRange in (type(created_at), type(started_at), type(completed_at), type(heartbeat_at)):
        for name, value in (
            ("created_at", created_at),
            ("started_at", started_at),
            ("completed_at", completed_at),
            ("heartbeat_at", heartbeat_at),
        ):
            check_time(name, value)
    if metadata == "{}":
        job_metadata: dict[str, Any] = {}
    else:
        job_metadata = loads(metadata)
        if type(job_metadata) is not dict:
            raise ValueError(f"metadata is a {type(job_metadata).__name__}, not a JSON object")
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
        metadata=job_metadata,
        owner_id=owner_id,
        heartbeat_at=heartbeat_at,
    )


def checkpoint_data(text: str) -> dict[str, Any]:
    """Stored checkpoint data; a row that is not a JSON object is damage."""
    data = loads(text)
    if type(data) is not dict:
        raise ValueError(f"checkpoint data is a {type(data).__name__}, not a JSON object")
    return data
