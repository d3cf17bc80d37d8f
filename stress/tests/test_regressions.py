"""Regression tests for the defects the stress suite found.

Each is the smallest reproduction of one defect, marked ``xfail(strict=True)`` while the
defect is open: the fix makes the test pass, strictness then fails the run, and whoever
fixed it removes the mark here and the entry in ``cidx_jobs_stress/_known.py``. A test
without the mark is a defect already fixed, kept so that it stays fixed.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from cidx_jobs import JobFilter, JobPersistence, JobStatus, SyncJob, open_persistence, serialization
from cidx_jobs.errors import CidxJobsError, ValidationError

UTC = timezone.utc
T0 = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
def store() -> Iterator[JobPersistence]:
    opened = open_persistence("memory://")
    yield opened
    opened.close()


def cursor_of(payload: str) -> str:
    """A cursor as the library encodes them (URL-safe base64 of JSON, unpadded)."""
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


@pytest.mark.skipif(
    not hasattr(sys, "set_int_max_str_digits"), reason="this Python converts any int to text"
)
@pytest.mark.parametrize("call", ["save_job", "save_checkpoint"])
def test_an_int_too_long_for_json_is_a_validation_error(store: JobPersistence, call: str) -> None:
    # Found by the stress suite: an int over 4300 digits passed the JSON check, then
    # json.dumps refused it and save_job/save_checkpoint raised a raw ValueError. Fixed by
    # the round-trip check of _validate.encode_json_object; kept as a regression test.
    store.save_job(SyncJob.create(id="j", user_id="u", project_id="p"))
    huge = {"n": 10**5000}
    with pytest.raises(ValidationError):
        if call == "save_job":
            store.save_job(SyncJob.create(id="k", user_id="u", project_id="p", metadata=huge))
        else:
            store.save_checkpoint("j", "indexing", huge)
    assert store.load_job("k") is None
    assert store.load_checkpoint("j", "indexing") is None


def test_a_deeply_nested_cursor_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        JobFilter(user_id="alice", cursor=cursor_of("[" * 100_000 + "]" * 100_000))


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_a_cursor_with_an_unrepresentable_date_is_a_validation_error(when: str) -> None:
    fingerprint = JobFilter(user_id="alice").fingerprint()
    with pytest.raises(ValidationError):
        JobFilter(user_id="alice", cursor=cursor_of(json.dumps([1, when, "x", fingerprint])))


@pytest.mark.parametrize(
    ("now", "retention"),
    [(None, timedelta.max), (datetime(1, 1, 2, tzinfo=UTC), None)],
    ids=["retention-timedelta-max", "now-in-year-1"],
)
def test_run_cleanup_with_a_retention_beyond_the_calendar_deletes_nothing(
    store: JobPersistence, now: datetime | None, retention: timedelta | None
) -> None:
    store.save_job(
        SyncJob(id="done", user_id="u", project_id="p", status=JobStatus.COMPLETED, created_at=T0)
    )
    report = store.run_cleanup(now, retention=retention)
    assert report.jobs_deleted == 0
    assert store.load_job("done") is not None


def test_from_json_of_deeply_nested_json_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        serialization.from_json("[" * 100_000 + "]" * 100_000, SyncJob)


def test_a_database_name_longer_than_the_file_system_allows_is_a_config_error(
    tmp_path: Path,
) -> None:
    url = "sqlite:///" + str(tmp_path / ("n" * 300 + ".db"))
    with pytest.raises(CidxJobsError):
        open_persistence(url).close()
