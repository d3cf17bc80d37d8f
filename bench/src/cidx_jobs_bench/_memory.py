"""The memory backend, filled with the same jobs as an SQLite database."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cidx_jobs import JobPersistence, open_persistence
from cidx_jobs_sqlite import _codec

from . import _sqlite
from ._data import CREATED_AT, ID, METADATA, checkpoint_of


def open_memory() -> JobPersistence:
    """The memory backend as a server (or a test) opens it."""
    return open_persistence("memory://")


def fill(store: JobPersistence, rows: Iterable[tuple[Any, ...]]) -> int:
    """Insert rows (``JOB_COLUMNS`` order) through the backend's primitive, oldest first
    (setup, not measured: validation would only slow it down). Returns the count."""
    count = 0
    for row in sorted(rows, key=lambda row: (row[CREATED_AT], row[ID])):
        store.storage.insert_job(_codec.decode_job(row), row[METADATA])
        count += 1
    return count


def fill_checkpoints(store: JobPersistence, rows: Iterable[tuple[str, str, str, int]]) -> None:
    """Insert checkpoint rows (job_id, phase, data, created_at) through the primitive."""
    for job_id, phase, data, created_us in rows:
        store.storage.upsert_checkpoint(checkpoint_of(job_id, phase, data, created_us), data)


def from_db(path: Path) -> JobPersistence:
    """A memory store holding every job of the SQLite database at ``path``."""
    store = open_memory()
    conn = _sqlite.raw_connect(path)
    try:
        rows = conn.execute(f"SELECT {_codec.JOB_COLUMNS_SQL} FROM sync_jobs").fetchall()
    finally:
        conn.close()
    fill(store, rows)
    return store
