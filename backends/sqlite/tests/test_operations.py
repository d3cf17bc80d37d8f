"""The SQLite backend's operator methods (describe, check_health, top_users, migrate) and the
option ``migrate=false``, on real files."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from cidx_jobs import JobStatus, SyncJob, open_persistence
from cidx_jobs.backend import Health, Storage
from cidx_jobs.errors import SchemaVersionError, StorageFullError, StorageUnavailableError
from cidx_jobs_sqlite import SCHEMA_VERSION, SqliteStorage, _operations, _schema


def storage_of(store: object) -> SqliteStorage:
    storage = store.storage  # type: ignore[attr-defined]
    assert isinstance(storage, SqliteStorage)
    return storage


def version_file(path: Path, version: int) -> None:
    """A database built up to ``version`` only, as an older release left it."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _schema.apply_migrations(conn, path, lambda c: c.execute("BEGIN IMMEDIATE"), version)
    finally:
        conn.close()


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


def test_describe(tmp_path: Path) -> None:
    with open_persistence(f"sqlite:///{tmp_path / 'jobs.db'}?pool_size=6") as store:
        store.save_job(SyncJob.create(id="a", user_id="u", project_id="p"))
        info = storage_of(store).describe()
    assert info.location == str(tmp_path / "jobs.db")
    assert info.schema_version == info.latest_schema_version == SCHEMA_VERSION
    assert info.pending_migrations == ()
    assert info.size_bytes is not None
    assert info.size_bytes >= 4096
    assert info.settings["journal_mode"] == "wal"
    assert info.settings["foreign_keys"] == "on"
    assert info.settings["pool_size"] == "6"
    assert info.settings["migrate_at_open"] == "true"


def test_migrate_false_opens_an_old_file_without_changing_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    version_file(path, 2)
    before = path.read_bytes()
    with open_persistence(f"sqlite:///{path}?migrate=false") as store:
        info = storage_of(store).describe()
        assert info.schema_version == 2
        assert [line.split(":")[0] for line in info.pending_migrations] == [
            str(version) for version in range(3, SCHEMA_VERSION + 1)
        ]
        assert info.settings["journal_mode"] == "delete"  # not switched to WAL either
        assert store.count_jobs() == 0  # a version-2 file is readable as it is
    assert path.read_bytes() == before
    assert user_version(path) == 2


