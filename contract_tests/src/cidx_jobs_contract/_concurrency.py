"""Many threads (and, where the backend allows it, processes) writing one store at once."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from cidx_jobs import ACTIVE_STATUSES, JobFilter, JobPersistence, JobStatus
from cidx_jobs.backend import StoreConfig
from cidx_jobs.errors import DuplicateJobError, StorageBusyError

from ._base import StoreFixtures, at, new_job, newest_first, snapshot
from ._capabilities import requires

_T = TypeVar("_T")
THREADS = 8
OPS = 50


def run_threads(count: int, work: Callable[[int], _T]) -> list[_T]:
    """Run ``work(0..count-1)`` on ``count`` threads released together; re-raise any error."""
    barrier = threading.Barrier(count, timeout=60)

    def start(index: int) -> _T:
        barrier.wait()
        return work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(start, index) for index in range(count)]
        return [future.result(timeout=300) for future in futures]


class _Rollback(Exception):
    """Raised inside a block to roll it back."""


_CHILD = r"""
import json, sys
from datetime import datetime
from cidx_jobs import SyncJob, open_persistence
from cidx_jobs.errors import DuplicateJobError

config, tag, shared, count, created = json.loads(sys.argv[1])
created = datetime.fromisoformat(created)
wins, saved_contended = [], False
with open_persistence(config) as store:
    for i in range(count):
        store.save_job(SyncJob(id=f"{tag}-{i}", user_id=tag, project_id="mp", created_at=created))
        store.update_job_progress(f"{tag}-{i}", i % 101, "indexing")
    for job_id in shared:
        if store.update_job_status(job_id, "running", expected="pending"):
            wins.append(job_id)
    try:
        store.save_job(SyncJob(id="contended", user_id=tag, project_id="mp", created_at=created))
        saved_contended = True
    except DuplicateJobError:
        pass
