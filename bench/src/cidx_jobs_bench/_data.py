"""Synthetic jobs and checkpoints, deterministic for a seed.

Rows are built directly as tuples in the backend's column order (``JOB_COLUMNS``), so a
database of a million jobs fills through ``executemany`` in seconds; :func:`row_to_job`
turns a row into the :class:`~cidx_jobs.SyncJob` the public API takes.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

from cidx_jobs import Checkpoint, JobStatus, SyncJob
from cidx_jobs_sqlite import _codec

UTC = timezone.utc
#: The benchmark's "now": every generated timestamp is before it.
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
NOW_US = _codec.encode_time(NOW)
#: How far back the generated jobs were created (the server keeps 30 days).
HISTORY_DAYS = 30
#: Bump when the generated data changes, so that cached databases are rebuilt.
DATA_VERSION = 3

# The status mix of a server that mostly succeeds.
_STATUS_MIX: tuple[str, ...] = (
    ("completed",) * 85
    + ("failed",) * 8
    + ("cancelled",) * 3
    + ("interrupted", "running", "pending", "queued")
)
_TERMINAL = frozenset({"completed", "failed", "cancelled"})
_PHASES = ("git_pull", "change_detection", "indexing", "validation")
#: The phases a finished job leaves checkpoints for.
CHECKPOINT_PHASES = ("git_pull", "indexing", "validation")
_DAY_US = 86_400_000_000

#: Where each column is in a row (the backend's ``JOB_COLUMNS`` order, whatever it becomes).
COLUMN = {name: i for i, name in enumerate(_codec.JOB_COLUMNS)}
ID, STATUS, PROGRESS = COLUMN["id"], COLUMN["status"], COLUMN["progress"]
CREATED_AT, METADATA = COLUMN["created_at"], COLUMN["metadata"]
_STATUS = {status.value: status for status in JobStatus}


def user_name(index: int) -> str:
    """The id of the ``index``-th user."""
    return f"user{index:04d}"


def job_id(rng: random.Random) -> str:
    """A random UUID-shaped job id (the server's ids are UUID4 strings)."""
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def metadata_json(rng: random.Random, size: int = 0) -> str:
    """The metadata of a sync job as compact JSON; padded to about ``size`` bytes if given.

    Built as text (a million of them must be quick); the shape is what ``json.dumps``
    with compact separators gives.
    """
    text = (
        f'{{"repo":"https://git.example.com/org/repo{rng.randrange(1000)}.git",'
        f'"branch":"main","commit":"{rng.getrandbits(160):040x}",'
        f'"files":{rng.randrange(10_000)}'
    )
    if size > len(text) + 14:
        # Changed files, as incompressible as real metadata.
        text += f',"changed":"{rng.randbytes((size - len(text) - 14) // 2).hex()}"'
    return text + "}"


def checkpoint_json(rng: random.Random, size: int = 0) -> str:
    """The data of one checkpoint as compact JSON; padded to about ``size`` bytes if given."""
    text = f'{{"files_done":{rng.randrange(10_000)},"last":"src/app/main.py"'
    if size > len(text) + 12:
        text += f',"state":"{rng.randbytes((size - len(text) - 12) // 2).hex()}"'
    return text + "}"


def job_row(
    rng: random.Random,
    users: int,
    *,
    metadata_bytes: int = 0,
    created_us: int | None = None,
    status: str | None = None,
) -> tuple[Any, ...]:
    """One ``sync_jobs`` row in ``JOB_COLUMNS`` order, encoded by the backend's own codec
    (``_codec.job_params``), so columns the backend adds get its values too.

    :param created_us: the creation time in microseconds since the epoch; by default a
        random time in the :data:`HISTORY_DAYS` before :data:`NOW`.
    :param status: the status; by default drawn from a mostly-successful mix.
    """
    if status is None:
        status = _STATUS_MIX[rng.randrange(len(_STATUS_MIX))]
    if created_us is None:
        created_us = NOW_US - rng.randrange(HISTORY_DAYS * _DAY_US)
    finished = status in _TERMINAL
    decode = _codec.decode_time
    job = SyncJob.from_trusted(
        id=job_id(rng),
        user_id=user_name(rng.randrange(users)),
        project_id=f"project{rng.randrange(200):03d}",
        status=_STATUS[status],
        progress=100 if status == "completed" else rng.randrange(100),
        phase="validation" if finished else _PHASES[rng.randrange(len(_PHASES))],
        created_at=decode(created_us),
        started_at=None if status in ("pending", "queued") else decode(created_us + 1_000_000),
        completed_at=decode(created_us + rng.randrange(1, 600_000_000)) if finished else None,
        error_message="git fetch failed: connection reset" if status == "failed" else None,
        metadata={},
    )
    return _codec.job_params(job, metadata_json(rng, metadata_bytes))


def job_rows(
    seed: int | str, count: int, users: int, *, metadata_bytes: int = 0
) -> Iterator[tuple[Any, ...]]:
    """``count`` rows, the same for the same arguments."""
    rng = random.Random(f"jobs:{seed}")
    for _ in range(count):
        yield job_row(rng, users, metadata_bytes=metadata_bytes)


def expired_rows(seed: int, count: int, users: int, *, days_ago: int = 90) -> list[tuple[Any, ...]]:
    """``count`` finished jobs created about ``days_ago`` days before :data:`NOW`."""
    rng = random.Random(f"expired:{seed}")
    base = NOW_US - days_ago * _DAY_US
    statuses = ("completed", "failed", "cancelled", "interrupted")
    return [
        job_row(
            rng,
            users,
            created_us=base - rng.randrange(_DAY_US),
            status=statuses[i % 4] if i % 10 == 0 else "completed",
        )
        for i in range(count)
    ]


def checkpoint_rows(
    seed: int | str,
    job_ids: list[str],
    *,
    phases: tuple[str, ...] = CHECKPOINT_PHASES,
    size: int = 0,
) -> list[tuple[str, str, str, int]]:
    """``job_checkpoints`` rows (job_id, phase, data, created_at) for each job and phase."""
    rng = random.Random(f"checkpoints:{seed}")
    return [
        (job, phase, checkpoint_json(rng, size), NOW_US - (len(phases) - i) * 1_000_000)
        for job in job_ids
        for i, phase in enumerate(phases)
    ]


def row_to_job(row: tuple[Any, ...]) -> SyncJob:
    """The job a row describes, built through the validating constructor."""
    job = _codec.decode_job(row)
    # decode_job trusts the row; going through the constructor validates like a caller.
    return SyncJob(
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
        metadata=job.metadata,
    )


def new_jobs(seed: int, count: int, users: int) -> list[SyncJob]:
    """``count`` fresh pending jobs created just before :data:`NOW`, as a server submits them."""
    rng = random.Random(f"new:{seed}")
    jobs = []
    for i in range(count):
        jobs.append(
            SyncJob.create(
                id=job_id(rng),
                user_id=user_name(rng.randrange(users)),
                project_id=f"project{rng.randrange(200):03d}",
                metadata=json.loads(metadata_json(rng)),
                now=NOW - timedelta(seconds=count - i),
            )
        )
    return jobs


def checkpoint_of(job_id: str, phase: str, data_json: str, created_us: int) -> Checkpoint:
    """The :class:`~cidx_jobs.Checkpoint` a checkpoint row describes."""
    return Checkpoint(
        job_id=job_id,
        phase=phase,
        data=json.loads(data_json),
        created_at=_codec.decode_time(created_us),
    )


def status_of(value: str) -> JobStatus:
    """The status named ``value``."""
    return JobStatus(value)
