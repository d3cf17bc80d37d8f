"""Fixtures of the SQLite backend's own tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cidx_jobs import Hooks, JobStatus, SyncJob, get_plugin_manager
from cidx_jobs_sqlite import SqliteJobStore, SqliteOptions

UTC = timezone.utc
T0 = datetime(2025, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)

OpenStore = Callable[..., SqliteJobStore]


def make_job(
    job_id: str,
    *,
    user: str = "alice",
    project: str = "repo",
    status: JobStatus = JobStatus.PENDING,
    created_at: datetime = T0,
    **fields: Any,
) -> SyncJob:
    return SyncJob(
        id=job_id,
        user_id=user,
        project_id=project,
        status=status,
        created_at=created_at,
        **fields,
    )


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def open_store(db_path: Path) -> Iterator[OpenStore]:
    """Opens stores (default: on ``db_path``) and closes them all at teardown."""
    opened: list[SqliteJobStore] = []
    hooks = Hooks(get_plugin_manager(load_entrypoints=False))

    def factory(path: Path | str | None = None, **options: object) -> SqliteJobStore:
        target = db_path if path is None else path
        store = SqliteJobStore(SqliteOptions.parse(str(target), options), hooks=hooks)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> SqliteJobStore:
    return open_store()


def raw_connect(path: Path) -> sqlite3.Connection:
    """A plain connection to inspect a database the way an operator would."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)
