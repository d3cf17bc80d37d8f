"""Isolation: a query filtered by user never returns another user's job, and a cursor made
for one filter cannot page through another.

Each trial builds a random data set on both backends: users whose ids differ only by case,
a leading space, Unicode normalization, SQL wildcards or quotes ("alice", "Alice",
" alice", "al%", "al_ce", "é" and "e" + combining accent, "' OR '1'='1", ...), with
``created_at`` values that often tie, across projects and every status. Then, for random
filters that always name a user (plus random statuses, project, dates, limit):

* every page (walked with cursors, and with offsets) holds only that user's jobs, each
  matching the filter, and together exactly the model's matching jobs in the documented
  order (``created_at`` descending, then ``id``), with no duplicates; ``count_jobs`` agrees;
* the cursor of a page, reused with a filter that differs in any criterion (another
  user, other statuses, project or dates), is refused with ``ValidationError``, never
  answered with the other filter's jobs; reused with only a different ``limit`` it
  continues the same listing, as documented.
"""

from __future__ import annotations

import random
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs

from cidx_jobs import JobFilter, JobPage, JobPersistence, JobStatus, SyncJob
from cidx_jobs.errors import ValidationError

from ._common import call, open_memory, open_sqlite, remove_database
from ._config import StressConfig
from ._report import ScenarioResult

__all__ = ["TRICKY_USERS", "run"]

UTC = timezone.utc
T0 = datetime(2025, 6, 1, tzinfo=UTC)

#: User ids that a careless comparison (case, whitespace, normalization, LIKE, quoting) confuses.
TRICKY_USERS = (
    "alice",
    "Alice",
    "ALICE",
    " alice",
    "alice ",
    "al%",
    "al_ce",
    "alic",
    "alice2",
    "\u00e9",
    "e\u0301",
    "' OR '1'='1",
    "alice' --",
    "%",
    "_",
    "bob",
)


def _dataset(rng: random.Random, size: int) -> list[SyncJob]:
    users = rng.sample(TRICKY_USERS, rng.randint(3, len(TRICKY_USERS)))
    # Few distinct instants: ties on created_at are where keyset pages go wrong.
    instants = [T0 + timedelta(seconds=rng.randrange(0, 50)) for _ in range(rng.randint(1, 12))]
    return [
        SyncJob(
            id=f"j{n:04d}-{rng.choice(['a', 'B', '%', '_'])}",
            user_id=rng.choice(users),
            project_id=rng.choice(["repo", "Repo", "repo%"]),
            status=rng.choice(list(JobStatus)),
            created_at=rng.choice(instants),
        )
        for n in range(size)
    ]


def _random_filter(rng: random.Random, jobs: list[SyncJob]) -> JobFilter:
    user = rng.choice([job.user_id for job in jobs] + list(TRICKY_USERS[:3]))
    criteria: dict[str, Any] = {"user_id": user, "limit": rng.randint(1, 7)}
    if rng.random() < 0.4:
        criteria["statuses"] = set(rng.sample(list(JobStatus), rng.randint(1, 4)))
    if rng.random() < 0.3:
        criteria["project_id"] = rng.choice(["repo", "Repo", "repo%"])
    if rng.random() < 0.3:
        criteria["created_after"] = T0 + timedelta(seconds=rng.randrange(0, 50))
    if rng.random() < 0.3:
        criteria["created_before"] = T0 + timedelta(seconds=rng.randrange(0, 60))
    return JobFilter(**criteria)


def _other_filters(rng: random.Random, filter: JobFilter) -> list[JobFilter]:
    """Filters that differ from ``filter`` in exactly one criterion."""
    others = [
        attrs.evolve(filter, user_id=rng.choice([u for u in TRICKY_USERS if u != filter.user_id]))
    ]
    others.append(
        attrs.evolve(
            filter,
            statuses={JobStatus.RUNNING}
            if filter.statuses != frozenset({JobStatus.RUNNING})
            else None,
        )
    )
    others.append(
        attrs.evolve(filter, project_id="other" if filter.project_id != "other" else None)
    )
    others.append(
        attrs.evolve(
            filter, created_after=T0 - timedelta(days=1) if filter.created_after is None else None
        )
    )
    return others


