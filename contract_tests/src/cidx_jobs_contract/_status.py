"""Status changes: the terminal guard, compare-and-set and the timestamps they set."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cidx_jobs import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    JobFilter,
    JobPersistence,
    JobStatus,
)
from cidx_jobs.errors import ValidationError

from ._base import ManualClock, StoreFixtures, new_job, snapshot

_ACTIVE = sorted(ACTIVE_STATUSES)
_TERMINAL = sorted(TERMINAL_STATUSES)


class StatusContract(StoreFixtures):
    """``update_job_status``: last write wins, except that finished jobs stay finished."""

    def test_status_update_changes_status_and_query_sees_it(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))
        assert store.update_job_status("job-1", JobStatus.QUEUED) is True
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.status is JobStatus.QUEUED
        assert store.count_jobs(JobFilter(statuses={JobStatus.QUEUED})) == 1
        assert store.count_jobs(JobFilter(statuses={JobStatus.PENDING})) == 0

    def test_status_accepts_its_string_value(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))
        assert store.update_job_status("job-1", "running", expected="pending") is True
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.status is JobStatus.RUNNING

    def test_last_write_wins_between_active_statuses(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1", status=JobStatus.RUNNING))
        for status in (JobStatus.QUEUED, JobStatus.PENDING, JobStatus.RUNNING, JobStatus.QUEUED):
            assert store.update_job_status("job-1", status) is True
            loaded = store.load_job("job-1")
            assert loaded is not None
            assert loaded.status is status

    def test_started_at_is_set_on_first_running_and_kept(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        store.save_job(new_job("job-1"))
        store.update_job_status("job-1", JobStatus.QUEUED)
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.started_at is None
        first = clock.advance()
        assert store.update_job_status("job-1", JobStatus.RUNNING) is True
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.started_at == first
        clock.advance()
        store.update_job_status("job-1", JobStatus.QUEUED)
        clock.advance()
        store.update_job_status("job-1", JobStatus.RUNNING)
        clock.advance()
        store.update_job_status("job-1", JobStatus.COMPLETED)
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.started_at == first

    def test_completed_at_is_set_on_entering_a_terminal_status(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        for index, terminal in enumerate(_TERMINAL):
            job_id = f"job-{index}"
            store.save_job(new_job(job_id))
            store.update_job_status(job_id, JobStatus.RUNNING)
            loaded = store.load_job(job_id)
            assert loaded is not None
            assert loaded.completed_at is None
            finished = clock.advance()
            assert store.update_job_status(job_id, terminal) is True
            loaded = store.load_job(job_id)
            assert loaded is not None
            assert (loaded.status, loaded.completed_at) == (terminal, finished)

    def test_completed_at_is_set_on_interruption_and_kept_while_the_job_stays_stopped(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        """``completed_at`` is when the job stopped: an interruption stamps it, as a finish
        does; a job that stays stopped keeps the first stamp, and resuming clears it."""
        for index, active in enumerate(_ACTIVE):
            job_id = f"job-{index}"
            # A stale completed_at on an active job (saved so) is not when it stopped.
            store.save_job(new_job(job_id, status=active, completed_at=clock.now))
            interrupted = clock.advance()
            assert store.update_job_status(job_id, JobStatus.INTERRUPTED) is True
            loaded = store.load_job(job_id)
            assert loaded is not None
            assert (loaded.status, loaded.completed_at) == (JobStatus.INTERRUPTED, interrupted)
            clock.advance()
            assert store.update_job_status(job_id, JobStatus.INTERRUPTED) is True
            loaded = store.load_job(job_id)
            assert loaded is not None
            assert loaded.completed_at == interrupted, "interrupted -> interrupted keeps it"
        # An interrupted job without a stamp (saved so, or written by an older release) gets one.
        store.save_job(new_job("bare", status=JobStatus.INTERRUPTED))
        stamped = clock.advance()
        assert store.update_job_status("bare", JobStatus.INTERRUPTED) is True
        loaded = store.load_job("bare")
        assert loaded is not None
        assert loaded.completed_at == stamped
        # A finished job keeps its finish time when it becomes interrupted, and the reverse
        # move stamps the finish, as entering a terminal status always does.
        store.save_job(new_job("done"))
        finished = clock.advance()
        store.update_job_status("done", JobStatus.COMPLETED)
        clock.advance()
        assert store.update_job_status("done", JobStatus.INTERRUPTED) is True
        loaded = store.load_job("done")
        assert loaded is not None
        assert loaded.completed_at == finished
        failed = clock.advance()
        assert store.update_job_status("done", JobStatus.FAILED) is True
        loaded = store.load_job("done")
        assert loaded is not None
        assert loaded.completed_at == failed
        # Resuming clears it; the next interruption stamps it again.
        clock.advance()
        assert store.update_job_status("job-0", JobStatus.RUNNING, expected=JobStatus.INTERRUPTED)
        loaded = store.load_job("job-0")
        assert loaded is not None
        assert loaded.completed_at is None
        again = clock.advance()
        assert store.update_job_status("job-0", JobStatus.INTERRUPTED) is True
        loaded = store.load_job("job-0")
        assert loaded is not None
        assert loaded.completed_at == again

    def test_moving_between_terminal_statuses_keeps_completed_at(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        store.save_job(new_job("job-1"))
        finished = clock.advance()
        store.update_job_status("job-1", JobStatus.COMPLETED)
        clock.advance()
        assert store.update_job_status("job-1", JobStatus.FAILED, error_message="late") is True
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert (loaded.status, loaded.completed_at, loaded.error_message) == (
            JobStatus.FAILED,
            finished,
            "late",
        )

    def test_error_message_is_replaced_when_given_and_kept_otherwise(
        self, store: JobPersistence
    ) -> None:
        store.save_job(new_job("job-1", status=JobStatus.RUNNING))
        store.update_job_status("job-1", JobStatus.INTERRUPTED, error_message="server restart")
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.error_message == "server restart"
        store.update_job_status("job-1", JobStatus.RUNNING)
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.error_message == "server restart"
        store.update_job_status("job-1", JobStatus.FAILED, error_message="disk full")
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.error_message == "disk full"

    def test_terminal_job_never_goes_back_to_active_without_expected(
        self, store: JobPersistence
    ) -> None:
        for terminal in _TERMINAL:
            job_id = f"job-{terminal.value}"
            store.save_job(new_job(job_id))
            store.update_job_status(job_id, terminal, error_message="done")
        before = snapshot(store)
        for terminal in _TERMINAL:
            for active in _ACTIVE:
                assert store.update_job_status(f"job-{terminal.value}", active) is False, (
                    f"{terminal.value} -> {active.value} must be refused without expected"
                )
        assert snapshot(store) == before

    def test_terminal_job_may_become_interrupted_or_another_terminal(
        self, store: JobPersistence
    ) -> None:
        store.save_job(new_job("job-1"))
        store.update_job_status("job-1", JobStatus.COMPLETED)
        assert store.update_job_status("job-1", JobStatus.CANCELLED) is True
        assert store.update_job_status("job-1", JobStatus.INTERRUPTED) is True
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.status is JobStatus.INTERRUPTED

    def test_interrupted_job_may_resume_without_expected(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        store.save_job(new_job("job-1"))
        started = clock.advance()
        store.update_job_status("job-1", JobStatus.RUNNING)
        interrupted = clock.advance()
        store.update_job_status("job-1", JobStatus.INTERRUPTED)
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.completed_at == interrupted
        clock.advance()
        assert store.update_job_status("job-1", JobStatus.RUNNING) is True
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert (loaded.status, loaded.started_at, loaded.completed_at) == (
            JobStatus.RUNNING,
            started,
            None,
        )

    def test_expected_single_status_is_a_compare_and_set(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))
        assert (
            store.update_job_status("job-1", JobStatus.RUNNING, expected=JobStatus.PENDING) is True
        )
        before = snapshot(store)
        assert (
            store.update_job_status("job-1", JobStatus.CANCELLED, expected=JobStatus.PENDING)
            is False
        )
        assert snapshot(store) == before
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.status is JobStatus.RUNNING

    def test_expected_set_of_statuses(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1", status=JobStatus.QUEUED))
        store.save_job(new_job("job-2", status=JobStatus.RUNNING))
        waiting = {JobStatus.PENDING, JobStatus.QUEUED}
        assert store.update_job_status("job-1", JobStatus.CANCELLED, expected=waiting) is True
        assert store.update_job_status("job-2", JobStatus.CANCELLED, expected=waiting) is False
        assert store.update_job_status("job-2", "cancelled", expected=["queued", "running"]) is True
        for job_id in ("job-1", "job-2"):
            loaded = store.load_job(job_id)
            assert loaded is not None
            assert loaded.status is JobStatus.CANCELLED

    def test_expected_allows_a_deliberate_retry_of_a_finished_job(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        store.save_job(new_job("job-1"))
        started = clock.advance()
        store.update_job_status("job-1", JobStatus.RUNNING)
        clock.advance()
        store.update_job_status("job-1", JobStatus.FAILED, error_message="network")
        clock.advance(timedelta(minutes=5))
        assert (
            store.update_job_status("job-1", JobStatus.RUNNING, expected=JobStatus.FAILED) is True
        )
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert (loaded.status, loaded.started_at, loaded.completed_at) == (
            JobStatus.RUNNING,
            started,
            None,
        )
        finished = clock.advance()
        store.update_job_status("job-1", JobStatus.COMPLETED)
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.completed_at == finished

    def test_expected_overrides_the_terminal_guard(self, store: JobPersistence) -> None:
        # expected decides alone: a terminal job named in expected may go anywhere.
        store.save_job(new_job("job-1", status=JobStatus.CANCELLED))
        assert store.update_job_status("job-1", JobStatus.PENDING, expected=_TERMINAL) is True
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.status is JobStatus.PENDING

    def test_invalid_status_arguments_raise_before_any_write(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))
        before = snapshot(store)
        with pytest.raises(ValidationError):
            store.update_job_status("job-1", "sleeping")
        with pytest.raises(ValidationError):
            store.update_job_status("job-1", JobStatus.RUNNING, expected="sleeping")
        with pytest.raises(ValidationError):
            store.update_job_status("job-1", JobStatus.RUNNING, expected=[])
        with pytest.raises(ValidationError):
            store.update_job_status("job-1", JobStatus.FAILED, error_message="nul\x00byte")
        with pytest.raises(ValidationError):
            store.update_job_status("", JobStatus.RUNNING)
        assert snapshot(store) == before
