"""Storage failures: each surfaces as its documented typed error, and a failed call wrote nothing.

The faults enter through the seam a backend wires once
(:meth:`cidx_jobs.backend.Storage.fault_injector`), so they go through the same
error translation as a real failure of the backend's driver. Each call meets a
fault at its first statement, and, for two faults, at each of its statements in
turn (``fail_next(fault, after=N)`` for N = 0, 1, 2, ... until the call sends
fewer than N + 1 statements): ``BEGIN``, ``COMMIT``, a take-over, a later cleanup
batch.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import attrs
import pytest

from cidx_jobs import (
    CleanupReport,
    JobFilter,
    JobPersistence,
    JobStatus,
    RecoveryReport,
    SyncJob,
)
from cidx_jobs.backend import Fault, FaultInjector
from cidx_jobs.errors import (
    StorageBusyError,
    StorageError,
    StorageOutcomeUnknownError,
    StorageUnavailableError,
)

from ._base import ManualClock, StoreFixtures, all_jobs, new_job, snapshot
from ._capabilities import requires
from ._cleanup import _small_batches

LONG_AGO = datetime(2020, 1, 1, tzinfo=timezone.utc)
LEASE = timedelta(minutes=5)
DEAD_OWNER = "dead:1:x"

_FAULTS = list(Fault)
#: The faults met at every statement of every call: a lost connection (which may leave a
#: commit's outcome unknown) and a lock timeout (a server's deadlock victim, rolled back).
_SWEPT = [Fault.CONNECTION_LOST, Fault.LOCK_TIMEOUT]
#: The most statements the sweep expects of one call; a call still meeting the fault after
#: that many fails the test (its injector's clear() must say when no fault was met).
MAX_STATEMENTS = 40
#: How many expired jobs each round of a cleanup sweep makes: more than two batches of the
#: small-batch policy's three, so that every batch and its commit meet the fault.
_EXPIRED_PER_ROUND = 7


def _prepare(store: JobPersistence) -> None:
    """A job with a checkpoint, an expired job, and a running job of an owner long dead."""
    store.save_job(new_job("job-1", progress=5, phase="git_pull"))
    store.save_checkpoint("job-1", "git_pull", {"sha": "abc"})
    store.save_job(
        new_job("expired", status=JobStatus.FAILED, created_at=LONG_AGO, completed_at=LONG_AGO)
    )
    store.save_checkpoint("expired", "indexing", {"files": 3})
    store.save_job(_orphan("orphan", JobStatus.RUNNING))


def _orphan(job_id: str, status: JobStatus) -> SyncJob:
    return SyncJob(
        id=job_id,
        user_id="bob",
        project_id="repo",
        status=status,
        created_at=LONG_AGO,
        owner_id=DEAD_OWNER,
        heartbeat_at=LONG_AGO,
    )


def _block(store: JobPersistence, n: int) -> None:
    with store.transaction():
        store.save_job(new_job(f"in-block-{n}"))
        store.update_job_progress("job-1", 70, "indexing")


def _nothing(store: JobPersistence, n: int) -> None:
    """No data of its own for a round of the sweep."""


def _expired_jobs(store: JobPersistence, n: int) -> None:
    """Jobs that every cleanup deletes (finished before ``LONG_AGO``), most with checkpoints."""
    statuses = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED)
    for i in range(_EXPIRED_PER_ROUND):
        done = LONG_AGO - timedelta(days=1, minutes=i)
        job_id = f"expired-{n}-{i}"
        store.save_job(new_job(job_id, status=statuses[i % 4], created_at=done, completed_at=done))
        if i % 3:
            store.save_checkpoint(job_id, "indexing", {"files": i})


def _stale_jobs(store: JobPersistence, n: int) -> None:
    """Jobs of an owner long dead: two running (one with a checkpoint), one pending."""
    store.save_job(_orphan(f"orphan-{n}-running", JobStatus.RUNNING))
    store.save_checkpoint(f"orphan-{n}-running", "indexing", {"files": n})
    store.save_job(_orphan(f"orphan-{n}-bare", JobStatus.RUNNING))
    store.save_job(_orphan(f"orphan-{n}-pending", JobStatus.PENDING))


def _cleanup_in_small_batches(store: JobPersistence, n: int) -> CleanupReport:
    with _small_batches(store):
        return store.run_cleanup()


def _recover(store: JobPersistence, n: int) -> RecoveryReport:
    return store.recover_interrupted_jobs(lease_timeout=LEASE)


def _taken(report: object) -> int:
    assert isinstance(report, RecoveryReport)
    return len(report.interrupted) + len(report.requeue)


def _deleted(report: object) -> int:
    assert isinstance(report, CleanupReport)
    return report.jobs_deleted


def _count(deleted: object) -> int:
    assert isinstance(deleted, int)
    return deleted


@attrs.frozen
class _Call:
    """A representative call the facade makes.

    :ivar run: makes the call; ``n`` is the round of the sweep, for fresh ids.
    :ivar seed: what a round of the sweep needs to exist before the call.
    :ivar batched: the call commits in several transactions (cleanup batch by batch,
        recovery job by job), so a failure may leave part of its work done.
    :ivar processed: how many jobs the call's result says it processed (for a batched call).
    """

    name: str
    run: Callable[[JobPersistence, int], object]
    seed: Callable[[JobPersistence, int], None] = _nothing
    batched: bool = False
    processed: Callable[[object], int] | None = None

    def once(self, store: JobPersistence) -> object:
        """The call, outside a sweep."""
        return self.run(store, 0)


#: A representative call of each kind the facade makes. Each may be made twice.
CALLS: list[_Call] = [
    _Call("save_job", lambda store, n: store.save_job(new_job(f"new-{n}"))),
    _Call("load_job", lambda store, n: store.load_job("job-1")),
    _Call("update_job_status", lambda store, n: store.update_job_status("job-1", JobStatus.QUEUED)),
    _Call(
        "update_job_progress",
        lambda store, n: store.update_job_progress("job-1", 50 + n % 50, "indexing"),
    ),
    _Call("query_page", lambda store, n: store.query_page(JobFilter(limit=2))),
    _Call("count_jobs", lambda store, n: store.count_jobs(JobFilter(user_id="alice"))),
    _Call(
        "save_checkpoint",
        lambda store, n: store.save_checkpoint("job-1", "indexing", {"n": n}),
    ),
    _Call("load_checkpoint", lambda store, n: store.load_checkpoint("job-1", "git_pull")),
    _Call("list_checkpoints", lambda store, n: store.list_checkpoints("job-1")),
    _Call("resume_point", lambda store, n: store.resume_point("job-1")),
    _Call("run_cleanup(dry_run=True)", lambda store, n: store.run_cleanup(dry_run=True)),
    _Call(
        "run_cleanup",
        _cleanup_in_small_batches,
        seed=_expired_jobs,
        batched=True,
        processed=_deleted,
    ),
    _Call(
        "delete_expired_jobs",
        lambda store, n: store.delete_expired_jobs(LONG_AGO),
        seed=_expired_jobs,
        batched=True,
        processed=_count,
    ),
    _Call("heartbeat", lambda store, n: store.heartbeat()),
    _Call(
        "recover_interrupted_jobs",
        _recover,
        seed=_stale_jobs,
        batched=True,
        processed=_taken,
    ),
    _Call("a transaction block", _block),
]

#: Everything a store holds, by job id: the job with its lease, and its checkpoints.
_State = dict[str, tuple[object, ...]]


def _state(store: JobPersistence) -> _State:
    return {
        job.id: (job, job.owner_id, job.heartbeat_at, tuple(store.list_checkpoints(job.id)))
        for job in all_jobs(store)
    }


def _changed(left: _State, right: _State) -> list[str]:
    """The ids of the jobs that differ between two states (present in one only included)."""
    return sorted(
        job_id for job_id in left.keys() | right.keys() if left.get(job_id) != right.get(job_id)
    )


class _Discard(Exception):
    """Raised inside a block to roll it back."""


def _outcome(store: JobPersistence, call: _Call, n: int) -> _State:
    """What the store would hold after the call, measured in a block that is rolled back."""
    after: _State = {}
    try:
        with store.transaction():
            call.run(store, n)
            after = _state(store)
            raise _Discard
    except _Discard:
        pass
    return after


def _injector(store: JobPersistence) -> FaultInjector:
    injector = store.storage.fault_injector()
    if injector is None:
        pytest.fail(
            f"the backend declares 'fault_injection' but {type(store.storage).__name__}"
            ".fault_injector() returns None; return the FaultInjector wired into its driver calls"
        )
    return injector


_HINT = "a storage translates every failure of its driver into the errors of cidx_jobs.errors"


def _describe(error: BaseException) -> str:
    return f"{type(error).__module__}.{type(error).__qualname__}: {error}"


def _is_fault_error(fault: Fault, error: BaseException) -> bool:
    """Whether ``error`` is what a call that meets ``fault`` raises (a lost connection is
    not a lock wait that timed out, although StorageBusyError is a StorageUnavailableError)."""
    return isinstance(error, fault.error) and (
        fault is Fault.LOCK_TIMEOUT or not isinstance(error, StorageBusyError)
    )


def _assert_raises_typed(
    expected: type[StorageError],
    what: str,
    call: Callable[[JobPersistence], object],
    store: JobPersistence,
    *,
    refused: type[StorageError] | None = None,
    hint: str = _HINT,
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
            f"{what} raised {_describe(error)}; "
            f"expected {expected.__module__}.{expected.__name__} ({hint})"
        )
    pytest.fail(f"{what} raised nothing; expected {expected.__name__}")


def _attempt(call: _Call, store: JobPersistence, n: int) -> tuple[object, Exception | None]:
    """The call's result, or the exception it raised."""
    try:
        return call.run(store, n), None
    except Exception as error:
        return None, error


