"""The resume policy hook and JobPersistence.resume_point()."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from cidx_jobs import (
    Checkpoint,
    Hooks,
    StoreSettings,
    SyncJob,
    get_plugin_manager,
    hookimpl,
    open_persistence,
)
from cidx_jobs.errors import JobNotFoundError, PluginError

pytest.importorskip("cidx_jobs_memory")


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def open_store(clock: Clock, hooks: Hooks | None = None):  # type: ignore[no-untyped-def]
    store = open_persistence(
        "memory://?checkpoint_max_age_hours=2", settings=StoreSettings(clock=clock), hooks=hooks
    )
    store.save_job(SyncJob(id="j", user_id="u", project_id="p", created_at=clock.now))
    return store


def test_newest_fresh_checkpoint_is_chosen() -> None:
    clock = Clock()
    with open_store(clock) as store:
        assert store.resume_point("j") is None  # no checkpoint: start over
        store.save_checkpoint("j", "git_pull", {"sha": "a"})
        clock.now += timedelta(minutes=30)
        store.save_checkpoint("j", "indexing", {"files": 10})
        point = store.resume_point("j")
        assert point is not None
        assert (point.phase, point.data) == ("indexing", {"files": 10})
        clock.now += timedelta(hours=2, seconds=1)  # older than checkpoint_max_age_hours=2
        assert store.resume_point("j") is None


def test_unknown_job() -> None:
    with open_store(Clock()) as store, pytest.raises(JobNotFoundError):
        store.resume_point("nope")


def test_a_plugin_chooses_the_checkpoint() -> None:
    pm = get_plugin_manager()

    class FirstPhase:
        @hookimpl
        def cidx_jobs_resume_policy(self, checkpoints):  # type: ignore[no-untyped-def]
            return checkpoints[0] if checkpoints else None

    pm.register(FirstPhase(), name="first-phase")
    clock = Clock()
    with open_store(clock, Hooks(pm)) as store:
        store.save_checkpoint("j", "git_pull", {})
        clock.now += timedelta(seconds=1)
        store.save_checkpoint("j", "indexing", {})
        point = store.resume_point("j")
        assert point is not None
        assert point.phase == "git_pull"


def test_a_plugin_returning_garbage_is_a_plugin_error() -> None:
    pm = get_plugin_manager()

    class Garbage:
        @hookimpl
        def cidx_jobs_resume_policy(self):  # type: ignore[no-untyped-def]
            return Checkpoint(job_id="other", phase="x", data={})

    pm.register(Garbage(), name="garbage")
    with (
        open_store(Clock(), Hooks(pm)) as store,
        pytest.raises(PluginError, match="returned"),
    ):
        store.resume_point("j")
