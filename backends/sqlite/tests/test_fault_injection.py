"""The fault-injection seam: injected faults enter where sqlite3 is called and come out as
the same typed errors as real ones, with nothing written and a store that recovers."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cidx_jobs import JobPersistence, JobStatus
from cidx_jobs.backend import Fault
from cidx_jobs.errors import StorageBusyError, StorageError, StorageUnavailableError
from cidx_jobs_sqlite import SqliteFaultInjector
from cidx_jobs_sqlite._errors import error_code

from .conftest import OpenStore, make_job, storage_of

FAULTS = list(Fault)
#: SQLite's primary result code behind each fault (CONNECTION_LOST is sqlite3's own refusal).
CODES = {
    Fault.LOCK_TIMEOUT: 5,  # SQLITE_BUSY
    Fault.DISK_FULL: 13,  # SQLITE_FULL
    Fault.PERMISSION_DENIED: 8,  # SQLITE_READONLY
    Fault.CORRUPT: 11,  # SQLITE_CORRUPT
}

CALLS: list[tuple[str, Callable[[JobPersistence], object]]] = [
    ("save_job", lambda store: store.save_job(make_job("new"))),
    ("load_job", lambda store: store.load_job("j1")),
    ("update_job_status", lambda store: store.update_job_status("j1", JobStatus.RUNNING)),
    ("save_checkpoint", lambda store: store.save_checkpoint("j1", "p", {"n": 2})),
    ("query_jobs", lambda store: store.query_jobs()),
    ("delete_expired_jobs", lambda store: store.delete_expired_jobs(make_job("x").created_at)),
    ("a transaction block", lambda store: _block(store)),
]


def _block(store: JobPersistence) -> None:
    with store.transaction():
        store.save_job(make_job("in-block"))


def injector_of(store: JobPersistence) -> SqliteFaultInjector:
    injector = storage_of(store).fault_injector()
    assert isinstance(injector, SqliteFaultInjector)
    return injector


def contents(store: JobPersistence) -> list[object]:
    return [
        (job, job.owner_id, job.heartbeat_at, store.list_checkpoints(job.id))
        for job in store.query_jobs()
    ]


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.value for fault in FAULTS])
@pytest.mark.parametrize(("name", "call"), CALLS, ids=[name for name, _ in CALLS])
def test_an_injected_fault_is_its_typed_error_and_writes_nothing(
    store: JobPersistence, fault: Fault, name: str, call: Callable[[JobPersistence], object]
) -> None:
    store.save_job(make_job("j1"))
    store.save_checkpoint("j1", "p", {"n": 1})
    before = contents(store)
    injector_of(store).fail_next(fault)
    with pytest.raises(fault.error) as caught:
        call(store)
    if fault is not Fault.LOCK_TIMEOUT:
        assert not isinstance(caught.value, StorageBusyError)
    # Through the same translation as a real failure: the driver's exception is the cause.
    cause = caught.value.__cause__
    assert isinstance(cause, sqlite3.Error)
    if fault is Fault.CONNECTION_LOST:
        assert isinstance(cause, sqlite3.ProgrammingError)
        assert "closed" in str(cause)
    else:
        assert error_code(cause) == CODES[fault]
    assert contents(store) == before
    call(store)  # the fault was met once; the store works again


def test_a_lost_connection_is_really_closed_and_replaced(store: JobPersistence) -> None:
    store.save_job(make_job("j1"))
    pool = storage_of(store)._pool
    assert pool.open_count == 1
    conn = pool.acquire()
    pool.release(conn)
    injector_of(store).fail_next(Fault.CONNECTION_LOST)
    with pytest.raises(StorageUnavailableError, match="closed"):
        store.load_job("j1")
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("SELECT 1")  # closed for real, not only reported as closed
    assert pool.open_count == 0  # the dead connection left the pool ...
    assert store.load_job("j1") is not None  # ... and a new one took its place
    replacement = pool.acquire()
    pool.release(replacement)
    assert replacement is not conn


def test_a_lock_timeout_is_not_waited_for_again(open_store: OpenStore) -> None:
    store = open_store(busy_timeout_ms=5000)
    injector_of(store).fail_next(Fault.LOCK_TIMEOUT)
    started = time.monotonic()
    with pytest.raises(StorageBusyError, match="busy_timeout_ms"):
        store.save_job(make_job("j1"))
    # As if the busy timeout had run out already: no retry for another five seconds.
    assert time.monotonic() - started < 2.5
    assert store.load_job("j1") is None


def test_an_injected_corrupt_is_not_recovered_from(store: JobPersistence, db_path: Path) -> None:
    store.save_job(make_job("j1"))
    injector_of(store).fail_next(Fault.CORRUPT)
    with pytest.raises(StorageError):
        store.load_job("j1")
    # The file is intact, so nothing is moved aside or salvaged, now or at the next open.
    assert storage_of(store).recovery is None
    assert store.load_job("j1") is not None
    store.close()
    assert not [path.name for path in db_path.parent.iterdir() if "corrupt" in path.name]


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.value for fault in FAULTS])
def test_a_fault_inside_a_block_rolls_the_whole_block_back(
    store: JobPersistence, fault: Fault
) -> None:
    store.save_job(make_job("existing"))
    before = contents(store)
    with pytest.raises(StorageError, match="rolled back"):
        with store.transaction():
            store.save_job(make_job("before"))
            injector_of(store).fail_next(fault)
            with pytest.raises(fault.error):
                store.update_job_progress("existing", 50)
            store.save_job(make_job("after"))  # the block is doomed: this raises
    assert contents(store) == before
    with store.transaction():
        store.save_job(make_job("later"))
    assert store.load_job("later") is not None


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.value for fault in FAULTS])
def test_a_fault_at_the_start_of_a_block_fails_the_block(
    store: JobPersistence, fault: Fault
) -> None:
    injector_of(store).fail_next(fault)
    with pytest.raises(fault.error):
        with store.transaction():
            pytest.fail("the block ran although BEGIN failed")
    assert store.count_jobs() == 0
    _block(store)
    assert store.load_job("in-block") is not None


def test_the_next_statement_of_any_thread_meets_the_fault(store: JobPersistence) -> None:
    store.save_job(make_job("j1"))
    injector_of(store).fail_next(Fault.DISK_FULL)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            store.update_job_progress("j1", 10)
        except BaseException as error:  # collected for the assertion
            errors.append(error)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(30)
    assert [type(error) for error in errors] == [Fault.DISK_FULL.error]
    assert store.update_job_progress("j1", 20) is True


def test_clear_cancels_a_fault_not_met_yet(store: JobPersistence) -> None:
    injector = injector_of(store)
    injector.fail_next(Fault.DISK_FULL)
    assert injector.clear() is True  # it was still pending
    assert store.save_job(make_job("j1")) is True
    assert injector.clear() is False  # nothing armed: nothing happens


def test_clear_says_whether_the_fault_was_met(store: JobPersistence) -> None:
    injector = injector_of(store)
    injector.fail_next(Fault.DISK_FULL)
    with pytest.raises(StorageError):
        store.save_job(make_job("j1"))
    assert injector.clear() is False
    injector.fail_next(Fault.DISK_FULL, after=1)
    assert store.save_job(make_job("j1")) is True  # one statement: the fault waits
    assert injector.clear() is True


def test_after_lets_that_many_statements_pass_first(store: JobPersistence) -> None:
    injector = injector_of(store)
    injector.fail_next(Fault.CORRUPT, after=2)
    assert store.save_job(make_job("j1")) is True
    assert store.load_job("j1") is not None
    with pytest.raises(Fault.CORRUPT.error):
        store.update_job_progress("j1", 10)
    assert injector.clear() is False
    job = store.load_job("j1")
    assert job is not None
    assert job.progress == 0


@pytest.mark.parametrize("fault", FAULTS, ids=[fault.value for fault in FAULTS])
def test_begin_and_commit_count_as_statements(store: JobPersistence, fault: Fault) -> None:
    injector = injector_of(store)
    # BEGIN IMMEDIATE, two INSERTs, then COMMIT: the fourth statement.
    injector.fail_next(fault, after=3)
    with pytest.raises(fault.error) as caught:
        with store.transaction():
            store.save_job(make_job("a"))
            store.save_job(make_job("b"))
    assert "committing" in str(caught.value)
    assert injector.clear() is False
    assert store.count_jobs() == 0
    # BEGIN alone: the first statement.
    injector.fail_next(fault)
    with pytest.raises(fault.error, match="starting a transaction"):
        _block(store)
    assert store.count_jobs() == 0
    _block(store)
    assert store.load_job("in-block") is not None


def test_after_must_be_a_count(store: JobPersistence) -> None:
    injector = injector_of(store)
    for bad in (-1, 1.5, "2", True):
        with pytest.raises(ValueError, match="after"):
            injector.fail_next(Fault.DISK_FULL, after=bad)  # type: ignore[arg-type]
    assert injector.clear() is False


def test_a_fault_is_met_once(store: JobPersistence) -> None:
    injector = injector_of(store)
    injector.fail_next(Fault.CORRUPT)
    injector.fail_next(Fault.DISK_FULL)  # replaces the one not met yet
    with pytest.raises(Fault.DISK_FULL.error):
        store.save_job(make_job("j1"))
    assert store.save_job(make_job("j1")) is True


def test_the_injector_is_the_storages_one_seam(store: JobPersistence) -> None:
    storage = storage_of(store)
    assert storage.fault_injector() is storage.fault_injector()
    with pytest.raises(TypeError):
        storage.fault_injector().fail_next("disk_full")  # type: ignore[arg-type]
