"""transaction(): every call of a block commits together or, on an exception, not at all."""

from __future__ import annotations

import pytest

from cidx_jobs import JobFilter, JobPersistence, JobStatus
from cidx_jobs.errors import DuplicateJobError

from ._base import StoreFixtures, at, new_job, snapshot


class _Boom(Exception):
    """Raised inside a block to roll it back."""


def _existing(store: JobPersistence) -> None:
    store.save_job(new_job("old", status=JobStatus.PENDING, progress=5, phase="git_pull"))
    store.save_checkpoint("old", "git_pull", {"sha": "before"})
    store.save_job(new_job("expired", status=JobStatus.COMPLETED, completed_at=at(-1000)))
    store.save_checkpoint("expired", "indexing", {"files": 1})


class TransactionContract(StoreFixtures):
    """Commit and rollback of every kind of write, and reads inside a block."""

    def test_a_block_commits_every_call(self, store: JobPersistence) -> None:
        _existing(store)
        with store.transaction():
            store.save_job(new_job("new-1"))
            store.save_job(new_job("new-2", user="bob"))
            store.update_job_status("old", JobStatus.RUNNING)
            store.update_job_progress("old", 60, "indexing")
            store.save_checkpoint("old", "git_pull", {"sha": "after"})
            store.save_checkpoint("new-1", "git_pull", {"sha": "new"})
            assert store.delete_expired_jobs(at(0)) == 1
        old = store.load_job("old")
        assert old is not None
        assert (old.status, old.progress, old.phase) == (JobStatus.RUNNING, 60, "indexing")
        assert store.load_checkpoint("old", "git_pull") == {"sha": "after"}
        assert store.load_checkpoint("new-1", "git_pull") == {"sha": "new"}
        assert store.load_job("expired") is None
        assert store.count_jobs() == 3

    def test_an_exception_rolls_back_every_call_and_propagates(self, store: JobPersistence) -> None:
        _existing(store)
        before = snapshot(store)
        with pytest.raises(_Boom):
            with store.transaction():
                store.save_job(new_job("new-1"))
                store.save_checkpoint("new-1", "git_pull", {"sha": "new"})
                store.update_job_status("old", JobStatus.RUNNING, error_message="oops")
                store.update_job_progress("old", 60, "indexing")
                store.save_checkpoint("old", "git_pull", {"sha": "after"})
                store.save_checkpoint("old", "indexing", {"files": 9})
                assert store.delete_expired_jobs(at(0)) == 1
                raise _Boom
        assert snapshot(store) == before
        assert store.load_job("new-1") is None
        assert store.list_checkpoints("new-1") == []
        assert store.load_checkpoint("old", "git_pull") == {"sha": "before"}
        assert store.load_checkpoint("expired", "indexing") == {"files": 1}

    def test_reads_inside_a_block_see_its_writes(self, store: JobPersistence) -> None:
        _existing(store)
        with pytest.raises(_Boom):
            with store.transaction():
                store.save_job(new_job("new-1", user="bob"))
                store.update_job_status("old", JobStatus.QUEUED)
                store.save_checkpoint("old", "git_pull", {"sha": "inside"})
                assert store.load_job("new-1") is not None
                assert store.count_jobs(JobFilter(user_id="bob")) == 1
                assert [j.id for j in store.query_jobs(JobFilter(statuses={JobStatus.QUEUED}))] == [
                    "old"
                ]
                assert store.load_checkpoint("old", "git_pull") == {"sha": "inside"}
                raise _Boom
        assert store.count_jobs(JobFilter(user_id="bob")) == 0

    def test_a_duplicate_inside_a_block_rolls_back_the_block(self, store: JobPersistence) -> None:
        _existing(store)
        before = snapshot(store)
        with pytest.raises(DuplicateJobError):
            with store.transaction():
                store.save_job(new_job("new-1"))
                store.update_job_progress("old", 99)
                store.save_job(new_job("old"))
        assert snapshot(store) == before

    def test_a_caught_error_inside_a_block_does_not_roll_it_back(
        self, store: JobPersistence
    ) -> None:
        _existing(store)
        with store.transaction():
            store.save_job(new_job("new-1"))
            with pytest.raises(DuplicateJobError):
                store.save_job(new_job("old", user="mallory"))
            store.save_job(new_job("new-2"))
        assert store.load_job("new-1") is not None
        assert store.load_job("new-2") is not None
        old = store.load_job("old")
        assert old is not None
        assert old.user_id == "alice"

    def test_nested_blocks_join_the_outermost(self, store: JobPersistence) -> None:
        _existing(store)
        before = snapshot(store)
        with pytest.raises(_Boom):
            with store.transaction():
                store.save_job(new_job("outer"))
                with store.transaction():
                    store.save_job(new_job("inner"))
                raise _Boom
        assert snapshot(store) == before
        with store.transaction():
            store.save_job(new_job("outer"))
            with store.transaction():
                store.save_job(new_job("inner"))
        assert store.load_job("outer") is not None
        assert store.load_job("inner") is not None

    def test_the_store_works_normally_after_a_rollback(self, store: JobPersistence) -> None:
        _existing(store)
        for attempt in range(3):
            with pytest.raises(_Boom):
                with store.transaction():
                    store.save_job(new_job(f"try-{attempt}"))
                    raise _Boom
        store.save_job(new_job("after"))
        with store.transaction():
            store.update_job_status("after", JobStatus.RUNNING)
        assert store.count_jobs() == 3
        after = store.load_job("after")
        assert after is not None
        assert after.status is JobStatus.RUNNING

    def test_an_empty_block_commits_nothing(self, store: JobPersistence) -> None:
        _existing(store)
        before = snapshot(store)
        with store.transaction():
            pass
        with pytest.raises(_Boom):
            with store.transaction():
                raise _Boom
        assert snapshot(store) == before
