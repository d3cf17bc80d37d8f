"""Contract: job ownership, leases, heartbeats and restart recovery."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import attrs
import pytest

from cidx_jobs import JobPersistence, JobStatus, StoreSettings, SyncJob, hookimpl, utcnow
from cidx_jobs.backend import Storage
from cidx_jobs.errors import LeaseLostError, ValidationError

from ._base import ManualClock, StoreFixtures
from ._capabilities import requires
from ._concurrency import run_threads
from ._storage import ForwardingStorage

LONG_AGO = datetime(2020, 1, 1, tzinfo=timezone.utc)
LEASE = timedelta(minutes=5)
#: The heartbeat hand_over_jobs() gives the jobs it hands over: stale for any lease timeout.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


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


def _sibling(store: JobPersistence, settings: StoreSettings, owner: str) -> JobPersistence:
    """Another store instance (another owner) over the same storage, as a second process of
    the same service would be; the ``store`` fixture closes the storage."""
    return JobPersistence(store.storage, settings=attrs.evolve(settings, owner_id=owner))


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

    def test_heartbeat_renews_only_own_leased_jobs(self, store: JobPersistence) -> None:
        """Its own active and interrupted jobs: not another owner's, not a finished one."""
        store.save_job(SyncJob(id="mine-running", user_id="u", project_id="p"))
        store.update_job_status("mine-running", JobStatus.RUNNING)
        store.save_job(SyncJob(id="mine-pending", user_id="u", project_id="p"))
        store.save_job(SyncJob(id="mine-interrupted", user_id="u", project_id="p"))
        store.update_job_status("mine-interrupted", JobStatus.RUNNING)
        store.update_job_status("mine-interrupted", JobStatus.INTERRUPTED)
        store.save_job(SyncJob(id="mine-done", user_id="u", project_id="p"))
        store.update_job_status("mine-done", JobStatus.COMPLETED)
        _orphan(store, "theirs", JobStatus.RUNNING)
        _orphan(store, "theirs-interrupted", JobStatus.INTERRUPTED)
        done_before = store.load_job("mine-done")
        assert store.heartbeat() == 3
        for job_id in ("theirs", "theirs-interrupted"):
            theirs = store.load_job(job_id)
            assert theirs is not None
            assert theirs.heartbeat_at == LONG_AGO, job_id
        done_after = store.load_job("mine-done")
        assert done_before is not None
        assert done_after is not None
        assert done_after.heartbeat_at == done_before.heartbeat_at

    def test_heartbeat_renews_an_interrupted_job_of_its_owner_but_not_a_finished_one(
        self, store: JobPersistence, store_settings: StoreSettings, clock: ManualClock
    ) -> None:
        """An interrupted job waits to be resumed by its owner: the owner's heartbeats keep
        it, so another store's recovery leaves it. A finished job holds no lease."""
        stopped = {
            "interrupted": JobStatus.INTERRUPTED,
            "completed": JobStatus.COMPLETED,
            "failed": JobStatus.FAILED,
            "cancelled": JobStatus.CANCELLED,
        }
        for job_id, status in stopped.items():
            store.save_job(SyncJob(id=job_id, user_id="u", project_id="p"))
            assert store.update_job_status(job_id, JobStatus.RUNNING)
            assert store.update_job_status(job_id, status)
        started = clock.now
        beat = clock.advance(LEASE * 2)
        assert store.heartbeat() == 1, "exactly the interrupted job is renewed"
        for job_id, status in stopped.items():
            job = store.load_job(job_id)
            assert job is not None
            assert (job.status, job.owner_id) == (status, store.owner_id), job_id
            expected = beat if status is JobStatus.INTERRUPTED else started
            assert job.heartbeat_at == expected, job_id
        other = _sibling(store, store_settings, "other-host:7")
        report = other.recover_interrupted_jobs(lease_timeout=LEASE)
        assert (report.interrupted, report.requeue) == ([], []), (
            "recovery took an interrupted job whose owner had just renewed its lease"
        )

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
        store.save_job(
            SyncJob(
                id="sibling-interrupted",
                user_id="u",
                project_id="p",
                status=JobStatus.INTERRUPTED,
                owner_id="sibling:2:live",
                heartbeat_at=utcnow(),
            )
        )
        store.save_job(SyncJob(id="mine", user_id="u", project_id="p"))
        store.update_job_status("mine", JobStatus.RUNNING)
        store.save_job(SyncJob(id="mine-interrupted", user_id="u", project_id="p"))
        store.update_job_status("mine-interrupted", JobStatus.INTERRUPTED)
        for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
            _orphan(store, f"dead-{status.value}", status)
        report = store.recover_interrupted_jobs(lease_timeout=LEASE)
        assert (report.interrupted, report.requeue) == ([], [])
        for job_id, status in [
            ("sibling", JobStatus.RUNNING),
            ("sibling-interrupted", JobStatus.INTERRUPTED),
            ("mine", JobStatus.RUNNING),
            ("mine-interrupted", JobStatus.INTERRUPTED),
            ("dead-completed", JobStatus.COMPLETED),
            ("dead-failed", JobStatus.FAILED),
            ("dead-cancelled", JobStatus.CANCELLED),
        ]:
            job = store.load_job(job_id)
            assert job is not None
            assert job.status is status, job_id
        for job_id in ("sibling", "sibling-interrupted"):
            sibling = store.load_job(job_id)
            assert sibling is not None
            assert sibling.owner_id == "sibling:2:live", job_id
        for status in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
            dead = store.load_job(f"dead-{status.value}")
            assert dead is not None
            assert (dead.owner_id, dead.heartbeat_at) == ("dead:1:x", LONG_AGO)

    def test_recovery_takes_an_interrupted_job_of_a_dead_owner_once_with_its_checkpoint(
        self, store: JobPersistence, store_settings: StoreSettings, clock: ManualClock
    ) -> None:
        """A job left interrupted (a graceful stop, or a recovery whose process died before
        resuming it) is handed out again once its owner's lease expired: to exactly one
        store, with the checkpoint to resume from, and stamped so that cleanup keeps it."""
        store.save_job(
            SyncJob(
                id="dead-interrupted",
                user_id="u",
                project_id="p",
                status=JobStatus.INTERRUPTED,
                created_at=LONG_AGO,
                started_at=LONG_AGO,
                completed_at=LONG_AGO,
                owner_id="dead:1:x",
                heartbeat_at=LONG_AGO,
            )
        )
        store.save_checkpoint("dead-interrupted", "git_pull", {"sha": "abc"})
        clock.advance(timedelta(seconds=1))
        store.save_checkpoint("dead-interrupted", "indexing", {"files": 7})
        now = clock.advance(timedelta(seconds=1))
        report = store.recover_interrupted_jobs(lease_timeout=LEASE)
        assert [point.job.id for point in report.interrupted] == ["dead-interrupted"], (
            "recovery did not take over the interrupted job of an owner whose lease expired"
        )
        assert report.requeue == []
        point = report.interrupted[0]
        assert point.checkpoint is not None
        assert (point.checkpoint.phase, point.checkpoint.data) == ("indexing", {"files": 7})
        stored = store.load_job("dead-interrupted")
        assert stored is not None
        assert point.job == stored, "the report's job is the job as stored"
        assert (stored.status, stored.owner_id, stored.heartbeat_at) == (
            JobStatus.INTERRUPTED,
            store.owner_id,
            now,
        )
        assert stored.completed_at == now, (
            "a take-over to interrupted stamps completed_at, also of a job that was "
            "interrupted already: its retention counts from the hand-out"
        )
        assert stored.started_at == LONG_AGO
        # Taken once: neither this store nor another one takes it again while the taker lives.
        again = store.recover_interrupted_jobs(lease_timeout=LEASE)
        assert (again.interrupted, again.requeue) == ([], [])
        other = _sibling(store, store_settings, "other-host:7")
        elsewhere = other.recover_interrupted_jobs(lease_timeout=LEASE)
        assert (elsewhere.interrupted, elsewhere.requeue) == ([], [])
        # The taker resumes it from there.
        assert store.update_job_status(
            "dead-interrupted", JobStatus.RUNNING, expected=JobStatus.INTERRUPTED
        )

    def test_an_interrupted_job_is_taken_only_once_its_owners_lease_expired(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        """A live owner's interrupted job (heartbeat within the lease) stays with it; the
        first recovery after its lease expired takes it."""
        beat = clock.now
        store.save_job(
            SyncJob(
                id="live-interrupted",
                user_id="u",
                project_id="p",
                status=JobStatus.INTERRUPTED,
                owner_id="sibling:2:live",
                heartbeat_at=beat,
            )
        )
        clock.set(beat + LEASE)  # the lease ends now: not expired yet
        report = store.recover_interrupted_jobs(lease_timeout=LEASE)
        assert (report.interrupted, report.requeue) == ([], []), (
            "recovery took the interrupted job of an owner whose lease has not expired"
        )
        job = store.load_job("live-interrupted")
        assert job is not None
        assert (job.status, job.owner_id, job.heartbeat_at) == (
            JobStatus.INTERRUPTED,
            "sibling:2:live",
            beat,
        )
        clock.advance(timedelta(microseconds=1))
        report = store.recover_interrupted_jobs(lease_timeout=LEASE)
        assert [point.job.id for point in report.interrupted] == ["live-interrupted"]
        taken = store.load_job("live-interrupted")
        assert taken is not None
        assert (taken.status, taken.owner_id) == (JobStatus.INTERRUPTED, store.owner_id)

    def test_after_a_hand_over_a_siblings_recovery_takes_the_jobs_at_once(
        self, store: JobPersistence, store_settings: StoreSettings, clock: ManualClock
    ) -> None:
        """A store that stops gracefully hands its jobs over: a sibling's next recovery, with
        a lease timeout far longer than the time since, resumes the running job and
        re-queues the pending one, and the stopped store's worker can write nothing more."""
        store.save_job(SyncJob(id="running", user_id="u", project_id="p"))
        lease = store.claim_job("running")
        assert lease is not None
        assert store.save_checkpoint("running", "indexing", {"files": 3}, lease=lease)
        store.save_job(SyncJob(id="pending", user_id="u", project_id="p"))
        store.save_job(SyncJob(id="done", user_id="u", project_id="p"))
        assert store.update_job_status("done", JobStatus.COMPLETED)
        done_before = store.load_job("done")
        clock.advance(timedelta(seconds=1))
        assert store.hand_over_jobs() == 2, "the interrupted job and the pending one"
        for job_id, status in (
            ("running", JobStatus.INTERRUPTED),
            ("pending", JobStatus.PENDING),
        ):
            job = store.load_job(job_id)
            assert job is not None
            assert (job.status, job.owner_id, job.heartbeat_at) == (
                status,
                store.owner_id,
                EPOCH,
            ), f"{job_id}: renew_leases() must store a time in the past as it is given"
        assert store.load_job("done") == done_before, "a finished job holds no lease"
        clock.advance(timedelta(seconds=1))
        sibling = _sibling(store, store_settings, "sibling-host:2")
        report = sibling.recover_interrupted_jobs(lease_timeout=timedelta(hours=1))
        assert [point.job.id for point in report.interrupted] == ["running"]
        point = report.interrupted[0]
        assert (point.job.status, point.job.owner_id) == (JobStatus.INTERRUPTED, sibling.owner_id)
        assert point.checkpoint is not None
        assert point.checkpoint.data == {"files": 3}
        assert [job.id for job in report.requeue] == ["pending"]
        requeued = sibling.load_job("pending")
        assert requeued is not None
        assert (requeued.status, requeued.owner_id) == (JobStatus.PENDING, sibling.owner_id)
        with pytest.raises(LeaseLostError):
            store.update_job_progress("running", 50, "late", lease=lease)
        # A heartbeat of the stopped store, had it gone on, renews nothing it gave away.
        assert store.heartbeat() == 0

    def test_a_released_job_is_resumed_by_the_next_recovery_of_any_store(
        self, store: JobPersistence, store_settings: StoreSettings, clock: ManualClock
    ) -> None:
        """release_job() gives one claimed job up: its lease's writes are refused, this
        store's heartbeat no longer keeps it, and the next recovery, even this store's own
        and with a long lease timeout, resumes it from its checkpoint, exactly once."""
        store.save_job(SyncJob(id="given-up", user_id="u", project_id="p"))
        store.save_job(SyncJob(id="kept", user_id="u", project_id="p"))
        lease = store.claim_job("given-up")
        kept = store.claim_job("kept")
        assert lease is not None
        assert kept is not None
        assert store.save_checkpoint("given-up", "clone", {"files": 2}, lease=lease)
        clock.advance(timedelta(seconds=1))
        released_at = clock()
        store.release_job(lease)
        job = store.load_job("given-up")
        assert job is not None
        assert job.status is JobStatus.INTERRUPTED
        assert job.owner_id == f"{store.owner_id}:released"
        assert job.heartbeat_at == EPOCH
        assert job.completed_at == released_at, "retention counts from the release"
        with pytest.raises(LeaseLostError):
            store.update_job_progress("given-up", 50, "late", lease=lease)
        with pytest.raises(LeaseLostError):
            store.release_job(lease)
        assert store.heartbeat() == 1, "only the job it still works"
        assert store.load_job("given-up") == job
        clock.advance(timedelta(seconds=1))
        report = store.recover_interrupted_jobs(lease_timeout=timedelta(hours=1))
        assert [point.job.id for point in report.interrupted] == ["given-up"]
        assert report.interrupted[0].checkpoint is not None
        assert report.interrupted[0].checkpoint.data == {"files": 2}
        assert report.requeue == []
        sibling = _sibling(store, store_settings, "sibling-host:3")
        again = sibling.recover_interrupted_jobs(lease_timeout=timedelta(hours=1))
        assert (again.interrupted, again.requeue) == ([], []), "taken once"
        resumed = store.claim_job("given-up")
        assert resumed is not None
        assert store.update_job_progress("kept", 10, lease=kept), "the other claim is untouched"

    @requires("concurrent_threads")
    def test_concurrent_recoveries_of_several_stores_take_each_interrupted_job_once(
        self, store: JobPersistence, store_settings: StoreSettings, clock: ManualClock
    ) -> None:
        interrupted = [f"interrupted-{n:02d}" for n in range(24)]
        running = [f"running-{n:02d}" for n in range(8)]
        for job_id in interrupted:
            _orphan(store, job_id, JobStatus.INTERRUPTED)
        for job_id in running:
            _orphan(store, job_id, JobStatus.RUNNING)
        recoverers = [_sibling(store, store_settings, f"recoverer-{n}:1") for n in range(4)]
        reports = run_threads(
            len(recoverers),
            lambda n: recoverers[n].recover_interrupted_jobs(lease_timeout=LEASE),
        )
        taken = [point.job.id for report in reports for point in report.interrupted]
        assert sorted(taken) == sorted(interrupted + running), "every job exactly once"
        assert [job for report in reports for job in report.requeue] == []
        for recoverer, report in zip(recoverers, reports, strict=True):
            for point in report.interrupted:
                stored = store.load_job(point.job.id)
                assert stored is not None
                assert (stored.status, stored.owner_id) == (
                    JobStatus.INTERRUPTED,
                    recoverer.owner_id,
                ), "the job belongs to the store whose report returned it"

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
