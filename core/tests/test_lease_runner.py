"""The worker lifecycle: hand_over_jobs() on a graceful stop, and LeaseRunner's heartbeats,
periodic sweeps and hand-over, with two stores (two workers) on one SQLite file."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from cidx_jobs import (
    JobStatus,
    LeaseRunner,
    RecoveryReport,
    SyncJob,
    open_async_persistence,
    open_persistence,
    utcnow,
)
from cidx_jobs.errors import LeaseLostError, ValidationError

HOUR = timedelta(hours=1)


def job(job_id: str, **fields: Any) -> SyncJob:
    """A job with any fields, the lease ones included (SyncJob.create() takes no lease)."""
    return attrs.evolve(SyncJob.create(id=job_id, user_id="u", project_id="p"), **fields)


def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


def test_hand_over_interrupts_my_running_jobs_and_frees_all_mine_at_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with open_persistence(url(tmp_path)) as mine, open_persistence(url(tmp_path)) as other:
        for job_id in ("run", "wait"):
            mine.save_job(job(job_id))
        other.save_job(job("theirs"))
        lease = mine.claim_job("run")
        assert lease is not None
        other_lease = other.claim_job("theirs")
        assert other_lease is not None
        mine.save_checkpoint("run", "clone", {"next": 1}, lease=lease)

        with caplog.at_level(logging.INFO, logger="cidx_jobs"):
            assert mine.hand_over_jobs() == 2
        assert "interrupted: run" in caplog.text

        assert mine.load_job("run").status is JobStatus.INTERRUPTED  # type: ignore[union-attr]
        with pytest.raises(LeaseLostError):  # the stopping worker's late write is refused
            mine.update_job_progress("run", 90, lease=lease)
        # Long before any lease timeout, another worker takes both: one to resume, one to queue.
        report = other.recover_interrupted_jobs(lease_timeout=HOUR)
        assert [point.job.id for point in report.interrupted] == ["run"]
        assert report.interrupted[0].checkpoint is not None
        assert report.interrupted[0].checkpoint.data == {"next": 1}
        assert [j.id for j in report.requeue] == ["wait"]
        # The other worker's own running job was not touched.
        theirs = other.load_job("theirs")
        assert theirs is not None
        assert theirs.status is JobStatus.RUNNING
        other.update_job_progress("theirs", 10, lease=other_lease)


def test_a_recovered_interrupted_job_stays_with_its_taker_while_it_heartbeats(
    tmp_path: Path,
) -> None:
    with (
        open_persistence(url(tmp_path)) as stopping,
        open_persistence(url(tmp_path)) as taker,
        open_persistence(url(tmp_path)) as third,
    ):
        stopping.save_job(job("j"))
        assert stopping.claim_job("j") is not None
        stopping.hand_over_jobs()
        assert [
            p.job.id for p in taker.recover_interrupted_jobs(lease_timeout=HOUR).interrupted
        ] == ["j"]
        assert taker.heartbeat() == 1  # the interrupted job's lease is the taker's now
        assert third.recover_interrupted_jobs(lease_timeout=HOUR).interrupted == []
        assert taker.claim_job("j") is not None  # and it resumes it


def test_the_runner_validates_its_settings() -> None:
    store = open_persistence("memory://")
    with pytest.raises(ValidationError) as caught:
        LeaseRunner(store, heartbeat_interval=10, lease_timeout=15)
    assert caught.value.field == "lease_timeout"
    with pytest.raises(ValidationError):
        LeaseRunner(store, sweep_interval=0)
    with pytest.raises(ValidationError):
        LeaseRunner("memory://")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        LeaseRunner(store, on_recovered=42)  # type: ignore[arg-type]
    runner = LeaseRunner(store)
    assert (runner.heartbeat_interval, runner.lease_timeout, runner.sweep_interval) == (
        5.0,
        timedelta(seconds=20),
        5.0,
    )


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_dead_workers_jobs_reach_a_running_sibling_by_its_periodic_sweep(
    tmp_path: Path,
) -> None:
    """The failure the issue measured: the sibling's start-up sweep sees a fresh lease and
    takes nothing; a later sweep, once the lease expired, takes the job."""
    reports: list[RecoveryReport] = []

    async def scenario() -> None:
        async with (
            open_async_persistence(url(tmp_path)) as dead,
            open_async_persistence(url(tmp_path)) as sibling,
        ):
            await dead.save_job(job("j"))
            assert await dead.claim_job("j") is not None  # then "dies": no more heartbeats
            runner = LeaseRunner(
                sibling,
                on_recovered=reports.append,
                heartbeat_interval=0.05,
                lease_timeout=0.3,
                sweep_interval=0.05,
            )
            async with runner:
                assert reports == []  # the start-up sweep: the lease is still fresh
                await _until(lambda: bool(reports))
                assert runner.sweeps >= 2
            loaded = await sibling.load_job("j")
            assert loaded is not None
            assert loaded.status is JobStatus.INTERRUPTED

    asyncio.run(scenario())
    assert [point.job.id for report in reports for point in report.interrupted] == ["j"]


def test_the_runner_keeps_its_own_jobs_and_hands_them_over_when_it_stops(tmp_path: Path) -> None:
    taken: list[str] = []

    async def take(report: RecoveryReport) -> None:  # a coroutine callback
        taken.extend(point.job.id for point in report.interrupted)

    async def scenario() -> None:
        async with (
            open_async_persistence(url(tmp_path)) as worker,
            open_async_persistence(url(tmp_path)) as sibling,
        ):
            await worker.save_job(job("j"))
            lease = await worker.claim_job("j")
            assert lease is not None
            runner = LeaseRunner(
                worker, heartbeat_interval=0.05, lease_timeout=0.3, sweep_interval=10
            )
            sibling_runner = LeaseRunner(
                sibling,
                on_recovered=take,
                heartbeat_interval=0.05,
                lease_timeout=0.3,
                sweep_interval=0.05,
            )
            async with sibling_runner:
                async with runner:
                    # Several lease timeouts pass: the heartbeats keep the job the worker's.
                    await asyncio.sleep(1.0)
                    assert taken == []
                    assert runner.heartbeats >= 5
                    await worker.update_job_progress("j", 50, lease=lease)
                # Stopped gracefully: handed over, and the sibling's next sweep resumes it.
                with pytest.raises(LeaseLostError):
                    await worker.update_job_progress("j", 60, lease=lease)
                await _until(lambda: taken == ["j"])

    asyncio.run(scenario())


def test_a_failing_sweep_or_callback_is_logged_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    def broken(report: RecoveryReport) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("the callback broke")

    with open_persistence(url(tmp_path)) as setup:
        setup.save_job(
            job("j", status=JobStatus.RUNNING, owner_id="dead:1:x", heartbeat_at=utcnow() - HOUR)
        )

    async def scenario() -> None:
        store = await open_async_persistence(url(tmp_path))
        runner = LeaseRunner(
            store,
            on_recovered=broken,
            heartbeat_interval=0.05,
            lease_timeout=0.2,
            sweep_interval=0.05,
        )
        async with runner:
            assert calls == 1
            assert runner.failures == 1
            # The report is passed on again (its job is this store's now: no sweep finds it).
            await _until(lambda: calls >= 2)
            await store.aclose()  # now every sweep and heartbeat fails
            await _until(lambda: runner.failures >= 3)
            assert runner.running
        assert not runner.running

    with caplog.at_level(logging.ERROR, logger="cidx_jobs"):
        asyncio.run(scenario())
    assert "on_recovered failed" in caplog.text
    assert "recovery sweep failed" in caplog.text or "heartbeat failed" in caplog.text
    assert "handing the jobs over failed" in caplog.text


def test_a_sync_store_works_too(tmp_path: Path) -> None:
    reports: list[RecoveryReport] = []
    with open_persistence(url(tmp_path)) as setup:
        setup.save_job(job("q", owner_id="dead:1:x", heartbeat_at=utcnow() - HOUR))

    async def scenario() -> None:
        with open_persistence(url(tmp_path)) as store:
            async with LeaseRunner(store, on_recovered=reports.append):
                pass

    asyncio.run(scenario())
    assert [j.id for r in reports for j in r.requeue] == ["q"]


def test_stop_waits_for_a_sweep_in_flight_before_it_hands_the_jobs_over(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_async_persistence(url(tmp_path)) as store:
            runner = LeaseRunner(
                store, heartbeat_interval=0.05, lease_timeout=0.2, sweep_interval=0.05
            )
            await runner.start()  # nothing to recover yet
            await store.save_job(
                job(
                    "k", status=JobStatus.RUNNING, owner_id="dead:1:x", heartbeat_at=utcnow() - HOUR
                )
            )
            # Another process holds the write lock: the next sweep's take-over waits for it.
            blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            await asyncio.sleep(0.3)
            asyncio.get_running_loop().call_later(0.3, blocker.execute, "COMMIT")
            await runner.stop()
            blocker.close()
        # The sweep's take-over landed before the hand-over, which expired its lease: a
        # sibling with any lease timeout takes the job at once.
        with open_persistence(url(tmp_path)) as sibling:
            report = sibling.recover_interrupted_jobs(lease_timeout=HOUR)
            assert [point.job.id for point in report.interrupted] == ["k"]

    asyncio.run(scenario())
