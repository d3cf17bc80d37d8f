"""The reference model follows the documented rules, independently of the code it checks."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cidx_jobs import FINISHED_STATUSES, JobFilter, JobStatus, SyncJob
from cidx_jobs.backend import StatusChange
from cidx_jobs.errors import DuplicateJobError, ValidationError
from cidx_jobs_contract import ReferenceModel
from cidx_jobs_contract._base import T0, new_job

_statuses = st.sampled_from(list(JobStatus))
_times = st.none() | st.sampled_from([T0, T0 + timedelta(hours=1)])


@settings(derandomize=True, database=None, max_examples=200)
@given(
    status=_statuses,
    started_at=_times,
    completed_at=_times,
    target=_statuses,
    expected=st.none() | st.frozensets(_statuses, min_size=1),
    error_message=st.none() | st.just("boom"),
)
def test_status_rules_agree_with_core(
    status: JobStatus,
    started_at: object,
    completed_at: object,
    target: JobStatus,
    expected: frozenset[JobStatus] | None,
    error_message: str | None,
) -> None:
    # Two independent writings of the same rules: the model's and core's StatusChange.
    job = new_job("job-1", status=status, started_at=started_at, completed_at=completed_at)
    now = T0 + timedelta(days=1)
    model = ReferenceModel()
    model.save_job(job)
    changed = model.update_job_status("job-1", target, error_message, expected, now)
    change = StatusChange(status=target, error_message=error_message, expected=expected, now=now)
    assert changed == (change.apply(job) is not None)
    assert model.load_job("job-1") == (change.apply(job) or job)


def test_model_basics() -> None:
    model = ReferenceModel(max_bytes=100)
    job = new_job("job-1", metadata={"a": [1]})
    assert model.save_job(job) is True
    with pytest.raises(DuplicateJobError):
        model.save_job(job)
    with pytest.raises(ValidationError):
        model.save_job(new_job("job-2", metadata={"big": "x" * 100}))
    assert model.update_job_progress("job-1", 50, "indexing") is True
    assert model.update_job_progress("nope", 50, None) is False
    assert model.save_checkpoint("nope", "indexing", {}, T0) is False
    assert model.save_checkpoint("job-1", "indexing", {"n": 1}, T0) is True
    assert model.load_checkpoint("job-1", "indexing") == {"n": 1}
    snapshot = model.copy()
    assert model.delete_finished(dict.fromkeys(FINISHED_STATUSES, T0 + timedelta(days=1))) == (
        0,
        0,
    )
    model.update_job_status("job-1", JobStatus.FAILED, None, None, T0)
    assert model.delete_finished(
        dict.fromkeys(FINISHED_STATUSES, T0 + timedelta(days=1)), dry_run=True
    ) == (1, 1)
    assert model.delete_finished(dict.fromkeys(FINISHED_STATUSES, T0 + timedelta(days=1))) == (
        1,
        1,
    )
    assert model.jobs == {}
    loaded = snapshot.load_job("job-1")
    assert loaded is not None
    assert (loaded.progress, loaded.status) == (50, JobStatus.PENDING)


def test_model_queries_order_filter_and_page() -> None:
    model = ReferenceModel()
    jobs = [
        new_job("b", created_at=T0),
        new_job("a", created_at=T0),
        new_job("c", user="bob", created_at=T0 - timedelta(seconds=1)),
        new_job("d", created_at=T0 + timedelta(seconds=1)),
    ]
    for job in jobs:
        model.save_job(job)
    assert [job.id for job in model.matching(JobFilter())] == ["d", "b", "a", "c"]
    assert [job.id for job in model.query(JobFilter(limit=2, offset=1))] == ["b", "a"]
    assert [job.id for job in model.query(JobFilter(limit=5), after=(T0, "b"))] == ["a", "c"]
    assert model.count(JobFilter(user_id="bob")) == 1
    assert model.count(JobFilter(created_after=T0, created_before=T0 + timedelta(seconds=1))) == 2


def test_model_jobs_are_isolated_from_the_caller() -> None:
    model = ReferenceModel()
    metadata: dict[str, object] = {"list": [1]}
    model.save_job(SyncJob(id="j", user_id="u", project_id="p", metadata=metadata))
    metadata["list"] = "changed"
    loaded = model.load_job("j")
    assert loaded is not None
    assert loaded.metadata == {"list": [1]}
