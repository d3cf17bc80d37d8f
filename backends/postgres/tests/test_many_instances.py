"""Several instances (stores with their own pools and owners) on one database at once:
recovery takes each stale job exactly once, and cleanups delete each expired job once."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import TypeVar

from cidx_jobs import JobPersistence, JobStatus, StoreSettings, SyncJob, open_persistence

UTC = timezone.utc
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
INSTANCES = 4
_T = TypeVar("_T")


def _at_once(stores: list[JobPersistence], work: Callable[[JobPersistence], _T]) -> list[_T]:
    barrier = threading.Barrier(len(stores), timeout=30)
    results: list[_T] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(store: JobPersistence) -> None:
        barrier.wait()
        try:
            result = work(store)
        except BaseException as error:
            errors.append(error)
            return
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    return results


def _instances(url: str) -> list[JobPersistence]:
    return [
        open_persistence(url, settings=StoreSettings(owner_id=f"host-{n}:1:x"))
        for n in range(INSTANCES)
    ]


def test_concurrent_recoveries_take_each_stale_job_exactly_once(schema_url: str) -> None:
    stores = _instances(schema_url)
    try:
        stale = [
            SyncJob(
                id=f"job-{n:03d}",
                user_id="alice",
                project_id="repo",
                status=JobStatus.RUNNING if n % 3 else JobStatus.PENDING,
                created_at=LONG_AGO,
                owner_id="dead:1:x",
                heartbeat_at=LONG_AGO,
            )
            for n in range(150)
        ]
        for job in stale:
            stores[0].save_job(job)
        reports = _at_once(stores, lambda store: store.recover_interrupted_jobs())
        taken = [point.job.id for report in reports for point in report.interrupted]
        taken += [job.id for report in reports for job in report.requeue]
        assert sorted(taken) == [job.id for job in stale], "each job is taken exactly once"
        owners = {store.owner_id for store in stores}
        for job in stale:
            loaded = stores[0].load_job(job.id)
            assert loaded is not None
            assert loaded.owner_id in owners
    finally:
        for store in stores:
            store.close()


def test_concurrent_cleanups_delete_each_expired_job_once(schema_url: str) -> None:
    stores = _instances(schema_url)
    try:
        for n in range(300):
            done = LONG_AGO - timedelta(minutes=n + 1)
            stores[0].save_job(
                SyncJob(
                    id=f"old-{n:03d}",
                    user_id="alice",
                    project_id="repo",
                    status=JobStatus.COMPLETED,
                    created_at=done,
                    completed_at=done,
                )
            )
            if n % 2:
                stores[0].save_checkpoint(f"old-{n:03d}", "indexing", {"n": n})
        stores[0].save_job(SyncJob(id="fresh", user_id="alice", project_id="repo"))
        deleted = _at_once(stores, lambda store: store.delete_expired_jobs(LONG_AGO))
        assert sum(deleted) == 300
        assert stores[0].count_jobs() == 1
        assert stores[0].list_checkpoints("old-001") == []
    finally:
        for store in stores:
            store.close()
