"""Every query shape and the batched cleanup, checked against the memory backend."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta
from pathlib import Path

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
from cidx_jobs_sqlite import SqliteJobStore, SqliteOptions

from .conftest import OpenStore, make_job, minutes, raw_connect

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
    store = SqliteJobStore(SqliteOptions.parse(str(db_path)), hooks=Hooks(pm))
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


def test_a_cleanup_inside_a_transaction_rolls_back_with_it(store: SqliteJobStore) -> None:
    for n in range(5):
        store.save_job(make_job(f"j{n}", status=JobStatus.COMPLETED, completed_at=minutes(0)))
    with pytest.raises(RuntimeError), store.transaction():
        assert store.delete_expired_jobs(minutes(10)) == 5
        assert store.count_jobs() == 0
        raise RuntimeError
    assert store.count_jobs() == 5


def test_delete_expired_counts_every_finished_status(store: SqliteJobStore) -> None:
    for status in JobStatus:
        store.save_job(make_job(status.value, status=status))
    assert store.delete_expired_jobs(minutes(1)) == len(FINISHED_STATUSES)
    assert {job.status for job in store.query_jobs()} == {
        JobStatus.PENDING,
        JobStatus.QUEUED,
        JobStatus.RUNNING,
    }
