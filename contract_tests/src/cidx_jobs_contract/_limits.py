"""The size limits of a job's text fields: values at a limit are stored exactly, and values
over it are refused before any I/O.

The limits are core's (docs/reference.md, "SyncJob"): ``phase`` at most 256 characters,
``error_message`` at most 65,536 bytes of UTF-8. A backend must store every value up to
them, measured as core measures (characters for ``phase``, whatever their UTF-8 size;
bytes for ``error_message``), and never sees a value over them.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from cidx_jobs import JobPersistence, JobStatus, SyncJob
from cidx_jobs.errors import ValidationError

from ._base import StoreFixtures, new_job, snapshot

#: The documented limits (docs/reference.md).
PHASE_CHARACTERS = 256
ERROR_MESSAGE_BYTES = 65536

#: A phase at the limit whose UTF-8 is longer than 256 bytes (a column sized in bytes loses it).
WIDE_PHASE = "indexing-" + "\U0001f680" * (PHASE_CHARACTERS - 10) + "é"


def _error_message_at_limit() -> str:
    """65,536 bytes of UTF-8 that mix 1-, 2-, 3- and 4-byte characters and end with a
    character of several bytes, so a backend that cuts at a byte count breaks it."""
    unit = "a" + "é" + "漢" + "\U0001f525"  # 1 + 2 + 3 + 4 bytes
    text = unit * (ERROR_MESSAGE_BYTES // 10)
    text += "x" * (ERROR_MESSAGE_BYTES - 4 - len(text.encode("utf-8"))) + "\U0001f525"
    assert len(text.encode("utf-8")) == ERROR_MESSAGE_BYTES
    return text


class LimitContract(StoreFixtures):
    """A phase of 256 characters and an error message of 64 KiB are stored exactly; one
    character or byte more raises ValidationError and writes nothing."""

    def test_text_at_the_limits_round_trips_exactly(self, store: JobPersistence) -> None:
        message = _error_message_at_limit()
        job = new_job("at-limit", phase=WIDE_PHASE, error_message=message)
        assert len(job.phase or "") == PHASE_CHARACTERS
        assert store.save_job(job) is True
        loaded = store.load_job("at-limit")
        assert loaded == job
        assert loaded is not None
        assert (loaded.phase, loaded.error_message) == (WIDE_PHASE, message)
        (listed,) = store.query_jobs()
        assert (listed.phase, listed.error_message) == (WIDE_PHASE, message)
        # The same values through the two calls that write them one at a time.
        store.save_job(new_job("updated"))
        assert store.update_job_progress("updated", 40, phase=WIDE_PHASE) is True
        assert store.update_job_status("updated", JobStatus.FAILED, error_message=message)
        updated = store.load_job("updated")
        assert updated is not None
        assert (updated.progress, updated.phase) == (40, WIDE_PHASE)
        assert (updated.status, updated.error_message) == (JobStatus.FAILED, message)

    def test_text_over_the_limits_is_refused_and_nothing_is_written(
        self, store: JobPersistence
    ) -> None:
        store.save_job(new_job("job-1", phase="git_pull"))
        before = snapshot(store)
        long_phase = "p" * (PHASE_CHARACTERS + 1)
        long_message = _error_message_at_limit() + "x"
        for job_id in ("job-1", "no-such-job"):  # validated before the job is looked up
            with pytest.raises(ValidationError) as caught:
                store.update_job_progress(job_id, 50, phase=long_phase)
            assert caught.value.field == "phase"
            with pytest.raises(ValidationError) as caught:
                store.update_job_status(job_id, JobStatus.FAILED, error_message=long_message)
            assert caught.value.field == "error_message"
        over: tuple[dict[str, Any], ...] = ({"phase": long_phase}, {"error_message": long_message})
        for fields in over:
            with pytest.raises(ValidationError):
                new_job("job-2", **fields)
            with pytest.raises(ValidationError):
                attrs.evolve(before.jobs[0], **fields)
        assert snapshot(store) == before

    def test_a_refused_value_does_not_doom_a_transaction_block(self, store: JobPersistence) -> None:
        """The refusal happens in core, before the storage is called: the block goes on."""
        with store.transaction():
            store.save_job(new_job("job-1"))
            with pytest.raises(ValidationError):
                store.update_job_progress("job-1", 50, phase="p" * (PHASE_CHARACTERS + 1))
            assert store.update_job_progress("job-1", 50, phase="indexing") is True
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert (loaded.progress, loaded.phase) == (50, "indexing")
        assert isinstance(loaded, SyncJob)
