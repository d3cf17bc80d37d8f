"""cattrs-based JSON round trips of the models."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cidx_jobs import Checkpoint, JobFilter, JobStatus, SyncJob
from cidx_jobs.errors import ValidationError
from cidx_jobs.serialization import from_dict, from_json, to_dict, to_json

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone.utc)


def test_job_round_trip() -> None:
    job = SyncJob(
        id="j",
        user_id="u",
        project_id="p",
        status=JobStatus.FAILED,
        progress=42,
        phase="indexing",
        created_at=T0,
        started_at=T0 + timedelta(seconds=1),
        completed_at=T0 + timedelta(seconds=2),
        error_message="boom ✗",
        metadata={"repo": "x", "n": [1, 2.5, None]},
    )
    data = to_dict(job)
    assert data["status"] == "failed"
    assert data["created_at"] == "2026-01-02T03:04:05.678901+00:00"
    assert from_dict(data, SyncJob) == job
    assert from_json(to_json(job), SyncJob) == job
    json.loads(to_json(job))


def test_checkpoint_round_trip() -> None:
    checkpoint = Checkpoint(job_id="j", phase="git_pull", data={"sha": "abc"}, created_at=T0)
    assert from_json(to_json(checkpoint), Checkpoint) == checkpoint


def test_filter_to_dict() -> None:
    data = to_dict(JobFilter(statuses={"running", "failed"}, created_after=T0))
    assert data["statuses"] == ["failed", "running"]
    assert data["created_after"] == T0.isoformat()


@pytest.mark.parametrize(
    "data",
    [
        {"id": "j", "user_id": "u"},
        {"id": "j", "user_id": "u", "project_id": "p", "created_at": "2026-01-01T00:00:00"},
        {"id": "j", "user_id": "u", "project_id": "p", "created_at": "yesterday"},
        {"id": "j", "user_id": "u", "project_id": "p", "status": "lost"},
        {"id": "", "user_id": "u", "project_id": "p"},
        "not a dict",
    ],
)
def test_bad_data_is_a_validation_error(data: object) -> None:
    with pytest.raises(ValidationError):
        from_dict(data, SyncJob)


def test_bad_json_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        from_json("{nope", SyncJob)


@given(
    progress=st.integers(0, 100),
    created=st.datetimes(timezones=st.just(timezone.utc)),
    metadata=st.dictionaries(
        st.text(),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda c: st.lists(c) | st.dictionaries(st.text(), c),
            max_leaves=10,
        ),
        max_size=5,
    ),
)
def test_any_valid_job_round_trips(
    progress: int, created: datetime, metadata: dict[str, object]
) -> None:
    job = SyncJob(
        id="j",
        user_id="u",
        project_id="p",
        progress=progress,
        created_at=created,
        metadata=metadata,
    )
    assert from_json(to_json(job), SyncJob) == job
