"""Saving, loading and updating single jobs; missing jobs; closing."""

from __future__ import annotations

import pytest

from cidx_jobs import JobFilter, JobPersistence, JobStatus
from cidx_jobs.errors import DuplicateJobError, StorageUnavailableError

from ._base import StoreFixtures, at, new_job, snapshot


class CrudContract(StoreFixtures):
    """Create, read and update one job at a time, including the unhappy paths."""

    def test_save_then_load_returns_an_equal_job(self, store: JobPersistence) -> None:
        job = new_job(
            "job-1",
            status=JobStatus.FAILED,
            progress=42,
            phase="indexing",
            created_at=at(0),
            started_at=at(1),
            completed_at=at(2),
            error_message="merge conflict",
            metadata={"branch": "main", "files": [1, 2, 3], "nested": {"ok": True}},
        )
        assert store.save_job(job) is True
        assert store.load_job("job-1") == job

    def test_save_stores_a_minimal_job(self, store: JobPersistence) -> None:
        job = new_job("job-1")
        store.save_job(job)
        loaded = store.load_job("job-1")
        assert loaded == job
        assert loaded is not None
        assert loaded.status is JobStatus.PENDING
        assert (loaded.progress, loaded.phase, loaded.metadata) == (0, None, {})
        assert (loaded.started_at, loaded.completed_at, loaded.error_message) == (None, None, None)

    def test_load_of_an_unknown_id_returns_none(self, store: JobPersistence) -> None:
        assert store.load_job("nope") is None
        store.save_job(new_job("job-1"))
        assert store.load_job("job-2") is None
        assert store.load_job("job-") is None

    def test_duplicate_id_raises_and_changes_nothing(self, store: JobPersistence) -> None:
        original = new_job("job-1", user="alice", metadata={"v": 1})
        store.save_job(original)
        store.save_checkpoint("job-1", "git_pull", {"sha": "abc"})
        before = snapshot(store)
        clash = new_job(
            "job-1", user="mallory", project="other", status=JobStatus.RUNNING, metadata={"v": 2}
        )
        with pytest.raises(DuplicateJobError) as caught:
            store.save_job(clash)
        assert caught.value.job_id == "job-1"
        assert store.load_job("job-1") == original
        assert snapshot(store) == before
        assert store.query_jobs(JobFilter(user_id="mallory")) == []
        assert store.count_jobs() == 1

    def test_ids_are_case_and_space_sensitive(self, store: JobPersistence) -> None:
        jobs = [new_job(job_id) for job_id in ("job", "Job", "JOB", "job ", " job")]
        for job in jobs:
            store.save_job(job)
        for job in jobs:
            assert store.load_job(job.id) == job
        assert store.count_jobs() == len(jobs)

    def test_update_progress_sets_progress_and_phase(self, store: JobPersistence) -> None:
        job = new_job("job-1", metadata={"k": "v"})
        store.save_job(job)
        assert store.update_job_progress("job-1", 40, "indexing") is True
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert (loaded.progress, loaded.phase) == (40, "indexing")
        assert (loaded.status, loaded.metadata, loaded.created_at) == (
            job.status,
            job.metadata,
            job.created_at,
        )

    def test_update_progress_without_phase_keeps_the_phase(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))
        store.update_job_progress("job-1", 10, "git_pull")
        assert store.update_job_progress("job-1", 100) is True
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert (loaded.progress, loaded.phase) == (100, "git_pull")
        assert store.update_job_progress("job-1", 0, "validation") is True
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert (loaded.progress, loaded.phase) == (0, "validation")

    def test_updates_of_a_missing_job_return_false_and_write_nothing(
        self, store: JobPersistence
    ) -> None:
        store.save_job(new_job("job-1"))
        before = snapshot(store)
        assert store.update_job_status("ghost", JobStatus.RUNNING) is False
        assert (
            store.update_job_status("ghost", JobStatus.RUNNING, expected=JobStatus.PENDING) is False
        )
        assert store.update_job_progress("ghost", 50, "indexing") is False
        assert store.save_checkpoint("ghost", "indexing", {"n": 1}) is False
        assert store.load_checkpoint("ghost", "indexing") is None
        assert store.list_checkpoints("ghost") == []
        assert store.load_job("ghost") is None
        assert snapshot(store) == before

    def test_close_is_idempotent_and_later_calls_raise(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))
        store.close()
        store.close()
        with pytest.raises(StorageUnavailableError):
            store.load_job("job-1")
        with pytest.raises(StorageUnavailableError):
            store.save_job(new_job("job-2"))

    def test_store_is_a_context_manager_that_closes(self, store: JobPersistence) -> None:
        with store as entered:
            assert entered is store
            entered.save_job(new_job("job-1"))
        with pytest.raises(StorageUnavailableError):
            store.query_jobs()
