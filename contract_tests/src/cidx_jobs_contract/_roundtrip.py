"""Exact round trips, validation before any I/O, and copies that never alias stored state."""

from __future__ import annotations

import copy
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from cidx_jobs import JobFilter, JobPersistence, JobStatus, SyncJob
from cidx_jobs.errors import ValidationError

from ._base import UTC, StoreFixtures, at, is_utc, new_job, same_json, snapshot

_TEXT = (
    "plain",
    "",
    "emoji 🚀🔥 and zwj 👩\u200d💻 and flag 🇺🇦",
    "nul\x00inside",
    "\x00",
    "controls \x01\x1f\x7f tab\t newline\n cr\r",
    "quotes \" ' ` and backslash \\ and \\u0000 literally",
    "line\u2028separator\u2029",
    "rtl \u202eabc",
    "CJK 漢字 かな 한글, Cyrillic кириллица, Greek ελληνικά",
    "combining e\u0301 vs \u00e9",
    "max code point \U0010ffff",
    "x" * 1000,
)


def _rich_metadata() -> dict[str, Any]:
    nested: dict[str, Any] = {"leaf": True}
    for depth in range(20):
        nested = {f"level{depth}": nested, "list": [depth, [depth]]}
    return {
        "texts": list(_TEXT),
        "k\x00ey": "a NUL in a key",
        "🔑": "emoji key",
        "": "empty key",
        "ints": [0, 1, -1, 2**31, 2**53 + 1, 2**63 - 1, -(2**63)],
        "floats": [0.1, 1.0, -2.5, 1e-300, 5e-324, 1.7976931348623157e308, 123456.789012345],
        "bools": [True, False],
        "none": None,
        "empty": {"dict": {}, "list": []},
        "mixed": [1, 1.0, True, "1", None, {"1": 1}],
        "deep": nested,
    }


def _utf8_json_size(value: dict[str, Any]) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())


