"""Every operator command of ``cidx-jobs``, run as a person runs it: a child process on a real
SQLite file, output piped, checking what it prints, what it changes and its exit status
(0 ok, 1 problems found, 2 usage or configuration error)."""

from __future__ import annotations

import sqlite3
import stat
import sys
from pathlib import Path

import pytest

from cidx_jobs import JobStatus, open_persistence

from .cli_helpers import OPERATOR_COMMANDS, cli, json_lines, make_database, one_line_error

pytest.importorskip("cidx_jobs_sqlite", reason="the commands run on the SQLite backend")
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and paths")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return make_database(tmp_path / "jobs.db")


def status_of(url: str, job_id: str) -> JobStatus:
    with open_persistence(url) as store:
        job = store.load_job(job_id)
        assert job is not None
        return job.status


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()


# -- every command ---------------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in OPERATOR_COMMANDS:
        assert command in result.stdout
    assert "0 ok, 1 problems found, 2 usage" in result.stdout


@pytest.mark.parametrize("command", OPERATOR_COMMANDS)
def test_no_store_configured_is_a_configuration_error(command: str, tmp_path: Path) -> None:
    args = {"show": ["x"], "cancel": ["x"], "fail": ["x", "--reason", "r"], "backup": ["b.db"]}
    result = cli(command, *args.get(command, []))
    assert result.returncode == 2
    assert "pass --url URL or set CIDX_JOBS_URL" in one_line_error(result)


def test_an_unknown_backend_and_a_missing_file_say_what_to_do(tmp_path: Path) -> None:
    unknown = cli("stats", "--url", "nosuch:///x")
    assert unknown.returncode == 2
    assert "BackendNotFoundError" in one_line_error(unknown)
    missing = tmp_path / "typo.db"
    result = cli("stats", url=f"sqlite:///{missing}")
    assert result.returncode == 1
    assert "does not exist" in one_line_error(result)
    assert not missing.exists()  # a command never creates a database


def test_a_usage_error_exits_2_without_a_traceback(url: str) -> None:
    for args in (["list", "--status", "sleeping"], ["list", "--since", "yesterday-ish"]):
        result = cli(*args, url=url)
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr
    assert "sleeping" in cli("list", "--status", "sleeping", url=url).stderr
    assert cli("fail", "sync-00", url=url).returncode == 2  # --reason is required


# -- list ------------------------------------------------------------------------------------


def test_list_prints_an_aligned_table_newest_first(url: str) -> None:
    result = cli("list", url=url)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "ID",
        "USER",
        "PROJECT",
        "STATUS",
        "PROGRESS",
        "PHASE",
        "CREATED",
        "FINISHED",
        "ERROR",
    ]
    ids = [line.split()[0] for line in lines[1:]]
    assert ids[:2] == ["sync-11", "sync-10"]  # newest first
    assert ids[-4:] == ["stuck", "old-2", "old-1", "old-0"]
    assert "\x1b[" not in result.stdout  # piped: plain
    status_column = lines[0].index("STATUS")
    assert all(line[status_column - 2 : status_column] == "  " for line in lines[1:])
    assert "disk quota exceeded" in result.stdout


def test_list_filters(url: str) -> None:
    alice = json_lines(cli("list", "--json", "--user", "alice", url=url).stdout)
    assert {job["user_id"] for job in alice} == {"alice"}
    assert len(alice) == 6
    finished = json_lines(cli("list", "--json", "--status", "failed,completed", url=url).stdout)
    assert {job["id"] for job in finished} == {"sync-02", "sync-03", "old-0", "old-1", "old-2"}
    recent = json_lines(cli("list", "--json", "--since", "1d", "--project", "web", url=url).stdout)
    assert recent
    assert all(job["project_id"] == "web" for job in recent)
    assert not {"old-0", "old-1", "old-2"} & {job["id"] for job in recent}
    older = json_lines(cli("list", "--json", "--until", "1d", url=url).stdout)
    assert {job["id"] for job in older} == {"old-0", "old-1", "old-2"}


