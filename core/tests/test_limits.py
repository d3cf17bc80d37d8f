"""The size limits of a job's ``phase`` and ``error_message``, and the log line of a failure.

Each limit is checked in core before any I/O: an oversized value raises ValidationError
and writes nothing, and the default log observer never logs an unbounded line.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

import attrs
import pytest

from cidx_jobs import JobPersistence, JobStatus, SyncJob
from cidx_jobs._validate import MAX_ERROR_MESSAGE_BYTES, MAX_PHASE_LENGTH
from cidx_jobs.errors import ValidationError
from cidx_jobs_memory import MemoryStorage

T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
#: A character of 4 bytes in UTF-8.
WIDE = "\U0001f600"


@pytest.fixture
def store() -> JobPersistence:
    return JobPersistence(MemoryStorage())


def job(**changes: object) -> SyncJob:
    fields: dict[str, object] = {
        "id": "job-1",
        "user_id": "alice",
        "project_id": "repo",
        "created_at": T0,
    }
    fields.update(changes)
    return SyncJob(**fields)  # type: ignore[arg-type]


def test_the_limits_are_the_documented_ones() -> None:
    assert MAX_PHASE_LENGTH == 256
    assert MAX_ERROR_MESSAGE_BYTES == 65536


def test_a_phase_at_the_limit_is_kept_and_one_over_it_refused(store: JobPersistence) -> None:
    at_limit = "p" * MAX_PHASE_LENGTH
    with pytest.raises(ValidationError, match="phase is 257 characters long") as caught:
        SyncJob(id="x", user_id="u", project_id="p", phase=at_limit + "p")
    assert caught.value.field == "phase"
    store.save_job(attrs.evolve(job(), phase=at_limit))
    loaded = store.load_job("job-1")
    assert loaded is not None
    assert loaded.phase == at_limit
    with pytest.raises(ValidationError, match="limit is 256"):
        store.update_job_progress("job-1", 50, phase=at_limit + "p")
    loaded = store.load_job("job-1")
    assert loaded is not None
    assert (loaded.progress, loaded.phase) == (0, at_limit)


def test_a_huge_phase_is_refused_before_it_is_encoded(store: JobPersistence) -> None:
    store.save_job(job())
    huge = "x" * 50_000_000
    with pytest.raises(ValidationError) as caught:
        store.update_job_progress("job-1", 10, phase=huge)
    assert len(str(caught.value)) < 300  # the message does not quote the value
    assert store.load_job("job-1") == job()


@pytest.mark.parametrize(
    ("message", "accepted"),
    [
        ("e" * MAX_ERROR_MESSAGE_BYTES, True),
        ("e" * (MAX_ERROR_MESSAGE_BYTES + 1), False),
        (WIDE * (MAX_ERROR_MESSAGE_BYTES // 4), True),
        # Fewer characters than the limit, but more bytes: the limit is in bytes.
        (WIDE * (MAX_ERROR_MESSAGE_BYTES // 4) + "e", False),
        ("é" * (MAX_ERROR_MESSAGE_BYTES // 2 + 1), False),
    ],
    ids=["ascii-at-limit", "ascii-over", "wide-at-limit", "wide-over", "two-byte-over"],
)
def test_an_error_message_is_limited_in_bytes_of_utf8(
    store: JobPersistence, message: str, accepted: bool
) -> None:
    store.save_job(job())
    if accepted:
        assert store.update_job_status("job-1", JobStatus.FAILED, error_message=message)
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.error_message == message
        return
    with pytest.raises(ValidationError, match="the limit is 65536 bytes") as caught:
        store.update_job_status("job-1", JobStatus.FAILED, error_message=message)
    assert caught.value.field == "error_message"
    assert store.load_job("job-1") == job()  # nothing written
    with pytest.raises(ValidationError, match="error_message"):
        job(id="job-2", error_message=message)
    assert store.save_job(job(id="job-3")) is True
    assert store.count_jobs() == 2


def test_a_200_mb_error_message_is_refused_without_being_copied(store: JobPersistence) -> None:
    store.save_job(job())
    huge = "x" * 200_000_000
    with pytest.raises(ValidationError, match=r"at least 200000000 bytes") as caught:
        store.update_job_status("job-1", JobStatus.FAILED, error_message=huge)
    assert len(str(caught.value)) < 400
    assert store.load_job("job-1") == job()


def test_the_default_observer_logs_a_bounded_line(
    store: JobPersistence, caplog: pytest.LogCaptureFixture
) -> None:
    store.save_job(job())
    message = "boom " + "x" * (MAX_ERROR_MESSAGE_BYTES - 5)
    with caplog.at_level(logging.WARNING, logger="cidx_jobs"):
        assert store.update_job_status("job-1", JobStatus.FAILED, error_message=message)
    (line,) = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert line.startswith("job job-1 failed: boom xxx")
    assert len(line) < 1200
    assert f"({len(message) - 1000} more characters; load_job() has all)" in line


def test_a_short_error_message_is_logged_whole(
    store: JobPersistence, caplog: pytest.LogCaptureFixture
) -> None:
    store.save_job(job())
    with caplog.at_level(logging.WARNING, logger="cidx_jobs"):
        store.update_job_status("job-1", JobStatus.FAILED, error_message="x" * 1000)
    assert f"job job-1 failed: {'x' * 1000}" in [r.getMessage() for r in caplog.records]
