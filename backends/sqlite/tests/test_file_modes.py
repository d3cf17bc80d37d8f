"""The modes and owners of the files the backend creates (issue 10, item 5): a new database is
owner-only, and a backup is never readable by more users than the database it copies."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cidx_jobs import JobPersistence

from .conftest import make_job, open_sqlite

NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    # 022, a distribution's default: without the backend's care a new file would be 0644.
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def written(path: Path) -> JobPersistence:
    store = open_sqlite(path)
    store.save_job(make_job("job-1"))
    return store


@pytest.mark.usefixtures("usual_umask")
def test_a_new_database_and_its_wal_and_shm_are_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = written(path)
    try:
        assert mode(path) == 0o600
        assert mode(tmp_path / "jobs.db-wal") == 0o600
        assert mode(tmp_path / "jobs.db-shm") == 0o600
    finally:
        store.close()


@pytest.mark.usefixtures("usual_umask")
def test_a_new_database_through_a_dangling_symlink_is_owner_only(tmp_path: Path) -> None:
    (tmp_path / "volume").mkdir()
    link = tmp_path / "jobs.db"
    link.symlink_to(tmp_path / "volume" / "real.db")
    store = written(link)
    try:
        assert link.is_symlink()
        assert mode(tmp_path / "volume" / "real.db") == 0o600
    finally:
        store.close()


@pytest.mark.usefixtures("usual_umask")
def test_a_backup_through_a_dangling_symlink_creates_its_target(tmp_path: Path) -> None:
    store = written(tmp_path / "jobs.db")
    try:
        (tmp_path / "backups").mkdir()
        (tmp_path / "copy.db").symlink_to(tmp_path / "backups" / "copy.db")
        store.storage.backup(tmp_path / "copy.db")
        assert mode(tmp_path / "backups" / "copy.db") == 0o600
    finally:
        store.close()


@pytest.mark.usefixtures("usual_umask")
def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    open_sqlite(path).close()
    os.chmod(path, 0o640)
    store = written(path)
    try:
        assert mode(path) == 0o640
    finally:
        store.close()


@pytest.mark.usefixtures("usual_umask")
@pytest.mark.parametrize("database_mode", [0o600, 0o640])
def test_a_new_backup_takes_the_databases_mode(tmp_path: Path, database_mode: int) -> None:
    path = tmp_path / "jobs.db"
    store = written(path)
    try:
        os.chmod(path, database_mode)
        store.storage.backup(tmp_path / "copy.db")
        assert mode(tmp_path / "copy.db") == database_mode
        copy = open_sqlite(tmp_path / "copy.db")
        assert copy.load_job("job-1") is not None
        copy.close()
    finally:
        store.close()


@pytest.mark.usefixtures("usual_umask")
def test_a_backup_over_a_wider_file_narrows_it(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = written(path)
    try:
        store.storage.backup(tmp_path / "copy.db")
        os.chmod(tmp_path / "copy.db", 0o644)
        store.storage.backup(tmp_path / "copy.db")
        assert mode(tmp_path / "copy.db") == 0o600
    finally:
        store.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root gives a file away")
@pytest.mark.usefixtures("usual_umask")
def test_a_backup_run_by_root_belongs_to_the_databases_owner(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = written(path)
    try:
        os.chown(path, NOBODY, NOBODY)
        store.storage.backup(tmp_path / "copy.db")
        copy = (tmp_path / "copy.db").stat()
        assert (copy.st_uid, copy.st_gid) == (NOBODY, NOBODY)
    finally:
        store.close()
