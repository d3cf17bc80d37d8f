"""``cidx-jobs copy SOURCE_URL TARGET_URL``: every job and checkpoint, exactly, between two
backends (memory to SQLite in-process; SQLite to SQLite and to PostgreSQL as an operator runs
it, in child processes); a non-empty target refused; a conflict reported, never overwritten;
a copy SIGKILLed midway finished by ``--resume`` with no duplicate; the checksum seeing a
one-microsecond difference.

The PostgreSQL tests find their server as the backend's own tests do
(backends/postgres/tests/conftest.py): ``CIDX_JOBS_POSTGRES_URL``, else the local test
database if a server answers there, else they skip saying how to enable them; with
``CI=true`` they never skip. Each uses a throwaway schema and drops it.
"""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import attrs
import pytest

from cidx_jobs import (
    Checkpoint,
    JobFilter,
    JobPersistence,
    JobStatus,
    SyncJob,
    open_persistence,
    utcnow,
)
from cidx_jobs._cli._copy import (
    CopyConflictError,
    CopyVerificationError,
    copy_store,
    job_record,
    verify,
)
from cidx_jobs._cli._store import CommandError
from cidx_jobs._validate import encode_json_object
from cidx_jobs_memory import MemoryStorage

from .cli_helpers import cli, cli_env, json_lines, one_line_error, sqlite_url

pytest.importorskip("cidx_jobs_sqlite", reason="the copies go to and from SQLite")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and paths")


# -- stores ----------------------------------------------------------------------------------


def fill(store: JobPersistence, jobs: int, *, prefix: str = "job") -> None:
    """``jobs`` jobs of every status, through the storage (so owners, heartbeats and times are
    what the test says, not what a facade stamps), with 0 to 3 checkpoints each; several
    share a created_at, so that the order's tie-break on id matters."""
    now = utcnow().replace(microsecond=123_456)
    statuses = list(JobStatus)
    storage = store.storage
    with storage.transaction():
        for i in range(jobs):
            status = statuses[i % len(statuses)]
            created = now - timedelta(seconds=i // 3, microseconds=i % 2)
            finished = status.value in ("completed", "failed", "cancelled", "interrupted")
            job = SyncJob(
                id=f"{prefix}-{i:05d}",
                user_id=f"user-{i % 5}",
                project_id=f"project-{i % 3}",
                status=status,
                progress=i % 101,
                phase=None if i % 4 == 0 else "indexing",
                created_at=created,
                started_at=None if status is JobStatus.PENDING else created,
                completed_at=created + timedelta(minutes=1) if finished else None,
                error_message="disk quota exceeded" if status is JobStatus.FAILED else None,
                # Values a careless copy changes: -0.0, 1e300, key order, NUL, non-ASCII.
                metadata={
                    "z": i,
                    "a": -0.0,
                    "big": 1e300,
                    "text": "ü\u0000→",
                    "n": [1, {"x": None}],
                }
                if i % 2
                else {},
                owner_id=f"host-{i % 2}:{1000 + i}:abcd" if i % 3 else None,
                heartbeat_at=created + timedelta(microseconds=7) if i % 3 else None,
            )
            storage.insert_job(job, encode_json_object(job.metadata, "metadata")[1])
            for n, phase in enumerate(("git_pull", "indexing", "validation")[: i % 4]):
                checkpoint = Checkpoint(
                    job_id=job.id,
                    phase=phase,
                    data={"step": n, "files": [f"f{i}"], "ratio": 0.1},
                    created_at=created + timedelta(seconds=n),
                )
                assert storage.upsert_checkpoint(
                    checkpoint, encode_json_object(checkpoint.data, "data")[1]
                )


def contents(store: JobPersistence) -> list[bytes]:
    """Every job with its checkpoints, in the canonical encoding, in the interface's order."""
    storage = store.storage
    records = []
    after = None
    while True:
        from cidx_jobs import JobFilter

        page = storage.select_jobs(JobFilter(), after, 1000)
        records += [job_record(job, storage.get_checkpoints(job.id)) for job in page]
        if len(page) < 1000:
            return records
        after = (page[-1].created_at, page[-1].id)


def sqlite_store(path: Path) -> str:
    """A fresh SQLite store at ``path`` (created and migrated, as `cidx-jobs migrate` does)."""
    url = sqlite_url(path)
    open_persistence(url).close()
    return url


def count_rows(path: Path, table: str) -> int:
    # Read behind the copier's back, read-only: the target is being written meanwhile.
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


def copy_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "cidx_jobs", "copy", *args]