def test_migrate_brings_the_file_up_to_date_once(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    version_file(path, 1)
    with open_persistence(f"sqlite:///{path}?migrate=false") as store:
        storage = storage_of(store)
        assert storage.migrate() == (1, SCHEMA_VERSION)
        assert storage.migrate() == (SCHEMA_VERSION, SCHEMA_VERSION)
        info = storage.describe()
        assert info.pending_migrations == ()
        assert info.settings["journal_mode"] == "wal"
        # The pool's connections see the new schema: the lease columns of version 2 work.
        store.save_job(SyncJob.create(id="a", user_id="u", project_id="p"))
        assert store.heartbeat() == 1
    assert user_version(path) == SCHEMA_VERSION


def test_migrate_false_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "folder" / "new.db"
    with pytest.raises(StorageUnavailableError, match="does not exist"):
        open_persistence(f"sqlite:///{missing}?migrate=false")
    assert not missing.parent.exists()


def test_a_newer_file_is_refused_also_without_migrating(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    open_persistence(f"sqlite:///{path}").close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaVersionError):
        open_persistence(f"sqlite:///{path}?migrate=false")


def test_top_users_agrees_with_the_default_of_the_interface(tmp_path: Path) -> None:
    with open_persistence(f"sqlite:///{tmp_path / 'jobs.db'}") as store, store.transaction():
        for i, user in enumerate(["b"] * 3 + ["a"] * 3 + ["c"] * 5 + ["d"]):
            store.save_job(SyncJob.create(id=f"j{i}", user_id=user, project_id="p"))
    with open_persistence(f"sqlite:///{tmp_path / 'jobs.db'}") as store:
        storage = storage_of(store)
        grouped = storage.top_users(3)
        assert grouped == [("c", 5), ("a", 3), ("b", 3)]  # ties by user id
        assert Storage.top_users(storage, 3) == grouped  # the interface's scan


def test_oldest_active_agrees_with_the_default_of_the_interface(tmp_path: Path) -> None:
    from datetime import timedelta

    from cidx_jobs import utcnow

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    now = utcnow()
    with open_persistence(url) as store:
        assert store.storage.oldest_active() is None
        assert Storage.oldest_active(store.storage) is None
        with store.transaction():
            statuses = [JobStatus.COMPLETED, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PENDING]
            for i in range(2400):  # more than two pages of the interface's scan
                store.save_job(
                    SyncJob(
                        id=f"j{i:04d}",
                        user_id="u",
                        project_id="p",
                        status=statuses[i % 4],
                        created_at=now - timedelta(seconds=i // 2),
                        completed_at=now if i % 4 == 0 else None,
                    )
                )
    with open_persistence(url) as store:
        storage = storage_of(store)
        oldest = storage.oldest_active()
        assert oldest is not None
        # j2398 (running) and j2399 (pending) share the oldest time: the smaller id wins.
        assert oldest.id == "j2398"
        assert Storage.oldest_active(storage) == oldest  # the interface's scan


def health(checks: list, name: str):  # type: ignore[no-untyped-def,type-arg]
    return next(check for check in checks if check.name == name)


def test_check_health_of_a_healthy_file(tmp_path: Path) -> None:
    with open_persistence(f"sqlite:///{tmp_path / 'jobs.db'}") as store:
        checks = storage_of(store).check_health(thorough=True)
    names = [check.name for check in checks]
    assert names == [
        "integrity",
        "recovery",
        "journal_mode",
        "wal_size",
        "permissions",
        "disk_space",
        "size_limit",
        "free_pages",
        "settings",
    ]
    assert all(check.health is Health.OK for check in checks), checks
    assert health(checks, "integrity").data["check"] == "integrity_check"


def test_check_health_finds_orphaned_checkpoints_in_a_thorough_check(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    with open_persistence(f"sqlite:///{path}") as store:
        store.save_job(SyncJob.create(id="a", user_id="u", project_id="p"))
        store.save_checkpoint("a", "x", {})
    conn = sqlite3.connect(path)  # foreign keys off: the cascade does not run
    conn.execute("DELETE FROM sync_jobs")
    conn.commit()
    conn.close()
    with open_persistence(f"sqlite:///{path}") as store:
        storage = storage_of(store)
        assert health(storage.check_health(), "integrity").health is Health.OK
        thorough = health(storage.check_health(thorough=True), "integrity")
    assert thorough.health is Health.PROBLEM
    assert "1 checkpoint(s) whose job does not exist" in thorough.summary
    assert thorough.advice


def test_check_health_finds_a_size_limit_nearly_reached(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}?max_size_mb=1"
    with open_persistence(url) as store:
        assert health(storage_of(store).check_health(), "size_limit").health is Health.OK
        with pytest.raises(StorageFullError):  # fill it up, for real
            for i in range(10_000):
                store.save_job(
                    SyncJob.create(
                        id=f"j{i}", user_id="u", project_id="p", metadata={"pad": "x" * 2000}
                    )
                )
        finding = health(storage_of(store).check_health(), "size_limit")
    assert finding.health is Health.PROBLEM
    assert "max_size_mb=1" in finding.summary
    assert "cleanup" in (finding.advice or "")


def test_check_health_warns_about_synchronous_off(tmp_path: Path) -> None:
    with open_persistence(f"sqlite:///{tmp_path / 'jobs.db'}?synchronous=off") as store:
        finding = health(storage_of(store).check_health(), "settings")
    assert finding.health is Health.WARNING
    assert "synchronous=off" in finding.summary


def test_permissions_finds_companions_of_another_owner(tmp_path: Path) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("needs root to give a file away")
    path = tmp_path / "jobs.db"
    path.write_bytes(b"")
    shm = tmp_path / "jobs.db-shm"
    shm.write_bytes(b"")
    os.chown(shm, 12345, 12345)
    finding = _operations._permissions(path)
    assert finding.health is Health.PROBLEM
    assert "jobs.db-shm belongs to uid 12345" in finding.summary
    assert f"chown {path.stat().st_uid} {shm}" in (finding.advice or "")


def test_permissions_finds_a_world_writable_folder(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    path = folder / "jobs.db"
    path.write_bytes(b"")
    folder.chmod(0o777)
    try:
        finding = _operations._permissions(path)
    finally:
        folder.chmod(0o755)
    assert finding.health is Health.PROBLEM
    assert "anyone may write to" in finding.summary
    assert finding.data[str(folder)]["mode"] == f"{stat.S_IMODE(0o777):04o}"  # type: ignore[index]


def test_a_large_wal_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    wal = tmp_path / "jobs.db-wal"
    with open(wal, "wb") as file:  # sparse: no disk is spent
        file.truncate(_operations.WAL_WARNING_BYTES + 1)
    finding = _operations._wal_size(path)
    assert finding.health is Health.WARNING
    assert "fuser" in (finding.advice or "")
    with open(wal, "wb") as file:
        file.truncate(_operations.WAL_PROBLEM_BYTES + 1)
    assert _operations._wal_size(path).health is Health.PROBLEM


def test_the_storage_of_an_old_file_reads_jobs_of_version_2(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    version_file(path, 2)
    conn = sqlite3.connect(path)
    conn.execute(
        "INSERT INTO sync_jobs (id, user_id, project_id, status, created_at) "
        "VALUES ('x', 'u', 'p', 'completed', 0)"
    )
    conn.commit()
    conn.close()
    with open_persistence(f"sqlite:///{path}?migrate=false") as store:
        job = store.load_job("x")
    assert job is not None
    assert job.status is JobStatus.COMPLETED


# -- read_only ------------------------------------------------------------------------------


def _made(path: Path) -> str:
    url = f"sqlite:///{path}"
    with open_persistence(url) as store:
        store.save_job(SyncJob.create(id="a", user_id="u", project_id="p"))
    return url


def test_read_only_reads_and_refuses_writes_and_never_migrates(tmp_path: Path) -> None:
    from cidx_jobs.errors import StorageError

    path = tmp_path / "old.db"
    version_file(path, 1)
    before = path.read_bytes()
    with open_persistence(f"sqlite:///{path}?read_only=true") as store:
        options = storage_of(store).options
        assert (options.read_only, options.migrate, options.recover_corrupt) == (True, False, False)
        assert store.storage.describe().settings["read_only"] == "true"
    assert path.read_bytes() == before
    url = _made(tmp_path / "jobs.db")
    with open_persistence(f"{url}?read_only=true") as store:
        assert store.load_job("a") is not None
        with pytest.raises(StorageError):
            store.save_job(SyncJob.create(id="b", user_id="u", project_id="p"))


def test_read_only_creates_no_database(tmp_path: Path) -> None:
    missing = tmp_path / "missing" / "jobs.db"
    with pytest.raises(StorageUnavailableError):
        open_persistence(f"sqlite:///{missing}?read_only=true")
    assert not missing.parent.exists()


def test_read_only_opens_a_file_nobody_may_write(tmp_path: Path) -> None:
    import shutil
    import subprocess

    path = tmp_path / "jobs.db"
    url = _made(path)
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr +i to make the file read-only even for root")
    if subprocess.run(["chattr", "+i", str(path)], check=False).returncode != 0:
        pytest.skip("this file system does not take chattr +i")
    try:
        from cidx_jobs.errors import StoragePermissionError

        with pytest.raises(StoragePermissionError):
            open_persistence(url)
        with open_persistence(f"{url}?read_only=true") as store:
            assert store.count_jobs() == 1
            checks = {c.name: c for c in store.storage.check_health()}
            assert checks["permissions"].health is Health.PROBLEM
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)