def _metadata_of_size(size: int) -> dict[str, Any]:
    """A metadata dict whose compact UTF-8 JSON is exactly ``size`` bytes (multi-byte text)."""
    empty = _utf8_json_size({"blob": ""})
    body = size - empty
    text = "é" * (body // 2) + "x" * (body % 2)
    metadata = {"blob": text}
    assert _utf8_json_size(metadata) == size
    return metadata


class RoundTripContract(StoreFixtures):
    """What goes in comes back exactly: Unicode, JSON types, big metadata, microsecond UTC times."""

    def test_unicode_in_every_text_field_round_trips(self, store: JobPersistence) -> None:
        jobs = [
            new_job(
                f"job-🚀-{n}",
                user="ユーザー-é",
                project="프로젝트/저장소 📦",
                phase="индексация ✨",
                error_message=text.replace("\x00", "␀"),
                metadata={"text": text, text: n},
            )
            for n, text in enumerate(_TEXT)
        ]
        for job in jobs:
            store.save_job(job)
        for job in jobs:
            loaded = store.load_job(job.id)
            assert loaded == job
            assert loaded is not None
            assert same_json(loaded.metadata, job.metadata)
        found = store.query_jobs(JobFilter(user_id="ユーザー-é", project_id="프로젝트/저장소 📦"))
        assert len(found) == len(jobs)

    def test_json_values_round_trip_with_their_types(self, store: JobPersistence) -> None:
        metadata = _rich_metadata()
        store.save_job(new_job("job-1", metadata=metadata))
        store.save_checkpoint("job-1", "indexing", metadata)
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert same_json(loaded.metadata, metadata)
        checkpoint = store.load_checkpoint("job-1", "indexing")
        assert same_json(checkpoint, metadata)
        (listed,) = store.list_checkpoints("job-1")
        assert same_json(listed.data, metadata)
        (queried,) = store.query_jobs()
        assert same_json(queried.metadata, metadata)

    def test_metadata_close_to_the_size_limit_round_trips(self, store: JobPersistence) -> None:
        limit = store.settings.max_metadata_bytes
        metadata = _metadata_of_size(limit - 8)
        store.save_job(new_job("job-1", metadata=metadata))
        store.save_checkpoint("job-1", "indexing", metadata)
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.metadata == metadata
        assert store.load_checkpoint("job-1", "indexing") == metadata

    def test_datetimes_round_trip_to_the_microsecond_in_utc(self, store: JobPersistence) -> None:
        moments = [
            at(0),
            datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            datetime(1900, 3, 1, 12, 30, 15, 999999, tzinfo=UTC),
            datetime(2999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            datetime(2024, 2, 29, 23, 59, 59, 500000, tzinfo=UTC),
        ]
        jobs = [
            new_job(
                f"job-{n}",
                status=JobStatus.COMPLETED,
                created_at=moment,
                started_at=moment + timedelta(microseconds=1),
                completed_at=moment + timedelta(microseconds=999_999),
            )
            for n, moment in enumerate(moments)
        ]
        for job in jobs:
            store.save_job(job)
        for job in jobs:
            loaded = store.load_job(job.id)
            assert loaded is not None
            for name in ("created_at", "started_at", "completed_at"):
                value = getattr(loaded, name)
                assert value == getattr(job, name), name
                assert is_utc(value), f"{name} must come back in UTC, got {value!r}"
                assert value.microsecond == getattr(job, name).microsecond
        assert [job.id for job in store.query_jobs()] == [
            "job-3",
            "job-0",
            "job-4",
            "job-1",
            "job-2",
        ]

    def test_aware_datetimes_in_other_zones_come_back_as_utc(self, store: JobPersistence) -> None:
        zones = [
            timezone(timedelta(hours=5, minutes=45)),
            timezone(timedelta(hours=-9, minutes=-30)),
        ]
        for n, zone in enumerate(zones):
            local = datetime(2024, 5, 1, 8, 15, 30, 123457 + n, tzinfo=zone)
            store.save_job(
                new_job(f"job-{n}", created_at=local, started_at=local, completed_at=local)
            )
            loaded = store.load_job(f"job-{n}")
            assert loaded is not None
            for value in (loaded.created_at, loaded.started_at, loaded.completed_at):
                assert value == local, "the same instant"
                assert is_utc(value)
                assert value.utcoffset() == timedelta(0)

    def test_loaded_values_have_their_declared_types(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1", status=JobStatus.QUEUED, progress=7, metadata={"a": 1}))
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert isinstance(loaded, SyncJob)
        assert type(loaded.status) is JobStatus
        assert type(loaded.progress) is int
        assert type(loaded.metadata) is dict
        assert type(loaded.id) is str


class ValidationContract(StoreFixtures):
    """Invalid input raises ValidationError before any I/O and leaves the store unchanged."""

    def test_invalid_jobs_cannot_even_be_built(self) -> None:
        naive = datetime(2024, 5, 1, 12, 0)
        invalid: list[dict[str, Any]] = [
            {"created_at": naive},
            {"started_at": naive},
            {"completed_at": naive},
            {"progress": 101},
            {"progress": -1},
            {"progress": "50"},
            {"progress": 50.0},
            {"progress": True},
            {"id": ""},
            {"user_id": ""},
            {"project_id": ""},
            {"id": "nul\x00id"},
            {"status": "sleeping"},
            {"metadata": {"set": {1, 2}}},
            {"metadata": {"tuple": (1, 2)}},
            {"metadata": {1: "int key"}},
            {"metadata": {"nan": float("nan")}},
            {"metadata": {"inf": float("inf")}},
            {"metadata": {"object": object()}},
            {"metadata": {"surrogate": "\ud800"}},
            {"metadata": ["not", "a", "dict"]},
        ]
        base: dict[str, Any] = {"id": "job-1", "user_id": "alice", "project_id": "repo"}
        for fields in invalid:
            with pytest.raises(ValidationError):
                SyncJob(**{**base, **fields})

    def test_save_rejects_invalid_jobs_before_any_write(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-0"))
        before = snapshot(store)
        limit = store.settings.max_metadata_bytes
        with pytest.raises(ValidationError):
            store.save_job({"id": "job-1", "user_id": "alice", "project_id": "repo"})  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            store.save_job(new_job("job-1", metadata=_metadata_of_size(limit + 1)))
        # metadata changed after the job was built is checked again when saved
        tampered = new_job("job-2", metadata={"ok": 1})
        tampered.metadata["bad"] = {1, 2}
        with pytest.raises(ValidationError):
            store.save_job(tampered)
        tampered.metadata["bad"] = float("nan")
        with pytest.raises(ValidationError):
            store.save_job(tampered)
        assert snapshot(store) == before

    def test_bad_arguments_raise_before_any_write(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))
        store.save_checkpoint("job-1", "indexing", {"n": 1})
        before = snapshot(store)
        for progress in (101, -1, "50", 50.0, True, None):
            with pytest.raises(ValidationError):
                store.update_job_progress("job-1", progress)  # type: ignore[arg-type]
        for bad_id in ("", None, 123, "nul\x00"):
            with pytest.raises(ValidationError):
                store.load_job(bad_id)  # type: ignore[arg-type]
            with pytest.raises(ValidationError):
                store.update_job_progress(bad_id, 5)  # type: ignore[arg-type]
            with pytest.raises(ValidationError):
                store.update_job_status(bad_id, JobStatus.RUNNING)  # type: ignore[arg-type]
            with pytest.raises(ValidationError):
                store.load_checkpoint(bad_id, "indexing")  # type: ignore[arg-type]
            with pytest.raises(ValidationError):
                store.list_checkpoints(bad_id)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            store.query_jobs({"user_id": "alice"})  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            store.count_jobs("alice")  # type: ignore[arg-type]
        for filter_fields in (
            {"created_after": datetime(2024, 1, 1)},
            {"created_before": datetime(2024, 1, 1)},
            {"limit": 0},
            {"limit": 1001},
            {"offset": -1},
            {"user_id": ""},
            {"statuses": {"sleeping"}},
        ):
            with pytest.raises(ValidationError):
                JobFilter(**filter_fields)
        assert snapshot(store) == before


class CopyContract(StoreFixtures):
    """Returned values are copies: mutating them, or what was passed in, never changes the store."""

    def test_mutating_a_returned_job_changes_nothing(self, store: JobPersistence) -> None:
        metadata = {"files": [1, 2], "nested": {"k": "v"}}
        store.save_job(new_job("job-1", metadata=metadata))
        expected = copy.deepcopy(metadata)
        for returned in (
            store.load_job("job-1"),
            store.query_jobs()[0],
            store.query_page(JobFilter()).jobs[0],
            store.query_jobs(JobFilter(user_id="alice"))[0],
        ):
            assert returned is not None
            returned.metadata["files"].append(3)
            returned.metadata["nested"]["k"] = "changed"
            returned.metadata["new"] = True
            loaded = store.load_job("job-1")
            assert loaded is not None
            assert loaded.metadata == expected

    def test_two_loads_do_not_share_metadata(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1", metadata={"list": [1]}))
        first, second = store.load_job("job-1"), store.load_job("job-1")
        assert first is not None
        assert second is not None
        first.metadata["list"].append(2)
        assert second.metadata == {"list": [1]}

    def test_mutating_the_saved_jobs_metadata_afterwards_changes_nothing(
        self, store: JobPersistence
    ) -> None:
        metadata: dict[str, Any] = {"files": [1, 2], "nested": {"k": "v"}}
        job = new_job("job-1", metadata=metadata)
        expected = copy.deepcopy(job.metadata)
        store.save_job(job)
        metadata["files"].append(3)
        metadata["nested"]["k"] = "changed"
        job.metadata["new"] = "key"
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.metadata == expected

    def test_mutating_a_returned_checkpoint_changes_nothing(self, store: JobPersistence) -> None:
        store.save_job(new_job("job-1"))
        store.save_checkpoint("job-1", "indexing", {"done": [1, 2], "state": {"n": 1}})
        loaded = store.load_checkpoint("job-1", "indexing")
        assert loaded is not None
        loaded["done"].append(3)
        loaded["state"]["n"] = 99
        loaded["new"] = 1
        (listed,) = store.list_checkpoints("job-1")
        listed.data["done"].clear()
        listed.data["state"]["n"] = 98
        assert store.load_checkpoint("job-1", "indexing") == {"done": [1, 2], "state": {"n": 1}}
        assert store.list_checkpoints("job-1")[0].data == {"done": [1, 2], "state": {"n": 1}}

    def test_mutating_the_saved_checkpoint_dict_afterwards_changes_nothing(
        self, store: JobPersistence
    ) -> None:
        store.save_job(new_job("job-1"))
        data: dict[str, Any] = {"done": [1, 2], "state": {"n": 1}}
        store.save_checkpoint("job-1", "indexing", data)
        data["done"].append(3)
        data["state"]["n"] = 99
        data["new"] = 1
        assert store.load_checkpoint("job-1", "indexing") == {"done": [1, 2], "state": {"n": 1}}
