"""Queries: filters, ordering, counts, offset and keyset pagination, and user isolation."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import attrs
import pytest

from cidx_jobs import JobFilter, JobPersistence, JobStatus, SyncJob
from cidx_jobs.errors import ValidationError

from ._base import StoreFixtures, all_jobs, at, ids, new_job, newest_first, save_all

_USERS = ("alice", "bob", "carol")
_PROJECTS = ("repo-a", "repo-b")
_STATUSES = tuple(JobStatus)


def _dataset(count: int = 30) -> list[SyncJob]:
    """Jobs of three users, two projects and every status; four share each created_at."""
    return [
        new_job(
            f"job-{n:03d}",
            user=_USERS[n % 3],
            project=_PROJECTS[(n // 2) % 2],
            status=_STATUSES[n % len(_STATUSES)],
            created_at=at(n // 4),
        )
        for n in range(count)
    ]


def _select(
    jobs: list[SyncJob],
    *,
    user: str | None = None,
    project: str | None = None,
    statuses: set[JobStatus] | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
) -> list[SyncJob]:
    """What a query must return, worked out here rather than by the code under test."""
    return newest_first(
        [
            job
            for job in jobs
            if (user is None or job.user_id == user)
            and (project is None or job.project_id == project)
            and (statuses is None or job.status in statuses)
            and (after is None or job.created_at >= after)
            and (before is None or job.created_at < before)
        ]
    )


def _pages(store: JobPersistence, filter: JobFilter) -> list[list[SyncJob]]:
    """Every page of ``filter`` following the cursors, checking the last page has none."""
    pages: list[list[SyncJob]] = []
    while True:
        page = store.query_page(filter)
        pages.append(page.jobs)
        assert len(pages) < 10_000, "the cursor never ends"
        if page.next_cursor is None:
            return pages
        assert len(page.jobs) == filter.limit, "only the last page may be short"
        filter = filter.next_page(page)


class QueryContract(StoreFixtures):
    """``query_jobs`` and ``count_jobs``: every filter, the order, empty results."""

    def test_query_returns_every_job_newest_first_then_by_id(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset())
        result = store.query_jobs(JobFilter(limit=1000))
        assert result == newest_first(jobs)
        assert store.count_jobs() == len(jobs)

    def test_identical_created_at_is_ordered_by_id_descending(self, store: JobPersistence) -> None:
        # Code-point order: uppercase before lowercase, digits before both, no collation.
        names = ["a", "B", "b", "A", "é", "z", "10", "9", "a-1", "a_1", "Z"]
        save_all(store, [new_job(name, created_at=at(5)) for name in names])
        assert ids(store.query_jobs(JobFilter(limit=100))) == sorted(names, reverse=True)

    def test_order_follows_instants_whatever_the_timezone(self, store: JobPersistence) -> None:
        east = timezone(timedelta(hours=5, minutes=30))
        west = timezone(timedelta(hours=-8))
        save_all(
            store,
            [
                new_job("utc-1000", created_at=datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)),
                # 04:30 UTC, although its local time reads later than 10:00
                new_job("east-1000", created_at=datetime(2024, 5, 1, 10, 0, tzinfo=east)),
                # 17:00 UTC, although its local time reads earlier
                new_job("west-0900", created_at=datetime(2024, 5, 1, 9, 0, tzinfo=west)),
            ],
        )
        assert ids(store.query_jobs()) == ["west-0900", "utc-1000", "east-1000"]

    def test_default_filter_returns_the_newest_fifty(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset(60))
        assert store.query_jobs() == newest_first(jobs)[:50]
        assert store.query_jobs(None) == newest_first(jobs)[:50]
        assert store.count_jobs() == 60

    def test_limit_returns_the_newest_jobs(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset())
        for limit in (1, 2, 7, 29, 30, 31):
            assert store.query_jobs(JobFilter(limit=limit)) == newest_first(jobs)[:limit]

    def test_filter_by_user(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset())
        for user in _USERS:
            wanted = _select(jobs, user=user)
            assert wanted
            assert store.query_jobs(JobFilter(user_id=user, limit=1000)) == wanted
            assert store.count_jobs(JobFilter(user_id=user)) == len(wanted)

    def test_filter_by_project(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset())
        for project in _PROJECTS:
            wanted = _select(jobs, project=project)
            assert wanted
            assert store.query_jobs(JobFilter(project_id=project, limit=1000)) == wanted
            assert store.count_jobs(JobFilter(project_id=project)) == len(wanted)

    def test_filter_by_owner(self, store: JobPersistence) -> None:
        owners = ("worker-1:7:aa", "worker-2:8:bb")
        jobs = save_all(
            store,
            [
                attrs.evolve(job, owner_id=owners[n % 2], heartbeat_at=at(n))
                for n, job in enumerate(_dataset())
            ],
        )
        for owner in owners:
            wanted = newest_first([job for job in jobs if job.owner_id == owner])
            assert wanted
            assert store.query_jobs(JobFilter(owner_id=owner, limit=1000)) == wanted
            assert store.count_jobs(JobFilter(owner_id=owner)) == len(wanted)
            running = JobFilter(owner_id=owner, statuses={JobStatus.RUNNING}, limit=1000)
            wanted_running = [job for job in wanted if job.status is JobStatus.RUNNING]
            assert wanted_running
            assert store.query_jobs(running) == wanted_running
            assert store.count_jobs(running) == len(wanted_running)
        assert store.query_jobs(JobFilter(owner_id="nobody")) == []
        assert store.count_jobs(JobFilter(owner_id="nobody")) == 0

    def test_filter_by_one_status(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset())
        for status in JobStatus:
            wanted = _select(jobs, statuses={status})
            assert wanted
            for statuses in ({status}, frozenset({status}), status, status.value):
                found = store.query_jobs(JobFilter(statuses=statuses, limit=1000))
                assert found == wanted
            assert store.count_jobs(JobFilter(statuses={status})) == len(wanted)

    def test_filter_by_a_set_of_statuses(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset())
        for group in (
            {JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING},
            {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED},
            {JobStatus.INTERRUPTED, JobStatus.RUNNING},
            set(JobStatus),
        ):
            wanted = _select(jobs, statuses=group)
            assert store.query_jobs(JobFilter(statuses=group, limit=1000)) == wanted
            assert store.count_jobs(JobFilter(statuses=group)) == len(wanted)

    def test_created_after_is_inclusive(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset())
        boundary = at(3)
        wanted = _select(jobs, after=boundary)
        assert any(job.created_at == boundary for job in wanted)
        assert store.query_jobs(JobFilter(created_after=boundary, limit=1000)) == wanted
        assert store.count_jobs(JobFilter(created_after=boundary)) == len(wanted)
        just_after = boundary + timedelta(microseconds=1)
        assert store.query_jobs(JobFilter(created_after=just_after, limit=1000)) == _select(
            jobs, after=just_after
        )

    def test_created_before_is_exclusive(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset())
        boundary = at(3)
        wanted = _select(jobs, before=boundary)
        assert all(job.created_at != boundary for job in wanted)
        assert store.query_jobs(JobFilter(created_before=boundary, limit=1000)) == wanted
        assert store.count_jobs(JobFilter(created_before=boundary)) == len(wanted)
        just_after = boundary + timedelta(microseconds=1)
        assert store.query_jobs(JobFilter(created_before=just_after, limit=1000)) == _select(
            jobs, before=just_after
        )

    def test_date_range_with_both_boundaries(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset())
        start, end = at(2), at(5)
        wanted = _select(jobs, after=start, before=end)
        assert len(wanted) == 12
        found = store.query_jobs(JobFilter(created_after=start, created_before=end, limit=1000))
        assert found == wanted

    def test_date_boundaries_in_another_timezone_mean_the_same_instant(
        self, store: JobPersistence
    ) -> None:
        jobs = save_all(store, _dataset())
        tokyo = timezone(timedelta(hours=9))
        start, end = at(2), at(5)
        utc_result = store.query_jobs(
            JobFilter(created_after=start, created_before=end, limit=1000)
        )
        local = JobFilter(
            created_after=start.astimezone(tokyo), created_before=end.astimezone(tokyo), limit=1000
        )
        assert store.query_jobs(local) == utc_result == _select(jobs, after=start, before=end)

    def test_combined_filters(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset(60))
        statuses = {JobStatus.PENDING, JobStatus.FAILED, JobStatus.INTERRUPTED}
        filter = JobFilter(
            user_id="bob",
            project_id="repo-b",
            statuses=statuses,
            created_after=at(1),
            created_before=at(12),
            limit=1000,
        )
        wanted = _select(
            jobs, user="bob", project="repo-b", statuses=statuses, after=at(1), before=at(12)
        )
        assert wanted
        assert store.query_jobs(filter) == wanted
        assert store.count_jobs(filter) == len(wanted)

    def test_empty_results(self, store: JobPersistence) -> None:
        assert store.query_jobs() == []
        assert store.count_jobs() == 0
        assert store.query_page(JobFilter()).next_cursor is None
        save_all(store, _dataset())
        for filter in (
            JobFilter(user_id="nobody"),
            JobFilter(project_id="nothing"),
            JobFilter(statuses=set()),
            JobFilter(user_id="alice", project_id="repo-a", statuses={JobStatus.QUEUED}),
            JobFilter(created_after=at(100)),
            JobFilter(created_before=at(-1)),
            JobFilter(created_after=at(3), created_before=at(3)),
            JobFilter(created_after=at(4), created_before=at(3)),
            JobFilter(offset=30),
        ):
            assert store.query_jobs(filter) == [], filter
            page = store.query_page(filter)
            assert (page.jobs, page.next_cursor) == ([], None)
        assert store.count_jobs(JobFilter(user_id="nobody")) == 0
        assert store.count_jobs(JobFilter(statuses=set())) == 0

    def test_count_ignores_limit_offset_and_cursor(self, store: JobPersistence) -> None:
        save_all(store, _dataset())
        filter = JobFilter(user_id="alice", limit=2)
        page = store.query_page(filter)
        assert store.count_jobs(filter) == 10
        assert store.count_jobs(attrs.evolve(filter, offset=5)) == 10
        assert store.count_jobs(filter.next_page(page)) == 10

    def test_query_reflects_the_current_state(self, store: JobPersistence) -> None:
        save_all(store, _dataset(8))
        running = JobFilter(statuses={JobStatus.RUNNING}, limit=100)
        before = ids(store.query_jobs(running))
        store.update_job_status("job-000", JobStatus.RUNNING)
        store.update_job_progress("job-000", 55, "indexing")
        found = store.query_jobs(running)
        assert sorted(ids(found)) == sorted([*before, "job-000"])
        (job,) = (job for job in found if job.id == "job-000")
        assert (job.status, job.progress, job.phase) == (JobStatus.RUNNING, 55, "indexing")


class PaginationContract(StoreFixtures):
    """Offset and keyset (cursor) pages: no duplicates and no gaps, ties included."""

    def test_offset_pages_have_no_duplicates_and_no_gaps(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset(23))
        seen: list[SyncJob] = []
        for offset in range(0, 30, 5):
            seen.extend(store.query_jobs(JobFilter(limit=5, offset=offset)))
        assert seen == newest_first(jobs)
        assert store.query_jobs(JobFilter(limit=5, offset=23)) == []
        assert store.query_jobs(JobFilter(limit=5, offset=22)) == newest_first(jobs)[22:]

    def test_offset_pages_of_a_filter(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset(60))
        filter = JobFilter(user_id="carol", statuses={JobStatus.PENDING, JobStatus.COMPLETED})
        wanted = _select(jobs, user="carol", statuses={JobStatus.PENDING, JobStatus.COMPLETED})
        seen: list[SyncJob] = []
        for offset in range(0, len(wanted) + 3, 3):
            seen.extend(store.query_jobs(attrs.evolve(filter, limit=3, offset=offset)))
        assert seen == wanted

    @pytest.mark.parametrize("limit", [1, 4, 5, 7, 23, 24, 1000])
    def test_keyset_pages_have_no_duplicates_and_no_gaps(
        self, store: JobPersistence, limit: int
    ) -> None:
        jobs = save_all(store, _dataset(23))
        pages = _pages(store, JobFilter(limit=limit))
        assert [job for page in pages for job in page] == newest_first(jobs)
        assert len(pages) == max(1, -(-23 // limit))

    def test_keyset_last_page_of_an_exact_multiple_has_no_cursor(
        self, store: JobPersistence
    ) -> None:
        jobs = save_all(store, _dataset(20))
        first = store.query_page(JobFilter(limit=10))
        assert first.next_cursor is not None
        second = store.query_page(JobFilter(limit=10).next_page(first))
        assert second.next_cursor is None
        assert first.jobs + second.jobs == newest_first(jobs)
        with pytest.raises(ValidationError):
            JobFilter(limit=10).next_page(second)

    def test_keyset_pages_through_identical_created_at(self, store: JobPersistence) -> None:
        jobs = save_all(
            store, [new_job(f"tie-{n:02d}", created_at=at(7)) for n in range(13)]
        ) + save_all(
            store, [new_job("older", created_at=at(6)), new_job("newer", created_at=at(8))]
        )
        for limit in (1, 2, 3, 5):
            pages = _pages(store, JobFilter(limit=limit))
            assert [job for page in pages for job in page] == newest_first(jobs), limit

    def test_keyset_pages_of_a_filter(self, store: JobPersistence) -> None:
        jobs = save_all(store, _dataset(60))
        filter = JobFilter(
            user_id="alice",
            statuses={JobStatus.PENDING, JobStatus.RUNNING, JobStatus.FAILED, JobStatus.CANCELLED},
            created_after=at(2),
            limit=2,
        )
        wanted = _select(jobs, user="alice", statuses=set(filter.statuses or ()), after=at(2))
        assert len(wanted) > 4
        pages = _pages(store, filter)
        assert [job for page in pages for job in page] == wanted

    def test_keyset_pages_skip_nothing_when_jobs_change_between_pages(
        self, store: JobPersistence
    ) -> None:
        save_all(store, _dataset(20))
        filter = JobFilter(limit=6)
        first = store.query_page(filter)
        last_key = (first.jobs[-1].created_at, first.jobs[-1].id)
        # A newer job goes before the pages already read; an older one into the rest.
        store.save_job(new_job("zz-newest", created_at=at(100)))
        store.save_job(new_job("job-006b", created_at=at(1)))
        rest: list[SyncJob] = []
        page = first
        while page.next_cursor is not None:
            filter = filter.next_page(page)
            page = store.query_page(filter)
            rest.extend(page.jobs)
        remaining = [job for job in all_jobs(store) if (job.created_at, job.id) < last_key]
        assert rest == remaining
        assert "job-006b" in ids(rest)
        assert not set(ids(first.jobs)) & set(ids(rest))

    def test_query_page_and_query_jobs_agree(self, store: JobPersistence) -> None:
        save_all(store, _dataset())
        for filter in (
            JobFilter(limit=4),
            JobFilter(limit=4, offset=9),
            JobFilter(user_id="bob", limit=3),
            JobFilter(statuses={JobStatus.FAILED}),
        ):
            assert store.query_page(filter).jobs == store.query_jobs(filter)

    def test_a_cursor_from_another_filter_is_rejected(self, store: JobPersistence) -> None:
        save_all(store, _dataset())
        page = store.query_page(JobFilter(user_id="alice", limit=2))
        assert page.next_cursor is not None
        for other in (
            JobFilter(user_id="bob", limit=2),
            JobFilter(limit=2),
            JobFilter(user_id="alice", statuses={JobStatus.PENDING}, limit=2),
            JobFilter(user_id="alice", project_id="repo-a", limit=2),
            JobFilter(user_id="alice", created_after=at(1), limit=2),
            JobFilter(user_id="alice", created_before=at(100), limit=2),
        ):
            with pytest.raises(ValidationError):
                store.query_page(attrs.evolve(other, cursor=page.next_cursor))

    def test_a_malformed_cursor_is_rejected(self, store: JobPersistence) -> None:
        save_all(store, _dataset(5))
        for cursor in ("", "not-a-cursor", "eyJ4IjogMX0", "W10"):
            with pytest.raises(ValidationError):
                store.query_jobs(JobFilter(cursor=cursor))

    def test_a_cursor_cannot_be_combined_with_an_offset(self, store: JobPersistence) -> None:
        save_all(store, _dataset(5))
        page = store.query_page(JobFilter(limit=2))
        assert page.next_cursor is not None
        with pytest.raises(ValidationError):
            store.query_jobs(JobFilter(limit=2, offset=2, cursor=page.next_cursor))


# Users that a LIKE pattern, a case-insensitive collation, trimming or Unicode
# normalization would confuse with one another.
_TRICKY_USERS = (
    "alice",
    "Alice",
    "ALICE",
    "alice ",
    " alice",
    "alic",
    "alice2",
    "al_ce",
    "al%",
    "%",
    "_",
    "alice'; --",
    "caf\u00e9",
    "cafe\u0301",
    "user/1",
    "user\\1",
)


class IsolationContract(StoreFixtures):
    """A user's query never returns another user's job."""

    def test_a_users_query_never_returns_another_users_job(self, store: JobPersistence) -> None:
        jobs: list[SyncJob] = []
        for n, user in enumerate(_TRICKY_USERS):
            for k in range(3):
                jobs.append(
                    new_job(
                        f"{n:02d}-{k}",
                        user=user,
                        project="shared",
                        status=_STATUSES[(n + k) % len(_STATUSES)],
                        created_at=at(k),
                    )
                )
        save_all(store, jobs)
        for user in _TRICKY_USERS:
            mine = _select(jobs, user=user)
            assert store.query_jobs(JobFilter(user_id=user, limit=1000)) == mine, user
            assert store.count_jobs(JobFilter(user_id=user)) == 3, user
            assert store.query_jobs(JobFilter(user_id=user, project_id="shared")) == mine
            paged = [
                job for page in _pages(store, JobFilter(user_id=user, limit=2)) for job in page
            ]
            assert paged == mine, user
            for status in {job.status for job in mine}:
                found = store.query_jobs(JobFilter(user_id=user, statuses={status}))
                assert found, user
                assert all(job.user_id == user for job in found), user

    def test_isolation_holds_for_every_page_and_filter(self, store: JobPersistence) -> None:
        save_all(store, _dataset(60))
        for user in _USERS:
            for filter in (
                JobFilter(user_id=user, limit=3),
                JobFilter(user_id=user, project_id="repo-a", limit=2),
                JobFilter(user_id=user, statuses={JobStatus.PENDING, JobStatus.FAILED}, limit=1),
                JobFilter(user_id=user, created_after=at(3), created_before=at(9), limit=2),
            ):
                for page in _pages(store, filter):
                    assert all(job.user_id == user for job in page)
                for offset in range(0, 25, 3):
                    found = store.query_jobs(attrs.evolve(filter, offset=offset))
                    assert all(job.user_id == user for job in found)
