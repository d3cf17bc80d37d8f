"""Expiry: delete_expired_jobs and run_cleanup, with exact counts."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone

import pytest

from cidx_jobs import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    CleanupPolicy,
    JobPersistence,
    JobStatus,
    StoreSettings,
    SyncJob,
    hookimpl,
)
from cidx_jobs.backend import Storage
from cidx_jobs.errors import ValidationError

from ._base import ManualClock, Snapshot, StoreFixtures, at, new_job, snapshot
from ._storage import ForwardingStorage

NOW = at(days=100)
WEEK = timedelta(days=7)
CUTOFF = NOW - WEEK

#: The ids that a cleanup at NOW with a retention of a week deletes.
EXPIRED = {"old-completed", "old-failed", "old-cancelled", "old-interrupted", "just-expired"}
#: How many checkpoints the expired jobs hold.
EXPIRED_CHECKPOINTS = 4


def _aged_jobs() -> list[SyncJob]:
    day = timedelta(days=1)
    tick = timedelta(microseconds=1)

    def finished(job_id: str, status: JobStatus, created: datetime, done: datetime) -> SyncJob:
        return new_job(job_id, status=status, created_at=created, completed_at=done)

    return [
        finished("old-completed", JobStatus.COMPLETED, NOW - 30 * day, NOW - 20 * day),
        finished("old-failed", JobStatus.FAILED, NOW - 10 * day, NOW - 10 * day),
        finished("old-cancelled", JobStatus.CANCELLED, NOW - 9 * day, NOW - 8 * day),
        # never completed: its finish time is its created_at
        new_job("old-interrupted", status=JobStatus.INTERRUPTED, created_at=NOW - 9 * day),
        finished("just-expired", JobStatus.COMPLETED, NOW - 9 * day, CUTOFF - tick),
        # finished exactly at the cutoff: not *before* it, so kept
        finished("at-cutoff", JobStatus.COMPLETED, NOW - 9 * day, CUTOFF),
        finished("recent-completed", JobStatus.COMPLETED, NOW - 2 * day, NOW - day),
        # created long ago but finished recently: completed_at decides
        finished("long-running", JobStatus.FAILED, NOW - 60 * day, NOW - day),
        new_job("recent-interrupted", status=JobStatus.INTERRUPTED, created_at=NOW - day),
        # active jobs are never deleted, however old (even with a stale completed_at)
        new_job("old-pending", status=JobStatus.PENDING, created_at=NOW - 90 * day),
        new_job("old-queued", status=JobStatus.QUEUED, created_at=NOW - 90 * day),
        finished("old-running", JobStatus.RUNNING, NOW - 90 * day, NOW - 80 * day),
    ]


def _fill(store: JobPersistence) -> list[SyncJob]:
    jobs = _aged_jobs()
    for job in jobs:
        store.save_job(job)
    store.save_checkpoint("old-completed", "git_pull", {"sha": "a1"})
    store.save_checkpoint("old-completed", "indexing", {"files": 10})
    store.save_checkpoint("old-failed", "git_pull", {"sha": "b2"})
    store.save_checkpoint("just-expired", "validation", {"ok": False})
    store.save_checkpoint("old-pending", "git_pull", {"sha": "c3"})
    store.save_checkpoint("old-running", "indexing", {"files": 3})
    store.save_checkpoint("recent-completed", "validation", {"ok": True})
    return jobs


def _assert_only_expired_gone(store: JobPersistence, jobs: list[SyncJob], before: Snapshot) -> None:
    for job in jobs:
        if job.id in EXPIRED:
            assert store.load_job(job.id) is None, f"{job.id} should have been deleted"
            assert store.list_checkpoints(job.id) == []
            assert store.load_checkpoint(job.id, "git_pull") is None
        else:
            assert store.load_job(job.id) == job, f"{job.id} must be kept unchanged"
    after = snapshot(store)
    assert after.checkpoints == {
        job_id: checkpoints
        for job_id, checkpoints in before.checkpoints.items()
        if job_id not in EXPIRED
    }


#: The batch size of the small-batch policy, and how many expired jobs those tests make.
BATCH = 3
MANY = 10


class _SmallBatches:
    """A cleanup policy plugin: every finished job expires after the retention, in small batches."""

    @hookimpl
    def cidx_jobs_cleanup_policy(self, retention: timedelta) -> CleanupPolicy:
        return CleanupPolicy.uniform(retention, batch_size=BATCH)


@contextmanager
def _small_batches(store: JobPersistence) -> Iterator[None]:
    """Register the small-batch policy with ``store``'s plugin manager for the block."""
    plugin = _SmallBatches()
    store.hooks.pm.register(plugin, name="contract-small-batches")
    try:
        yield
    finally:
        store.hooks.pm.unregister(plugin)


