"""Durability: what a store held is there again after close() and reopening."""

from __future__ import annotations

import pytest

from cidx_jobs import JobFilter, JobPersistence, JobStatus
from cidx_jobs.errors import DuplicateJobError

from ._base import Reopen, StoreFixtures, at, new_job, snapshot
from ._capabilities import requires


class PersistenceContract(StoreFixtures):
    """Backends declaring ``persistent`` keep everything across close and reopen."""

    @requires("persistent")
    def test_everything_survives_close_and_reopen(
        self, store: JobPersistence, reopen: Reopen
    ) -> None:
        for n in range(12):
            store.save_job(
                new_job(
                    f"job-{n:02d}",
                    user=("alice", "bob")[n % 2],
                    created_at=at(n // 3),
                    metadata={"n": n, "text": "é🚀\x00"},
                )
            )
        store.update_job_status("job-00", JobStatus.RUNNING)
        store.update_job_status("job-01", JobStatus.FAILED, error_message="disk full")
        store.update_job_progress("job-00", 45, "indexing")
        store.save_checkpoint("job-00", "git_pull", {"sha": "abc"})
        store.save_checkpoint("job-00", "indexing", {"files": [1, 2]})
        with store.transaction():
            store.save_job(new_job("in-block"))
        before = snapshot(store)
        page = store.query_page(JobFilter(user_id="alice", limit=2))
        store.close()

        reopened = reopen()
        assert snapshot(reopened) == before
        # cursors stay valid across a reopen: they only hold a position
        assert page.next_cursor is not None
        rest = reopened.query_jobs(JobFilter(user_id="alice", limit=2).next_page(page))
        assert [job.id for job in rest] == ["job-06", "job-04"]

    @requires("persistent")
    def test_a_reopened_store_keeps_working(self, store: JobPersistence, reopen: Reopen) -> None:
        store.save_job(new_job("job-1"))
        store.save_checkpoint("job-1", "git_pull", {"sha": "abc"})
        store.close()
        reopened = reopen()
        with pytest.raises(DuplicateJobError):
            reopened.save_job(new_job("job-1"))
        assert reopened.update_job_status("job-1", JobStatus.RUNNING, expected=JobStatus.PENDING)
        reopened.save_checkpoint("job-1", "git_pull", {"sha": "def"})
        reopened.save_job(new_job("job-2"))
        reopened.close()
        again = reopen()
        loaded = again.load_job("job-1")
        assert loaded is not None
        assert loaded.status is JobStatus.RUNNING
        assert again.load_checkpoint("job-1", "git_pull") == {"sha": "def"}
        assert again.count_jobs() == 2

    @requires("persistent")
    def test_a_rolled_back_block_is_not_there_after_reopen(
        self, store: JobPersistence, reopen: Reopen
    ) -> None:
        store.save_job(new_job("kept"))

        class Boom(Exception):
            pass

        with pytest.raises(Boom):
            with store.transaction():
                store.save_job(new_job("dropped"))
                store.update_job_status("kept", JobStatus.CANCELLED)
                raise Boom
        store.close()
        reopened = reopen()
        assert reopened.load_job("dropped") is None
        kept = reopened.load_job("kept")
        assert kept is not None
        assert kept.status is JobStatus.PENDING

    @requires("persistent", "multi_process")
    def test_a_second_handle_sees_committed_writes(
        self, store: JobPersistence, reopen: Reopen
    ) -> None:
        other = reopen()
        store.save_job(new_job("job-1"))
        assert other.load_job("job-1") == store.load_job("job-1")
        assert other.update_job_status("job-1", JobStatus.RUNNING, expected=JobStatus.PENDING)
        assert not store.update_job_status("job-1", JobStatus.RUNNING, expected=JobStatus.PENDING)
        other.save_checkpoint("job-1", "git_pull", {"from": "other"})
        assert store.load_checkpoint("job-1", "git_pull") == {"from": "other"}