def test_list_limit_and_all_page_through_cursors(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    from cidx_jobs import SyncJob

    with open_persistence(url) as store, store.transaction():
        for i in range(1203):
            store.save_job(SyncJob.create(id=f"j{i:05d}", user_id="u", project_id="p"))
    limited = cli("list", "--limit", "3", url=url)
    assert limited.returncode == 0
    assert len(limited.stdout.splitlines()) == 1 + 3 + 1  # header, rows, footer
    assert "3 of 1203 matching jobs" in limited.stdout
    everything = json_lines(cli("list", "--all", "--json", url=url).stdout)
    assert len(everything) == 1203  # beyond one page of 1000
    assert len({job["id"] for job in everything}) == 1203
    assert [job["id"] for job in everything] == sorted(
        (job["id"] for job in everything), reverse=True
    )
    assert cli("list", "--all", "--limit", "5", url=url).returncode == 2


# -- show ------------------------------------------------------------------------------------


def test_show_the_job_its_lease_and_its_checkpoints(url: str) -> None:
    result = cli("show", "stuck", url=url)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "job stuck" in out
    assert "old-host:4242:dead" in out
    assert "expired" in out
    assert "cidx-jobs recover takes it" in out
    assert "git_pull" in out
    assert '{"next": 1}' in out
    data = json_lines(cli("show", "stuck", "--json", url=url).stdout)[0]
    assert data["job"]["status"] == "running"
    assert data["lease"]["expired"] is True
    assert [c["phase"] for c in data["checkpoints"]] == ["git_pull"]


def test_show_an_unknown_job_exits_1(url: str) -> None:
    result = cli("show", "nope", url=url)
    assert result.returncode == 1
    assert "no job with id 'nope'" in one_line_error(result)


# -- stats -----------------------------------------------------------------------------------


def test_stats(url: str) -> None:
    result = cli("stats", url=url)
    assert result.returncode == 0, result.stderr
    assert "expired leases" in result.stdout
    assert "stuck" in result.stdout
    data = json_lines(cli("stats", "--json", "--top", "2", url=url).stdout)[0]
    assert data["total"] == 16
    assert data["jobs_by_status"]["running"] == 2
    assert data["jobs_by_status"]["completed"] == 4
    assert data["oldest_active"]["id"] == "stuck"
    assert data["expired_leases"]["job_ids"] == ["stuck"]
    assert data["top_users"] == [{"user_id": "alice", "jobs": 6}, {"user_id": "bob", "jobs": 6}]
    assert data["storage"]["schema_version"] == data["storage"]["latest_schema_version"]
    assert data["storage"]["size_bytes"] > 0


def test_stats_on_a_backend_without_operator_methods() -> None:
    result = cli("stats", url="memory://")
    assert result.returncode == 0, result.stderr
    assert "not supported by this backend" in result.stdout
    data = json_lines(cli("stats", "--json", url="memory://").stdout)[0]
    assert data["total"] == 0
    assert "unsupported" in data["storage"]


# -- cleanup ---------------------------------------------------------------------------------


def test_cleanup_dry_run_deletes_nothing_then_a_real_run_deletes(url: str) -> None:
    dry = cli("cleanup", "--dry-run", url=url)
    assert dry.returncode == 0, dry.stderr
    assert "would delete 3 job(s) and 0 checkpoint(s)" in dry.stdout
    assert "completed" in dry.stdout  # the cutoffs per status
    assert len(json_lines(cli("list", "--json", "--status", "completed", url=url).stdout)) == 4
    real = cli("cleanup", "--json", url=url)
    assert real.returncode == 0, real.stderr
    report = json_lines(real.stdout)[0]
    assert (report["jobs"], report["dry_run"]) == (3, False)
    left = {job["id"] for job in json_lines(cli("list", "--json", url=url).stdout)}
    assert not {"old-0", "old-1", "old-2"} & left
    assert "sync-03" in left
    everything = cli("cleanup", "--retention-days", "0", url=url)
    assert everything.returncode == 0
    assert "deleted 2 job(s)" in everything.stdout  # sync-02 (failed) and sync-03 (completed)


# -- recover ---------------------------------------------------------------------------------


def test_recover_takes_the_abandoned_job_once(url: str) -> None:
    result = cli("recover", url=url)
    assert result.returncode == 0, result.stderr
    assert "took over 1 job(s)" in result.stdout
    assert "stuck" in result.stdout
    assert "git_pull" in result.stdout  # its resume point
    assert status_of(url, "stuck") is JobStatus.INTERRUPTED
    assert status_of(url, "sync-01") is JobStatus.RUNNING  # a live owner's job stays
    again = cli("recover", "--json", url=url)
    assert json_lines(again.stdout)[0]["interrupted"] == []


# -- cancel and fail -------------------------------------------------------------------------


def test_cancel_and_fail_unfinished_jobs(url: str) -> None:
    cancelled = cli("cancel", "sync-00", "--reason", "operator: repo deleted", url=url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "pending -> cancelled" in cancelled.stdout
    assert status_of(url, "sync-00") is JobStatus.CANCELLED
    failed = cli("fail", "sync-01", "--reason", "stuck for a day", "--json", url=url)
    assert failed.returncode == 0
    assert json_lines(failed.stdout)[0]["changed"] is True
    with open_persistence(url) as store:
        job = store.load_job("sync-01")
        assert job is not None
        assert job.error_message == "stuck for a day"


def test_an_override_never_reopens_or_rewrites_a_finished_job(url: str) -> None:
    with open_persistence(url) as store:
        before = store.load_job("sync-03")
    for args in (["cancel", "sync-03"], ["fail", "sync-03", "--reason", "x"]):
        result = cli(*args, url=url)
        assert result.returncode == 1
        assert "finished: it was not changed" in one_line_error(result)
    with open_persistence(url) as store:
        after = store.load_job("sync-03")
    assert after == before  # still completed, same completed_at, no error message
    assert cli("cancel", "nope", url=url).returncode == 1


# -- migrate ---------------------------------------------------------------------------------


@pytest.fixture
def old_database(tmp_path: Path) -> tuple[str, Path]:
    """A database of schema version 2 (before the index rebuild of version 3), with a job."""
    from cidx_jobs_sqlite import _schema

    path = tmp_path / "v2.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        _schema.apply_migrations(conn, path, lambda c: c.execute("BEGIN IMMEDIATE"), 2)
        conn.execute(
            "INSERT INTO sync_jobs (id, user_id, project_id, status, created_at) "
            "VALUES ('v2-job', 'alice', 'web', 'pending', 1700000000000000)"
        )
    finally:
        conn.close()
    return f"sqlite:///{path}", path


def test_migrate_check_changes_nothing_and_exits_1_when_pending(
    old_database: tuple[str, Path],
) -> None:
    url, path = old_database
    check = cli("migrate", "--check", url=url)
    assert check.returncode == 1, check.stderr
    assert "schema version 2" in check.stdout
    assert "3: " in check.stdout
    assert user_version(path) == 2
    # Reading commands read it as it is, with a warning; writing commands refuse.
    listing = cli("list", url=url)
    assert listing.returncode == 0
    assert "v2-job" in listing.stdout
    assert "run `cidx-jobs migrate`" in listing.stderr
    refused = cli("cancel", "v2-job", url=url)
    assert refused.returncode == 1
    assert "run `cidx-jobs migrate`" in one_line_error(refused)
    assert user_version(path) == 2
    migrated = cli("migrate", url=url)
    assert migrated.returncode == 0, migrated.stderr
    assert "migrated from schema version 2 to 3" in migrated.stdout
    assert user_version(path) == 3
    assert cli("migrate", "--check", url=url).returncode == 0
    assert json_lines(cli("migrate", "--json", url=url).stdout)[0]["migrated"] is False


def test_migrate_on_a_backend_without_a_schema() -> None:
    result = cli("migrate", "--check", url="memory://")
    assert result.returncode == 0
    assert "no versioned schema" in result.stdout


# -- doctor ----------------------------------------------------------------------------------


def test_doctor_on_a_healthy_database_exits_0(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fine.db'}"
    open_persistence(url).close()
    result = cli("doctor", url=url)
    assert result.returncode == 0, result.stdout + result.stderr
    for check in ("integrity", "journal_mode", "wal_size", "permissions", "leases", "clock"):
        assert check in result.stdout
    assert "no problems" in result.stdout
    data = json_lines(cli("doctor", "--json", "--full", url=url).stdout)[0]
    assert data["ok"] is True
    integrity = next(c for c in data["checks"] if c["name"] == "integrity")
    assert integrity["data"]["check"] == "integrity_check"


def test_doctor_finds_an_abandoned_job_and_says_what_to_do(url: str) -> None:
    result = cli("doctor", url=url)
    assert result.returncode == 1
    assert "what to do" in result.stdout
    assert "leases: run cidx-jobs recover" in result.stdout
    cli("recover", url=url)
    assert cli("doctor", url=url).returncode == 0


def test_doctor_finds_damage(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    url = make_database(path)
    # Overwrite the middle of the file: the pages of the tables and indexes.
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.seek(size // 2)
        file.write(b"\xff" * 4096)
    unchecked = cli("doctor", url=f"{url}?check_on_open=off&recover_corrupt=false")
    assert unchecked.returncode == 1, unchecked.stdout + unchecked.stderr
    assert "integrity" in unchecked.stdout
    assert "found damage" in unchecked.stdout
    # The default open finds the damage itself and salvages the file; doctor reports it.
    recovered = cli("doctor", url=url)
    assert recovered.returncode == 1
    assert "was recovered when this command opened it" in recovered.stdout
    assert list(tmp_path.glob("damaged.db.corrupt-*"))


def test_doctor_finds_bad_permissions(url: str, tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.chmod(0o666)
    result = cli("doctor", url=url)
    assert result.returncode == 1
    assert "anyone may write to jobs.db" in result.stdout
    assert "chmod o-w" in result.stdout
    path.chmod(0o600)


# -- backup ----------------------------------------------------------------------------------


def test_backup_writes_a_consistent_copy(url: str, tmp_path: Path) -> None:
    target = tmp_path / "copy.db"
    result = cli("backup", str(target), url=url)
    assert result.returncode == 0, result.stderr
    assert f"to {target}" in result.stdout
    with open_persistence(f"sqlite:///{target}") as copy:
        assert copy.count_jobs() == 16
    exists = cli("backup", str(target), url=url)
    assert exists.returncode == 2
    assert "--force" in one_line_error(exists)
    assert cli("backup", str(target), "--force", url=url).returncode == 0
    folder = tmp_path / "backups"
    folder.mkdir()
    dated = json_lines(cli("backup", str(folder), "--json", url=url).stdout)[0]
    assert Path(dated["target"]).parent == folder
    assert dated["bytes"] > 0


def test_backup_of_a_backend_that_cannot_copy_itself_says_what_to_use(tmp_path: Path) -> None:
    result = cli("backup", str(tmp_path / "x.db"), url="memory://")
    assert result.returncode == 2
    assert "backup tool" in one_line_error(result)


def test_info_json() -> None:
    data = json_lines(cli("info", "--json").stdout)[0]
    assert {"sqlite", "memory"} <= {backend["name"] for backend in data["backends"]}


def test_a_plugin_observer_that_fails_is_one_line(url: str, tmp_path: Path) -> None:
    # Plugins log their failures with a traceback; the command line shows one line each.
    plugin = tmp_path / "broken_observer.py"
    plugin.write_text(
        "from cidx_jobs import hookimpl\n"
        "class Broken:\n"
        "    @hookimpl\n"
        "    def cidx_jobs_status_changed(self):\n"
        "        raise RuntimeError('observer broke')\n"
    )
    runner = tmp_path / "run.py"
    runner.write_text(
        "import sys\n"
        "from cidx_jobs import _plugins\n"
        "from broken_observer import Broken\n"
        "original = _plugins.get_plugin_manager\n"
        "def patched(**kw):\n"
        "    pm = original(**kw)\n"
        "    pm.register(Broken(), name='broken')\n"
        "    return pm\n"
        "_plugins.get_plugin_manager = patched\n"
        "from cidx_jobs._cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    import subprocess

    from .cli_helpers import cli_env

    result = subprocess.run(
        [sys.executable, str(runner), "cancel", "sync-00"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=cli_env(CIDX_JOBS_URL=url, PYTHONPATH=str(tmp_path)),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "observer broke" in result.stderr
    assert status_of(url, "sync-00") is JobStatus.CANCELLED


def test_reading_commands_leave_the_file_as_it_was(url: str, tmp_path: Path) -> None:
    # Reading commands open with migrate=false: they leave the file's bytes alone.
    path = tmp_path / "jobs.db"
    before = path.read_bytes()
    mode = stat.S_IMODE(path.stat().st_mode)
    for command in ("list", "stats", "doctor"):
        cli(command, url=url)
    assert path.read_bytes() == before
    assert stat.S_IMODE(path.stat().st_mode) == mode
