"""Event hooks: fired after the change is stored, after the commit, never on a rollback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest

from cidx_jobs import (
    Checkpoint,
    CleanupReport,
    JobPersistence,
    JobStatus,
    SyncJob,
    hookimpl,
)
from cidx_jobs.errors import DuplicateJobError

from ._base import ManualClock, StoreFixtures, at, new_job


class _Recorder:
    """A throwaway plugin that records every event it observes."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    @hookimpl
    def cidx_jobs_job_saved(self, job: SyncJob) -> None:
        self.events.append(("job_saved", job.id))

    @hookimpl
    def cidx_jobs_status_changed(
        self, job_id: str, status: JobStatus, error_message: str | None, changed_at: datetime
    ) -> None:
        self.events.append(("status_changed", (job_id, status, error_message, changed_at)))

    @hookimpl
    def cidx_jobs_checkpoint_saved(self, checkpoint: Checkpoint) -> None:
        self.events.append(("checkpoint_saved", (checkpoint.job_id, checkpoint.phase)))

    @hookimpl
    def cidx_jobs_cleanup_done(self, report: CleanupReport) -> None:
        self.events.append(("cleanup_done", (report.jobs_deleted, report.dry_run)))

    def names(self) -> list[str]:
        return [name for name, _ in self.events]


class _Failing:
    """A throwaway plugin whose observers all raise."""

    @hookimpl
    def cidx_jobs_job_saved(self, job: SyncJob) -> None:
        raise RuntimeError("observer broke on job_saved")

    @hookimpl
    def cidx_jobs_status_changed(self, job_id: str) -> None:
        raise RuntimeError("observer broke on status_changed")

    @hookimpl
    def cidx_jobs_checkpoint_saved(self, checkpoint: Checkpoint) -> None:
        raise RuntimeError("observer broke on checkpoint_saved")


@contextmanager
def observing(store: JobPersistence, plugin: object) -> Iterator[None]:
    """Register ``plugin`` with the store's plugin manager for the block, always unregistering."""
    store.hooks.pm.register(plugin)
    try:
        yield
    finally:
        store.hooks.pm.unregister(plugin)


class _Boom(Exception):
    """Raised inside a block to roll it back."""


class EventContract(StoreFixtures):
    """Observers see every stored change once, in order, and can never lose a write."""

    def test_each_write_fires_its_event(self, store: JobPersistence, clock: ManualClock) -> None:
        recorder = _Recorder()
        with observing(store, recorder):
            store.save_job(new_job("job-1", status=JobStatus.COMPLETED, completed_at=at(-100)))
            store.save_job(new_job("job-2"))
            store.update_job_status("job-2", JobStatus.FAILED, error_message="boom")
            store.save_checkpoint("job-2", "indexing", {"n": 1})
            store.update_job_progress("job-2", 50, "indexing")
            store.delete_expired_jobs(at(0))
            store.run_cleanup(at(0), dry_run=True)
        assert recorder.events == [
            ("job_saved", "job-1"),
            ("job_saved", "job-2"),
            ("status_changed", ("job-2", JobStatus.FAILED, "boom", clock.now)),
            ("checkpoint_saved", ("job-2", "indexing")),
            ("cleanup_done", (1, False)),
            ("cleanup_done", (0, True)),
        ]

    def test_writes_that_change_nothing_fire_nothing(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1", status=JobStatus.COMPLETED))
        recorder = _Recorder()
        with observing(store, recorder):
            with pytest.raises(DuplicateJobError):
                store.save_job(new_job("job-1"))
            store.update_job_status("job-1", JobStatus.RUNNING)
            store.update_job_status("job-1", JobStatus.FAILED, expected=JobStatus.PENDING)
            store.update_job_status("ghost", JobStatus.FAILED)
            store.save_checkpoint("ghost", "indexing", {})
        assert recorder.events == []

    def test_events_of_a_block_fire_after_the_commit(self, store: JobPersistence) -> None:
        recorder = _Recorder()
        with observing(store, recorder):
            with store.transaction():
                store.save_job(new_job("job-1"))
                store.update_job_status("job-1", JobStatus.RUNNING)
                store.save_checkpoint("job-1", "git_pull", {})
                assert recorder.events == [], "events must wait for the commit"
            assert recorder.names() == ["job_saved", "status_changed", "checkpoint_saved"]

    def test_events_of_a_rolled_back_block_never_fire(self, store: JobPersistence) -> None:
        store.save_job(new_job("old", status=JobStatus.FAILED, completed_at=at(-100)))
        recorder = _Recorder()
        with observing(store, recorder):
            with pytest.raises(_Boom):
                with store.transaction():
                    store.save_job(new_job("job-1"))
                    store.update_job_status("job-1", JobStatus.RUNNING)
                    store.save_checkpoint("job-1", "git_pull", {})
                    store.delete_expired_jobs(at(0))
                    raise _Boom
            store.save_job(new_job("job-2"))
        assert recorder.events == [("job_saved", "job-2")]

    def test_an_observer_that_raises_is_logged_and_the_write_is_kept(
        self, store: JobPersistence, caplog: pytest.LogCaptureFixture
    ) -> None:
        recorder = _Recorder()
        with observing(store, _Failing()), observing(store, recorder):
            with caplog.at_level(logging.ERROR, logger="cidx_jobs"):
                assert store.save_job(new_job("job-1")) is True
                assert store.update_job_status("job-1", JobStatus.RUNNING) is True
                assert store.save_checkpoint("job-1", "indexing", {"n": 1}) is True
                with store.transaction():
                    store.save_job(new_job("job-2"))
        assert store.load_job("job-1") is not None
        assert store.load_job("job-2") is not None
        assert store.load_checkpoint("job-1", "indexing") == {"n": 1}
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) >= 4
        assert all(r.name.startswith("cidx_jobs") for r in errors)
        # the other observers still ran
        assert recorder.names() == ["job_saved", "status_changed", "checkpoint_saved", "job_saved"]
