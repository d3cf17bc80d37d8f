"""Every query shape and the batched cleanup, checked against the memory backend."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from cidx_jobs import (
    FINISHED_STATUSES,
    CleanupPolicy,
    Hooks,
    JobFilter,
    JobPersistence,
    JobStatus,
    SyncJob,
    get_plugin_manager,
    hookimpl,
    open_persistence,
)
from cidx_jobs.errors import StorageUnavailableError
from cidx_jobs_sqlite import _storage
from cidx_jobs_sqlite._storage import next_batch_size

from .conftest import OpenStore, make_job, minutes, open_sqlite, raw_connect, storage_of

STATUSES = list(JobStatus)


def random_jobs(rng: random.Random, count: int) -> list[SyncJob]:
    jobs = []
    for n in range(count):
        status = rng.choice(STATUSES)
        # Few distinct instants, so that many jobs tie on created_at and the id decides.
        created = minutes(rng.randrange(12))
        jobs.append(
            make_job(
                f"job-{rng.randrange(10**6):06d}-{n}",
                user=rng.choice(["alice", "bob", "carol"]),
                project=rng.choice(["repo-a", "repo-b"]),
                status=status,
                created_at=created,
                completed_at=created + timedelta(minutes=5) if status.is_terminal else None,
            )
        )
    return jobs


def pages(store: JobPersistence, filter: JobFilter) -> list[list[str]]:
    result = []
    page_filter = filter
    while True:
        page = store.query_page(page_filter)
        result.append([job.id for job in page.jobs])
        if page.next_cursor is None:
            return result
        page_filter = page_filter.next_page(page)


def test_every_filter_shape_matches_the_memory_backend(open_store: OpenStore) -> None:
    rng = random.Random(3)
    jobs = random_jobs(rng, 160)
    sqlite = open_store()
    with open_persistence("memory://") as memory:
        for job in jobs:
            sqlite.save_job(job)
            memory.save_job(job)
        status_sets: list[frozenset[JobStatus] | None] = [None, frozenset()]
        status_sets += [frozenset(rng.sample(STATUSES, k)) for k in (1, 1, 2, 3, 6, 7)]
        checked = 0
        for user, project, statuses, after, before in itertools.product(
            [None, "alice"],
            [None, "repo-b"],
            status_sets,
            [None, minutes(3)],
            [None, minutes(9)],
        ):
            base = JobFilter(
                user_id=user,
                project_id=project,
                statuses=statuses,
                created_after=after,
                created_before=before,
                limit=7,
            )
            assert sqlite.count_jobs(base) == memory.count_jobs(base)
            assert pages(sqlite, base) == pages(memory, base)
            for offset in (0, 3, 20):
                with_offset = attrs.evolve(base, offset=offset)
                assert [j.id for j in sqlite.query_jobs(with_offset)] == [
                    j.id for j in memory.query_jobs(with_offset)
                ]
            checked += 1
        assert checked == 2 * 2 * len(status_sets) * 2 * 2


class SmallBatches:
    """A cleanup policy plugin: everything finished expires after a day, 3 jobs a batch."""

    @hookimpl
    def cidx_jobs_cleanup_policy(self, retention: timedelta) -> CleanupPolicy:
        return CleanupPolicy(
            retention={
                JobStatus.COMPLETED: timedelta(days=1),
                JobStatus.FAILED: timedelta(days=3),
                JobStatus.CANCELLED: timedelta(days=1),
            },
            batch_size=3,
        )


def test_cleanup_runs_in_batches_with_per_status_cutoffs(db_path: Path) -> None:
    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(SmallBatches())
    store = open_sqlite(db_path, hooks=Hooks(pm))
    try:
        old = minutes(0)
        expired, kept = [], []
        for n in range(10):
            expired.append(make_job(f"c{n}", status=JobStatus.COMPLETED, completed_at=old))
        expired.append(make_job("f-old", status=JobStatus.FAILED, completed_at=old))
        kept.append(
            make_job("f-young", status=JobStatus.FAILED, completed_at=old + timedelta(days=2))
        )
        kept.append(make_job("i-old", status=JobStatus.INTERRUPTED))  # not in the policy
        kept.append(make_job("r-old", status=JobStatus.RUNNING))  # active: never
        for job in expired + kept:
            store.save_job(job)
            store.save_checkpoint(job.id, "a", {})
            store.save_checkpoint(job.id, "b", {})
        now = old + timedelta(days=4)
        dry = store.run_cleanup(now, dry_run=True)
        assert (dry.jobs_deleted, dry.checkpoints_deleted) == (11, 22)
        assert store.count_jobs() == 14
        report = store.run_cleanup(now)
        assert (report.jobs_deleted, report.checkpoints_deleted) == (11, 22)
        assert sorted(j.id for j in store.query_jobs()) == sorted(j.id for j in kept)
        with raw_connect(db_path) as conn:
            orphans = conn.execute(
                "SELECT count(*) FROM job_checkpoints WHERE job_id NOT IN (SELECT id FROM sync_jobs)"
            ).fetchone()[0]
        conn.close()
        assert orphans == 0
        assert store.run_cleanup(now).jobs_deleted == 0
    finally:
        store.close()


def test_a_cleanup_inside_a_transaction_rolls_back_with_it(store: JobPersistence) -> None:
    for n in range(5):
        store.save_job(make_job(f"j{n}", status=JobStatus.COMPLETED, completed_at=minutes(0)))
    with pytest.raises(RuntimeError), store.transaction():
        assert store.delete_expired_jobs(minutes(10)) == 5
        assert store.count_jobs() == 0
        raise RuntimeError
    assert store.count_jobs() == 5


def test_delete_expired_counts_every_finished_status(store: JobPersistence) -> None:
    for status in JobStatus:
        store.save_job(make_job(status.value, status=status))
    assert store.delete_expired_jobs(minutes(1)) == len(FINISHED_STATUSES)
    assert {job.status for job in store.query_jobs()} == {
        JobStatus.PENDING,
        JobStatus.QUEUED,
        JobStatus.RUNNING,
    }


# -- batches that adapt to their timing, and the WAL checkpoint after each ------------------


def test_the_next_batch_scales_toward_the_target_time_within_bounds() -> None:
    target = _storage.BATCH_SECONDS
    assert next_batch_size(100, target, 1000) == 100  # on target: unchanged
    assert next_batch_size(100, target / 1.5, 1000) == 150  # a bit fast: grows to fit
    assert next_batch_size(100, target / 10, 1000) == 200  # much faster: at most doubles
    assert next_batch_size(100, target / 10, 120) == 120  # never past the policy's batch_size
    assert next_batch_size(100, target * 1.25, 1000) == 80  # a bit slow: shrinks to fit
    assert next_batch_size(100, target * 10, 1000) == 50  # much slower: at most halves
    assert next_batch_size(1, 10.0, 1000) == 1  # never below one job
    assert next_batch_size(100, 0.0, 1000) == 200  # an instant batch does not divide by zero


def _save_expired(store: JobPersistence, count: int, *, checkpoints: bool = False) -> None:
    """``count`` failed jobs, finished long ago, saved in one transaction."""
    with store.transaction():
        for n in range(count):
            store.save_job(make_job(f"j{n:04d}", status=JobStatus.FAILED, completed_at=minutes(0)))
            if checkpoints:
                store.save_checkpoint(f"j{n:04d}", "a", {"n": n})


def _record_statements(
    store: JobPersistence, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[str, list[object]]]:
    seen: list[tuple[str, list[object]]] = []
    storage = storage_of(store)
    run = storage._run

    def recording(mode: int, sql: str, params: Any, doing: str) -> Any:
        seen.append((sql, list(params)))
        return run(mode, sql, params, doing)

    monkeypatch.setattr(storage, "_run", recording)
    return seen


def test_a_cleanup_checkpoints_the_wal_after_each_full_batch(
    store: JobPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the checkpoint, the next small write after a batch copies the batch's pages
    # into the database itself, and waits that long (the benchmark's writer stall).
    count = _storage.FIRST_BATCH * 3 + 7
    _save_expired(store, count, checkpoints=True)
    seen = _record_statements(store, monkeypatch)
    assert store.delete_expired_jobs(minutes(10)) == count
    assert store.count_jobs() == 0
    batches = [params[-1] for sql, params in seen if sql.startswith("DELETE")]
    assert batches[0] == _storage.FIRST_BATCH
    assert all(1 <= size <= 1000 for size in batches)
    assert len(batches) >= 3
    kinds = [
        "checkpoint" if "wal_checkpoint" in sql else "delete"
        for sql, _ in seen
        if sql.startswith("DELETE") or "wal_checkpoint" in sql
    ]
    # Every full batch is followed by a checkpoint; the short one that deletes what is
    # left is not, and the facade's last call (which finds nothing) ends the cleanup.
    assert kinds == ["delete", "checkpoint"] * (len(batches) - 2) + ["delete", "delete"]


def test_the_batches_of_one_cleanup_adapt_and_the_next_cleanup_starts_afresh(
    store: JobPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = _storage.FIRST_BATCH * 2
    _save_expired(store, count)
    monkeypatch.setattr(_storage, "BATCH_SECONDS", 10.0)  # every batch is fast: it doubles
    seen = _record_statements(store, monkeypatch)
    assert store.delete_expired_jobs(minutes(10)) == count
    first = [params[-1] for sql, params in seen if sql.startswith("DELETE")]
    # 250 (full, so the next doubles), 500 (the 250 left), then the facade's last call,
    # which finds nothing and, the cleanup being over, starts from the first size again.
    assert first == [_storage.FIRST_BATCH, _storage.FIRST_BATCH * 2, _storage.FIRST_BATCH]
    seen.clear()
    _save_expired(store, 3)
    assert store.delete_expired_jobs(minutes(10)) == 3
    again = [params[-1] for sql, params in seen if sql.startswith("DELETE")]
    assert again == [_storage.FIRST_BATCH, _storage.FIRST_BATCH]  # 3 deleted, then none


def test_a_batch_never_exceeds_the_limit_it_is_given(store: JobPersistence) -> None:
    _save_expired(store, 10)
    storage = storage_of(store)
    cutoffs = dict.fromkeys(FINISHED_STATUSES, minutes(10))
    assert storage.count_expired(cutoffs) == (10, 0)
    assert storage.delete_expired(cutoffs, 4) == (4, 0)
    assert storage.delete_expired(cutoffs, 4) == (4, 0)
    assert storage.delete_expired(cutoffs, 4) == (2, 0)
    assert storage.delete_expired(cutoffs, 4) == (0, 0)
    assert storage.count_expired(cutoffs) == (0, 0)


def test_a_cleanup_inside_a_transaction_runs_no_checkpoint(
    store: JobPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = _storage.FIRST_BATCH * 2 + 1
    _save_expired(store, count)
    seen = _record_statements(store, monkeypatch)
    with pytest.raises(RuntimeError), store.transaction():
        assert store.delete_expired_jobs(minutes(10)) == count
        raise RuntimeError
    assert not [sql for sql, _ in seen if "wal_checkpoint" in sql]
    assert store.count_jobs() == count


def test_a_failed_wal_checkpoint_does_not_stop_the_cleanup(
    store: JobPersistence, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The checkpoint between batches only saves time: the batches already deleted must be
    # counted and reported, and the cleanup must go on.
    count = _storage.FIRST_BATCH * 2 + 3
    _save_expired(store, count)
    storage = storage_of(store)
    run = storage._run

    def failing_checkpoint(mode: int, sql: str, params: Any, doing: str) -> Any:
        if "wal_checkpoint" in sql:
            raise StorageUnavailableError("disk I/O error while checkpointing the WAL")
        return run(mode, sql, params, doing)

    monkeypatch.setattr(storage, "_run", failing_checkpoint)
    assert store.delete_expired_jobs(minutes(10)) == count
    assert store.count_jobs() == 0
