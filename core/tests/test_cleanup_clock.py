"""run_cleanup() on a clock that stepped: what a store can show of it, and what it cannot.

The clock is the store's own (``StoreSettings(clock=...)``), moved as a real clock steps.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cidx_jobs import JobStatus, StoreSettings, SyncJob, open_persistence
from cidx_jobs._persistence import JobPersistence

pytest.importorskip("cidx_jobs_memory")

START = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


class SteppingClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(params=["memory", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        pytest.importorskip("cidx_jobs_sqlite")
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    return "memory://"


def fill(store: JobPersistence, clock: SteppingClock) -> None:
    """A job finished 10 days ago and one finished a minute ago, by ``clock``."""
    for job_id, age in (("old", timedelta(days=10)), ("fresh", timedelta(minutes=1))):
        store.save_job(
            SyncJob(
                id=job_id,
                user_id="alice",
                project_id="repo",
                status=JobStatus.COMPLETED,
                progress=100,
                created_at=clock.now - age - timedelta(minutes=5),
                completed_at=clock.now - age,
            )
        )


def step_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "cidx_jobs"
        and record.levelno == logging.WARNING
        and "clock stepped backward" in record.getMessage()
    ]


def test_a_clock_that_stepped_backward_is_reported_and_cleanup_deletes_less(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = SteppingClock()
    with open_persistence(url, settings=StoreSettings(clock=clock)) as store:
        fill(store, clock)
        clock.now -= timedelta(days=8)  # the step
        with caplog.at_level(logging.WARNING, logger="cidx_jobs"):
            report = store.run_cleanup()
        (warning,) = step_warnings(caplog)
        assert "job fresh was created at" in warning
        assert "7 days" in warning  # how far ahead of the clock it is
        # By a clock 8 days behind, even the 10-day-old job is 2 days old: nothing goes.
        assert report.jobs_deleted == 0
        assert {job.id for job in store.query_jobs()} == {"old", "fresh"}


def test_a_clock_that_did_not_step_is_not_reported(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = SteppingClock()
    with open_persistence(url, settings=StoreSettings(clock=clock)) as store:
        fill(store, clock)
        clock.now += timedelta(minutes=1)
        with caplog.at_level(logging.WARNING, logger="cidx_jobs"):
            report = store.run_cleanup()
        assert step_warnings(caplog) == []
        assert report.jobs_deleted == 1  # the 10-day-old job, past the 7-day retention


def test_an_explicit_now_is_the_callers_choice_and_not_reported(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = SteppingClock()
    with open_persistence(url, settings=StoreSettings(clock=clock)) as store:
        fill(store, clock)
        with caplog.at_level(logging.WARNING, logger="cidx_jobs"):
            store.run_cleanup(START - timedelta(days=30), dry_run=True)
        assert step_warnings(caplog) == []


def test_a_forward_step_leaves_nothing_to_see_and_cleanup_deletes_early(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Why no guard refuses a cleanup: after a forward step the store looks exactly like
    a store that was idle for that long, where deleting is right."""
    clock = SteppingClock()
    with open_persistence(url, settings=StoreSettings(clock=clock)) as store:
        fill(store, clock)
        clock.now += timedelta(days=8)  # the step
        with caplog.at_level(logging.WARNING, logger="cidx_jobs"):
            report = store.run_cleanup()
        assert step_warnings(caplog) == []
        assert report.jobs_deleted == 2  # the job finished a minute ago went too
