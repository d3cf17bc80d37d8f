"""Contract: fenced leases. A worker's writes carry its lease, and once the lease is gone
(recovery took the job over, the job was claimed again, cancelled, finished or deleted)
they store nothing and raise LeaseLostError."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest

from cidx_jobs import JobPersistence, JobStatus, Lease, StoreSettings, SyncJob
from cidx_jobs.errors import LeaseLostError, ValidationError

from ._base import ManualClock, StoreFixtures

LEASE = timedelta(minutes=5)

#: The three fenced writes, each with a different value than the previous one.
Write = Callable[[JobPersistence, Lease], object]
WRITES: dict[str, Write] = {
    "progress": lambda store, lease: store.update_job_progress(
        lease.job_id, 77, "late", lease=lease
    ),
    "checkpoint": lambda store, lease: store.save_checkpoint(
        lease.job_id, "late", {"n": 1}, lease=lease
    ),
    "status": lambda store, lease: store.update_job_status(
        lease.job_id, JobStatus.COMPLETED, lease=lease
    ),
}


def _claimed(store: JobPersistence, job_id: str = "j") -> Lease:
    store.save_job(SyncJob(id=job_id, user_id="u", project_id="p"))
    lease = store.claim_job(job_id)
    assert lease is not None
    return lease


def _nothing_late_stored(store: JobPersistence, job_id: str, status: JobStatus) -> None:
    job = store.load_job(job_id)
    assert job is not None
    assert job.status is status
    assert job.progress != 77
    assert job.phase != "late"
    assert store.load_checkpoint(job_id, "late") is None


class FencingContract(StoreFixtures):
    """Fenced leases: the writes of a worker that lost its job are refused, every backend."""

    def test_a_claim_moves_the_job_to_running_under_a_new_lease(
        self, store: JobPersistence
    ) -> None:
        lease = _claimed(store)
        assert (lease.job_id, lease.owner_id) == ("j", store.owner_id)
        job = store.load_job("j")
        assert job is not None
        assert (job.status, job.owner_id) == (JobStatus.RUNNING, store.owner_id)
        assert store.update_job_progress("j", 40, "clone", lease=lease) is True
        assert store.save_checkpoint("j", "clone", {"files": 3}, lease=lease) is True
        assert store.update_job_status("j", JobStatus.COMPLETED, lease=lease) is True
        job = store.load_job("j")
        assert job is not None
        assert (job.status, job.progress, job.phase) == (JobStatus.COMPLETED, 40, "clone")
        assert store.load_checkpoint("j", "clone") == {"files": 3}

    def test_only_one_claim_of_a_job_wins(self, store: JobPersistence) -> None:
        _claimed(store)
        assert store.claim_job("j") is None
        assert store.claim_job("unknown") is None

    @pytest.mark.parametrize("write", sorted(WRITES))
    def test_writes_after_a_cancel_are_refused(self, store: JobPersistence, write: str) -> None:
        lease = _claimed(store)
        assert store.update_job_status("j", JobStatus.CANCELLED)
        with pytest.raises(LeaseLostError) as caught:
            WRITES[write](store, lease)
        assert caught.value.status is JobStatus.CANCELLED
        _nothing_late_stored(store, "j", JobStatus.CANCELLED)

    @pytest.mark.parametrize("write", sorted(WRITES))
    def test_writes_after_a_take_over_by_recovery_are_refused(
        self, store: JobPersistence, clock: ManualClock, write: str
    ) -> None:
        lease = _claimed(store)
        # Another worker, over the same storage, finds the lease expired (a stall, a pause).
        other = JobPersistence(store.storage, settings=StoreSettings(clock=clock))
        clock.advance(LEASE * 2)
        report = other.recover_interrupted_jobs(lease_timeout=LEASE)
        assert [point.job.id for point in report.interrupted] == ["j"]
        new_lease = other.claim_job("j")
        assert new_lease is not None
        with pytest.raises(LeaseLostError) as caught:
            WRITES[write](store, lease)
        assert caught.value.owner_id == other.owner_id
        _nothing_late_stored(store, "j", JobStatus.RUNNING)
        assert other.update_job_progress("j", 10, lease=new_lease) is True

    @pytest.mark.parametrize("write", sorted(WRITES))
    def test_a_lease_lost_once_stays_lost_when_the_job_comes_back(
        self, store: JobPersistence, write: str
    ) -> None:
        first = _claimed(store)
        assert store.update_job_status("j", JobStatus.QUEUED, lease=first)
        second = store.claim_job("j")  # the same store, the same owner: a new lease
        assert second is not None
        assert second.token != first.token
        with pytest.raises(LeaseLostError):
            WRITES[write](store, first)
        _nothing_late_stored(store, "j", JobStatus.RUNNING)

    def test_writes_to_a_deleted_job_are_refused(self, store: JobPersistence) -> None:
        lease = _claimed(store)
        assert store.update_job_status("j", JobStatus.FAILED, lease=lease)
        store.delete_expired_jobs(store.settings.clock() + timedelta(days=1))
        assert store.load_job("j") is None
        with pytest.raises(LeaseLostError) as caught:
            store.update_job_progress("j", 5, lease=lease)
        assert caught.value.status is None

    def test_an_unfenced_move_to_running_also_ends_the_lease(self, store: JobPersistence) -> None:
        lease = _claimed(store)
        assert store.update_job_status("j", JobStatus.RUNNING, expected=JobStatus.RUNNING)
        with pytest.raises(LeaseLostError):
            store.update_job_progress("j", 5, lease=lease)

    def test_a_wrong_lease_is_refused_before_any_write(self, store: JobPersistence) -> None:
        lease = _claimed(store, "a")
        _claimed(store, "b")
        with pytest.raises(ValidationError):
            store.update_job_progress("b", 9, lease=lease)
        with pytest.raises(ValidationError):
            store.save_checkpoint("b", "x", {}, lease="token")  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            store.update_job_status("a", JobStatus.RUNNING, lease=lease)
        with pytest.raises(ValidationError):
            store.update_job_status("a", JobStatus.FAILED, expected="running", lease=lease)
        job = store.load_job("b")
        assert job is not None
        assert job.progress == 0
        assert store.load_checkpoint("b", "x") is None

    def test_a_restarted_worker_with_the_same_name_recovers_its_predecessors_jobs(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        # A fixed owner_id names the worker; each store instance is still its own owner.
        settings = StoreSettings(clock=clock, owner_id="worker-1")
        before = JobPersistence(store.storage, settings=settings)
        _claimed(before)
        after = JobPersistence(store.storage, settings=settings)
        assert after.owner_id != before.owner_id
        assert after.owner_id.startswith("worker-1:")
        clock.advance(LEASE * 2)
        assert after.heartbeat() == 0  # the predecessor's lease is not renewed
        report = after.recover_interrupted_jobs(lease_timeout=LEASE)
        assert [point.job.id for point in report.interrupted] == ["j"]
