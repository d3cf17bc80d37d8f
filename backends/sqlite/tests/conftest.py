"""Fixtures of the SQLite backend's own tests."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cidx_jobs import Hooks, JobPersistence, JobStatus, SyncJob, get_plugin_manager
from cidx_jobs_sqlite import SqliteOptions, SqliteStorage

UTC = timezone.utc
T0 = datetime(2025, 3, 1, 9, 30, 0, 123456, tzinfo=UTC)

OpenStore = Callable[..., JobPersistence]


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


def plain_hooks() -> Hooks:
    """The default hooks only, without the installed plugins."""
    return Hooks(get_plugin_manager(load_entrypoints=False))


def open_sqlite(
    path: Path | str,
    options: dict[str, object] | None = None,
    *,
    storage_class: type[SqliteStorage] = SqliteStorage,
    hooks: Hooks | None = None,
) -> JobPersistence:
    """The facade over a storage of ``storage_class`` on ``path``, built directly."""
    storage = storage_class(SqliteOptions.parse(str(path), options or {}))
    return JobPersistence(storage, hooks=hooks if hooks is not None else plain_hooks())


def storage_of(store: JobPersistence) -> SqliteStorage:
    """The SQLite storage under a store (for its extras and, in tests, its internals)."""
    storage = store.storage
    assert isinstance(storage, SqliteStorage)
    return storage


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "jobs.db"


@pytest.fixture
def open_store(db_path: Path) -> Iterator[OpenStore]:
    """Opens stores (default: on ``db_path``) and closes them all at teardown."""
    opened: list[JobPersistence] = []
    hooks = plain_hooks()

    def factory(path: Path | str | None = None, **options: object) -> JobPersistence:
        store = open_sqlite(db_path if path is None else path, options, hooks=hooks)
        opened.append(store)
        return store

    yield factory
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: OpenStore) -> JobPersistence:
    return open_store()


def raw_connect(path: Path) -> sqlite3.Connection:
    """A plain connection to inspect a database the way an operator would."""
    return sqlite3.connect(path, isolation_level=None, check_same_thread=False)
