"""The one-UPDATE status change agrees with StatusChange.apply in every case."""

from __future__ import annotations

import itertools
from datetime import datetime

from cidx_jobs import JobStatus, StatusChange
from cidx_jobs_sqlite import SqliteJobStore

from .conftest import OpenStore, make_job, minutes


def test_every_transition_matches_the_reference_rules(open_store: OpenStore) -> None:
    store = open_store()
    now = minutes(100)
    cases = 0
    with store.transaction():  # one commit: the rules, not the disk, are under test
        cases = check_all(store, now)
    assert cases == 7 * 7 * 2 * 3 * 2


def check_all(store: SqliteJobStore, now: datetime) -> int:
    cases = 0
    for number, (current, new, error, expected_kind, stamped) in enumerate(
        itertools.product(
            JobStatus, JobStatus, (None, "boom"), ("none", "same", "other"), (False, True)
        )
    ):
        job = make_job(
            f"j{number}",
            status=current,
            error_message="earlier",
            started_at=minutes(1) if stamped else None,
            completed_at=minutes(2) if stamped else None,
        )
        store.save_job(job)
        expected = {
            "none": None,
            "same": frozenset({current}),
            "other": frozenset(JobStatus) - {current},
        }[expected_kind]
        change = StatusChange(status=new, error_message=error, expected=expected, now=now)
        applied = store._set_status(job.id, change)
        reference = change.apply(job)
        assert applied is (reference is not None), (current, new, expected_kind)
        assert store.load_job(job.id) == (reference if reference is not None else job), (
            current,
            new,
            error,
            expected_kind,
            stamped,
        )
        cases += 1
    return cases
