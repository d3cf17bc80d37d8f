"""Typed, actionable errors for real faults: deep paths, full disks, read-only mounts, rows
holding invalid UTF-8, a busy database, and backups aimed at the database's own files.

The faults are real: small tmpfs file systems filled up or out of inodes, read-only
(re)mounts, bytes written with a raw sqlite3 connection, a write lock held by another
connection. Tests that mount need root and Linux, and skip with the reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from cidx_jobs import JobFilter, JobPersistence, open_persistence
from cidx_jobs.errors import (
    ConfigError,
    StorageBusyError,
    StorageCorruptError,
    StorageFullError,
    StoragePermissionError,
    ValidationError,
)
from cidx_jobs_sqlite._errors import UnreadableTextError
from cidx_jobs_sqlite._options import MAX_PATH_BYTES

from .conftest import OpenStore, make_job, minutes, storage_of


def _cannot_mount() -> str | None:
    if not sys.platform.startswith("linux"):
        return "mounting a tmpfs needs Linux"
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root"
    if shutil.which("mount") is None:
        return "no mount command"
    return None


Mount = Callable[..., Path]


@pytest.fixture
def mount(tmp_path: Path) -> Iterator[Mount]:
    """Mounts small tmpfs file systems (``mount("size=1m")``); unmounts them all afterwards."""
    reason = _cannot_mount()
    if reason is not None:
        pytest.skip(reason)
    mounted: list[Path] = []

    def make(options: str) -> Path:
        point = Path(tempfile.mkdtemp(prefix="fs-", dir=tmp_path))
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"{options},mode=0755", "tmpfs", str(point)],
            check=True,
            capture_output=True,
        )
        mounted.append(point)
        return point

    yield make
    for point in reversed(mounted):
        subprocess.run(["umount", "-l", str(point)], check=False, capture_output=True)


def remount(point: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(point)], check=True)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte; the filler file."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as file:
        for chunk in (b"\0" * 4096, b"\0"):  # then the last partial block
            try:
                while True:
                    file.write(chunk)
            except OSError:
                pass
    return filler


def url(path: Path, **options: object) -> str:
    query = "&".join(f"{key}={value}" for key, value in options.items())
    return f"sqlite:///{path}" + (f"?{query}" if query else "")


@contextmanager
def opened(path: Path, **options: object) -> Iterator[JobPersistence]:
    store = open_persistence(url(path, **options))
    try:
        yield store
    finally:
        store.close()


# -- deep and long paths ----------------------------------------------------------------------


def test_a_path_of_1200_missing_folders_is_refused_before_anything_is_created(
    tmp_path: Path,
) -> None:
    path = tmp_path.joinpath(*(["a"] * 1200), "jobs.db")
    with pytest.raises(ConfigError, match=f"at most {MAX_PATH_BYTES} bytes") as caught:
        open_persistence(url(path))
    assert caught.value.option == "path"
    assert list(tmp_path.iterdir()) == []


def test_paths_up_to_sqlites_limit_open_and_longer_ones_are_refused(tmp_path: Path) -> None:
    base = str(tmp_path)
    levels = (MAX_PATH_BYTES - len(base) - len("/jobs.db")) // 2
    deep = Path(base + "/a" * levels + "/" + "x" * (MAX_PATH_BYTES - len(base) - 2 * levels - 1))
    assert len(os.fsencode(deep)) == MAX_PATH_BYTES
    with opened(deep) as store:  # hundreds of missing folders, made one at a time
        store.save_job(make_job("j1"))
        assert store.load_job("j1") == make_job("j1")
    assert deep.is_file()
    with pytest.raises(ConfigError, match="choose a shorter path"):
        open_persistence(url(Path(str(deep) + "y")))


def test_folders_made_before_one_that_cannot_be_made_are_removed(mount: Mount) -> None:
    # Four inodes: the root holds one, so three folders fit and the fourth fails (ENOSPC).
    point = mount("size=1m,nr_inodes=4")
    path = point / "a" / "b" / "c" / "d" / "e" / "jobs.db"
    with pytest.raises(StorageFullError, match="No folder was left behind"):
        open_persistence(url(path))
    assert list(point.iterdir()) == []


# -- full disks -------------------------------------------------------------------------------


def test_a_full_disk_at_open_of_an_existing_database_is_storage_full(mount: Mount) -> None:
    point = mount("size=1m")
    db = point / "jobs.db"
    with opened(db) as store:
        store.save_job(make_job("kept"))
    filler = fill(point)
    # SQLite cannot grow -shm (SQLITE_IOERR_SHMSIZE): the disk is full, not removed.
    with pytest.raises(StorageFullError, match="is full") as caught:
        open_persistence(url(db))
    assert "removed" not in str(caught.value)
    filler.unlink()
    with opened(db) as store:
        assert store.load_job("kept") == make_job("kept")


def test_a_full_disk_for_a_new_database_is_storage_full(mount: Mount) -> None:
    point = mount("size=1m")
    filler = fill(point)
    with pytest.raises(StorageFullError):
        open_persistence(url(point / "sub" / "jobs.db"))
    filler.unlink()
    with opened(point / "sub" / "jobs.db") as store:  # what was left is usable
        assert store.save_job(make_job("j1")) is True


def test_no_inode_left_for_the_folder_is_storage_full(mount: Mount) -> None:
    point = mount("size=1m,nr_inodes=2")
    (point / "taken").mkdir()  # the last inode
    with pytest.raises(StorageFullError, match="no space \\(or no inode\\)"):
        open_persistence(url(point / "jobs" / "jobs.db"))
    assert sorted(p.name for p in point.iterdir()) == ["taken"]


# -- read-only file systems ---------------------------------------------------------------------


def test_a_read_only_mount_is_reported_as_that(mount: Mount) -> None:
    point = mount("size=4m")
    db = point / "jobs.db"
    with opened(db) as store:
        store.save_job(make_job("j1"))
    remount(point, "ro")
    for target in (db, point / "new.db", point / "sub" / "new.db"):
        with pytest.raises(StoragePermissionError, match="mounted read-only") as caught:
            open_persistence(url(target))
        message = str(caught.value)
        assert "owner or mode" not in message
        assert "Remount it read-write" in message
    with pytest.raises(StoragePermissionError, match="mounted read-only"):
        open_persistence(url(db, read_only="true"))  # a WAL database without its -shm
    remount(point, "rw")
    with opened(db) as store:
        assert store.load_job("j1") == make_job("j1")


def test_a_read_only_bind_mount_is_reported_as_that(mount: Mount, tmp_path: Path) -> None:
    source = mount("size=4m")
    with opened(source / "jobs.db") as store:
        store.save_job(make_job("j1"))
    view = tmp_path / "view"
    view.mkdir()
    subprocess.run(["mount", "--bind", str(source), str(view)], check=True)
    try:
        remount(view, "bind,ro")
        with pytest.raises(StoragePermissionError, match="mounted read-only") as caught:
            open_persistence(url(view / "jobs.db"))
        assert "owner or mode" not in str(caught.value)
    finally:
        subprocess.run(["umount", str(view)], check=False)


# -- rows holding text that is not UTF-8 ----------------------------------------------------------


def _break_text(db: Path, job_id: str, column: str = "phase") -> None:
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(
            f"UPDATE sync_jobs SET {column} = CAST(x'41ff' AS TEXT) WHERE id = ?", (job_id,)
        )
        conn.commit()


def test_a_load_of_a_row_with_invalid_utf8_names_the_job(
    store: JobPersistence, db_path: Path
) -> None:
    for n in range(3):
        store.save_job(make_job(f"j{n}", phase="git_pull"))
    _break_text(db_path, "j1")
    with pytest.raises(UnreadableTextError, match="job 'j1' whose 'phase'") as caught:
        store.load_job("j1")
    assert isinstance(caught.value, StorageCorruptError)
    assert caught.value.job_ids == ("j1",)
    assert caught.value.column == "phase"
    assert store.load_job("j0") == make_job("j0", phase="git_pull")


def test_a_listing_with_rows_of_invalid_utf8_fails_naming_them(
    store: JobPersistence, db_path: Path
) -> None:
    for n in range(5):
        store.save_job(make_job(f"j{n}", user="bob" if n < 2 else "alice", created_at=minutes(n)))
    _break_text(db_path, "j3", "error_message")
    _break_text(db_path, "j4", "project_id")
    with pytest.raises(UnreadableTextError) as caught:
        store.query_jobs()
    assert set(caught.value.job_ids) == {"j3", "j4"}
    assert "'j3'" in str(caught.value)
    assert "'j4'" in str(caught.value)
    # A listing that does not include them works; so does everything else.
    assert [job.id for job in store.query_jobs(JobFilter(user_id="bob"))] == ["j1", "j0"]
    assert store.count_jobs() == 5
    # Inside a block, the failure dooms the block like any other unreadable row.
    with pytest.raises(StorageCorruptError), store.transaction():
        store.query_jobs()


def test_check_on_open_full_finds_a_row_of_invalid_utf8(
    open_store: OpenStore, db_path: Path
) -> None:
    store = open_store()
    store.save_job(make_job("good"))
    store.save_job(make_job("bad"))
    store.save_checkpoint("good", "indexing", {"n": 1})
    store.close()
    _break_text(db_path, "bad")
    before = db_path.read_bytes()
    # The default quick check does not read text as UTF-8 (documented).
    with opened(db_path, check_on_open="quick", migrate="false") as quick:
        assert storage_of(quick).recovery is None
    with pytest.raises(StorageCorruptError, match="job 'bad' \\(phase\\)"):
        open_persistence(url(db_path, check_on_open="full", recover_corrupt="false"))
    assert db_path.read_bytes() == before
    with opened(db_path, check_on_open="full") as recovered:
        report = storage_of(recovered).recovery
        assert report is not None
        assert report.jobs_lost == ["bad"]
        assert "not valid UTF-8" in report.problem
        assert recovered.load_job("good") == make_job("good")
        assert len(recovered.list_checkpoints("good")) == 1


# -- a busy database ------------------------------------------------------------------------------


def test_the_busy_timeout_message_names_both_causes(open_store: OpenStore, db_path: Path) -> None:
    store = open_store(busy_timeout_ms=100)
    with closing(sqlite3.connect(db_path, isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageBusyError) as caught:
            store.save_job(make_job("j1"))
        holder.execute("ROLLBACK")
    message = str(caught.value)
    assert "for longer than busy_timeout_ms" not in message
    assert "one transaction held the write lock that long" in message
    assert "never got its turn" in message
    assert store.save_job(make_job("j1")) is True


# -- backups aimed at the database's own files ----------------------------------------------------


def test_a_backup_onto_the_databases_own_files_is_refused(
    store: JobPersistence, db_path: Path, tmp_path: Path
) -> None:
    store.save_job(make_job("j1"))
    storage = storage_of(store)
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE t (x)")
    (tmp_path / "notes.txt").write_text("not a database")
    wal = db_path.with_name("jobs.db-wal")
    files = {p: p.read_bytes() for p in (db_path, wal) if p.exists()}
    targets = {
        wal: "the database's jobs.db-wal",
        db_path.with_name("jobs.db-shm"): "the database's jobs.db-shm",
        db_path: "the database itself",
        db_path.with_name("jobs.db-journal"): "the database's jobs.db-journal",
        tmp_path / "sub" / ".." / "jobs.db-wal": "the database's jobs.db-wal",
        tmp_path / "other.db-wal": "the -wal file of the database",
        tmp_path: "a folder",
        tmp_path / "notes.txt": "not an SQLite database",
    }
    (tmp_path / "sub").mkdir()
    for target, why in targets.items():
        with pytest.raises(ValidationError, match=why) as caught:
            storage.backup(target)
        assert caught.value.field == "target"
        assert "damaged" not in str(caught.value)
    assert not db_path.with_name("jobs.db-journal").exists()
    assert (tmp_path / "notes.txt").read_text() == "not a database"
    assert db_path.read_bytes() == files[db_path]
    assert store.load_job("j1") == make_job("j1")
    # A new file, and an older backup, are written as before.
    storage.backup(tmp_path / "backup.db")
    storage.backup(tmp_path / "backup.db")
    with closing(sqlite3.connect(tmp_path / "backup.db")) as conn:
        assert conn.execute("SELECT id FROM sync_jobs").fetchall() == [("j1",)]
