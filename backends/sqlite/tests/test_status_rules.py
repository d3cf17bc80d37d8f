"""The one-UPDATE status change agrees with StatusChange.apply in every case."""

from __future__ import annotations

import itertools
from datetime import datetime

from cidx_jobs import JobPersistence, JobStatus, SyncJob
from cidx_jobs.backend import StatusChange

from .conftest import OpenStore, make_job, minutes


def test_every_transition_matches_the_reference_rules(open_store: OpenStore) -> None:
    store = open_store()
    now = minutes(100)
    cases = 0
    with store.transaction():  # one commit: the rules, not the disk, are under test
        cases = check_all(store, now)
    assert cases == 7 * 7 * 2 * 3 * 2 * 2


def lease(job: SyncJob | None) -> tuple[str | None, datetime | None]:
    """The lease fields, which equality leaves out."""
    assert job is not None
    return (job.owner_id, job.heartbeat_at)


def check_all(store: JobPersistence, now: datetime) -> int:
    cases = 0
    for number, (current, new, error, expected_kind, stamped, owner) in enumerate(
        itertools.product(
            JobStatus,
            JobStatus,
            (None, "boom"),
            ("none", "same", "other"),
            (False, True),
            (None, "me:1:new"),
        )
    ):
        job = make_job(
            f"j{number}",
            status=current,
            error_message="earlier",
            started_at=minutes(1) if stamped else None,
            completed_at=minutes(2) if stamped else None,
            owner_id="old:1:x",
            heartbeat_at=minutes(3),
        )
        store.save_job(job)
        expected = {
            "none": None,
            "same": frozenset({current}),
            "other": frozenset(JobStatus) - {current},
        }[expected_kind]
        change = StatusChange(
            status=new, error_message=error, expected=expected, now=now, owner=owner
        )
        applied = store.storage.set_status(job.id, change)
        reference = change.apply(job)
        case = (current, new, error, expected_kind, stamped, owner)
        assert applied is (reference is not None), case
        stored = store.load_job(job.id)
        assert stored == (reference if reference is not None else job), case
        assert lease(stored) == lease(reference if reference is not None else job), case
        cases += 1
    return cases