print(json.dumps({"wins": wins, "saved_contended": saved_contended}))
"""


def _jsonable(config: StoreConfig) -> Any:
    if isinstance(config, Mapping):
        return {
            str(key): value if isinstance(value, (int, float, bool)) else str(value)
            for key, value in config.items()
        }
    return config


class ConcurrencyContract(StoreFixtures):
    """Concurrent writers: no errors, last write wins, compare-and-set is exact."""

    @requires("concurrent_threads")
    def test_many_threads_save_distinct_jobs(self, store: JobPersistence) -> None:
        def work(thread: int) -> list[str]:
            saved = []
            for n in range(OPS // 2):
                job = new_job(f"t{thread}-{n:02d}", user=f"user-{thread % 3}", created_at=at(n))
                assert store.save_job(job) is True
                saved.append(job.id)
            return saved

        saved = [job_id for ids in run_threads(THREADS, work) for job_id in ids]
        assert store.count_jobs() == len(saved) == THREADS * (OPS // 2)
        found = store.query_jobs(JobFilter(limit=1000))
        assert sorted(job.id for job in found) == sorted(saved)
        assert found == newest_first(found)

    @requires("concurrent_threads")
    def test_threads_racing_to_save_one_id_have_exactly_one_winner(
        self, store: JobPersistence
    ) -> None:
        def work(thread: int) -> bool:
            try:
                return store.save_job(new_job("contended", user=f"user-{thread}"))
            except DuplicateJobError:
                return False

        results = run_threads(THREADS, work)
        assert results.count(True) == 1
        stored = store.load_job("contended")
        assert stored is not None
        assert stored.user_id == f"user-{results.index(True)}"
        assert store.count_jobs() == 1

    @requires("concurrent_threads")
    def test_compare_and_set_has_exactly_one_winner(self, store: JobPersistence) -> None:
        job_ids = [f"job-{n:02d}" for n in range(20)]
        for job_id in job_ids:
            store.save_job(new_job(job_id))

        def work(thread: int) -> list[str]:
            return [
                job_id
                for job_id in job_ids
                if store.update_job_status(job_id, JobStatus.RUNNING, expected=JobStatus.PENDING)
            ]

        wins = [job_id for won in run_threads(THREADS, work) for job_id in won]
        assert sorted(wins) == job_ids, "every job is won by exactly one thread"
        for job_id in job_ids:
            loaded = store.load_job(job_id)
            assert loaded is not None
            assert loaded.status is JobStatus.RUNNING

    @requires("concurrent_threads")
    def test_concurrent_cancel_and_complete_leave_one_terminal_status(
        self, store: JobPersistence
    ) -> None:
        job_ids = [f"job-{n:02d}" for n in range(20)]
        for job_id in job_ids:
            store.save_job(new_job(job_id, status=JobStatus.RUNNING))
        targets = [JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.RUNNING, JobStatus.QUEUED]

        def work(thread: int) -> None:
            for job_id in job_ids:
                store.update_job_status(job_id, targets[thread % len(targets)])

        run_threads(THREADS, work)
        for job_id in job_ids:
            loaded = store.load_job(job_id)
            assert loaded is not None
            # Every job got a terminal write; after the first, no late "running" or
            # "queued" may revive it, so it ends terminal whatever the interleaving.
            assert loaded.status in (JobStatus.COMPLETED, JobStatus.CANCELLED), loaded
            assert loaded.completed_at is not None

    @requires("concurrent_threads")
    def test_last_write_wins_and_each_write_is_whole(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1", status=JobStatus.RUNNING))
        active = sorted(ACTIVE_STATUSES)

        def work(thread: int) -> tuple[tuple[int, str], tuple[JobStatus, str]]:
            progress = (0, "")
            status = (JobStatus.PENDING, "")
            for n in range(OPS):
                progress = ((thread * OPS + n) % 101, f"phase-{thread}-{n}")
                assert store.update_job_progress("job-1", *progress) is True
                status = (active[(thread + n) % 3], f"message-{thread}-{n}")
                assert store.update_job_status("job-1", status[0], error_message=status[1])
            return progress, status

        lasts = run_threads(THREADS, work)
        final = store.load_job("job-1")
        assert final is not None
        assert (final.progress, final.phase) in [progress for progress, _ in lasts]
        assert (final.status, final.error_message) in [status for _, status in lasts]

    @requires("concurrent_threads")
    def test_concurrent_checkpoints_of_one_phase_leave_one(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))

        def work(thread: int) -> dict[str, int]:
            data = {}
            for n in range(OPS // 2):
                data = {"thread": thread, "n": n}
                assert store.save_checkpoint("job-1", "indexing", data) is True
            return data

        lasts = run_threads(THREADS, work)
        listed = store.list_checkpoints("job-1")
        assert len(listed) == 1
        assert listed[0].data in lasts
        assert store.load_checkpoint("job-1", "indexing") == listed[0].data

    @requires("concurrent_threads")
    def test_readers_see_consistent_results_while_writers_write(
        self, store: JobPersistence
    ) -> None:
        def work(thread: int) -> None:
            user = f"user-{thread % 2}"
            for n in range(OPS // 2):
                if thread < THREADS // 2:
                    store.save_job(new_job(f"t{thread}-{n:02d}", user=user, created_at=at(n)))
                    store.update_job_status(f"t{thread}-{n:02d}", JobStatus.RUNNING)
                else:
                    found = store.query_jobs(JobFilter(user_id=user, limit=20))
                    assert all(job.user_id == user for job in found)
                    assert found == newest_first(found)
                    assert store.count_jobs(JobFilter(user_id=user)) >= len(found)

        run_threads(THREADS, work)
        assert store.count_jobs() == (THREADS // 2) * (OPS // 2)

    @requires("concurrent_threads")
    def test_concurrent_transactions_commit_or_roll_back_whole(self, store: JobPersistence) -> None:
        def work(thread: int) -> list[str]:
            committed = []
            for n in range(10):
                first, second = f"t{thread}-{n}-a", f"t{thread}-{n}-b"
                try:
                    with store.transaction():
                        store.save_job(new_job(first, user=f"user-{thread}"))
                        store.save_checkpoint(first, "git_pull", {"n": n})
                        store.save_job(new_job(second, user=f"user-{thread}"))
                        if n % 2:
                            raise _Rollback
                    committed += [first, second]
                except _Rollback:
                    pass
            return committed

        committed = sorted(job_id for ids in run_threads(THREADS, work) for job_id in ids)
        stored = sorted(job.id for job in store.query_jobs(JobFilter(limit=1000)))
        assert stored == committed
        assert len(committed) == THREADS * 10
        for job_id in committed:
            if job_id.endswith("-a"):
                assert store.load_checkpoint(job_id, "git_pull") is not None

    @requires("concurrent_threads")
    def test_uncommitted_writes_are_invisible_to_other_threads(self, store: JobPersistence) -> None:
        """No other thread sees a block's writes before it commits (nor ever, once it rolls back).

        A reader may wait until the block ends (a lock); it then sees the rolled-back state.
        """
        store.save_job(new_job("existing", progress=5, phase="git_pull"))
        store.save_checkpoint("existing", "git_pull", {"sha": "before"})
        before = snapshot(store)
        written = threading.Event()
        read = threading.Event()

        def writer() -> None:
            try:
                with store.transaction():
                    store.save_job(new_job("uncommitted", user="bob"))
                    store.update_job_progress("existing", 80, "indexing")
                    store.update_job_status("existing", JobStatus.RUNNING)
                    store.save_checkpoint("existing", "git_pull", {"sha": "uncommitted"})
                    written.set()
                    # The reader reads now, while the block is open; a reader that waits
                    # for the block (a lock) cannot finish, so the block ends after a while.
                    read.wait(timeout=0.5)
                    raise _Rollback
            except _Rollback:
                pass
            finally:
                written.set()

        def reader() -> dict[str, Any]:
            assert written.wait(timeout=60)
            try:
                return _read_everything()
            finally:
                read.set()

        def _read_everything() -> dict[str, Any]:
            existing = store.load_job("existing")
            assert existing is not None
            return {
                "load_job": store.load_job("uncommitted"),
                "progress": (existing.progress, existing.phase, existing.status),
                "query_jobs": [job.id for job in store.query_jobs(JobFilter(limit=1000))],
                "count_jobs": store.count_jobs(),
                "count_jobs of bob": store.count_jobs(JobFilter(user_id="bob")),
                "running": store.count_jobs(JobFilter(statuses={JobStatus.RUNNING})),
                "load_checkpoint": store.load_checkpoint("existing", "git_pull"),
            }

        _, seen = run_threads(2, lambda index: writer() if index == 0 else reader())
        assert seen == {
            "load_job": None,
            "progress": (5, "git_pull", JobStatus.PENDING),
            "query_jobs": ["existing"],
            "count_jobs": 1,
            "count_jobs of bob": 0,
            "running": 0,
            "load_checkpoint": {"sha": "before"},
        }, "another thread saw writes of a block that had not committed"
        assert snapshot(store) == before

    @requires("concurrent_threads")
    def test_read_modify_write_blocks_lose_no_update(self, store: JobPersistence) -> None:
        """Blocks on several threads that read a value and write it back run as if one by one.

        A block that fails with StorageBusyError (a deadlock victim, a serialization
        failure) committed nothing, so it is retried, as a caller would.
        """
        store.save_job(new_job("counter"))
        threads, rounds = 4, 10

        def work(thread: int) -> int:
            retries = 0
            for _ in range(rounds):
                while True:
                    try:
                        with store.transaction():
                            job = store.load_job("counter")
                            assert job is not None
                            # Widens the window in which another block could interleave.
                            time.sleep(0.001)
                            assert store.update_job_progress("counter", job.progress + 1)
                        break
                    except StorageBusyError:
                        retries += 1
                        assert retries < 1000, "a block was refused as busy 1000 times"
            return retries

        run_threads(threads, work)
        counter = store.load_job("counter")
        assert counter is not None
        assert counter.progress == threads * rounds, (
            f"{threads} threads x {rounds} increments in blocks gave {counter.progress}: "
            "blocks interleaved and updates were lost"
        )

    @requires("multi_process")
    def test_processes_share_the_storage(
        self, store: JobPersistence, store_config: StoreConfig
    ) -> None:
        shared = [f"shared-{n:02d}" for n in range(30)]
        for job_id in shared:
            store.save_job(new_job(job_id))
        count = 30
        children = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _CHILD,
                    json.dumps(
                        [_jsonable(store_config), f"proc{n}", shared, count, at(0).isoformat()]
                    ),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(3)
        ]
        results = []
        for child in children:
            out, err = child.communicate(timeout=300)
            assert child.returncode == 0, f"a writer process failed:\n{err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
        wins = sorted(job_id for result in results for job_id in result["wins"])
        assert wins == shared, "each shared job is won by exactly one process"
        assert [result["saved_contended"] for result in results].count(True) == 1
        assert store.count_jobs() == len(shared) + 3 * count + 1
        for n in range(3):
            assert store.count_jobs(JobFilter(user_id=f"proc{n}")) == count + (
                1 if results[n]["saved_contended"] else 0
            )
        assert store.count_jobs(JobFilter(statuses={JobStatus.RUNNING})) == len(shared)
