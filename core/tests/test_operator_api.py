"""What core added for operators: the optional operator methods of Storage (their defaults),
UnsupportedOperationError, and the two events metrics need (checkpoint skipped, recovery done)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from cidx_jobs import Hooks, JobStatus, SyncJob, get_plugin_manager, hookimpl, open_persistence
from cidx_jobs.backend import Storage
from cidx_jobs.errors import CidxJobsError, UnsupportedOperationError

pytest.importorskip("cidx_jobs_memory")


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("describe", ()),
        ("check_health", ()),
        ("server_time", ()),
        ("backup", ("copy.db",)),
        ("migrate", ()),
    ],
)
def test_the_defaults_say_the_backend_does_not_support_it(method: str, args: tuple[Any]) -> None:
    with open_persistence("memory://") as store:
        with pytest.raises(UnsupportedOperationError) as raised:
            getattr(store.storage, method)(*args)
    error = raised.value
    assert error.operation == method
    assert isinstance(error, CidxJobsError)
    assert isinstance(error, NotImplementedError)
    assert "MemoryStorage" in str(error)


def test_the_default_top_users_reads_every_page() -> None:
    with open_persistence("memory://") as store:
        for i in range(2500):  # more than two of the default's pages of 1000
            store.save_job(SyncJob.create(id=f"j{i}", user_id=f"u{i % 7}", project_id="p"))
        ranked = store.storage.top_users(3)
    assert ranked == [("u0", 358), ("u1", 357), ("u2", 357)]
    assert Storage.top_users is type(store.storage).top_users  # the memory backend's default


def test_the_default_oldest_active_reads_every_page() -> None:
    from cidx_jobs import utcnow

    now = utcnow()
    with open_persistence("memory://") as store:
        assert store.storage.oldest_active() is None
        for i in range(2500):  # more than two of the default's pages of 1000
            status = JobStatus.COMPLETED if i % 2 else JobStatus.PENDING
            store.save_job(
                SyncJob(
                    id=f"j{i:04d}",
                    user_id="u",
                    project_id="p",
                    status=status,
                    created_at=now - timedelta(seconds=i),
                    completed_at=now if i % 2 else None,
                )
            )
        oldest = store.storage.oldest_active()
    assert oldest is not None
    assert oldest.id == "j2498"  # j2499, older, is completed
    assert Storage.oldest_active is type(store.storage).oldest_active


def test_the_clock_check_of_doctor() -> None:
    from cidx_jobs import utcnow
    from cidx_jobs._cli._commands import _clock_check
    from cidx_jobs.backend import Health

    class Remote:
        def __init__(self, offset: float) -> None:
            self.offset = offset

        def server_time(self) -> Any:
            return utcnow() + timedelta(seconds=self.offset)

    class Store:
        def __init__(self, offset: float) -> None:
            self.storage = Remote(offset)

    timeout = timedelta(seconds=300)
    ok = _clock_check(Store(0.0), timeout)  # type: ignore[arg-type]
    assert ok.health is Health.OK
    assert abs(ok.data["offset_seconds"]) < 0.5
    warning = _clock_check(Store(5.0), timeout)  # type: ignore[arg-type]
    assert warning.health is Health.WARNING
    assert "ahead of" in warning.summary
    assert warning.advice is not None
    problem = _clock_check(Store(-60.0), timeout)  # type: ignore[arg-type]
    assert problem.health is Health.PROBLEM  # a tenth of the lease timeout or more
    assert "behind" in problem.summary
    with open_persistence("memory://") as store:
        embedded = _clock_check(store, timeout)
    assert embedded.health is Health.OK
    assert "this host's clock" in embedded.summary


class Recorder:
    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []
        self.recoveries: list[tuple[int, int]] = []

    @hookimpl
    def cidx_jobs_checkpoint_skipped(self, job_id: str, phase: str, skipped_at: Any) -> None:
        assert skipped_at.tzinfo is not None
        self.skipped.append((job_id, phase))

    @hookimpl
    def cidx_jobs_recovery_done(self, report: Any) -> None:
        self.recoveries.append((len(report.interrupted), len(report.requeue)))


class EverySecondCheckpoint:
    def __init__(self) -> None:
        self.calls = 0

    @hookimpl
    def cidx_jobs_checkpoint_policy(self) -> bool:
        self.calls += 1
        return self.calls % 2 == 1


def test_a_skipped_checkpoint_fires_its_event() -> None:
    recorder = Recorder()
    pm = get_plugin_manager()
    pm.register(recorder, name="recorder")
    pm.register(EverySecondCheckpoint(), name="throttle")
    with open_persistence("memory://", hooks=Hooks(pm)) as store:
        store.save_job(SyncJob.create(id="j", user_id="u", project_id="p"))
        assert store.save_checkpoint("j", "indexing", {"n": 1})  # written
        assert store.save_checkpoint("j", "indexing", {"n": 2})  # skipped
        assert not store.save_checkpoint("nope", "indexing", {"n": 3})  # unknown: no event
        with store.transaction():
            store.save_checkpoint("j", "indexing", {"n": 4})  # written
            store.save_checkpoint("j", "indexing", {"n": 5})  # skipped, told after the commit
            assert recorder.skipped == [("j", "indexing")]
    assert recorder.skipped == [("j", "indexing"), ("j", "indexing")]


def test_the_default_policy_fires_no_skip_event() -> None:
    recorder = Recorder()
    pm = get_plugin_manager()
    pm.register(recorder, name="recorder")
    with open_persistence("memory://", hooks=Hooks(pm)) as store:
        store.save_job(SyncJob.create(id="j", user_id="u", project_id="p"))
        for n in range(3):
            store.save_checkpoint("j", "indexing", {"n": n})
    assert recorder.skipped == []


def test_every_recovery_sweep_fires_its_event() -> None:
    recorder = Recorder()
    pm = get_plugin_manager()
    pm.register(recorder, name="recorder")
    with open_persistence("memory://", hooks=Hooks(pm)) as store:
        old = store.settings.clock() - timedelta(hours=1)
        for job_id, status in (("r", JobStatus.RUNNING), ("q", JobStatus.QUEUED)):
            store.save_job(
                SyncJob(
                    id=job_id,
                    user_id="u",
                    project_id="p",
                    status=status,
                    owner_id="dead:1:x",
                    heartbeat_at=old,
                )
            )
        store.recover_interrupted_jobs()
        store.recover_interrupted_jobs()  # nothing left: still reported
    assert recorder.recoveries == [(1, 1), (0, 0)]
