"""Times at the edges of the supported range: year 1 to year 9999, to the microsecond.

Core accepts every aware datetime that has a UTC equivalent (``datetime.min`` to
``datetime.max`` in UTC), so a storage keeps them all exactly: no clamping to a
"reasonable" range, no rounding, no overflow at 1970, 2038 or 3000.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import attrs
import pytest

from cidx_jobs import ACTIVE_STATUSES, JobFilter, JobPersistence, JobStatus, SyncJob
from cidx_jobs.errors import ValidationError

from ._base import (
    ManualClock,
    StoreFixtures,
    all_jobs,
    ids,
    is_utc,
    new_job,
    newest_first,
    save_all,
)

UTC = timezone.utc
US = timedelta(microseconds=1)
#: The first and last instants core accepts.
MIN = datetime.min.replace(tzinfo=UTC)
MAX = datetime.max.replace(tzinfo=UTC)
WEEK = timedelta(days=7)

#: Instants at the edges of the range and at the boundaries storages are known to get wrong.
EDGES: dict[str, datetime] = {
    "min": MIN,
    "min+1us": MIN + US,
    "min+1d": MIN + timedelta(days=1),
    "1899-end": datetime(1900, 1, 1, tzinfo=UTC) - US,
    "1900": datetime(1900, 1, 1, tzinfo=UTC),
    "1969-end": datetime(1970, 1, 1, tzinfo=UTC) - US,
    "1970": datetime(1970, 1, 1, tzinfo=UTC),
    "1970+1us": datetime(1970, 1, 1, tzinfo=UTC) + US,
    "2038": datetime(2038, 1, 19, 3, 14, 8, tzinfo=UTC),
    "2999-end": datetime(3000, 1, 1, tzinfo=UTC) - US,
    "3000": datetime(3000, 1, 1, tzinfo=UTC),
    "max-1d": MAX - timedelta(days=1),
    "max-1us": MAX - US,
    "max": MAX,
}


def _edge_jobs() -> list[SyncJob]:
    """A finished job created (and finished) at each edge; two more share the first and last."""
    jobs = [
        new_job(
            f"at-{name}",
            user=("alice", "bob")[n % 2],
            status=JobStatus.COMPLETED,
            created_at=moment,
            started_at=moment,
            completed_at=moment,
        )
        for n, (name, moment) in enumerate(EDGES.items())
    ]
    jobs.append(new_job("tie-min", status=JobStatus.FAILED, created_at=MIN, completed_at=MIN))
    jobs.append(new_job("tie-max", status=JobStatus.CANCELLED, created_at=MAX, completed_at=MAX))
    return jobs


def _created_between(
    jobs: list[SyncJob], after: datetime | None, before: datetime | None
) -> list[SyncJob]:
    return newest_first(
        [
            job
            for job in jobs
            if (after is None or job.created_at >= after)
            and (before is None or job.created_at < before)
        ]
    )


class TimeRangeContract(StoreFixtures):
    """Every instant from year 1 to year 9999 is stored, ordered, filtered and expired exactly."""

    def test_times_across_the_whole_range_round_trip_exactly(self, store: JobPersistence) -> None:
        jobs = []
        for name, moment in EDGES.items():
            job = new_job(
                f"at-{name}",
                status=JobStatus.INTERRUPTED,
                created_at=moment,
                started_at=moment,
                completed_at=moment,
                owner_id="dead:1:x",
                heartbeat_at=moment,
            )
            assert store.save_job(job) is True
            jobs.append(job)
        for job in jobs:
            loaded = store.load_job(job.id)
            assert loaded == job, f"{job.id} came back as {loaded!r}"
            assert loaded is not None
            for name in ("created_at", "started_at", "completed_at", "heartbeat_at"):
                value = getattr(loaded, name)
                assert value == getattr(job, name), (job.id, name)
                assert is_utc(value), (job.id, name, value)
            assert loaded.owner_id == "dead:1:x"

    def test_the_clock_at_the_edges_of_the_range(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        """Status changes, checkpoints, leases and recovery with the store's clock at an edge."""
        for n, moment in enumerate((MIN, MIN + US, MAX - US, MAX)):
            clock.set(moment)
            job_id = f"job-{n}"
            store.save_job(new_job(job_id, created_at=moment))
            assert store.update_job_status(job_id, JobStatus.RUNNING)
            assert store.save_checkpoint(job_id, "indexing", {"n": n})
            assert store.heartbeat() >= 1
            running = store.load_job(job_id)
            assert running is not None
            assert (running.started_at, running.heartbeat_at) == (moment, moment)
            (checkpoint,) = store.list_checkpoints(job_id)
            assert checkpoint.created_at == moment
            point = store.resume_point(job_id)
            assert point is not None
            assert point.created_at == moment
            assert store.update_job_status(job_id, JobStatus.COMPLETED)
            done = store.load_job(job_id)
            assert done is not None
            assert (done.status, done.completed_at) == (JobStatus.COMPLETED, moment)
        # A job whose owner last heartbeated in year 1 is stale at the end of time.
        store.save_job(
            new_job(
                "orphan",
                status=JobStatus.RUNNING,
                created_at=MIN,
                owner_id="dead:1:x",
                heartbeat_at=MIN,
            )
        )
        clock.set(MAX)
        report = store.recover_interrupted_jobs(lease_timeout=WEEK)
        assert [resumed.job.id for resumed in report.interrupted] == ["orphan"]
        orphan = store.load_job("orphan")
        assert orphan is not None
        assert (orphan.status, orphan.owner_id, orphan.heartbeat_at) == (
            JobStatus.INTERRUPTED,
            store.owner_id,
            MAX,
        )

    def test_edge_times_order_newest_first_and_page_with_cursors(
        self, store: JobPersistence
    ) -> None:
        jobs = save_all(store, _edge_jobs())
        expected = newest_first(jobs)
        assert ids(expected[:3]) == ["tie-max", "at-max", "at-max-1us"]
        assert ids(expected[-3:]) == ["at-min+1us", "tie-min", "at-min"]
        assert store.query_jobs(JobFilter(limit=1000)) == expected
        for limit in (1, 2, 5):
            filter = JobFilter(limit=limit)
            seen: list[SyncJob] = []
            while True:
                page = store.query_page(filter)
                seen.extend(page.jobs)
                assert len(seen) <= len(expected), "pages return more jobs than exist"
                if page.next_cursor is None:
                    break
                filter = filter.next_page(page)
            assert seen == expected, limit
            offset_pages = [
                job
                for offset in range(0, len(expected), limit)
                for job in store.query_jobs(JobFilter(limit=limit, offset=offset))
            ]
            assert offset_pages == expected, limit
        mine = JobFilter(user_id="bob", limit=2)
        assert all_jobs(store, mine) == [job for job in expected if job.user_id == "bob"]

    @pytest.mark.parametrize(
        ("after", "before"),
        [
            (MIN, None),
            (None, MIN),
            (None, MIN + US),
            (MIN + US, MIN + timedelta(days=1)),
            (MAX, None),
            (None, MAX),
            (MAX - US, MAX),
            (EDGES["1900"], EDGES["3000"]),
            (EDGES["1899-end"], EDGES["1900"] + US),
            (EDGES["1969-end"], EDGES["1970+1us"]),
            (EDGES["2999-end"], MAX),
        ],
        ids=lambda value: "none" if value is None else value.isoformat(),
    )
    def test_date_range_filters_at_the_edges(
        self, store: JobPersistence, after: datetime | None, before: datetime | None
    ) -> None:
        jobs = save_all(store, _edge_jobs())
        filter = JobFilter(created_after=after, created_before=before, limit=1000)
        wanted = _created_between(jobs, after, before)
        assert store.query_jobs(filter) == wanted
        assert store.count_jobs(filter) == len(wanted)
        assert all_jobs(store, attrs.evolve(filter, limit=2)) == wanted

    def test_cleanup_cutoffs_at_the_edges(self, store: JobPersistence) -> None:
        jobs = save_all(store, _edge_jobs())
        # never completed: it finished (for cleanup) when it was created, in year 1
        jobs += save_all(
            store, [new_job("interrupted-min", status=JobStatus.INTERRUPTED, created_at=MIN)]
        )
        # active jobs never expire, however old
        jobs += save_all(
            store,
            [
                new_job(f"active-{status.value}", status=status, created_at=MIN)
                for status in sorted(ACTIVE_STATUSES)
            ],
        )

        def finished_before(cutoff: datetime) -> set[str]:
            return {
                job.id
                for job in jobs
                if job.status not in ACTIVE_STATUSES
                and store.load_job(job.id) is not None
                and (job.completed_at or job.created_at) < cutoff
            }

        assert store.delete_expired_jobs(MIN) == 0
        # a retention reaching before year 1 keeps everything
        report = store.run_cleanup(MIN + timedelta(days=1), retention=WEEK)
        assert report.jobs_deleted == 0
        assert store.count_jobs() == len(jobs)
        expected = finished_before(MIN + US)
        assert expected == {"at-min", "tie-min", "interrupted-min"}
        assert store.delete_expired_jobs(MIN + US) == len(expected)
        for cutoff in (EDGES["1900"], EDGES["1970"], EDGES["3000"], MAX - US):
            expected = finished_before(cutoff)
            dry = store.run_cleanup(cutoff, retention=timedelta(0), dry_run=True)
            assert dry.jobs_deleted == len(expected), cutoff
            assert store.delete_expired_jobs(cutoff) == len(expected), cutoff
            for job_id in expected:
                assert store.load_job(job_id) is None, (cutoff, job_id)
        # at the end of time: everything finished before it goes, the jobs finished at it stay
        report = store.run_cleanup(MAX, retention=timedelta(0))
        assert report.jobs_deleted == 1  # at-max-1us
        assert sorted(ids(all_jobs(store))) == sorted(
            ["at-max", "tie-max", *(f"active-{s.value}" for s in ACTIVE_STATUSES)]
        )

    def test_a_lease_reaching_before_year_one_recovers_nothing(
        self, store: JobPersistence, clock: ManualClock
    ) -> None:
        """A lease timeout reaching before year 1 takes only jobs that never heartbeated."""
        clock.set(MIN + timedelta(minutes=1))
        store.save_job(
            new_job("orphan", status=JobStatus.RUNNING, owner_id="dead:1:x", heartbeat_at=MIN)
        )
        report = store.recover_interrupted_jobs(lease_timeout=timedelta(minutes=5))
        assert (report.interrupted, report.requeue) == ([], [])
        clock.set(datetime(2024, 1, 1, tzinfo=UTC))
        report = store.recover_interrupted_jobs(lease_timeout=timedelta(days=999_999))
        assert (report.interrupted, report.requeue) == ([], [])
        job = store.load_job("orphan")
        assert job is not None
        assert (job.status, job.owner_id) == (JobStatus.RUNNING, "dead:1:x")

    def test_instants_beyond_the_range_are_refused_before_any_write(
        self, store: JobPersistence
    ) -> None:
        """An aware time with no UTC equivalent (year 0 or 10000 in UTC) is a ValidationError."""
        east = timezone(timedelta(hours=1))
        west = timezone(timedelta(hours=-1))
        for too_far in (datetime.min.replace(tzinfo=east), datetime.max.replace(tzinfo=west)):
            with pytest.raises(ValidationError):
                new_job("job-1", created_at=too_far)
            with pytest.raises(ValidationError):
                JobFilter(created_after=too_far)
            with pytest.raises(ValidationError):
                store.delete_expired_jobs(too_far)
            with pytest.raises(ValidationError):
                store.run_cleanup(too_far)
        assert store.count_jobs() == 0
