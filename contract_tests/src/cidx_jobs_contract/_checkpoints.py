"""Per-phase checkpoints: one per phase, replaced on save, listed oldest first."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cidx_jobs import Checkpoint, JobPersistence
from cidx_jobs.errors import JobNotFoundError, ValidationError

from ._base import ManualClock, StoreFixtures, is_utc, new_job, same_json, snapshot


class CheckpointContract(StoreFixtures):
    """``save_checkpoint``, ``load_checkpoint`` and ``list_checkpoints``."""

    def test_save_then_load_a_checkpoint(self, store: JobPersistence, clock: ManualClock) -> None:
        store.save_job(new_job("job-1"))
        data = {"sha": "4f2a", "files": [1, 2], "ratio": 0.5, "done": False, "none": None}
        assert store.save_checkpoint("job-1", "git_pull", data) is True
        loaded = store.load_checkpoint("job-1", "git_pull")
        assert loaded is not None
        assert same_json(loaded, data)
        assert store.list_checkpoints("job-1") == [
            Checkpoint(job_id="job-1", phase="git_pull", data=data, created_at=clock.now)
        ]

    def test_saving_a_phase_again_replaces_its_checkpoint(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        store.save_job(new_job("job-1"))
        store.save_checkpoint("job-1", "indexing", {"files_done": 100})
        clock.advance()
        store.save_checkpoint("job-1", "git_pull", {"sha": "abc"})
        clock.advance()
        assert store.save_checkpoint("job-1", "indexing", {"files_done": 250, "extra": [1]}) is True
        assert store.load_checkpoint("job-1", "indexing") == {"files_done": 250, "extra": [1]}
        assert store.load_checkpoint("job-1", "git_pull") == {"sha": "abc"}
        listed = store.list_checkpoints("job-1")
        assert [(c.phase, c.data) for c in listed] == [
            ("git_pull", {"sha": "abc"}),
            ("indexing", {"files_done": 250, "extra": [1]}),
        ]
        assert listed[1].created_at == clock.now

    def test_an_empty_checkpoint_replaces_a_full_one(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))
        store.save_checkpoint("job-1", "indexing", {"files_done": 100})
        store.save_checkpoint("job-1", "indexing", {})
        assert store.load_checkpoint("job-1", "indexing") == {}
        assert len(store.list_checkpoints("job-1")) == 1

    def test_list_is_oldest_first_then_by_phase(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        store.save_job(new_job("job-1"))
        first = clock.now
        store.save_checkpoint("job-1", "validation", {"n": 1})
        second = clock.advance(timedelta(seconds=5))
        # two checkpoints at the same instant are ordered by phase
        store.save_checkpoint("job-1", "indexing", {"n": 2})
        store.save_checkpoint("job-1", "git_pull", {"n": 3})
        listed = store.list_checkpoints("job-1")
        assert [(c.phase, c.created_at) for c in listed] == [
            ("validation", first),
            ("git_pull", second),
            ("indexing", second),
        ]
        third = clock.advance(timedelta(seconds=5))
        store.save_checkpoint("job-1", "validation", {"n": 4})
        listed = store.list_checkpoints("job-1")
        assert [(c.phase, c.created_at, c.data) for c in listed] == [
            ("git_pull", second, {"n": 3}),
            ("indexing", second, {"n": 2}),
            ("validation", third, {"n": 4}),
        ]
        assert all(is_utc(c.created_at) and c.job_id == "job-1" for c in listed)

    def test_checkpoints_belong_to_their_job(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))
        store.save_job(new_job("job-2"))
        store.save_checkpoint("job-1", "indexing", {"of": 1})
        store.save_checkpoint("job-2", "indexing", {"of": 2})
        store.save_checkpoint("job-2", "git_pull", {"of": 2})
        assert store.load_checkpoint("job-1", "indexing") == {"of": 1}
        assert store.load_checkpoint("job-2", "indexing") == {"of": 2}
        assert store.load_checkpoint("job-1", "git_pull") is None
        assert [c.phase for c in store.list_checkpoints("job-1")] == ["indexing"]
        assert len(store.list_checkpoints("job-2")) == 2

    def test_unknown_phase_or_job_has_no_checkpoint(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))
        assert store.load_checkpoint("job-1", "indexing") is None
        assert store.list_checkpoints("job-1") == []
        store.save_checkpoint("job-1", "indexing", {"n": 1})
        assert store.load_checkpoint("job-1", "Indexing") is None
        assert store.load_checkpoint("job-2", "indexing") is None

    def test_a_checkpoint_does_not_change_its_job(self, store: JobPersistence) -> None:
        job = new_job("job-1", progress=30, phase="git_pull")
        store.save_job(job)
        store.save_checkpoint("job-1", "indexing", {"n": 1})
        assert store.load_job("job-1") == job

    def test_resume_point_is_the_newest_checkpoint_while_fresh(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        store.save_job(new_job("job-1"))
        assert store.resume_point("job-1") is None
        store.save_checkpoint("job-1", "indexing", {"files": 10})
        clock.advance(timedelta(minutes=5))
        store.save_checkpoint("job-1", "git_pull", {"sha": "abc"})
        point = store.resume_point("job-1")
        assert point is not None
        assert (point.phase, point.data, point.created_at) == (
            "git_pull",
            {"sha": "abc"},
            clock.now,
        )
        clock.advance(store.settings.checkpoint_max_age + timedelta(seconds=1))
        assert store.resume_point("job-1") is None
        with pytest.raises(JobNotFoundError):
            store.resume_point("ghost")

    def test_invalid_checkpoints_are_rejected_before_any_write(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))
        store.save_checkpoint("job-1", "indexing", {"n": 1})
        before = snapshot(store)
        limit = store.settings.max_metadata_bytes
        bad_calls: list[tuple[str, str, object]] = [
            ("job-1", "indexing", ["not", "a", "dict"]),
            ("job-1", "indexing", None),
            ("job-1", "indexing", {"when": object()}),
            ("job-1", "indexing", {"nan": float("nan")}),
            ("job-1", "indexing", {1: "int key"}),
            ("job-1", "indexing", {"set": {1, 2}}),
            ("job-1", "indexing", {"big": "x" * limit}),
            ("job-1", "", {"n": 2}),
            ("", "indexing", {"n": 2}),
        ]
        for job_id, phase, data in bad_calls:
            with pytest.raises(ValidationError):
                store.save_checkpoint(job_id, phase, data)  # type: ignore[arg-type]
        assert snapshot(store) == before
