"""The value objects validate on construction and keep datetimes in UTC."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cidx_jobs import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Checkpoint,
    CleanupPolicy,
    JobFilter,
    JobPage,
    JobStatus,
    SyncJob,
)
from cidx_jobs.errors import CidxJobsError, ValidationError

UTC = timezone.utc
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


def make_job(**changes: object) -> SyncJob:
    fields: dict[str, object] = {
        "id": "job-1",
        "user_id": "alice",
        "project_id": "repo",
        "created_at": T0,
    }
    fields.update(changes)
    return SyncJob(**fields)  # type: ignore[arg-type]


def test_status_values_and_groups() -> None:
    assert [s.value for s in JobStatus] == [
        "pending",
        "queued",
        "running",
        "completed",
        "failed",
        "cancelled",
        "interrupted",
    ]
    assert {s.value for s in ACTIVE_STATUSES} == {"pending", "queued", "running"}
    assert {s.value for s in TERMINAL_STATUSES} == {"completed", "failed", "cancelled"}
    assert not JobStatus.INTERRUPTED.is_active
    assert not JobStatus.INTERRUPTED.is_terminal
    assert JobStatus("running") is JobStatus.RUNNING
    assert isinstance(JobStatus.RUNNING, str)


def test_job_defaults() -> None:
    job = make_job()
    assert job.status is JobStatus.PENDING
    assert job.progress == 0
    assert job.phase is None
    assert job.metadata == {}
    assert job.started_at is None


def test_status_given_as_string_is_converted() -> None:
    assert make_job(status="running").status is JobStatus.RUNNING


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": ""}, "id"),
        ({"user_id": 5}, "user_id"),
        ({"project_id": None}, "project_id"),
        ({"id": "x" * 257}, "id"),
        ({"id": "a\x00b"}, "id"),
        ({"id": "\ud800"}, "id"),
        ({"status": "exploded"}, "status"),
        ({"progress": 101}, "progress"),
        ({"progress": -1}, "progress"),
        ({"progress": 50.0}, "progress"),
        ({"progress": True}, "progress"),
        ({"created_at": datetime(2026, 1, 1)}, "created_at"),
        ({"created_at": "2026-01-01"}, "created_at"),
        ({"started_at": datetime(2026, 1, 1)}, "started_at"),
        ({"completed_at": datetime(2026, 1, 1)}, "completed_at"),
        ({"metadata": {"a": float("nan")}}, "metadata"),
        ({"metadata": {"a": float("inf")}}, "metadata"),
        ({"metadata": {1: "int key"}}, "metadata"),
        ({"metadata": {"a": (1, 2)}}, "metadata"),
        ({"metadata": {"a": {1, 2}}}, "metadata"),
        ({"metadata": {"a": datetime(2026, 1, 1, tzinfo=UTC)}}, "metadata"),
        ({"metadata": {"a": "\udcff"}}, "metadata"),
        ({"metadata": ["not", "a", "dict"]}, "metadata"),
        ({"error_message": 3}, "error_message"),
    ],
)
def test_invalid_fields_raise_validation_error(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        make_job(**changes)
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, CidxJobsError)


def test_deeply_nested_metadata_is_rejected() -> None:
    nested: dict[str, object] = {}
    inner = nested
    for _ in range(100):
        inner["x"] = {}
        inner = inner["x"]  # type: ignore[assignment]
    with pytest.raises(ValidationError, match="nested deeper"):
        make_job(metadata=nested)


def test_json_metadata_with_nul_and_unicode_is_accepted() -> None:
    metadata = {"emoji": "🚀", "nul": "a\x00b", "nested": {"list": [1, 2.5, None, True]}}
    assert make_job(metadata=metadata).metadata == metadata


def test_datetimes_are_converted_to_utc_exactly() -> None:
    plus_two = timezone(timedelta(hours=2))
    local = datetime(2026, 5, 6, 9, 0, 0, 123456, tzinfo=plus_two)
    job = make_job(created_at=local)
    assert job.created_at.tzinfo is UTC
    assert job.created_at == local
    assert job.created_at.hour == 7
    assert job.created_at.microsecond == 123456


def test_evolve_validates_again() -> None:
    job = make_job()
    assert attrs.evolve(job, progress=40).progress == 40
    with pytest.raises(ValidationError):
        attrs.evolve(job, progress=400)


def test_jobs_are_frozen() -> None:
    job = make_job()
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        job.progress = 3  # type: ignore[misc]


def test_create_uses_now() -> None:
    job = SyncJob.create(id="a", user_id="u", project_id="p", now=T0, metadata={"k": 1})
    assert job.created_at == T0
    assert job.metadata == {"k": 1}


def test_checkpoint_validates() -> None:
    checkpoint = Checkpoint(job_id="j", phase="indexing", data={"files": 3}, created_at=T0)
    assert checkpoint.data == {"files": 3}
    with pytest.raises(ValidationError):
        Checkpoint(job_id="j", phase="", data={}, created_at=T0)
    with pytest.raises(ValidationError):
        Checkpoint(job_id="j", phase="p", data={"x": object()}, created_at=T0)


class TestJobFilter:
    def test_defaults(self) -> None:
        f = JobFilter()
        assert (f.limit, f.offset, f.cursor, f.statuses) == (50, 0, None, None)

    @pytest.mark.parametrize(
        "changes",
        [
            {"limit": 0},
            {"limit": 1001},
            {"limit": -5},
            {"limit": "10"},
            {"offset": -1},
            {"offset": 2**80},
            {"statuses": {"nope"}},
            {"statuses": 3},
            {"user_id": ""},
            {"created_after": datetime(2026, 1, 1)},
            {"cursor": "definitely-not-a-cursor"},
            {"cursor": 7},
        ],
    )
    def test_invalid(self, changes: dict[str, object]) -> None:
        with pytest.raises(ValidationError):
            JobFilter(**changes)  # type: ignore[arg-type]

    def test_statuses_accept_strings_and_single_status(self) -> None:
        assert JobFilter(statuses={"running", JobStatus.FAILED}).statuses == frozenset(
            {JobStatus.RUNNING, JobStatus.FAILED}
        )
        assert JobFilter(statuses="queued").statuses == frozenset({JobStatus.QUEUED})

    def test_matches_nothing(self) -> None:
        assert JobFilter(statuses=set()).matches_nothing()
        assert JobFilter(created_after=T0, created_before=T0).matches_nothing()
        assert not JobFilter(created_after=T0).matches_nothing()

    def test_matches_boundaries(self) -> None:
        job = make_job(created_at=T0)
        assert JobFilter(created_after=T0).matches(job)  # inclusive
        assert not JobFilter(created_before=T0).matches(job)  # exclusive
        assert JobFilter(created_before=T0 + timedelta(microseconds=1)).matches(job)
        assert not JobFilter(user_id="bob").matches(job)

    def test_cursor_round_trip(self) -> None:
        f = JobFilter(user_id="alice", limit=10)
        job = make_job(id="j-é", created_at=T0)
        cursor = f.cursor_after(job)
        assert attrs.evolve(f, cursor=cursor).after_key() == (T0, "j-é")

    def test_cursor_of_another_filter_is_rejected(self) -> None:
        cursor = JobFilter(user_id="alice").cursor_after(make_job())
        with pytest.raises(ValidationError, match="different filter"):
            JobFilter(user_id="bob", cursor=cursor)

    def test_cursor_and_offset_are_exclusive(self) -> None:
        cursor = JobFilter().cursor_after(make_job())
        with pytest.raises(ValidationError, match="cannot be combined"):
            JobFilter(cursor=cursor, offset=5)

    def test_next_page(self) -> None:
        f = JobFilter(limit=1)
        cursor = f.cursor_after(make_job())
        assert f.next_page(JobPage(jobs=[make_job()], next_cursor=cursor)).cursor == cursor
        with pytest.raises(ValidationError, match="last page"):
            f.next_page(JobPage(jobs=[], next_cursor=None))


class TestCleanupPolicy:
    def test_uniform_covers_every_non_active_status(self) -> None:
        policy = CleanupPolicy.uniform(timedelta(days=7))
        assert set(policy.retention) == set(JobStatus) - ACTIVE_STATUSES
        cutoffs = policy.cutoffs(T0)
        assert cutoffs[JobStatus.COMPLETED] == T0 - timedelta(days=7)

    def test_active_status_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="active"):
            CleanupPolicy(retention={JobStatus.RUNNING: timedelta(days=1)})

    def test_negative_retention_is_refused(self) -> None:
        with pytest.raises(ValidationError):
            CleanupPolicy(retention={"failed": timedelta(days=-1)})

    def test_naive_now_is_refused(self) -> None:
        with pytest.raises(ValidationError):
            CleanupPolicy.uniform(timedelta(days=1)).cutoffs(datetime(2026, 1, 1))


def test_from_trusted_sets_every_field_of_a_job_to_its_own_value() -> None:
    # from_trusted sets slots through descriptors: each value must land in its own field.
    values = {
        field.name: f"value-{field.name}" for field in attrs.fields(SyncJob)
    }  # distinct values expose a swapped pair
    job = SyncJob.from_trusted(**values)  # type: ignore[arg-type]
    assert {name: getattr(job, name) for name in values} == values


def test_from_trusted_builds_what_the_validating_constructor_builds() -> None:
    job = make_job(
        status=JobStatus.RUNNING,
        progress=40,
        phase="indexing",
        started_at=T0,
        metadata={"repo": "x"},
        owner_id="worker-1",
        heartbeat_at=T0 + timedelta(seconds=5),
    )
    trusted = SyncJob.from_trusted(**attrs.asdict(job, recurse=False))
    assert attrs.asdict(trusted, recurse=False) == attrs.asdict(job, recurse=False)
    assert trusted == job
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        trusted.progress = 1  # type: ignore[misc]


def test_checkpoint_from_trusted_sets_every_field_to_its_own_value() -> None:
    checkpoint = Checkpoint(job_id="job-1", phase="indexing", data={"n": 1}, created_at=T0)
    trusted = Checkpoint.from_trusted(**attrs.asdict(checkpoint, recurse=False))
    assert attrs.asdict(trusted, recurse=False) == attrs.asdict(checkpoint, recurse=False)
    values = {field.name: f"value-{field.name}" for field in attrs.fields(Checkpoint)}
    assert attrs.asdict(Checkpoint.from_trusted(**values), recurse=False) == values  # type: ignore[arg-type]


def test_metadata_that_contains_itself_is_rejected() -> None:
    cyclic: dict[str, object] = {"name": "loop"}
    cyclic["self"] = cyclic
    with pytest.raises(ValidationError, match="nested deeper") as caught:
        make_job(metadata=cyclic)
    assert caught.value.field == "metadata"


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    # lone surrogates cannot be stored, so the models reject them
    | st.text(st.characters(exclude_categories=("Cs",))),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=("Cs",)), max_size=8), inner, max_size=4
        )
    ),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=8).filter(str.isprintable), _JSON, max_size=5))
def test_metadata_encoding_is_what_json_dumps_writes(metadata: dict[str, object]) -> None:
    # The validator's encoder is built once from json's C parts; it must write exactly
    # what json.dumps does with the same options, as the stored text is read back by it.
    from cidx_jobs._validate import encode_json_object

    checked, encoded = encode_json_object(metadata, "metadata")
    assert checked == metadata
    assert encoded == json.dumps(
        metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )
    assert json.loads(encoded) == metadata


def test_cyclic_metadata_is_rejected_even_with_a_raised_recursion_limit() -> None:
    # Without its cycle check the one-time C encoder recursed until the C stack overflowed
    # (a segfault) on Python 3.10 and 3.11 once a program raised the recursion limit; the
    # check runs in a child process so that a crash fails this test instead of the run.
    code = (
        "import sys\n"
        "sys.setrecursionlimit(100_000)\n"
        "from cidx_jobs._validate import encode_json_object\n"
        "from cidx_jobs.errors import ValidationError\n"
        "d = {}\n"
        "d['self'] = d\n"
        "try:\n"
        "    encode_json_object(d, 'data')\n"
        "except ValidationError as error:\n"
        "    print('rejected:', error)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("rejected:")
