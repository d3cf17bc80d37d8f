"""Storage failures: each surfaces as its documented typed error, and a failed call wrote nothing.

The faults enter through the seam a backend wires once
(:meth:`cidx_jobs.backend.Storage.fault_injector`), so they go through the same
error translation as a real failure of the backend's driver.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest

from cidx_jobs import JobFilter, JobPersistence, JobStatus, SyncJob
from cidx_jobs.backend import Fault, FaultInjector
from cidx_jobs.errors import (
    StorageBusyError,
    StorageError,
    StorageUnavailableError,
)

from ._base import ManualClock, StoreFixtures, new_job, snapshot
from ._capabilities import requires

LONG_AGO = datetime(2020, 1, 1, tzinfo=timezone.utc)
LEASE = timedelta(minutes=5)

_FAULTS = list(Fault)


def _prepare(store: JobPersistence) -> None:
    """A job with a checkpoint, an expired job, and a running job of an owner long dead."""
    store.save_job(new_job("job-1", progress=5, phase="git_pull"))
    store.save_checkpoint("job-1", "git_pull", {"sha": "abc"})
    store.save_job(
        new_job("expired", status=JobStatus.FAILED, created_at=LONG_AGO, completed_at=LONG_AGO)
    )
    store.save_checkpoint("expired", "indexing", {"files": 3})
    store.save_job(
        SyncJob(
            id="orphan",
            user_id="bob",
            project_id="repo",
            status=JobStatus.RUNNING,
            created_at=LONG_AGO,
            owner_id="dead:1:x",
            heartbeat_at=LONG_AGO,
        )
    )


def _block(store: JobPersistence) -> None:
    with store.transaction():
        store.save_job(new_job("in-block"))
        store.update_job_progress("job-1", 70, "indexing")


#: A representative call of each kind the facade makes, by name. Each may be made twice.
CALLS: list[tuple[str, Callable[[JobPersistence], object]]] = [
    ("save_job", lambda store: store.save_job(new_job("new-job"))),
    ("load_job", lambda store: store.load_job("job-1")),
    ("update_job_status", lambda store: store.update_job_status("job-1", JobStatus.QUEUED)),
    ("update_job_progress", lambda store: store.update_job_progress("job-1", 50, "indexing")),
    ("query_page", lambda store: store.query_page(JobFilter(limit=2))),
    ("count_jobs", lambda store: store.count_jobs(JobFilter(user_id="alice"))),
    ("save_checkpoint", lambda store: store.save_checkpoint("job-1", "indexing", {"n": 2})),
    ("load_checkpoint", lambda store: store.load_checkpoint("job-1", "git_pull")),
    ("list_checkpoints", lambda store: store.list_checkpoints("job-1")),
    ("resume_point", lambda store: store.resume_point("job-1")),
    ("run_cleanup(dry_run=True)", lambda store: store.run_cleanup(dry_run=True)),
    ("run_cleanup", lambda store: store.run_cleanup()),
    ("delete_expired_jobs", lambda store: store.delete_expired_jobs(LONG_AGO)),
    ("heartbeat", lambda store: store.heartbeat()),
    (
        "recover_interrupted_jobs",
        lambda store: store.recover_interrupted_jobs(lease_timeout=LEASE),
    ),
    ("a transaction block", _block),
]


def _injector(store: JobPersistence) -> FaultInjector:
    injector = store.storage.fault_injector()
    if injector is None:
        pytest.fail(
            f"the backend declares 'fault_injection' but {type(store.storage).__name__}"
            ".fault_injector() returns None; return the FaultInjector wired into its driver calls"
        )
    return injector


def _assert_raises_typed(
    expected: type[StorageError],
    what: str,
    call: Callable[[JobPersistence], object],
    store: JobPersistence,
    *,
    refused: type[StorageError] | None = None,
    hint: str = (
        "a storage translates every failure of its driver into the errors of cidx_jobs.errors"
    ),
) -> None:
    """``call(store)`` raises ``expected`` (and not ``refused``), never another exception."""
    try:
        call(store)
    except expected as error:
        if refused is not None and isinstance(error, refused):
            pytest.fail(f"{what} raised {type(error).__name__}, expected {expected.__name__}")
        return
    except Exception as error:
        pytest.fail(
            f"{what} raised {type(error).__module__}.{type(error).__qualname__}: {error}; "
            f"expected {expected.__module__}.{expected.__name__} ({hint})"
        )
    pytest.fail(f"{what} raised nothing; expected {expected.__name__}")


class FaultContract(StoreFixtures):
    """Injected storage failures: typed errors, nothing half-written, and a store that recovers."""

    @requires("fault_injection")
    @pytest.mark.parametrize("fault", _FAULTS, ids=[fault.value for fault in _FAULTS])
    def test_an_injected_fault_raises_its_typed_error_and_writes_nothing(
        self, store: JobPersistence, clock: ManualClock, fault: Fault
    ) -> None:
        """Each call that meets ``fault`` raises ``fault.error``, changes nothing, and the
        store works again at the next call (after a lost connection too)."""
        _prepare(store)
        injector = _injector(store)
        for name, call in CALLS:
            before = snapshot(store)
            injector.fail_next(fault)
            try:
                _assert_raises_typed(
                    fault.error, f"{name}, meeting an injected {fault.name},", call, store
                )
            finally:
                injector.clear()
            assert snapshot(store) == before, f"{name} failed with {fault.name} but wrote"
            # the next call succeeds: the storage recovered from the failure
            call(store)
            clock.advance()

    @requires("fault_injection")
    @pytest.mark.parametrize("fault", _FAULTS, ids=[fault.value for fault in _FAULTS])
    def test_a_storage_failure_inside_a_block_dooms_the_block(
        self, store: JobPersistence, fault: Fault
    ) -> None:
        """Any storage failure inside a ``transaction()`` block dooms the whole block.

        The storage may have rolled the transaction back on its own (a deadlock
        victim, a lost connection), so the calls after the failure cannot join it:
        even when the caller catches the error and goes on, leaving the block
        raises a StorageError (or a later call in it does), and nothing of the
        block is stored: neither the writes before the failure nor those after it.
        """
        store.save_job(new_job("existing"))
        before = snapshot(store)
        injector = _injector(store)
        try:
            with pytest.raises(StorageError):
                with store.transaction():
                    store.save_job(new_job("before-the-failure"))
                    injector.fail_next(fault)
                    with pytest.raises(fault.error):
                        store.save_job(new_job("failed"))
                    # The caller ignores the error and goes on.
                    store.save_job(new_job("after-the-failure"))
                    store.update_job_progress("existing", 99, "indexing")
        finally:
            injector.clear()
        assert snapshot(store) == before, "a block whose storage failed committed writes"
        # the store works normally afterwards
        with store.transaction():
            store.save_job(new_job("later"))
        assert store.load_job("later") is not None

    def test_every_call_after_close_raises_storage_unavailable(self, store: JobPersistence) -> None:
        """After ``close()``, every call raises StorageUnavailableError (not busy: no retry helps)."""
        _prepare(store)
        store.close()
        store.close()
        for name, call in CALLS:
            _assert_raises_typed(
                StorageUnavailableError,
                f"{name} after close()",
                call,
                store,
                refused=StorageBusyError,
                hint="after close(), every Storage method raises StorageUnavailableError",
            )