def _fill_many(store: JobPersistence) -> tuple[list[SyncJob], list[SyncJob], int]:
    """MANY expired jobs (of every finished status, most with checkpoints) among jobs to keep.

    Returns the expired jobs, the kept jobs and how many checkpoints the expired ones hold.
    """
    statuses = sorted(FINISHED_STATUSES)
    expired = [
        new_job(
            f"expired-{n:02d}",
            status=statuses[n % len(statuses)],
            created_at=NOW - timedelta(days=30 + n),
            completed_at=NOW - timedelta(days=20, minutes=n),
        )
        for n in range(MANY)
    ]
    kept = [
        *(
            new_job(f"active-{n}", status=status, created_at=NOW - timedelta(days=90))
            for n, status in enumerate(sorted(ACTIVE_STATUSES))
        ),
        new_job("recent", status=JobStatus.COMPLETED, created_at=NOW, completed_at=NOW),
    ]
    for job in [*expired, *kept]:
        store.save_job(job)
    checkpoints = 0
    for n, job in enumerate(expired):
        for phase in ("git_pull", "indexing")[: n % 3]:
            store.save_checkpoint(job.id, phase, {"n": n})
            checkpoints += 1
    store.save_checkpoint("active-0", "git_pull", {"kept": True})
    return expired, kept, checkpoints


class _RecordsBatches(ForwardingStorage):
    """Forwards every call and records each ``delete_expired`` batch: (limit, jobs, checkpoints)."""

    def __init__(self, inner: Storage) -> None:
        super().__init__(inner)
        self.batches: list[tuple[int, int, int]] = []

    def delete_expired(self, cutoffs: Mapping[JobStatus, datetime], limit: int) -> tuple[int, int]:
        jobs, checkpoints = self.inner.delete_expired(cutoffs, limit)
        self.batches.append((limit, jobs, checkpoints))
        return jobs, checkpoints