# -- PostgreSQL, as backends/postgres/tests/conftest.py finds it ----------------------------


def _answers(url: str) -> str | None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        return " ".join(str(error).split())
    return None


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of the database the tests use (a server that answers)."""
    pytest.importorskip("cidx_jobs_postgres", reason="the PostgreSQL backend is not installed")
    from cidx_jobs_postgres._plugin import DEFAULT_TEST_URL, TEST_URL_ENV

    enable = f"set {TEST_URL_ENV}=postgresql://USER@HOST:PORT/DATABASE to run them"
    url = os.environ.get(TEST_URL_ENV)
    problem = _answers(url or DEFAULT_TEST_URL)
    if problem is None:
        return url or DEFAULT_TEST_URL
    if url:
        pytest.fail(f"{TEST_URL_ENV}={url!r} names no server that answers: {problem}")
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(
            f"CI=true, so the PostgreSQL tests must run, but no server answers at "
            f"{DEFAULT_TEST_URL} ({problem}): start it (.ci/run does) or {enable}"
        )
    pytest.skip(f"no PostgreSQL server answers at {DEFAULT_TEST_URL} ({problem}); {enable}")


@pytest.fixture
def schema_url(postgres_url: str) -> Iterator[str]:
    """The URL of a fresh, migrated schema of the test database, dropped after the test."""
    from cidx_jobs_postgres._plugin import drop_schema

    schema = f"cidx_t_{secrets.token_hex(5)}"
    separator = "&" if "?" in postgres_url else "?"
    url = f"{postgres_url}{separator}schema={schema}"
    try:
        open_persistence(url).close()  # creates and migrates it, as `cidx-jobs migrate` does
        yield url
    finally:
        drop_schema(postgres_url, schema)


# -- between backends --------------------------------------------------------------------------


def test_memory_to_sqlite_copies_every_field_exactly(tmp_path: Path) -> None:
    target_url = sqlite_store(tmp_path / "target.db")
    with open_persistence("memory://") as source, open_persistence(target_url) as target:
        fill(source, 60)
        report = copy_store(source, target, batch_size=7)
        assert (report.copied_jobs, report.skipped_jobs) == (60, 0)
        assert (
            report.copied_checkpoints == sum(i % 4 for i in range(60)) == report.source.checkpoints
        )
        assert report.source == report.target
        assert contents(target) == contents(source)
        # The lease fields, which SyncJob's equality ignores, are the source's own.
        for job in (source.load_job("job-00001"), source.load_job("job-00003")):
            assert job is not None
            copied = target.load_job(job.id)
            assert copied is not None
            assert (copied.owner_id, copied.heartbeat_at) == (job.owner_id, job.heartbeat_at)
            assert copied.metadata == job.metadata
            assert list(copied.metadata) == list(job.metadata)  # key order too


@pytest.mark.slow
def test_sqlite_to_postgresql_from_the_command_line(tmp_path: Path, schema_url: str) -> None:
    source_url = sqlite_store(tmp_path / "jobs.db")
    with open_persistence(source_url) as source:
        fill(source, 300)
    result = cli("copy", source_url, schema_url, "--batch-size", "64", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    [summary] = json_lines(result.stdout)
    assert summary["verified"] is True
    assert (summary["copied_jobs"], summary["jobs"]) == (300, 300)
    assert summary["checkpoints"] == sum(i % 4 for i in range(300))
    with open_persistence(source_url) as source, open_persistence(schema_url) as target:
        assert contents(target) == contents(source)
        assert verify(source, target)[0].checksum == summary["sha256"]


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_non_empty_target_is_refused_and_left_alone(tmp_path: Path) -> None:
    source_url, target_url = sqlite_store(tmp_path / "a.db"), sqlite_store(tmp_path / "b.db")
    with open_persistence(source_url) as source:
        fill(source, 10)
    with open_persistence(target_url) as target:
        fill(target, 1, prefix="other")
    result = cli("copy", source_url, target_url)
    assert result.returncode == 1
    line = one_line_error(result)
    assert "already holds 1 job" in line
    assert "--resume" in line
    assert count_rows(tmp_path / "b.db", "sync_jobs") == 1
    # --resume does not make it a merge: a target that is not a copy of the source is
    # refused before anything is written to it.
    result = cli("copy", source_url, target_url, "--resume")
    assert result.returncode == 1
    line = one_line_error(result)
    assert "'other-00000'" in line
    assert "only the target holds it" in line
    assert count_rows(tmp_path / "b.db", "sync_jobs") == 1


def test_resume_refuses_a_target_only_job_met_midway_and_writes_no_more() -> None:
    """The target's newest job is the source's, so it looks like an interrupted copy, but an
    older job of its own shows it is not one: the walk stops there, with a conflict."""
    with open_persistence("memory://") as source, open_persistence("memory://") as target:
        fill(source, 40)
        newest = source.query_jobs(JobFilter(limit=1))[0]
        target.storage.insert_job(newest, encode_json_object(newest.metadata, "metadata")[1])
        stray = attrs.evolve(newest, id="stray", created_at=newest.created_at - timedelta(days=30))
        target.storage.insert_job(stray, "{}")
        with pytest.raises(CopyConflictError) as caught:
            copy_store(source, target, resume=True, batch_size=100)
        assert caught.value.job_id == "stray"
        assert target.count_jobs() == 2, "nothing more was written"


def test_verification_counts_every_job_whatever_the_pages_hold() -> None:
    """A storage may return fewer jobs than a page asks for: the walk goes on to an empty
    page, so every job is copied and verified."""

    class ShortPages(MemoryStorage):
        def select_jobs(self, filter, after, limit):  # type: ignore[no-untyped-def]
            return super().select_jobs(filter, after, min(limit, 7))

    with (
        JobPersistence(ShortPages()) as source,
        open_persistence("memory://") as target,
    ):
        fill(source, 30)
        report = copy_store(source, target, batch_size=20)
        assert report.copied_jobs == 30
        assert report.target.jobs == 30
        assert target.count_jobs() == 30


def test_a_second_spelling_of_the_same_file_is_the_same_store(tmp_path: Path) -> None:
    source_url = sqlite_store(tmp_path / "a.db")
    with open_persistence(source_url) as source:
        fill(source, 3)
    (tmp_path / "link.db").symlink_to(tmp_path / "a.db")
    for other in (sqlite_store(tmp_path / "link.db"), sqlite_store(tmp_path / "x" / ".." / "a.db")):
        result = cli("copy", source_url, other, "--resume")
        assert result.returncode == 2, result.stderr
        assert "the same store" in one_line_error(result)


def test_a_target_that_keeps_nothing_is_refused(tmp_path: Path) -> None:
    result = cli("copy", sqlite_store(tmp_path / "a.db"), "memory://")
    assert result.returncode == 2
    assert "keeps nothing" in one_line_error(result)


def test_an_empty_target_is_required_in_process_too() -> None:
    with open_persistence("memory://") as source, open_persistence("memory://") as target:
        fill(source, 3)
        fill(target, 1)
        with pytest.raises(CommandError, match="already holds 1 job"):
            copy_store(source, target)
        assert target.count_jobs() == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "wanted"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "10001"], "--batch-size"),
        (["SAME"], "the same store"),
        (["nosuch://x"], "no cidx-jobs backend named 'nosuch'"),
        (["NOSCHEMA"], "has no cidx-jobs schema yet: run `cidx-jobs migrate`"),
    ],
)
def test_usage_errors_exit_2_and_a_target_without_schema_exits_1(
    tmp_path: Path, args: list[str], wanted: str
) -> None:
    source_url = sqlite_store(tmp_path / "a.db")
    if args[0].startswith("--"):
        argv = [source_url, sqlite_url(tmp_path / "b.db"), *args]
    elif args == ["SAME"]:
        argv = [source_url, source_url + "?pool_size=6"]  # another URL, the same file
    elif args == ["NOSCHEMA"]:
        sqlite3.connect(tmp_path / "b.db").close()  # a file, but no store in it
        argv = [source_url, sqlite_url(tmp_path / "b.db")]
    else:
        argv = [source_url, *args]
    result = cli("copy", *argv)
    assert result.returncode == (1 if args == ["NOSCHEMA"] else 2), result.stderr
    assert "Traceback" not in result.stderr
    assert wanted in result.stderr


# -- conflicts ---------------------------------------------------------------------------------


def _change_status(store: JobPersistence, job_id: str) -> None:
    assert store.update_job_status(job_id, JobStatus.CANCELLED, expected=JobStatus.PENDING)


def _change_checkpoint(store: JobPersistence, job_id: str) -> None:
    job = store.load_job(job_id)
    assert job is not None
    store.storage.upsert_checkpoint(
        Checkpoint(job_id=job_id, phase="git_pull", data={"step": 99}, created_at=job.created_at),
        '{"step":99}',
    )


@pytest.mark.slow
@pytest.mark.parametrize("change", [_change_status, _change_checkpoint])
def test_a_job_that_differs_in_the_target_is_a_conflict_never_overwritten(
    tmp_path: Path, change: object
) -> None:
    source_url, target_url = sqlite_store(tmp_path / "a.db"), sqlite_store(tmp_path / "b.db")
    with open_persistence(source_url) as source, open_persistence(target_url) as target:
        fill(source, 30)
        copy_store(source, target)
        before = contents(target)
        change(source, "job-00007")  # type: ignore[operator]
    result = cli("copy", source_url, target_url, "--resume")
    assert result.returncode == 1
    line = one_line_error(result)
    assert line.startswith("cidx-jobs: CopyConflictError: ")
    assert "'job-00007'" in line
    assert "copy again into an empty target" in line
    with open_persistence(target_url) as target:
        assert contents(target) == before


def test_a_job_with_the_same_id_and_another_created_at_is_a_conflict(tmp_path: Path) -> None:
    with open_persistence("memory://") as source, open_persistence("memory://") as target:
        fill(source, 5)
        job = source.load_job("job-00002")
        assert job is not None
        target.save_job(SyncJob.create(id=job.id, user_id="mallory", project_id="x"))
        with pytest.raises(CopyConflictError) as caught:
            copy_store(source, target, resume=True, batch_size=2)
        assert caught.value.job_id == "job-00002"
        assert any(d.startswith("user_id:") for d in caught.value.differences)
        stored = target.load_job("job-00002")
        assert stored is not None
        assert stored.user_id == "mallory"


# -- resuming after a real interruption ------------------------------------------------------


@pytest.mark.slow
def test_a_copy_killed_midway_is_finished_by_resume_without_duplicates(tmp_path: Path) -> None:
    jobs = 3000
    source_url, target_url = sqlite_store(tmp_path / "a.db"), sqlite_store(tmp_path / "b.db")
    with open_persistence(source_url) as source:
        fill(source, jobs)
    process = subprocess.Popen(
        copy_command(source_url, target_url, "--batch-size", "20"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
    )
    try:
        deadline = time.monotonic() + 30
        copied = 0
        # Kill it as soon as the first batch is in: the rest of the copy is the margin.
        while not copied and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.002)
            copied = count_rows(tmp_path / "b.db", "sync_jobs")
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=10) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    held = count_rows(tmp_path / "b.db", "sync_jobs")
    assert 0 < held < jobs, "the copy was to be killed midway"
    assert held % 20 == 0, "a batch is one transaction: only whole batches survive a kill"

    refused = cli("copy", source_url, target_url)
    assert refused.returncode == 1
    assert "--resume" in one_line_error(refused)
    result = cli("copy", source_url, target_url, "--resume", "--json")
    assert result.returncode == 0, result.stderr
    [summary] = json_lines(result.stdout)
    assert summary["skipped_jobs"] == held
    assert summary["copied_jobs"] == jobs - held
    assert summary["jobs"] == jobs
    assert summary["verified"] is True
    conn = sqlite3.connect(f"file:{tmp_path / 'b.db'}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT count(*), count(DISTINCT id) FROM sync_jobs").fetchone() == (
            jobs,
            jobs,
        )
    finally:
        conn.close()
    with open_persistence(source_url) as source, open_persistence(target_url) as target:
        assert contents(target) == contents(source)


def test_resume_writes_the_checkpoints_a_copied_job_lacks() -> None:
    with open_persistence("memory://") as source, open_persistence("memory://") as target:
        fill(source, 8)
        job = source.load_job("job-00003")  # three checkpoints
        assert job is not None
        target.storage.insert_job(job, encode_json_object(job.metadata, "metadata")[1])
        report = copy_store(source, target, resume=True)
        assert (report.copied_jobs, report.skipped_jobs) == (7, 1)
        assert contents(target) == contents(source)


# -- the checksum ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE sync_jobs SET heartbeat_at = heartbeat_at + 1 WHERE id = 'job-00004'",
        "UPDATE sync_jobs SET owner_id = 'host-9:1:abcd' WHERE id = 'job-00004'",
        "UPDATE sync_jobs SET metadata = "
        '\'{"a":-0.0,"z":3,"big":1e300,"text":"ü\\u0000→","n":[1,{"x":null}]}\' '
        "WHERE id = 'job-00003'",
        'UPDATE job_checkpoints SET data = \'{"files":["f1"],"step":0,"ratio":0.1}\' '
        "WHERE job_id = 'job-00001'",
        "DELETE FROM job_checkpoints WHERE job_id = 'job-00002' AND phase = 'indexing'",
    ],
    ids=["heartbeat+1us", "owner", "metadata-key-order", "checkpoint-data", "checkpoint-gone"],
)
def test_the_verification_sees_any_difference(tmp_path: Path, statement: str) -> None:
    target_url = sqlite_store(tmp_path / "target.db")
    with open_persistence("memory://") as source:
        fill(source, 6)
        with open_persistence(target_url) as target:
            copy_store(source, target)
        conn = sqlite3.connect(tmp_path / "target.db")
        try:
            assert conn.execute(statement).rowcount == 1
            conn.commit()
        finally:
            conn.close()
        with open_persistence(target_url) as target:
            with pytest.raises(CopyVerificationError) as caught:
                verify(source, target)
    error = caught.value
    assert (error.source.jobs, error.target.jobs) == (6, 6)
    assert error.source.checksum != error.target.checksum
    assert "job-0000" in error.first_difference


# -- the progress bar --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    __import__("importlib").util.find_spec("rich") is None, reason="progress bars need rich"
)
def test_a_terminal_shows_the_copy_and_the_verification_progress(tmp_path: Path) -> None:
    from .test_cli_terminal import BAR, in_terminal

    source_url, target_url = sqlite_store(tmp_path / "a.db"), sqlite_store(tmp_path / "b.db")
    with open_persistence(source_url) as source:
        fill(source, 40)
    status, screen = in_terminal(
        "copy",
        source_url,
        target_url,
        "--batch-size",
        "10",
        env=cli_env(TERM="xterm-256color", COLUMNS="120"),
    )
    assert status == 0, screen
    assert "copying" in screen
    assert "verifying" in screen
    assert BAR in screen
    assert "40/40" in screen
    assert "verified: both hold 40 job(s)" in screen
