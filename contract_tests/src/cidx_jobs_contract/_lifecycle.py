"""Contract: job ownership, leases, heartbeats and restart recovery."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import attrs
import pytest

from cidx_jobs import JobPersistence, JobStatus, StoreSettings, SyncJob, hookimpl, utcnow
from cidx_jobs.backend import Storage
from cidx_jobs.errors import ValidationError

from ._base import ManualClock, StoreFixtures
from ._storage import ForwardingStorage

LONG_AGO = datetime(2020, 1, 1, tzinfo=timezone.utc)
LEASE = timedelta(minutes=5)


def _orphan(store: JobPersistence, job_id: str, status: JobStatus, owner: str = "dead:1:x") -> None:
    """Save a job as if a process that died long ago had owned it."""
    store.save_job(
        SyncJob(
            id=job_id,
            user_id="u",
            project_id="p",
            status=status,
            created_at=LONG_AGO,
            owner_id=owner,
            heartbeat_at=LONG_AGO,
        )
    )


class _OwnerRenewsAfterLookup(ForwardingStorage):
    """Forwards every call; right after the first stale lookup that finds jobs, their
    owner renews its leases, as a live owner's heartbeat may between a recoverer's
    lookup and its take-over."""

    def __init__(self, inner: Storage, owner: str, clock: ManualClock) -> None:
        super().__init__(inner)
        self.owner = owner
        self.clock = clock
        self.renewed: int | None = None
        self.renewed_at: datetime | None = None

    def find_stale(self, before: datetime, exclude_owner: str, limit: int) -> list[SyncJob]:
        stale = self.inner.find_stale(before, exclude_owner, limit)
        if stale and self.renewed is None:
            self.renewed_at = self.clock.advance(timedelta(seconds=1))
            self.renewed = self.inner.renew_leases(self.owner, self.renewed_at)
        return stale


class LifecycleContract(StoreFixtures):
    """Ownership, leases and restart recovery: what makes jobs survive a restart."""

    def test_save_makes_the_store_the_owner(self, store: JobPersistence) -> None:
        before = utcnow()
        store.save_job(SyncJob(id="j", user_id="u", project_id="p"))
        job = store.load_job("j")
        assert job is not None
        assert job.owner_id == store.owner_id
        assert job.heartbeat_at is not None
        assert job.heartbeat_at >= before - timedelta(seconds=1)

    def test_owner_ids_are_unique_per_store_instance(self, store: JobPersistence) -> None:
        parts = store.owner_id.split(":")
        assert len(parts) >= 3
        assert all(parts)

    def test_an_explicit_owner_is_kept(self, store: JobPersistence) -> None:
        _orphan(store, "j", JobStatus.RUNNING, owner="elsewhere:9:abc")
        job = store.load_job("j")
        assert job is not None
        assert (job.owner_id, job.heartbeat_at) == ("elsewhere:9:abc", LONG_AGO)

    def test_starting_a_job_takes_its_lease(self, store: JobPersistence) -> None:
        _orphan(store, "j", JobStatus.QUEUED)
        assert store.update_job_status("j", JobStatus.RUNNING)
        job = store.load_job("j")
        assert job is not None
        assert job.owner_id == store.owner_id
        assert job.heartbeat_at is not None
        assert job.heartbeat_at > LONG_AGO

    def test_heartbeat_renews_only_own_active_jobs(self, store: JobPersistence) -> None:
        store.save_job(SyncJob(id="mine-running", user_id="u", project_id="p"))
        store.update_job_status("mine-running", JobStatus.RUNNING)
        store.save_job(SyncJob(id="mine-pending", user_id="u", project_id="p"))
        store.save_job(SyncJob(id="mine-done", user_id="u", project_id="p"))
        store.update_job_status("mine-done", JobStatus.COMPLETED)
        _orphan(store, "theirs", JobStatus.RUNNING)
        done_before = store.load_job("mine-done")
        assert store.heartbeat() == 2
        theirs = store.load_job("theirs")
        assert theirs is not None
        assert theirs.heartbeat_at == LONG_AGO
        done_after = store.load_job("mine-done")
        assert done_before is not None
        assert done_after is not None
        assert done_after.heartbeat_at == done_before.heartbeat_at

    def test_recovery_interrupts_running_jobs_of_dead_owners(self, store: JobPersistence) -> None:
        _orphan(store, "dead-running", JobStatus.RUNNING)
        store.save_checkpoint("dead-running", "git_pull", {"sha": "abc"})
        store.save_checkpoint("dead-running", "indexing", {"files": 7})
        report = store.recover_interrupted_jobs(lease_timeout=LEASE)
        assert [point.job.id for point in report.interrupted] == ["dead-running"]
        point = report.interrupted[0]
        assert point.job.status is JobStatus.INTERRUPTED
        assert point.job.owner_id == store.owner_id
        assert point.checkpoint is not None
        assert (point.checkpoint.phase, point.checkpoint.data) == ("indexing", {"files": 7})
        stored = store.load_job("dead-running")
        assert stored is not None
        assert stored.status is JobStatus.INTERRUPTED
        assert stored.owner_id == store.owner_id
        assert report.requeue == []

    def test_recovery_leaves_live_and_own_and_finished_jobs(self, store: JobPersistence) -> None:
        store.save_job(
            SyncJob(
                id="sibling",
                user_id="u",
                project_id="p",
                status=JobStatus.RUNNING,
                owner_id="sibling:2:live",
                heartbeat_at=utcnow(),
            )
        )
        store.save_job(SyncJob(id="mine", user_id="u", project_id="p"))
        store.update_job_status("mine", JobStatus.RUNNING)
        _orphan(store, "dead-done", JobStatus.COMPLETED)
        _orphan(store, "dead-interrupted", JobStatus.INTERRUPTED)
        report = store.recover_interrupted_jobs(lease_timeout=LEASE)
        assert (report.interrupted, report.requeue) == ([], [])
        for job_id, status in [
            ("sibling", JobStatus.RUNNING),
            ("mine", JobStatus.RUNNING),
            ("dead-done", JobStatus.COMPLETED),
            ("dead-interrupted", JobStatus.INTERRUPTED),
        ]:
            job = store.load_job(job_id)
            assert job is not None
            assert job.status is status, job_id
        sibling = store.load_job("sibling")
        assert sibling is not None
        assert sibling.owner_id == "sibling:2:live"

    def test_pending_and_queued_jobs_of_dead_owners_are_returned_for_requeue(
        self, store: JobPersistence
    ) -> None:
        _orphan(store, "dead-pending", JobStatus.PENDING)
        _orphan(store, "dead-queued", JobStatus.QUEUED)
        report = store.recover_interrupted_jobs(lease_timeout=LEASE)
        assert report.interrupted == []
        assert sorted(job.id for job in report.requeue) == ["dead-pending", "dead-queued"]
        for job in report.requeue:
            stored = store.load_job(job.id)
            assert stored is not None
            assert stored.status is job.status
            assert stored.status in (JobStatus.PENDING, JobStatus.QUEUED)
            assert stored.owner_id == store.owner_id
        # Taken over: a second recovery finds nothing.
        again = store.recover_interrupted_jobs(lease_timeout=LEASE)
        assert (again.interrupted, again.requeue) == ([], [])

    def test_a_stale_checkpoint_is_not_resumed(self, store: JobPersistence) -> None:
        _orphan(store, "j", JobStatus.RUNNING)
        report = store.recover_interrupted_jobs(lease_timeout=LEASE)
        assert report.interrupted[0].checkpoint is None  # no checkpoint at all

    def test_concurrent_recoveries_take_each_job_once(self, store: JobPersistence) -> None:
        ids = [f"stale-{n:02d}" for n in range(30)]
        for job_id in ids:
            _orphan(store, job_id, JobStatus.RUNNING)
        results: list[list[str]] = []
        errors: list[BaseException] = []
        start = threading.Barrier(4)

        def recover() -> None:
            try:
                start.wait()
                report = store.recover_interrupted_jobs(lease_timeout=LEASE)
                results.append([point.job.id for point in report.interrupted])
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

        threads = [threading.Thread(target=recover) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        taken = [job_id for result in results for job_id in result]
        assert sorted(taken) == ids  # every job exactly once

    def test_recovery_fires_status_events(self, store: JobPersistence) -> None:
        seen: list[tuple[str, JobStatus]] = []

        class Recorder:
            @hookimpl
            def cidx_jobs_status_changed(self, job_id: str, status: JobStatus) -> None:
                seen.append((job_id, status))

        plugin = Recorder()
        store.hooks.pm.register(plugin, name="lifecycle-recorder")
        try:
            _orphan(store, "j", JobStatus.RUNNING)
            store.recover_interrupted_jobs(lease_timeout=LEASE)
        finally:
            store.hooks.pm.unregister(plugin)
        assert seen == [("j", JobStatus.INTERRUPTED)]

    @pytest.mark.parametrize("bad", [timedelta(0), timedelta(seconds=-1), 30])
    def test_lease_timeout_is_validated(self, store: JobPersistence, bad: object) -> None:
        _orphan(store, "j", JobStatus.RUNNING)
        with pytest.raises(ValidationError):
            store.recover_interrupted_jobs(lease_timeout=bad)  # type: ignore[arg-type]
        job = store.load_job("j")
        assert job is not None
        assert job.status is JobStatus.RUNNING

    def test_resume_after_recovery_keeps_started_at(self, store: JobPersistence) -> None:
        store.save_job(
            SyncJob(
                id="j",
                user_id="u",
                project_id="p",
                status=JobStatus.RUNNING,
                created_at=LONG_AGO,
                started_at=LONG_AGO,
                owner_id="dead:1:x",
                heartbeat_at=LONG_AGO,
            )
        )
        store.recover_interrupted_jobs(lease_timeout=LEASE)
        assert store.update_job_status("j", JobStatus.RUNNING, expected=JobStatus.INTERRUPTED)
        job = store.load_job("j")
        assert job is not None
        assert job.started_at == LONG_AGO
        assert job.owner_id == store.owner_id

    def test_a_take_over_never_takes_a_job_whose_owner_heartbeated_after_the_lookup(
        self, store: JobPersistence, store_settings: StoreSettings, clock: ManualClock
    ) -> None:
        """The take-over is a compare-and-set on status, owner *and* heartbeat_at."""
        store.save_job(SyncJob(id="running", user_id="u", project_id="p"))
        assert store.update_job_status("running", JobStatus.RUNNING)
        store.save_job(SyncJob(id="queued", user_id="u", project_id="p", status=JobStatus.QUEUED))
        clock.advance(LEASE + timedelta(minutes=1))
        # A recoverer (another facade, another owner) over the same storage, whose stale
        # lookup is followed at once by the owner's heartbeat.
        spy = _OwnerRenewsAfterLookup(store.storage, store.owner_id, clock)
        recoverer = JobPersistence(spy, settings=attrs.evolve(store_settings, owner_id="recoverer"))
        report = recoverer.recover_interrupted_jobs(lease_timeout=LEASE)
        assert spy.renewed == 2, "the stale lookup found both jobs and their owner renewed them"
        assert (report.interrupted, report.requeue) == ([], []), (
            "a job was taken over although its owner renewed its lease after the lookup"
        )
        for job_id, status in (("running", JobStatus.RUNNING), ("queued", JobStatus.QUEUED)):
            job = store.load_job(job_id)
            assert job is not None
            assert (job.status, job.owner_id, job.heartbeat_at) == (
                status,
                store.owner_id,
                spy.renewed_at,
            ), job_id