def _reuse(store: JobPersistence, filter: JobFilter, cursor: str) -> JobPage:
    """Page ``filter`` from a cursor that another filter made."""
    return store.query_page(attrs.evolve(filter, cursor=cursor))


def _check_filter(
    result: ScenarioResult,
    store: JobPersistence,
    jobs: list[SyncJob],
    filter: JobFilter,
    rng: random.Random,
    label: str,
) -> None:
    want = sorted(
        (job for job in jobs if filter.matches(job)),
        key=lambda j: (j.created_at, j.id),
        reverse=True,
    )
    want_ids = [job.id for job in want]
    seen: list[str] = []
    page_filter = filter
    cursors: list[str] = []
    while True:
        page = store.query_page(page_filter)
        for job in page.jobs:
            result.check(
                job.user_id == filter.user_id,
                f"{label}: {filter.user_id!r}'s page returned a job of {job.user_id!r}",
            )
            result.check(filter.matches(job), f"{label}: a returned job does not match the filter")
        seen.extend(job.id for job in page.jobs)
        if page.next_cursor is None or len(seen) > len(jobs):
            break
        cursors.append(page.next_cursor)
        page_filter = page_filter.next_page(page)
    result.check(seen == want_ids, f"{label}: cursor pages gave {seen[:6]}, want {want_ids[:6]}")
    result.check(len(seen) == len(set(seen)), f"{label}: a job appeared on two pages")
    by_offset: list[str] = []
    for offset in range(0, len(want) + filter.limit, filter.limit):
        by_offset.extend(job.id for job in store.query_jobs(attrs.evolve(filter, offset=offset)))
    result.check(
        by_offset == want_ids, f"{label}: offset pages gave {by_offset[:6]}, want {want_ids[:6]}"
    )
    result.check(store.count_jobs(filter) == len(want), f"{label}: count_jobs disagrees")
    for cursor in cursors[:2]:
        for other in _other_filters(rng, filter):
            outcome = call(_reuse, store, other, cursor)
            result.check(
                isinstance(outcome.error, ValidationError),
                f"{label}: a cursor of {filter!r:.120} used with {other!r:.120} gave {outcome.describe()}",
            )
            result.outcomes["cursor reused with another filter"] += 1
        # Only the page size differs: the listing continues where the cursor points.
        resized = attrs.evolve(filter, limit=rng.randint(1, 7), cursor=cursor)
        page = store.query_page(resized)
        position = seen.index(page.jobs[0].id) if page.jobs else None
        result.check(
            position is not None
            and seen[position : position + len(page.jobs)] == [j.id for j in page.jobs],
            f"{label}: a cursor with another limit did not continue the listing",
        )


def run(config: StressConfig, workdir: Path) -> ScenarioResult:
    """Random data sets on both backends, random user filters, cursors reused across filters."""
    result = ScenarioResult("isolation")
    folder = workdir / "isolation"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = random.Random(f"isolation-{config.seed}")
    for trial in range(config.scaled(6, 60)):
        jobs = _dataset(rng, rng.randint(20, 300))
        filters = [_random_filter(rng, jobs) for _ in range(config.scaled(8, 25))]
        for backend in ("memory", "sqlite"):
            db = folder / f"iso-{trial}.db"
            store = open_memory() if backend == "memory" else open_sqlite(db)
            try:
                with store.transaction():
                    for job in jobs:
                        store.save_job(job)
                for index, filter in enumerate(filters):
                    _check_filter(
                        result,
                        store,
                        jobs,
                        filter,
                        rng,
                        f"[{backend}] data set {trial} filter {index}",
                    )
            finally:
                store.close()
                remove_database(db)
            result.trials += 1
        result.outcomes["jobs in data sets"] += len(jobs)
        result.outcomes["filters checked"] += len(filters) * 2
    return result
