"""Every storage failure is a typed error with nothing half-written, and the store recovers."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cidx_jobs import JobPersistence, JobStatus
from cidx_jobs.errors import (
    DuplicateJobError,
    StorageBusyError,
    StorageCorruptError,
    StorageError,
    StorageFullError,
    StoragePermissionError,
    StorageUnavailableError,
)
from cidx_jobs_sqlite import SqliteStorage, _errors
from cidx_jobs_sqlite._errors import (
    BUSY,
    CANTOPEN,
    CORRUPT,
    FULL,
    IOERR,
    LOCKED,
    NOTADB,
    PERM,
    PROTOCOL,
    READONLY,
    permission_problem,
    translate,
)

from .conftest import OpenStore, make_job, minutes, open_sqlite, raw_connect, storage_of
from .faults import FAULTS, FaultyStorage, driver_error

BIG = "x" * 60_000  # metadata large enough to fill a 1 MiB database in a few jobs


def test_a_duplicate_id_is_refused_and_changes_nothing(store: JobPersistence) -> None:
    store.save_job(make_job("j1", user="alice", metadata={"v": 1}))
    with pytest.raises(DuplicateJobError) as caught:
        store.save_job(make_job("j1", user="mallory", metadata={"v": 2}))
    assert caught.value.job_id == "j1"
    job = store.load_job("j1")
    assert job is not None
    assert (job.user_id, job.metadata) == ("alice", {"v": 1})


# -- permissions -------------------------------------------------------------------------


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder any user can reach (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="cidx-perm-"))
    folder.chmod(0o755)
    yield folder
    for path in folder.rglob("*"):
        path.chmod(0o700 if path.is_dir() else 0o600)
    shutil.rmtree(folder)


def open_as_unprivileged(path: Path) -> tuple[str, str]:
    """Open a store on ``path`` as an unprivileged user; the error's type and message.

    As root (whom permissions do not stop) the open runs in a forked child that first
    drops to the ``nobody`` user.
    """

    def attempt() -> tuple[str, str]:
        try:
            open_sqlite(path).close()
        except Exception as error:
            return type(error).__name__, str(error)
        return "", ""

    if os.geteuid() != 0:
        return attempt()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, json.dumps(attempt()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    kind, message = json.loads(data)
    return kind, message


posix_only = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX permissions")


@posix_only
def test_a_folder_without_write_permission(shared_folder: Path) -> None:
    folder = shared_folder / "readonly"
    folder.mkdir(mode=0o555)
    kind, message = open_as_unprivileged(folder / "jobs.db")
    assert kind == "StoragePermissionError"
    assert str(folder) in message
    assert "write permission" in message
    assert not (folder / "jobs.db").exists()


@posix_only
def test_a_folder_that_cannot_be_created(shared_folder: Path) -> None:
    parent = shared_folder / "locked"
    parent.mkdir(mode=0o555)
    kind, message = open_as_unprivileged(parent / "sub" / "jobs.db")
    assert kind == "StoragePermissionError"
    assert "cannot create the folder" in message
    assert str(parent) in message


@posix_only
def test_a_file_without_write_permission(shared_folder: Path) -> None:
    folder = shared_folder / "open"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    open_sqlite(folder / "jobs.db").close()
    (folder / "jobs.db").chmod(0o444)
    kind, message = open_as_unprivileged(folder / "jobs.db")
    assert kind == "StoragePermissionError"
    assert str(folder / "jobs.db") in message
    assert "write permission" in message


def test_permission_problems_name_what_is_missing(tmp_path: Path) -> None:
    # What an operator reads, checked without needing another user.
    if os.geteuid() == 0:
        pytest.skip("root passes every access check")
    (tmp_path / "jobs.db").write_bytes(b"")
    (tmp_path / "jobs.db").chmod(stat.S_IRUSR)
    problem = permission_problem(tmp_path / "jobs.db")
    assert problem is not None
    assert "write permission" in problem


# -- disk full ---------------------------------------------------------------------------


def test_disk_full_rolls_back_keeps_earlier_data_and_recovers(open_store: OpenStore) -> None:
    store = open_store(max_size_mb=1)
    saved = []
    with pytest.raises(StorageFullError) as caught:
        for n in range(100):
            store.save_job(make_job(f"j{n}", status=JobStatus.COMPLETED, metadata={"b": BIG}))
            saved.append(f"j{n}")
    assert "max_size_mb" in str(caught.value)
    assert 3 <= len(saved) < 100
    failed = f"j{len(saved)}"
    assert store.load_job(failed) is None
    assert [store.load_job(job_id) is not None for job_id in saved] == [True] * len(saved)
    assert store.count_jobs() == len(saved)
    # A transaction that runs out of space is rolled back whole, and the block cannot
    # go on writing outside it.
    with pytest.raises(StorageError):
        with store.transaction():
            store.save_job(make_job("small"))
            with pytest.raises(StorageFullError):
                store.save_job(make_job("huge", metadata={"b": BIG}))
            store.save_job(make_job("after"))
    assert store.load_job("small") is None
    assert store.load_job("after") is None
    # Freeing space makes writes succeed again.
    assert store.delete_expired_jobs(minutes(10**7)) == len(saved)
    assert store.save_job(make_job(failed, metadata={"b": BIG})) is True
    assert store.load_job(failed) is not None


# -- the file vanishing, and I/O errors -----------------------------------------------------


def remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        with_suffix = path.with_name(path.name + suffix)
        if with_suffix.exists():
            with_suffix.unlink()


def test_a_vanished_file_is_a_typed_error_then_the_store_reconnects(
    store: JobPersistence, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store.save_job(make_job("before"))
    remove_database(db_path)
    with caplog.at_level(logging.ERROR, logger="cidx_jobs"):
        with pytest.raises(StorageUnavailableError, match="removed or replaced"):
            store.save_job(make_job("into-the-void"))
    assert "removed or replaced" in caplog.text
    # The next call reopens the path: a new, empty database.
    assert store.load_job("before") is None
    assert store.save_job(make_job("after")) is True
    assert store.load_job("after") is not None
    assert db_path.exists()


def test_a_replaced_file_is_noticed_and_the_new_one_is_used(
    open_store: OpenStore, db_path: Path, tmp_path: Path
) -> None:
    store = open_store()
    store.save_job(make_job("old"))
    other = open_store(tmp_path / "restored.db")
    other.save_job(make_job("from-backup"))
    other.close()
    os.replace(tmp_path / "restored.db", db_path)
    for suffix in ("-wal", "-shm"):
        with_suffix = db_path.with_name(db_path.name + suffix)
        if with_suffix.exists():
            with_suffix.unlink()
    with pytest.raises(StorageUnavailableError):
        store.update_job_progress("old", 5)
    assert store.load_job("from-backup") is not None
    assert store.load_job("old") is None


def test_reads_notice_a_vanished_file_too(store: JobPersistence, db_path: Path) -> None:
    store.save_job(make_job("before"))
    remove_database(db_path)
    # The periodic check is due (it runs at most once a second).
    storage_of(store)._runner._next_check = 0.0
    with pytest.raises(StorageUnavailableError):
        store.load_job("before")
    assert store.load_job("before") is None


@pytest.fixture
def faulty(db_path: Path) -> Iterator[JobPersistence]:
    store = open_sqlite(db_path, storage_class=FaultyStorage)
    yield store
    store.close()
    assert FAULTS.pending == 0


def test_an_io_error_is_typed_and_the_pool_reconnects(faulty: JobPersistence) -> None:
    faulty.save_job(make_job("j1"))
    FAULTS.add("UPDATE sync_jobs", driver_error(IOERR))
    with pytest.raises(StorageUnavailableError, match="I/O error"):
        faulty.update_job_progress("j1", 10)
    assert storage_of(faulty)._pool.open_count == 0  # every connection was retired
    assert faulty.update_job_progress("j1", 20) is True
    job = faulty.load_job("j1")
    assert job is not None
    assert job.progress == 20


ERROR_KINDS = [
    (BUSY, StorageBusyError),
    (LOCKED, StorageBusyError),
    (FULL, StorageFullError),
    (IOERR, StorageUnavailableError),
    (CORRUPT, StorageCorruptError),
    (NOTADB, StorageCorruptError),
    (CANTOPEN, StorageUnavailableError),
    (READONLY, StoragePermissionError),
    (PERM, StoragePermissionError),
    (PROTOCOL, StorageUnavailableError),
]


@pytest.mark.parametrize(("code", "expected"), ERROR_KINDS)
def test_sqlite_errors_map_to_typed_errors_by_their_code(
    faulty: JobPersistence, code: int, expected: type[StorageError]
) -> None:
    # Named by the code sqlite3 attaches (Python 3.11 and later), whatever the message says.
    error = driver_error(code)
    error.args = ("a message that names no kind",)
    assert type(translate(error, Path("x.db"), "testing")) is expected
    faulty.save_job(make_job("j1"))
    retries = 10**6 if code in (BUSY, LOCKED) else 1
    FAULTS.add("SELECT", driver_error(code), times=retries)
    storage_of(faulty)._runner._busy = 0.05
    try:
        with pytest.raises(expected) as caught:
            faulty.load_job("j1")
    finally:
        FAULTS._queue.clear()
    assert type(caught.value) is expected
    assert isinstance(caught.value.__cause__, sqlite3.Error)
    assert faulty.load_job("j1") is not None


def test_an_error_of_an_unknown_kind_is_a_plain_storage_error_naming_its_code() -> None:
    error = sqlite3.OperationalError("something new")
    error.sqlite_errorcode = 1  # type: ignore[attr-defined,unused-ignore]
    error.sqlite_errorname = "SQLITE_ERROR"  # type: ignore[attr-defined,unused-ignore]
    translated = translate(error, Path("x.db"), "testing")
    assert type(translated) is StorageError
    assert "SQLITE_ERROR" in str(translated)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ("database is locked", StorageBusyError),
        ("database table is locked", StorageBusyError),
        ("database or disk is full", StorageFullError),
        ("disk I/O error", StorageUnavailableError),
        ("database disk image is malformed", StorageCorruptError),
        ("file is not a database", StorageCorruptError),
        ("unable to open database file", StorageUnavailableError),
        ("attempt to write a readonly database", StoragePermissionError),
        ("locking protocol", StorageUnavailableError),
        ("something new", StorageError),
    ],
)
def test_without_codes_the_kind_comes_from_the_message(
    monkeypatch: pytest.MonkeyPatch, message: str, expected: type[StorageError]
) -> None:
    # Python 3.10 attaches no code; its messages are SQLite's own texts for the codes.
    monkeypatch.setattr(_errors, "MESSAGE_FALLBACK", True)
    assert type(translate(sqlite3.OperationalError(message), Path("x.db"), "testing")) is expected


def test_with_codes_the_message_is_not_read() -> None:
    # From 3.11 on, an exception without a code is not one SQLite raised: no guessing.
    if _errors.MESSAGE_FALLBACK:
        pytest.skip("this Python attaches no codes")
    error = sqlite3.OperationalError("database is locked")
    assert type(translate(error, Path("x.db"), "testing")) is StorageError


def test_a_row_edited_outside_the_backend_is_a_typed_error(
    store: JobPersistence, db_path: Path
) -> None:
    store.save_job(make_job("j1"))
    with raw_connect(db_path) as conn:
        conn.execute("UPDATE sync_jobs SET metadata = '{oops', status = 'weird'")
    conn.close()
    with pytest.raises(StorageCorruptError, match="j1"):
        store.load_job("j1")


# -- corruption at open ---------------------------------------------------------------------


def fill_for_damage(open_store: OpenStore, path: Path, jobs: int = 400) -> None:
    store = open_store(path)
    with store.transaction():
        for n in range(jobs):
            store.save_job(
                make_job(f"job-{n:04d}", created_at=minutes(n), metadata={"pad": "p" * 300})
            )
            store.save_checkpoint(f"job-{n:04d}", "git_pull", {"n": n})
    store.close()


def table_leaf_pages(path: Path, table: str) -> list[int]:
    with raw_connect(path) as conn:
        try:
            rows = conn.execute(
                "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
                (table,),
            ).fetchall()
        except sqlite3.OperationalError:
            rows = []
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    if not rows:  # no dbstat in this SQLite build: guess from the middle of the file
        pages = path.stat().st_size // page_size
        return list(range(pages // 3, pages // 3 + 8))
    return [row[0] for row in rows]


def damage_pages(path: Path, pages: list[int]) -> None:
    with raw_connect(path) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with path.open("r+b") as file:
        for page in pages:
            file.seek((page - 1) * page_size)
            file.write(os.urandom(page_size))


@pytest.fixture
def damaged(open_store: OpenStore, db_path: Path) -> list[int]:
    fill_for_damage(open_store, db_path)
    leaves = table_leaf_pages(db_path, "sync_jobs")
    hit = leaves[len(leaves) // 2 : len(leaves) // 2 + 2]
    damage_pages(db_path, hit)
    return hit


def test_a_damaged_file_is_refused_when_recovery_is_off(
    open_store: OpenStore, db_path: Path, damaged: list[int]
) -> None:
    before = db_path.read_bytes()
    with pytest.raises(StorageCorruptError, match="recover_corrupt"):
        open_store(recover_corrupt=False)
    assert db_path.read_bytes() == before
    assert not list(db_path.parent.glob("*.corrupt-*"))


def test_a_damaged_file_is_moved_aside_and_salvaged(
    open_store: OpenStore, db_path: Path, damaged: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    before = db_path.read_bytes()
    with caplog.at_level(logging.ERROR, logger="cidx_jobs"):
        store = open_store()
    report = storage_of(store).recovery
    assert report is not None
    # The damaged file is kept, byte for byte, under a dated name.
    assert report.moved_to.name.startswith("jobs.db.corrupt-")
    assert report.moved_to.read_bytes() == before
    # It had no -wal or -shm (it was closed cleanly), and the salvage left none behind.
    assert [p.name for p in db_path.parent.glob("*corrupt*")] == [report.moved_to.name]
    # Every job on an intact page survived, with its checkpoint; the damaged pages' did not.
    kept = [f"job-{n:04d}" for n in range(400) if store.load_job(f"job-{n:04d}") is not None]
    assert report.jobs_kept == len(kept)
    assert 300 <= len(kept) < 400
    assert report.checkpoints_kept == len(kept)
    assert all(store.load_checkpoint(job_id, "git_pull") is not None for job_id in kept)
    # Their leases are kept as stored (all from the one store that wrote them).
    salvaged = [job for job in map(store.load_job, kept) if job is not None]
    assert len({job.owner_id for job in salvaged} - {None}) == 1
    assert all(job.owner_id and job.heartbeat_at for job in salvaged)
    lost = sorted({f"job-{n:04d}" for n in range(400)} - set(kept))
    assert report.jobs_lost == lost
    assert f"Kept {len(kept)} jobs and {len(kept)} checkpoints" in caplog.text
    assert f"Lost {len(lost)} jobs" in caplog.text
    assert str(report.moved_to) in caplog.text
    # The fresh file is clean and works.
    with raw_connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    store.save_job(make_job("new"))
    assert store.count_jobs() == len(kept) + 1


def test_a_destroyed_header_keeps_the_rows_of_the_other_pages(
    open_store: OpenStore, db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fill_for_damage(open_store, db_path, jobs=20)
    damage_pages(db_path, [1])
    with caplog.at_level(logging.ERROR, logger="cidx_jobs"):
        store = open_store()
    report = storage_of(store).recovery
    assert report is not None
    assert report.jobs_kept == 20
    # The schema and the free-page list were on the destroyed page.
    assert report.complete is False
    assert store.count_jobs() == 20
    assert "damaged" in caplog.text


def test_a_file_that_is_not_a_database_is_left_alone(open_store: OpenStore, db_path: Path) -> None:
    db_path.write_text("settings: important\n")
    with pytest.raises(StorageCorruptError, match="not an SQLite database"):
        open_store()
    assert db_path.read_text() == "settings: important\n"


def test_damage_found_mid_life_is_a_typed_error(
    open_store: OpenStore, db_path: Path, damaged: list[int]
) -> None:
    store = open_store(check_on_open="off", recover_corrupt=False)
    errors: list[type[BaseException]] = []
    for n in range(400):
        try:
            store.load_job(f"job-{n:04d}")
        except StorageError as error:
            errors.append(type(error))
    assert errors
    assert set(errors) == {StorageCorruptError}


# -- backup ------------------------------------------------------------------------------


def test_backup_writes_a_consistent_copy(open_store: OpenStore, tmp_path: Path) -> None:
    store = open_store()
    for n in range(50):
        store.save_job(make_job(f"j{n}"))
        store.save_checkpoint(f"j{n}", "p", {"n": n})
    storage_of(store).backup(tmp_path / "copy.db")
    copy = open_store(tmp_path / "copy.db")
    assert copy.count_jobs() == 50
    assert copy.load_checkpoint("j7", "p") == {"n": 7}


def test_every_public_method_documents_what_it_raises() -> None:
    for name in ("backup", "__init__", "from_config", "transaction"):
        doc = getattr(SqliteStorage, name).__doc__
        assert doc is not None
        assert ":raises" in doc
    assert "StorageError" in (SqliteStorage.__doc__ or "")


def test_a_failed_commit_stores_nothing(faulty: JobPersistence) -> None:
    FAULTS.add("COMMIT", driver_error(IOERR))
    with pytest.raises(StorageUnavailableError), faulty.transaction():
        faulty.save_job(make_job("a"))
        faulty.save_job(make_job("b"))
    assert faulty.count_jobs() == 0
    assert faulty.save_job(make_job("c")) is True


def test_a_busy_commit_is_retried(faulty: JobPersistence) -> None:
    FAULTS.add("COMMIT", driver_error(BUSY), times=2)
    with faulty.transaction():
        faulty.save_job(make_job("a"))
    assert faulty.load_job("a") is not None


def test_a_duplicate_inside_a_transaction_does_not_spoil_it(store: JobPersistence) -> None:
    store.save_job(make_job("taken"))
    with store.transaction():
        store.save_job(make_job("a"))
        with pytest.raises(DuplicateJobError):
            store.save_job(make_job("taken"))
        assert store.save_checkpoint("nope", "p", {}) is False
        store.save_job(make_job("b"))
    assert store.count_jobs() == 3


def test_an_unreadable_checkpoint_is_a_typed_error(store: JobPersistence, db_path: Path) -> None:
    store.save_job(make_job("j1"))
    store.save_checkpoint("j1", "p", {"a": 1})
    with raw_connect(db_path) as conn:
        conn.execute("UPDATE job_checkpoints SET data = 'not json'")
    conn.close()
    with pytest.raises(StorageCorruptError):
        store.load_checkpoint("j1", "p")
    with pytest.raises(StorageCorruptError):
        store.list_checkpoints("j1")


def test_a_closed_store_raises_unavailable(store: JobPersistence) -> None:
    store.save_job(make_job("j1"))
    store.close()
    store.close()  # idempotent
    with pytest.raises(StorageUnavailableError, match="closed"):
        store.load_job("j1")
    with pytest.raises(StorageUnavailableError, match="closed"):
        with store.transaction():
            pass


# -- a folder of the path replaced, and the lock of a recovery ----------------------------


def test_a_folder_of_the_path_replaced_by_a_file_is_a_typed_error(tmp_path: Path) -> None:
    folder = tmp_path / "sub"
    store = open_sqlite(folder / "jobs.db")
    try:
        store.save_job(make_job("before"))
        shutil.rmtree(folder)
        folder.write_text("not a folder\n")  # os.stat of the path now fails with ENOTDIR
        with pytest.raises(StorageUnavailableError, match="removed or replaced"):
            store.save_job(make_job("into-the-void"))
        # Reopening fails typed too while the file is in the way ...
        with pytest.raises(StorageUnavailableError, match="cannot create the folder"):
            store.load_job("before")
        folder.unlink()
        # ... and works again once it is gone: a new, empty database.
        assert store.load_job("before") is None
        assert store.save_job(make_job("after")) is True
    finally:
        store.close()


def _destroy_header(open_store: OpenStore, path: Path) -> None:
    fill_for_damage(open_store, path, jobs=5)
    damage_pages(path, [1])


def test_a_folder_that_cannot_be_locked_for_a_recovery_is_a_typed_error(
    open_store: OpenStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fcntl = pytest.importorskip("fcntl")
    _destroy_header(open_store, db_path)

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(StorageUnavailableError, match="cannot lock the folder") as caught:
        open_store()
    assert isinstance(caught.value.__cause__, OSError)
    monkeypatch.undo()
    assert storage_of(open_store()).recovery is not None  # with locks, it recovers


def test_a_folder_that_cannot_be_opened_for_a_recovery_is_a_typed_error(
    open_store: OpenStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("fcntl")
    _destroy_header(open_store, db_path)
    real_open = os.open

    def refuse_the_folder(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if Path(path) == db_path.parent:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse_the_folder)
    with pytest.raises(StoragePermissionError, match="read permission on the folder"):
        open_store()


# -- a storage failure inside a block dooms it ----------------------------------------------


def _unreadable_row(store: JobPersistence, db_path: Path) -> None:
    store.save_job(make_job("damaged"))
    store.save_job(make_job("fine"))
    with raw_connect(db_path) as conn:
        conn.execute("UPDATE sync_jobs SET metadata = '{oops' WHERE id = 'damaged'")
    conn.close()


def test_an_unreadable_row_dooms_the_block_even_when_the_caller_goes_on(
    store: JobPersistence, db_path: Path
) -> None:
    _unreadable_row(store, db_path)
    with pytest.raises(StorageError, match="rolled back") as caught:
        with store.transaction():
            store.save_job(make_job("before"))
            with pytest.raises(StorageCorruptError):
                store.load_job("damaged")
            # The caller ignores the error; the block must not commit anyway.
    assert not isinstance(caught.value, StorageCorruptError)
    assert store.load_job("before") is None
    with pytest.raises(StorageError, match="failed"):
        with store.transaction():
            with pytest.raises(StorageCorruptError):
                store.query_jobs()
            store.save_job(make_job("after"))  # a later call of the doomed block raises
    assert store.load_job("after") is None
    # An answer a primitive reads from a constraint does not doom a block.
    with store.transaction():
        with pytest.raises(DuplicateJobError):
            store.save_job(make_job("fine"))
        assert store.save_checkpoint("no-such-job", "p", {}) is False
        store.save_job(make_job("kept"))
    assert store.load_job("kept") is not None


def test_a_failure_inside_a_block_dooms_it_even_if_sqlite_kept_it_open(
    faulty: JobPersistence,
) -> None:
    # SQLITE_CORRUPT from one statement leaves SQLite's transaction open; the block is
    # doomed all the same.
    faulty.save_job(make_job("j1"))
    FAULTS.add("UPDATE sync_jobs", driver_error(CORRUPT))
    with pytest.raises(StorageError, match="rolled back"):
        with faulty.transaction():
            faulty.save_job(make_job("before"))
            with pytest.raises(StorageCorruptError):
                faulty.update_job_progress("j1", 50)
    assert faulty.load_job("before") is None
    assert faulty.save_job(make_job("after")) is True
