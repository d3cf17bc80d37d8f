"""Every operator command of ``cidx-jobs``, run as a person runs it: a child process on a real
SQLite file, output piped, checking what it prints, what it changes and its exit status
(0 ok, 1 problems found, 2 usage or configuration error)."""

from __future__ import annotations

import sqlite3
import stat
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from cidx_jobs import JobStatus, open_persistence
from cidx_jobs.errors import ConfigError
from cidx_jobs_sqlite import SCHEMA_VERSION

from .cli_helpers import OPERATOR_COMMANDS, cli, json_lines, make_database, one_line_error

pytest.importorskip("cidx_jobs_sqlite", reason="the commands run on the SQLite backend")
pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions and paths"),
    pytest.mark.slow,  # every test runs the command line in processes of its own
]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return make_database(tmp_path / "jobs.db")


def status_of(url: str, job_id: str) -> JobStatus:
    with open_persistence(url) as store:
        job = store.load_job(job_id)
        assert job is not None
        return job.status


def database_files(folder: Path) -> list[str]:
    """The files in ``folder`` but SQLite's ``-wal`` and ``-shm`` (its shared memory, which
    a read-only connection may create too; SQLite gives them the database's owner)."""
    return sorted(p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm")))


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


@pytest.mark.parametrize(
    "args",
    [
        ["list", "--since", "9999999d"],
        ["list", "--since", "0001-01-01T00:00+01:00"],
        ["list", "--until", "9999-12-31T23:59-01:00"],
        ["cleanup", "--dry-run", "--retention-days", "1e12"],
        ["cleanup", "--dry-run", "--retention-days", "inf"],
        ["show", "stuck", "--lease-timeout", "1e300"],
        ["stats", "--lease-timeout", "1e12"],
        ["doctor", "--lease-timeout", "nan"],
        ["recover", "--lease-timeout", "-1"],
    ],
)
def test_an_out_of_range_argument_exits_2_with_one_error_line(url: str, args: list[str]) -> None:
    result = cli(*args, url=url)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "internal error" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr


def test_the_largest_arguments_work(url: str) -> None:
    assert cli("list", "--since", "36500d", url=url).returncode == 0
    assert cli("cleanup", "--dry-run", "--retention-days", "36500", url=url).returncode == 0
    assert cli("stats", "--lease-timeout", str(36500 * 86400), url=url).returncode == 0


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
    assert "cidx-jobs recover marks it interrupted" in out
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


@pytest.fixture
def waiting_url(tmp_path: Path) -> str:
    """The database of ``url``, plus a queued job whose owner died an hour ago."""
    from cidx_jobs import SyncJob, utcnow

    url = make_database(tmp_path / "jobs.db")
    with open_persistence(url) as store:
        store.save_job(
            SyncJob(
                id="waiting",
                user_id="erin",
                project_id="web",
                status=JobStatus.QUEUED,
                created_at=utcnow() - timedelta(hours=2),
                owner_id="old-host:4242:dead",
                heartbeat_at=utcnow() - timedelta(hours=1),
            )
        )
    return url


def test_a_server_recovering_right_after_recover_gets_the_jobs(waiting_url: str) -> None:
    from cidx_jobs import JobFilter

    url = waiting_url
    result = cli("recover", "--json", url=url)
    assert result.returncode == 0, result.stderr
    report = json_lines(result.stdout)[0]
    assert [job["id"] for job in report["requeue"]] == ["waiting"]
    assert report["released"] == ["waiting"]
    # A server starting now (any lease timeout) re-queues the queued job at once, and finds
    # the interrupted one by its status.
    with open_persistence(f"{url}?owner_id=server-2") as server:
        recovered = server.recover_interrupted_jobs()
        assert [job.id for job in recovered.requeue] == ["waiting"]
        interrupted = server.query_jobs(JobFilter(statuses={JobStatus.INTERRUPTED}))
        assert [job.id for job in interrupted] == ["stuck"]
        point = server.resume_point("stuck")
        assert point is not None
        assert point.phase == "git_pull"


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


def test_a_schema_too_old_to_read_says_to_migrate(tmp_path: Path) -> None:
    from cidx_jobs_sqlite import _schema

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        _schema.apply_migrations(conn, path, lambda c: c.execute("BEGIN IMMEDIATE"), 1)
    finally:
        conn.close()
    url = f"sqlite:///{path}"
    for command in (["list"], ["stats"], ["show", "x"]):
        result = cli(*command, url=url)
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        last = result.stderr.strip().splitlines()[-1]
        assert "older than this release can read" in last, command
        assert "cidx-jobs migrate" in last
    doctor = cli("doctor", url=url)
    assert doctor.returncode == 1
    assert "schema version 1" in doctor.stdout
    assert user_version(path) == 1


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
    assert f"migrated from schema version 2 to {SCHEMA_VERSION}" in migrated.stdout
    assert user_version(path) == SCHEMA_VERSION
    assert cli("migrate", "--check", url=url).returncode == 0
    assert json_lines(cli("migrate", "--json", url=url).stdout)[0]["migrated"] is False


def test_migrate_creates_a_missing_database_and_no_message_names_internal_options(
    tmp_path: Path,
) -> None:
    path = tmp_path / "new" / "jobs.db"
    url = f"sqlite:///{path}"
    for command in (["stats"], ["list"], ["migrate", "--check"], ["cancel", "x"]):
        result = cli(*command, url=url)
        assert result.returncode == 1, (command, result.stderr)
        line = one_line_error(result)
        assert "does not exist" in line
        assert "cidx-jobs migrate" in line
        assert "migrate=false" not in line
        assert "read_only" not in line
        assert not path.exists()
    created = cli("migrate", url=url)
    assert created.returncode == 0, created.stderr
    assert "created the database" in created.stdout
    assert user_version(path) >= 1
    assert cli("migrate", "--check", url=url).returncode == 0


_SCHEMA_BACKEND = """
import sys
from pathlib import Path
from cidx_jobs import _plugins, hookimpl
from cidx_jobs.backend import Capability
from cidx_jobs.errors import StorageUnavailableError

OPENED = Path(sys.argv[1])

def factory(config):
    config.reader().finish()  # refuses every option, migrate=false too
    OPENED.write_text("opened, and so migrated")
    raise StorageUnavailableError("the test backend stops here")

class Provider:
    @hookimpl
    def cidx_jobs_register_backends(self, register):
        register("schemadb", factory, capabilities=[Capability.PERSISTENT])

original = _plugins.get_plugin_manager
def patched(**kw):
    pm = original(**kw)
    pm.register(Provider(), name="schemadb-provider")
    return pm
_plugins.get_plugin_manager = patched
from cidx_jobs._cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_a_backend_that_cannot_open_without_migrating_is_opened_only_by_migrate(
    tmp_path: Path,
) -> None:
    import subprocess

    from .cli_helpers import cli_env

    runner = tmp_path / "run.py"
    runner.write_text(_SCHEMA_BACKEND)
    opened = tmp_path / "opened"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(runner), str(opened), *args],
            capture_output=True,
            text=True,
            env=cli_env(CIDX_JOBS_URL="schemadb://db.example/jobs"),
            timeout=60,
            check=False,
        )

    for command in (["stats"], ["list"], ["doctor"], ["migrate", "--check"], ["cancel", "x"]):
        result = run(*command)
        assert result.returncode == 2, (command, result.stderr)
        line = one_line_error(result)
        assert "only `cidx-jobs migrate` may migrate" in line
        assert "migrate=false" not in line
        assert not opened.exists(), command
    run("migrate")
    assert opened.exists()  # migrate opens it as the server does


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


def _damage(path: Path) -> None:
    # Overwrite the middle of the file: the pages of the tables and indexes.
    size = path.stat().st_size
    with open(path, "r+b") as file:
        file.seek(size // 2)
        file.write(b"\xff" * 4096)


def test_doctor_finds_damage_and_never_salvages(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    url = make_database(path)
    _damage(path)
    damaged = path.read_bytes()
    # Even when the URL asks the server to salvage at open, a command never does: a running
    # server's live file must not be moved aside.
    for given in (url, f"{url}?recover_corrupt=true&check_on_open=full"):
        result = cli("doctor", url=given)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "found damage" in result.stdout
        assert "start one server" in result.stdout
        assert "was recovered" not in result.stdout
    assert not list(tmp_path.glob("damaged.db.corrupt-*"))
    assert path.read_bytes() == damaged
    assert database_files(tmp_path) == ["damaged.db"]


def test_reading_commands_on_a_damaged_file_change_nothing(tmp_path: Path) -> None:
    path = tmp_path / "damaged.db"
    url = make_database(path)
    _damage(path)
    damaged = path.read_bytes()
    for command in (["list"], ["show", "stuck"], ["stats"], ["migrate", "--check"]):
        result = cli(*command, url=url)
        assert "Traceback" not in result.stderr
        assert path.read_bytes() == damaged, command
    assert database_files(tmp_path) == ["damaged.db"]


def test_doctor_reports_a_store_it_cannot_open_as_a_problem(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    path.write_bytes(b"not a database, but the configured path" * 200)
    before = path.read_bytes()
    result = cli("doctor", url=f"sqlite:///{path}")
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot open the store" in result.stdout
    assert "what to do" in result.stdout
    assert path.read_bytes() == before


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


def test_backup_refuses_the_database_itself(url: str, tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    before = path.read_bytes()
    for target in (str(path), f"{tmp_path}/./jobs.db"):
        result = cli("backup", target, "--force", url=url)
        assert result.returncode == 2, result.stderr
        assert "the database itself" in one_line_error(result)
    link = tmp_path / "link.db"
    link.symlink_to(path)
    assert cli("backup", str(link), "--force", url=url).returncode == 2
    assert path.read_bytes() == before


def test_backup_replaces_the_previous_copy_only_when_the_new_one_is_whole(
    url: str, tmp_path: Path
) -> None:
    target = tmp_path / "copy.db"
    assert cli("backup", str(target), url=url).returncode == 0
    previous = target.read_bytes()
    # A copy that fails midway (here: the backend's copy raises) leaves the old one whole.
    runner = tmp_path / "run.py"
    runner.write_text(
        "import sys\n"
        "from cidx_jobs_sqlite import SqliteStorage\n"
        "def broken(self, target):\n"
        "    open(target, 'wb').write(b'half a copy')\n"
        "    raise OSError('disk went away')\n"
        "SqliteStorage.backup = broken\n"
        "from cidx_jobs._cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    import subprocess

    from .cli_helpers import cli_env

    result = subprocess.run(
        [sys.executable, str(runner), "backup", str(target), "--force"],
        capture_output=True,
        text=True,
        env=cli_env(CIDX_JOBS_URL=url),
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert target.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir() if "partial" in p.name) == []


def test_backup_to_a_folder_and_to_what_is_not_a_database(url: str, tmp_path: Path) -> None:
    missing = cli("backup", f"{tmp_path}/backups/", url=url)
    assert missing.returncode == 2
    assert "does not exist" in one_line_error(missing)
    assert not (tmp_path / "backups").exists()
    (tmp_path / "backups").mkdir()
    dated = json_lines(cli("backup", f"{tmp_path}/backups/", "--json", url=url).stdout)[0]
    assert Path(dated["target"]).parent == tmp_path / "backups"
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database")
    refused = cli("backup", str(notes), "--force", url=url)
    assert refused.returncode == 2
    assert "not an SQLite database" in one_line_error(refused)
    assert notes.read_text() == "not a database"


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
    # Reading commands open read-only: they leave the file's bytes alone and create nothing.
    path = tmp_path / "jobs.db"
    before = path.read_bytes()
    mode = stat.S_IMODE(path.stat().st_mode)
    files = database_files(tmp_path)
    backup = tmp_path.parent / f"{tmp_path.name}-copy.db"
    for command in (
        ["list"],
        ["show", "stuck"],
        ["stats"],
        ["doctor"],
        ["migrate", "--check"],
        ["backup", str(backup)],
    ):
        cli(*command, url=url)
        assert path.read_bytes() == before, command
        assert database_files(tmp_path) == files, command
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert backup.is_file()


def test_reading_commands_need_only_read_permission(url: str, tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess

    path = tmp_path / "jobs.db"
    if os.geteuid() != 0 or shutil.which("chattr") is None:
        pytest.skip("needs root and chattr to make the file read-only even for root")
    if subprocess.run(["chattr", "+i", str(path)], check=False).returncode != 0:
        pytest.skip("this file system does not take chattr +i")
    try:
        stats = cli("stats", "--json", url=url)
        assert stats.returncode == 0, stats.stderr
        assert json_lines(stats.stdout)[0]["total"] == 16
        assert cli("list", url=url).returncode == 0
        assert cli("show", "stuck", url=url).returncode == 0
        assert cli("backup", str(tmp_path.parent / f"{tmp_path.name}.db"), url=url).returncode == 0
        doctor = cli("doctor", url=url)
        assert doctor.returncode == 1
        assert "permissions" in doctor.stdout
        assert "read and write permission" in doctor.stdout
        # A command that writes fails with one line.
        cancel = cli("cancel", "sync-00", url=url)
        assert cancel.returncode == 1
        one_line_error(cancel)
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_a_reader_that_goes_away_gives_exit_141(url: str) -> None:
    import os
    import subprocess

    from .cli_helpers import cli_env

    read, write = os.pipe()
    os.close(read)  # `cidx-jobs doctor | true`: nobody reads
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cidx_jobs", "list", "--limit", "100"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(CIDX_JOBS_URL=url),
            timeout=60,
            check=False,
        )
    finally:
        os.close(write)
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr


# -- found by the second review --------------------------------------------------------------


def test_backup_never_replaces_a_companion_file_of_the_database(url: str, tmp_path: Path) -> None:
    # An open store keeps an (often empty) -wal beside the database; replacing it would
    # break every server that has the database open.
    with open_persistence(url) as server:
        wal = tmp_path / "jobs.db-wal"
        assert wal.exists()
        wal_before = wal.read_bytes()
        for companion in ("jobs.db-wal", "jobs.db-shm"):
            result = cli("backup", str(tmp_path / companion), "--force", url=url)
            assert result.returncode == 2, result.stdout + result.stderr
            message = one_line_error(result)
            assert "companion" in message or "not an SQLite database" in message
        assert wal.read_bytes() == wal_before
        assert server.count_jobs() == 16  # the server still works
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    refused = cli("backup", str(empty), "--force", url=url)
    assert refused.returncode == 2
    assert "not an SQLite database" in one_line_error(refused)


def test_a_backup_is_never_more_readable_than_the_database(url: str, tmp_path: Path) -> None:
    (tmp_path / "jobs.db").chmod(0o600)
    target = tmp_path / "copy.db"
    assert cli("backup", str(target), url=url).returncode == 0
    assert target.stat().st_mode & 0o777 == 0o600
    assert cli("backup", str(target), "--force", url=url).returncode == 0
    assert target.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "args",
    [
        ("stats", "--top", "99999999999999999999999"),
        ("list", "--limit", "1000001"),
        ("stats", "--lease-timeout", "1e-300"),
        ("doctor", "--lease-timeout", "0.0001"),
    ],
)
def test_counts_and_durations_out_of_range_are_usage_errors(
    url: str, args: tuple[str, ...]
) -> None:
    result = cli(*args, url=url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "error: argument" in result.stderr


def test_read_only_refuses_options_that_would_write(tmp_path: Path) -> None:
    url = make_database(tmp_path / "jobs.db")
    for option in ("migrate", "recover_corrupt"):
        with pytest.raises(ConfigError) as caught:
            open_persistence(f"{url}?read_only=true&{option}=true")
        assert caught.value.option == option
    with open_persistence(f"{url}?read_only=true&migrate=false") as store:
        assert store.count_jobs() == 16


def test_doctor_after_recover_does_not_send_the_operator_round_in_circles(
    waiting_url: str,
) -> None:
    url = waiting_url
    assert cli("recover", url=url).returncode == 0
    doctor = cli("doctor", "--json", url=url)
    checks = {check["name"]: check for check in json_lines(doctor.stdout)[0]["checks"]}
    leases = checks["leases"]
    # the released queued job waits for a server; recover cannot do more for it
    assert leases["health"] == "warning", leases
    assert "cidx-jobs recover" not in (leases.get("advice") or "")
    shown = cli("show", "waiting", url=url).stdout
    assert "a server's recovery re-queues it" in shown
