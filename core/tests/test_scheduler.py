"""The cleanup schedulers run the policy on time and survive failing runs."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import datetime, timedelta, timezone

import pytest

from cidx_jobs import (
    AsyncCleanupScheduler,
    CleanupReport,
    CleanupScheduler,
    JobStatus,
    SyncJob,
    open_persistence,
)
from cidx_jobs.errors import StorageError, ValidationError

pytest.importorskip("cidx_jobs_memory")

OLD = datetime(2020, 1, 1, tzinfo=timezone.utc)


class FlakyStore:
    """Fails the first ``failures`` cleanups, then reports one deleted job each run."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0
        self.called = threading.Event()
        self.retentions: list[timedelta | None] = []

    def run_cleanup(self, retention: timedelta | None = None) -> CleanupReport:
        self.calls += 1
        self.retentions.append(retention)
        if self.calls >= 3:
            self.called.set()
        if self.calls <= self.failures:
            raise StorageError("disk on fire")
        return CleanupReport(jobs_deleted=1, checkpoints_deleted=0, cutoffs={})


def test_scheduler_deletes_expired_jobs_at_start() -> None:
    with open_persistence("memory://") as store:
        store.save_job(SyncJob(id="old", user_id="u", project_id="p", created_at=OLD))
        store.update_job_status("old", JobStatus.FAILED)
        store.save_job(SyncJob(id="new", user_id="u", project_id="p", created_at=OLD))
        with CleanupScheduler(store, interval=3600, retention=timedelta(0)) as scheduler:
            deadline = threading.Event()
            for _ in range(200):
                if scheduler.runs:
                    break
                deadline.wait(0.01)
        assert not scheduler.running
        assert scheduler.runs >= 1
        assert scheduler.last_report is not None
        assert scheduler.last_report.jobs_deleted == 1
        assert store.load_job("old") is None
        assert store.load_job("new") is not None  # pending: active, never expires


def test_scheduler_survives_errors_and_logs_them(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore(failures=2)
    with caplog.at_level(logging.ERROR, logger="cidx_jobs"):
        scheduler = CleanupScheduler(store, interval=0.01)  # type: ignore[arg-type]
        scheduler.start()
        scheduler.start()  # idempotent
        assert store.called.wait(10)
        scheduler.stop()
    assert scheduler.failures == 2
    assert scheduler.last_report is not None
    assert scheduler.runs >= 3
    assert sum("scheduled cleanup failed" in r.getMessage() for r in caplog.records) == 2


@pytest.mark.parametrize("interval", [0, -1, timedelta(0), "60", True])
def test_interval_must_be_positive(interval: object) -> None:
    with pytest.raises(ValidationError):
        CleanupScheduler(FlakyStore(0), interval=interval)  # type: ignore[arg-type]


def test_retention_is_validated_and_passed_on() -> None:
    with pytest.raises(ValidationError):
        CleanupScheduler(FlakyStore(0), retention=timedelta(days=-1))  # type: ignore[arg-type]
    store = FlakyStore(0)
    scheduler = CleanupScheduler(store, retention=timedelta(days=2))  # type: ignore[arg-type]
    scheduler.run_once()
    assert store.retentions == [timedelta(days=2)]


def test_async_scheduler_runs_in_the_loop() -> None:
    store = FlakyStore(failures=1)

    async def main() -> AsyncCleanupScheduler:
        async with AsyncCleanupScheduler(store, interval=0.01) as scheduler:  # type: ignore[arg-type]
            assert scheduler.running
            for _ in range(500):
                if store.calls >= 3:
                    break
                await asyncio.sleep(0.01)
        assert not scheduler.running
        return scheduler

    scheduler = asyncio.run(main())
    assert scheduler.failures == 1
    assert scheduler.runs >= 3
    assert scheduler.last_report is not None