class CleanupContract(StoreFixtures):
    """Expired jobs go with their checkpoints; active and recent jobs stay, counts are exact."""

    def test_delete_expired_removes_finished_jobs_and_their_checkpoints(
        self, store: JobPersistence
    ) -> None:
        jobs = _fill(store)
        before = snapshot(store)
        assert store.delete_expired_jobs(CUTOFF) == len(EXPIRED)
        _assert_only_expired_gone(store, jobs, before)
        assert store.count_jobs() == len(jobs) - len(EXPIRED)

    def test_delete_expired_again_deletes_nothing(self, store: JobPersistence) -> None:
        _fill(store)
        store.delete_expired_jobs(CUTOFF)
        after_first = snapshot(store)
        assert store.delete_expired_jobs(CUTOFF) == 0
        assert snapshot(store) == after_first

    def test_delete_expired_never_deletes_an_active_job(self, store: JobPersistence) -> None:
        jobs = _fill(store)
        finished = [job for job in jobs if job.status in FINISHED_STATUSES]
        assert store.delete_expired_jobs(NOW + timedelta(days=3650)) == len(finished)
        remaining = snapshot(store)
        assert {job.id for job in remaining.jobs} == {
            job.id for job in jobs if job.status in ACTIVE_STATUSES
        }
        assert remaining.checkpoints["old-pending"][0].data == {"sha": "c3"}
        assert remaining.checkpoints["old-running"][0].data == {"files": 3}

    def test_delete_expired_on_an_empty_store(self, store: JobPersistence) -> None:
        assert store.delete_expired_jobs(NOW) == 0
        assert store.count_jobs() == 0

    def test_delete_expired_compares_instants_in_any_timezone(self, store: JobPersistence) -> None:
        _fill(store)
        local = CUTOFF.astimezone(timezone(timedelta(hours=-11)))
        assert store.delete_expired_jobs(local) == len(EXPIRED)

    def test_delete_expired_rejects_a_naive_cutoff(self, store: JobPersistence) -> None:
        _fill(store)
        before = snapshot(store)
        with pytest.raises(ValidationError):
            store.delete_expired_jobs(CUTOFF.replace(tzinfo=None))
        with pytest.raises(ValidationError):
            store.delete_expired_jobs("2024-01-01")  # type: ignore[arg-type]
        assert snapshot(store) == before

    def test_a_deleted_id_can_be_reused_without_its_old_checkpoints(
        self, store: JobPersistence
    ) -> None:
        _fill(store)
        store.delete_expired_jobs(CUTOFF)
        reborn = new_job("old-completed", user="bob", created_at=NOW)
        store.save_job(reborn)
        assert store.load_job("old-completed") == reborn
        assert store.list_checkpoints("old-completed") == []
        assert store.load_checkpoint("old-completed", "git_pull") is None

    def test_delete_expired_logs_the_count(
        self, store: JobPersistence, caplog: pytest.LogCaptureFixture
    ) -> None:
        _fill(store)
        with caplog.at_level(logging.INFO, logger="cidx_jobs"):
            store.delete_expired_jobs(CUTOFF)
        messages = [r.getMessage() for r in caplog.records if r.name.startswith("cidx_jobs")]
        assert any(str(len(EXPIRED)) in message for message in messages), messages

    def test_run_cleanup_with_now_and_retention(self, store: JobPersistence) -> None:
        jobs = _fill(store)
        before = snapshot(store)
        report = store.run_cleanup(NOW, retention=WEEK)
        assert (report.jobs_deleted, report.checkpoints_deleted, report.dry_run) == (
            len(EXPIRED),
            EXPIRED_CHECKPOINTS,
            False,
        )
        assert dict(report.cutoffs) == dict.fromkeys(FINISHED_STATUSES, CUTOFF)
        _assert_only_expired_gone(store, jobs, before)

    def test_run_cleanup_dry_run_counts_and_deletes_nothing(self, store: JobPersistence) -> None:
        _fill(store)
        before = snapshot(store)
        report = store.run_cleanup(NOW, retention=WEEK, dry_run=True)
        assert (report.jobs_deleted, report.checkpoints_deleted, report.dry_run) == (
            len(EXPIRED),
            EXPIRED_CHECKPOINTS,
            True,
        )
        assert snapshot(store) == before

    def test_run_cleanup_uses_the_store_clock_and_configured_retention(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        retention = store.settings.retention
        tick = timedelta(seconds=1)
        clock.set(NOW)
        store.save_job(
            new_job("expired", status=JobStatus.FAILED, completed_at=NOW - retention - tick)
        )
        store.save_job(
            new_job("kept", status=JobStatus.FAILED, completed_at=NOW - retention + tick)
        )
        store.save_checkpoint("expired", "git_pull", {})
        report = store.run_cleanup()
        assert (report.jobs_deleted, report.checkpoints_deleted) == (1, 1)
        assert store.load_job("expired") is None
        assert store.load_job("kept") is not None

    def test_run_cleanup_with_zero_retention(self, store: JobPersistence) -> None:
        _fill(store)
        report = store.run_cleanup(NOW, retention=timedelta(0))
        finished = [job for job in _aged_jobs() if job.status in FINISHED_STATUSES]
        assert report.jobs_deleted == len(finished)
        assert {job.status for job in snapshot(store).jobs} <= ACTIVE_STATUSES

    def test_run_cleanup_rejects_bad_arguments(self, store: JobPersistence) -> None:
        _fill(store)
        before = snapshot(store)
        with pytest.raises(ValidationError):
            store.run_cleanup(NOW.replace(tzinfo=None))
        with pytest.raises(ValidationError):
            store.run_cleanup(NOW, retention=timedelta(days=-1))
        assert snapshot(store) == before

    def test_cleanup_deletes_every_batch_not_only_the_first(self, store: JobPersistence) -> None:
        """More expired jobs than one batch of the policy: every one goes, the rest stays."""
        expired, kept, checkpoints = _fill_many(store)
        with _small_batches(store):
            dry = store.run_cleanup(NOW, retention=WEEK, dry_run=True)
            assert (dry.jobs_deleted, dry.checkpoints_deleted) == (MANY, checkpoints), (
                "a dry run counts every expired job, not one batch"
            )
            report = store.run_cleanup(NOW, retention=WEEK)
        assert (report.jobs_deleted, report.checkpoints_deleted) == (MANY, checkpoints)
        for job in expired:
            assert store.load_job(job.id) is None, f"{job.id} should have been deleted"
            assert store.list_checkpoints(job.id) == []
        assert snapshot(store).jobs == sorted(
            kept, key=lambda job: (job.created_at, job.id), reverse=True
        )
        assert store.load_checkpoint("active-0", "git_pull") == {"kept": True}

    def test_cleanup_batches_never_exceed_the_policys_batch_size(
        self, store: JobPersistence, store_settings: StoreSettings
    ) -> None:
        """Each ``Storage.delete_expired`` call deletes at most the policy's ``batch_size``."""
        _fill_many(store)
        recording = _RecordsBatches(store.storage)
        # A second facade over the same storage, watching the calls the cleanup makes.
        spied = JobPersistence(recording, hooks=store.hooks, settings=store_settings)
        with _small_batches(store):
            report = spied.run_cleanup(NOW, retention=WEEK)
        limits = {limit for limit, _, _ in recording.batches}
        assert limits == {BATCH}, f"the facade asks for batches of {BATCH}, got {limits}"
        sizes = [jobs for _, jobs, _ in recording.batches]
        assert max(sizes) <= BATCH, (
            f"a batch deleted more jobs than the policy's batch_size of {BATCH}: {sizes}"
        )
        assert sum(sizes) == report.jobs_deleted == MANY, sizes
        assert sum(c for _, _, c in recording.batches) == report.checkpoints_deleted
        assert sizes[-1] == 0, "the cleanup stops only at a batch that deleted nothing"
        assert store.count_jobs() == len(ACTIVE_STATUSES) + 1

    def test_a_recovered_job_of_any_age_is_kept_until_the_retention_passes_after_recovery(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        """Recovery hands out jobs created long before the retention: the default cleanup
        right after keeps them and their checkpoints, one resumes from its checkpoint, and
        the other goes only once the retention has passed since its interruption."""
        retention = store.settings.retention
        tick = timedelta(microseconds=1)
        created = NOW - 4 * retention
        # Created (and started) four retentions ago; their worker died an hour ago, just
        # after checkpointing.
        clock.set(NOW - timedelta(hours=1))
        for job_id in ("resumed", "abandoned"):
            store.save_job(
                new_job(
                    job_id,
                    status=JobStatus.RUNNING,
                    created_at=created,
                    started_at=created,
                    owner_id="dead-host:1:gone",
                    heartbeat_at=clock.now,
                )
            )
            store.save_checkpoint(job_id, "git_pull", {"next": 1})
        clock.set(NOW)
        report = store.recover_interrupted_jobs()
        points = {point.job.id: point for point in report.interrupted}
        assert sorted(points) == ["abandoned", "resumed"]
        for job_id, point in points.items():
            stored = store.load_job(job_id)
            assert stored is not None
            assert (stored.status, stored.completed_at) == (JobStatus.INTERRUPTED, NOW), (
                "a take-over to interrupted stamps completed_at with the time of the "
                "interruption, which the retention counts from"
            )
            assert point.job == stored, "the report's job is the job as stored"
            assert point.checkpoint is not None
            assert point.checkpoint.data == {"next": 1}

        dry = store.run_cleanup(dry_run=True)
        assert (dry.jobs_deleted, dry.checkpoints_deleted) == (0, 0)
        report_now = store.run_cleanup()
        assert (report_now.jobs_deleted, report_now.checkpoints_deleted) == (0, 0), (
            "the default cleanup right after recovery deleted a job recovery had just "
            "handed out: its retention counted from created_at, not from its interruption"
        )
        for job_id in points:
            assert store.load_checkpoint(job_id, "git_pull") == {"next": 1}
            resume = store.resume_point(job_id)
            assert resume is not None
            assert resume.data == {"next": 1}

        # The resume path of docs/lifecycle.md, for a job of any age.
        clock.advance(timedelta(minutes=1))
        assert store.update_job_status("resumed", JobStatus.RUNNING, expected=JobStatus.INTERRUPTED)
        resumed = store.load_job("resumed")
        assert resumed is not None
        assert (resumed.status, resumed.started_at, resumed.completed_at) == (
            JobStatus.RUNNING,
            created,
            None,
        ), "resuming keeps started_at and clears the interruption's stamp"

        # The retention counts from the interruption: kept up to it, gone after it.
        clock.set(NOW + retention)
        assert store.run_cleanup().jobs_deleted == 0
        assert store.load_job("abandoned") is not None
        clock.advance(tick)
        gone = store.run_cleanup()
        assert (gone.jobs_deleted, gone.checkpoints_deleted) == (1, 1)
        assert store.load_job("abandoned") is None
        assert store.list_checkpoints("abandoned") == []
        # The resumed job is active again, so never cleaned up, however old it is.
        assert store.list_checkpoints("resumed") != []
        assert store.update_job_status("resumed", JobStatus.COMPLETED)
        finished = store.load_job("resumed")
        assert finished is not None
        assert finished.completed_at == clock.now

    def test_an_interrupted_job_is_kept_for_the_retention_after_its_interruption(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        """A job created long ago and interrupted by a status change (not by recovery)
        is kept for the whole retention after the change."""
        retention = store.settings.retention
        clock.set(NOW)
        store.save_job(new_job("old", created_at=NOW - 4 * retention))
        assert store.update_job_status("old", JobStatus.RUNNING)
        store.save_checkpoint("old", "indexing", {"files": 3})
        interrupted_at = clock.advance(timedelta(hours=2))
        assert store.update_job_status("old", JobStatus.INTERRUPTED)
        clock.set(interrupted_at + retention)
        assert store.run_cleanup().jobs_deleted == 0
        assert store.load_checkpoint("old", "indexing") == {"files": 3}
        clock.advance(timedelta(microseconds=1))
        assert (store.run_cleanup().jobs_deleted, store.load_job("old")) == (1, None)
