"""StatusChange: the one definition of how a status update changes a job."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cidx_jobs import ACTIVE_STATUSES, TERMINAL_STATUSES, JobStatus, SyncJob
from cidx_jobs.backend import StatusChange

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
NOW = T0 + timedelta(hours=1)


def job(status: JobStatus, **changes: object) -> SyncJob:
    return SyncJob(id="j", user_id="u", project_id="p", status=status, created_at=T0, **changes)  # type: ignore[arg-type]


def change(
    status: JobStatus, expected: frozenset[JobStatus] | None = None, error: str | None = None
) -> StatusChange:
    return StatusChange(status=status, error_message=error, expected=expected, now=NOW)


@pytest.mark.parametrize("current", sorted(TERMINAL_STATUSES))
@pytest.mark.parametrize("new", sorted(ACTIVE_STATUSES))
def test_terminal_never_returns_to_active_without_expected(
    current: JobStatus, new: JobStatus
) -> None:
    assert change(new).apply(job(current, completed_at=T0)) is None


@pytest.mark.parametrize("current", list(JobStatus))
@pytest.mark.parametrize("new", list(JobStatus))
def test_last_write_wins_otherwise(current: JobStatus, new: JobStatus) -> None:
    blocked = current in TERMINAL_STATUSES and new in ACTIVE_STATUSES
    result = change(new).apply(job(current))
    assert (result is None) == blocked
    if result is not None:
        assert result.status is new


def test_deliberate_retry_names_the_current_status() -> None:
    failed = job(JobStatus.FAILED, completed_at=T0, started_at=T0)
    retried = change(JobStatus.RUNNING, expected=frozenset({JobStatus.FAILED})).apply(failed)
    assert retried is not None
    assert retried.status is JobStatus.RUNNING
    assert retried.completed_at is None
    assert retried.started_at == T0  # first start is kept


def test_compare_and_set_applies_only_on_match() -> None:
    cas = change(JobStatus.RUNNING, expected=frozenset({JobStatus.PENDING, JobStatus.QUEUED}))
    assert cas.apply(job(JobStatus.QUEUED)) is not None
    assert cas.apply(job(JobStatus.RUNNING)) is None


def test_started_at_set_on_first_run_only() -> None:
    running = change(JobStatus.RUNNING).apply(job(JobStatus.PENDING))
    assert running is not None
    assert running.started_at == NOW
    earlier = job(JobStatus.INTERRUPTED, started_at=T0)
    resumed = change(JobStatus.RUNNING).apply(earlier)
    assert resumed is not None
    assert resumed.started_at == T0


def test_completed_at_on_entering_terminal_and_kept_between_terminals() -> None:
    done = change(JobStatus.COMPLETED).apply(job(JobStatus.RUNNING))
    assert done is not None
    assert done.completed_at == NOW
    failed_later = change(JobStatus.FAILED, error="late").apply(
        job(JobStatus.COMPLETED, completed_at=T0)
    )
    assert failed_later is not None
    assert failed_later.completed_at == T0
    assert failed_later.error_message == "late"


@pytest.mark.parametrize("current", sorted(ACTIVE_STATUSES))
def test_interruption_stamps_completed_at(current: JobStatus) -> None:
    # completed_at is when the job stopped: cleanup's retention counts from the interruption,
    # even over a stale completed_at the active job was saved with.
    for before in (None, T0):
        interrupted = change(JobStatus.INTERRUPTED).apply(job(current, completed_at=before))
        assert interrupted is not None
        assert interrupted.completed_at == NOW


@pytest.mark.parametrize("current", [*sorted(TERMINAL_STATUSES), JobStatus.INTERRUPTED])
def test_a_stopped_job_keeps_its_stamp_when_interrupted_again(current: JobStatus) -> None:
    kept = change(JobStatus.INTERRUPTED).apply(job(current, completed_at=T0))
    assert kept is not None
    assert kept.completed_at == T0
    stamped = change(JobStatus.INTERRUPTED).apply(job(current))
    assert stamped is not None
    assert stamped.completed_at == NOW


def test_error_message_kept_unless_given() -> None:
    failed = job(JobStatus.FAILED, error_message="disk full", completed_at=T0)
    again = change(JobStatus.CANCELLED).apply(failed)
    assert again is not None
    assert again.error_message == "disk full"