def _check_met_fault(
    fault: Fault,
    call: _Call,
    where: str,
    error: Exception | None,
    before: _State,
    expected: _State,
    state: _State,
) -> None:
    """The rules for a call that met ``fault``; ``state`` is what the store holds after it."""
    if error is None:
        if not call.batched:
            pytest.fail(f"{where} raised nothing; expected {fault.error.__name__}")
        # A call of several transactions may shrug off a failed statement that only saves
        # time (e.g. a checkpoint of the WAL between cleanup batches), but then it did all
        # of its work.
        assert _changed(state, expected) == [], (
            f"{where} raised nothing, but did not do all of its work"
        )
        return
    unknown = fault is Fault.CONNECTION_LOST and isinstance(error, StorageOutcomeUnknownError)
    if not unknown and not _is_fault_error(fault, error):
        expected_error = fault.error
        pytest.fail(
            f"{where} raised {_describe(error)}; expected "
            f"{expected_error.__module__}.{expected_error.__name__}"
            + (" or StorageOutcomeUnknownError" if fault is Fault.CONNECTION_LOST else "")
            + f" ({_HINT})"
        )
    if call.batched:
        # Each transaction commits or not: every job is as before or fully processed.
        halfway = [
            job_id
            for job_id in _changed(state, before)
            if state.get(job_id) != expected.get(job_id)
        ]
        assert halfway == [], (
            f"{where} left jobs {halfway} neither as they were nor as the call makes them: "
            "each of its transactions must commit whole or not at all"
        )
    elif unknown:
        assert state in (before, expected), (
            f"{where} raised StorageOutcomeUnknownError, but the store holds neither the "
            f"state before the call nor the one after it (changed: {_changed(state, before)})"
        )
    else:
        assert state == before, (
            f"{where} failed with {type(error).__name__} but wrote (changed: "
            f"{_changed(state, before)}); a failed call writes nothing"
        )


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
        for call in CALLS:
            before = snapshot(store)
            injector.fail_next(fault)
            try:
                _assert_raises_typed(
                    fault.error,
                    f"{call.name}, meeting an injected {fault.name},",
                    call.once,
                    store,
                    refused=None if fault is Fault.LOCK_TIMEOUT else StorageBusyError,
                )
            finally:
                injector.clear()
            assert snapshot(store) == before, f"{call.name} failed with {fault.name} but wrote"
            # the next call succeeds: the storage recovered from the failure
            call.once(store)
            clock.advance()

    @requires("fault_injection")
    @pytest.mark.parametrize("fault", _SWEPT, ids=[fault.value for fault in _SWEPT])
    @pytest.mark.parametrize("call", CALLS, ids=[call.name for call in CALLS])
    def test_a_fault_at_any_statement_of_a_call_fails_it_cleanly(
        self, store: JobPersistence, clock: ManualClock, call: _Call, fault: Fault
    ) -> None:
        """The call meets ``fault`` at its first statement, then (on fresh data) at its
        second, and so on, ``BEGIN`` and ``COMMIT`` included, until it sends fewer
        statements than that and completes as it would without a fault.

        A call of one transaction (every read, a write, a ``transaction()`` block) raises
        ``fault.error`` and writes nothing; a commit whose connection was lost may instead
        raise StorageOutcomeUnknownError, and then the store holds exactly the state before
        the call or exactly the one after it. A call of several transactions (a cleanup,
        batch by batch; a recovery, job by job) raises ``fault.error`` and leaves every job
        either as it was or fully processed. Either way the next call succeeds: made again,
        the call finishes the work (every expired job is gone, every stale job taken), and
        reports only what it did itself (no job is taken twice).
        """
        _prepare(store)
        injector = _injector(store)
        for after in range(MAX_STATEMENTS):
            call.seed(store, after)
            clock.advance()
            before = _state(store)
            expected = _outcome(store, call, after)
            assert _state(store) == before, "a rolled-back transaction() block left writes"
            where = f"{call.name}, meeting an injected {fault.name} at its statement {after + 1},"
            injector.fail_next(fault, after=after)
            try:
                result, error = _attempt(call, store, after)
            finally:
                pending = injector.clear()
            if not isinstance(pending, bool):
                pytest.fail(
                    f"{type(injector).__name__}.clear() returned {pending!r}; it returns "
                    "whether the fault was still pending (a bool)"
                )
            state = _state(store)
            if pending:
                # The call sent no more than `after` statements: it met no fault, and did
                # what it does.
                if error is not None:
                    pytest.fail(
                        f"{call.name} raised {_describe(error)} although the fault armed "
                        f"after {after} statements was never met (or clear() wrongly says so)"
                    )
                assert _changed(state, expected) == [], (
                    f"{call.name} did not do what it does inside a transaction() block"
                )
                if after == 0:
                    pytest.fail(
                        f"{call.name} never met a fault armed for its first statement: every "
                        "statement the storage sends must go through its fault injector"
                    )
                self._check_processed(call, result, before, state)
                return
            _check_met_fault(fault, call, where, error, before, expected, state)
            if _changed(state, expected):
                # The next call succeeds, and finishes the work.
                result, error = _attempt(call, store, after)
                if error is not None:
                    pytest.fail(
                        f"after {where} the same call failed again: {_describe(error)}; the "
                        "storage must recover from a failure by the next call"
                    )
                again = _state(store)
                assert _changed(again, expected) == [], (
                    f"after {where} the same call made again did not finish the work "
                    f"(left as they should not be: {_changed(again, expected)})"
                )
                self._check_processed(call, result, state, again)
            else:
                store.count_jobs()  # stored already (or nothing to store): another call works
        pytest.fail(
            f"{call.name} still met a fault armed after {MAX_STATEMENTS - 1} statements; "
            "FaultInjector.clear() must return False once a statement met the fault"
        )

    @staticmethod
    def _check_processed(call: _Call, result: object, before: _State, after: _State) -> None:
        """A batched call reports the jobs it processed itself: none twice, none missed."""
        if call.processed is None:
            return
        reported = call.processed(result)
        changed = _changed(before, after)
        assert reported == len(changed), (
            f"{call.name} reported {reported} jobs processed, but changed {len(changed)}: {changed}"
        )

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
        for call in CALLS:
            _assert_raises_typed(
                StorageUnavailableError,
                f"{call.name} after close()",
                call.once,
                store,
                refused=StorageBusyError,
                hint="after close(), every Storage method raises StorageUnavailableError",
            )
