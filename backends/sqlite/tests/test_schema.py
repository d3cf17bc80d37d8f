"""The schema read back from sqlite_master, migrations, and the query plans it serves."""

from __future__ import annotations

import hashlib
import logging
import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from cidx_jobs import ACTIVE_STATUSES, LEASED_STATUSES, JobFilter, JobPersistence, JobStatus
from cidx_jobs.errors import SchemaVersionError
from cidx_jobs_sqlite import MIGRATIONS, SCHEMA_VERSION, _schema, _statements
from cidx_jobs_sqlite._schema import ACTIVE_SQL, LEASED_SQL, apply_migrations

from .conftest import OpenStore, make_job, minutes, raw_connect, storage_of

#: What the latest schema must hold, written out by hand (columns: name, declared type,
#: not null, primary-key position).
EXPECTED_COLUMNS = {
    "sync_jobs": [
        ("id", "TEXT", 1, 1),
        ("user_id", "TEXT", 1, 0),
        ("project_id", "TEXT", 1, 0),
        ("status", "TEXT", 1, 0),
        ("progress", "INTEGER", 1, 0),
        ("phase", "TEXT", 0, 0),
        ("created_at", "INTEGER", 1, 0),
        ("started_at", "INTEGER", 0, 0),
        ("completed_at", "INTEGER", 0, 0),
        ("error_message", "TEXT", 0, 0),
        ("metadata", "TEXT", 1, 0),
        ("owner_id", "TEXT", 0, 0),
        ("heartbeat_at", "INTEGER", 0, 0),
        ("lease_token", "TEXT", 0, 0),
    ],
    "job_checkpoints": [
        ("job_id", "TEXT", 1, 1),
        ("phase", "TEXT", 1, 2),
        ("data", "TEXT", 1, 0),
        ("created_at", "INTEGER", 1, 0),
    ],
}
#: Each index: its table and its key columns with their sort order (True = DESC).
EXPECTED_INDEXES = {
    "sync_jobs_user_status_created": (
        "sync_jobs",
        [("user_id", False), ("status", False), ("created_at", True)],
    ),
    "sync_jobs_user_created": ("sync_jobs", [("user_id", False), ("created_at", True)]),
    "sync_jobs_status_created": ("sync_jobs", [("status", False), ("created_at", True)]),
    "sync_jobs_created": ("sync_jobs", [("created_at", True), ("id", True)]),
    # The second key is the expression coalesce(completed_at, created_at).
    "sync_jobs_status_finished": ("sync_jobs", [("status", False), (None, False)]),
    # Partial: only the jobs that hold a lease, active and interrupted (see PARTIAL_INDEXES).
    "sync_jobs_active_owner": ("sync_jobs", [("owner_id", False), ("heartbeat_at", False)]),
    "sqlite_autoindex_sync_jobs_1": ("sync_jobs", [("id", False)]),
    "sqlite_autoindex_job_checkpoints_1": (
        "job_checkpoints",
        [("job_id", False), ("phase", False)],
    ),
}

#: The partial indexes and their WHERE clauses (interrupted since schema version 6).
PARTIAL_INDEXES = {
    "sync_jobs_active_owner": "status IN ('interrupted', 'pending', 'queued', 'running')"
}

#: Schema version 1 exactly as it was first written (commit 224b84d), frozen here so that the
#: migration is tested from the real thing even if someone edits the migration list.
RELEASE_1_SCHEMA = (
    """CREATE TABLE sync_jobs (
    id            TEXT    NOT NULL PRIMARY KEY,
    user_id       TEXT    NOT NULL,
    project_id    TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    progress      INTEGER NOT NULL DEFAULT 0,
    phase         TEXT,
    created_at    INTEGER NOT NULL,
    started_at    INTEGER,
    completed_at  INTEGER,
    error_message TEXT,
    metadata      TEXT    NOT NULL DEFAULT '{}'
)""",
    """CREATE TABLE job_checkpoints (
    job_id     TEXT    NOT NULL REFERENCES sync_jobs (id) ON DELETE CASCADE,
    phase      TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, phase)
)""",
    "CREATE INDEX sync_jobs_user_status_created ON sync_jobs (user_id, status, created_at DESC)",
    "CREATE INDEX sync_jobs_user_created ON sync_jobs (user_id, created_at DESC)",
    "CREATE INDEX sync_jobs_status_created ON sync_jobs (status, created_at DESC)",
    "CREATE INDEX sync_jobs_created ON sync_jobs (created_at DESC)",
    "CREATE INDEX sync_jobs_status_finished ON sync_jobs (status, coalesce(completed_at, created_at))",
)


def describe(conn: sqlite3.Connection) -> dict[str, Any]:
    """Everything about a schema that matters, in a comparable form."""
    master = sorted(
        (type_, name, table, " ".join((sql or "").split()))
        for type_, name, table, sql in conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_stat%'"
        )
    )
    tables = [name for type_, name, _, _ in master if type_ == "table"]
    return {
        "user_version": conn.execute("PRAGMA user_version").fetchone()[0],
        "master": master,
        "columns": {t: conn.execute(f"PRAGMA table_info({t})").fetchall() for t in tables},
        "foreign_keys": {
            t: conn.execute(f"PRAGMA foreign_key_list({t})").fetchall() for t in tables
        },
        "indexes": {
            name: conn.execute(f"PRAGMA index_xinfo({name})").fetchall()
            for type_, name, _, _ in master
            if type_ == "index"
        },
    }


def test_the_schema_reads_back_as_designed(store: JobPersistence, db_path: Path) -> None:
    with raw_connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        for table, columns in EXPECTED_COLUMNS.items():
            info = conn.execute(f"PRAGMA table_info({table})").fetchall()
            assert [(c[1], c[2], c[3], c[5]) for c in info] == columns
        names = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert names == set(EXPECTED_INDEXES)
        for name, (table, keys) in EXPECTED_INDEXES.items():
            assert conn.execute(
                "SELECT tbl_name FROM sqlite_master WHERE name = ?", (name,)
            ).fetchone() == (table,)
            xinfo = conn.execute(f"PRAGMA index_xinfo({name})").fetchall()
            key_columns = [(row[2], bool(row[3])) for row in xinfo if row[5]]
            assert key_columns == keys, name
        partial = {
            row[1]: bool(row[4]) for row in conn.execute("PRAGMA index_list(sync_jobs)").fetchall()
        }
        for name in EXPECTED_INDEXES:
            if name.startswith("sync_jobs"):
                assert partial[name] is (name in PARTIAL_INDEXES), name
        for name, where in PARTIAL_INDEXES.items():
            (sql,) = conn.execute(
                "SELECT sql FROM sqlite_master WHERE name = ?", (name,)
            ).fetchone()
            assert sql.endswith(f"WHERE {where}"), sql
        # Indexes are separate CREATE INDEX statements, not MySQL's inline INDEX.
        for (sql,) in conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table'"):
            assert " INDEX " not in sql.upper()
        assert conn.execute("PRAGMA foreign_key_list(job_checkpoints)").fetchall() == [
            (0, 0, "sync_jobs", "job_id", "id", "NO ACTION", "CASCADE", "NONE")
        ]
    conn.close()


def test_text_stays_text_and_datetimes_are_integers(store: JobPersistence, db_path: Path) -> None:
    # A column declared JSON or TIMESTAMP would have numeric affinity and turn '12.50'
    # into 12.5; TEXT keeps it.
    store.save_job(make_job("j1", error_message="12.50", phase="007", metadata={"p": "12.50"}))
    store.update_job_progress("j1", 5, "1e3")
    with raw_connect(db_path) as conn:
        row = conn.execute(
            "SELECT typeof(phase), typeof(error_message), typeof(metadata), typeof(created_at), "
            "error_message, phase FROM sync_jobs"
        ).fetchone()
    conn.close()
    assert row == ("text", "text", "text", "integer", "12.50", "1e3")
    job = store.load_job("j1")
    assert job is not None
    assert (job.error_message, job.phase, job.metadata) == ("12.50", "1e3", {"p": "12.50"})


def test_migrations_are_numbered_one_to_the_current_version() -> None:
    assert [m.version for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
    assert all(m.description and m.statements for m in MIGRATIONS)


def build_old_database(path: Path, version: int) -> None:
    """A database at schema ``version``, with a job and a checkpoint when it has tables."""
    conn = raw_connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    apply_migrations(conn, path, lambda c: c.execute("BEGIN IMMEDIATE").close(), target=version)
    if version >= 1:
        # Version 1's columns; every later migration must keep such rows readable.
        conn.execute(
            "INSERT INTO sync_jobs (id, user_id, project_id, status, progress, phase, created_at, "
            "metadata) VALUES ('old', 'alice', 'repo', 'running', 40, 'indexing', 1700000000000000, "
            "'{\"k\":1}')"
        )
        conn.execute(
            "INSERT INTO job_checkpoints VALUES ('old', 'git_pull', '{\"sha\":\"abc\"}', "
            "1700000000000001)"
        )
    conn.close()


@pytest.mark.parametrize("version", range(SCHEMA_VERSION))
def test_an_old_database_migrates_to_the_fresh_schema(
    open_store: OpenStore, tmp_path: Path, version: int
) -> None:
    old = tmp_path / "old.db"
    build_old_database(old, version)
    migrated = open_store(old)
    open_store(tmp_path / "fresh.db")
    with raw_connect(old) as a, raw_connect(tmp_path / "fresh.db") as b:
        assert describe(a) == describe(b)
    a.close()
    b.close()
    if version >= 1:
        job = migrated.load_job("old")
        assert job is not None
        assert (job.status, job.progress, job.metadata) == (JobStatus.RUNNING, 40, {"k": 1})
        assert migrated.load_checkpoint("old", "git_pull") == {"sha": "abc"}


#: A day, in the database's unit (microseconds).
_DAY = 86_400_000_000
_CREATED = 1_700_000_000_000_000


def build_version_4_database(path: Path) -> None:
    """A version 4 file with interrupted jobs as releases before version 5 left them (no
    ``completed_at``), and jobs the migration must not touch."""
    conn = raw_connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    apply_migrations(conn, path, lambda c: c.execute("BEGIN IMMEDIATE").close(), target=4)
    rows = [
        # id, status, started_at, completed_at, heartbeat_at
        ("heartbeat", "interrupted", _CREATED + _DAY, None, _CREATED + 30 * _DAY),
        ("started", "interrupted", _CREATED + _DAY, None, None),
        ("bare", "interrupted", None, None, None),
        ("stamped", "interrupted", _CREATED + _DAY, _CREATED + 2 * _DAY, _CREATED + 3 * _DAY),
        ("done-unstamped", "completed", None, None, _CREATED + 30 * _DAY),
        ("running", "running", _CREATED + _DAY, None, _CREATED + 30 * _DAY),
    ]
    conn.execute("BEGIN IMMEDIATE")
    for job_id, status, started, completed, heartbeat in rows:
        conn.execute(
            "INSERT INTO sync_jobs (id, user_id, project_id, status, progress, created_at, "
            "started_at, completed_at, metadata, owner_id, heartbeat_at) "
            "VALUES (?, 'alice', 'repo', ?, 40, ?, ?, ?, '{}', 'old-host:1:x', ?)",
            (job_id, status, _CREATED, started, completed, heartbeat),
        )
    conn.execute(
        "INSERT INTO job_checkpoints VALUES ('heartbeat', 'git_pull', '{\"next\":1}', ?)",
        (_CREATED + 30 * _DAY,),
    )
    conn.execute("COMMIT")
    conn.close()


def test_migration_5_stamps_interrupted_jobs_with_their_last_sign_of_life(
    open_store: OpenStore, tmp_path: Path
) -> None:
    old = tmp_path / "v4.db"
    build_version_4_database(old)
    migrated = open_store(old)
    with raw_connect(old) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        completed = dict(conn.execute("SELECT id, completed_at FROM sync_jobs").fetchall())
    conn.close()
    assert completed == {
        "heartbeat": _CREATED + 30 * _DAY,  # the last heartbeat
        "started": _CREATED + _DAY,  # no heartbeat: the start
        "bare": _CREATED,  # neither: the creation
        "stamped": _CREATED + 2 * _DAY,  # stamped already: kept
        "done-unstamped": None,  # not interrupted: untouched
        "running": None,
    }
    # The job created 30 days before its worker died survives the cleanup a week later,
    # with its checkpoint, as one interrupted by this release would.
    interrupted = migrated.load_job("heartbeat")
    assert interrupted is not None
    assert interrupted.completed_at is not None
    report = migrated.run_cleanup(
        interrupted.completed_at + timedelta(days=6), retention=timedelta(days=7)
    )
    assert migrated.load_job("heartbeat") is not None
    assert migrated.load_checkpoint("heartbeat", "git_pull") == {"next": 1}
    assert {"started", "bare", "stamped", "done-unstamped"} == {
        job_id for job_id in completed if migrated.load_job(job_id) is None
    }
    assert report.jobs_deleted == 4


def test_migration_5_reads_the_interrupted_jobs_through_an_index(db_path: Path) -> None:
    # On a large file the migration reads only the interrupted rows, not the whole table.
    conn = raw_connect(db_path)
    apply_migrations(conn, db_path, lambda c: c.execute("BEGIN IMMEDIATE").close(), target=4)
    text = plan(conn, _schema.STAMP_INTERRUPTED, [])
    conn.close()
    assert "USING INDEX" in text or "USING COVERING INDEX" in text, text
    assert "SCAN sync_jobs" not in text, text


def build_version_5_database(path: Path) -> None:
    """A version 5 file whose lease index holds only active jobs, with the jobs of an owner that
    died: one interrupted (with a checkpoint), one running, one completed."""
    conn = raw_connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    apply_migrations(conn, path, lambda c: c.execute("BEGIN IMMEDIATE").close(), target=5)
    rows = [
        # id, status, completed_at
        ("dead-interrupted", "interrupted", _CREATED + 2 * _DAY),
        ("dead-running", "running", None),
        ("dead-done", "completed", _CREATED + 2 * _DAY),
    ]
    conn.execute("BEGIN IMMEDIATE")
    for job_id, status, completed in rows:
        conn.execute(
            "INSERT INTO sync_jobs (id, user_id, project_id, status, progress, created_at, "
            "started_at, completed_at, metadata, owner_id, heartbeat_at) "
            "VALUES (?, 'alice', 'repo', ?, 40, ?, ?, ?, '{}', 'old-host:1:x', ?)",
            (job_id, status, _CREATED, _CREATED + _DAY, completed, _CREATED + 2 * _DAY),
        )
    conn.execute(
        "INSERT INTO job_checkpoints VALUES ('dead-interrupted', 'indexing', '{\"next\":7}', ?)",
        (_CREATED + 2 * _DAY,),
    )
    conn.execute("COMMIT")
    conn.close()


def test_migration_6_puts_the_interrupted_jobs_into_the_lease_index(
    open_store: OpenStore, tmp_path: Path
) -> None:
    old = tmp_path / "v5.db"
    build_version_5_database(old)
    migrated = open_store(old)
    with raw_connect(old) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        indexed = conn.execute(
            "SELECT id FROM sync_jobs INDEXED BY sync_jobs_active_owner "
            f"WHERE status IN {LEASED_SQL} ORDER BY id"
        ).fetchall()
    conn.close()
    # The rows of version 5 are in the rebuilt index: the interrupted one too.
    assert indexed == [("dead-interrupted",), ("dead-running",)]
    # So the first recovery after the upgrade hands out both jobs of the dead owner to be
    # resumed. (The checkpoint is from 2023, older than the resume policy's default maximum
    # age, so it is not offered; it is kept.)
    report = migrated.recover_interrupted_jobs(lease_timeout=timedelta(hours=1))
    points = {point.job.id: point for point in report.interrupted}
    assert sorted(points) == ["dead-interrupted", "dead-running"]
    assert report.requeue == []
    assert migrated.load_checkpoint("dead-interrupted", "indexing") == {"next": 7}
    for job_id in points:
        job = migrated.load_job(job_id)
        assert job is not None
        assert (job.status, job.owner_id) == (JobStatus.INTERRUPTED, migrated.owner_id)
    done = migrated.load_job("dead-done")
    assert done is not None
    assert (done.status, done.owner_id) == (JobStatus.COMPLETED, "old-host:1:x")
    # ... and the new owner's heartbeats renew them while it has not resumed them yet.
    assert migrated.heartbeat() == 2


def test_the_lease_statements_of_version_5_fail_on_a_migrated_file(db_path: Path) -> None:
    """What docs/sqlite.md tells operators: a process of the previous release that still holds
    connections to a file migrated to version 6 can no longer renew its leases nor recover
    (its statements name the active statuses only, which no longer imply the rebuilt index's
    WHERE clause, and INDEXED BY makes that an error instead of a slow scan)."""
    conn = raw_connect(db_path)
    apply_migrations(conn, db_path, lambda c: c.execute("BEGIN IMMEDIATE").close())
    old_renew = (
        "UPDATE sync_jobs INDEXED BY sync_jobs_active_owner SET heartbeat_at = ? "
        f"WHERE owner_id = ? AND status IN {ACTIVE_SQL}"
    )
    with pytest.raises(sqlite3.OperationalError, match="no query solution"):
        conn.execute(old_renew, (1, "me"))
    conn.close()


def build_release_1_database(path: Path) -> None:
    """A version 1 file as the first SQLite backend wrote it, from its frozen DDL, with rows."""
    conn = raw_connect(path)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("BEGIN IMMEDIATE")
    for statement in RELEASE_1_SCHEMA:
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    old_rows = [
        ("old-running", "running", 1700000000000000, 1700000000000000, None),
        ("old-pending", "pending", 1700000000000001, None, None),
        ("old-done", "completed", 1700000000000002, 1700000000000002, 1700000000000003),
    ]
    for job_id, status, created, started, completed in old_rows:
        conn.execute(
            "INSERT INTO sync_jobs (id, user_id, project_id, status, progress, phase, "
            "created_at, started_at, completed_at, metadata) "
            "VALUES (?, 'alice', 'repo', ?, 40, 'indexing', ?, ?, ?, '{\"k\":1}')",
            (job_id, status, created, started, completed),
        )
    conn.execute(
        "INSERT INTO job_checkpoints VALUES ('old-running', 'git_pull', '{\"sha\":\"abc\"}', "
        "1700000000000001)"
    )
    conn.execute("COMMIT")
    conn.close()


def test_migration_1_is_still_the_released_schema(tmp_path: Path) -> None:
    released, rebuilt = tmp_path / "released.db", tmp_path / "rebuilt.db"
    build_release_1_database(released)
    conn = raw_connect(rebuilt)
    apply_migrations(conn, rebuilt, lambda c: c.execute("BEGIN IMMEDIATE").close(), target=1)
    conn.close()
    with raw_connect(released) as a, raw_connect(rebuilt) as b:
        assert describe(a)["master"] == describe(b)["master"]
    a.close()
    b.close()


def test_a_released_version_1_file_migrates_to_version_2(
    open_store: OpenStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = tmp_path / "old.db"
    build_release_1_database(old)
    with caplog.at_level(logging.INFO, logger="cidx_jobs.sqlite"):
        migrated = open_store(old)
    assert f"from schema version 1 to {SCHEMA_VERSION}" in caplog.text
    open_store(tmp_path / "fresh.db")
    with raw_connect(old) as a, raw_connect(tmp_path / "fresh.db") as b:
        assert describe(a) == describe(b)
        assert a.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    a.close()
    b.close()
    # Rows from before leases have none: no owner, and a lease that counts as expired.
    for job_id in ("old-running", "old-pending", "old-done"):
        job = migrated.load_job(job_id)
        assert job is not None
        assert (job.owner_id, job.heartbeat_at, job.progress, job.metadata) == (
            None,
            None,
            40,
            {"k": 1},
        )
    report = migrated.recover_interrupted_jobs(lease_timeout=timedelta(hours=1))
    assert [point.job.id for point in report.interrupted] == ["old-running"]
    checkpoint = report.interrupted[0].checkpoint
    assert [job.id for job in report.requeue] == ["old-pending"]
    # The checkpoint is from 2023: older than the default maximum age, so not resumed.
    assert checkpoint is None
    assert migrated.load_checkpoint("old-running", "git_pull") == {"sha": "abc"}
    for job_id, status in [
        ("old-running", JobStatus.INTERRUPTED),
        ("old-pending", JobStatus.PENDING),
        ("old-done", JobStatus.COMPLETED),
    ]:
        job = migrated.load_job(job_id)
        assert job is not None
        assert job.status is status
        expected_owner = None if status is JobStatus.COMPLETED else migrated.owner_id
        assert job.owner_id == expected_owner, job_id


def test_a_newer_file_is_refused_by_a_release_that_knows_only_version_1(
    open_store: OpenStore, db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    open_store().close()
    with raw_connect(db_path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    before = digest(db_path)
    # What the first SQLite backend knew: only migration 1.
    monkeypatch.setattr(_schema, "MIGRATIONS", MIGRATIONS[:1])
    monkeypatch.setattr(_schema, "SCHEMA_VERSION", 1)
    with pytest.raises(SchemaVersionError) as caught:
        open_store()
    message = str(caught.value)
    assert f"has schema version {SCHEMA_VERSION}" in message
    assert "reads schema versions 1 to 1" in message
    assert digest(db_path) == before


def test_migrating_is_idempotent(open_store: OpenStore, db_path: Path) -> None:
    first = open_store()
    first.save_job(make_job("j1"))
    first.close()
    with raw_connect(db_path) as conn:
        before = describe(conn)
        assert apply_migrations(conn, db_path, lambda c: None) == (SCHEMA_VERSION, SCHEMA_VERSION)
    conn.close()
    second = open_store()
    assert second.load_job("j1") is not None
    with raw_connect(db_path) as conn:
        assert describe(conn) == before
    conn.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_database_of_a_newer_release_is_refused_untouched(
    open_store: OpenStore, db_path: Path
) -> None:
    open_store().close()
    with raw_connect(db_path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.execute("PRAGMA journal_mode = DELETE")
    conn.close()
    before = digest(db_path)
    with pytest.raises(SchemaVersionError) as caught:
        open_store()
    message = str(caught.value)
    assert f"schema version {SCHEMA_VERSION + 1}" in message
    assert f"reads schema versions 1 to {SCHEMA_VERSION}" in message
    assert digest(db_path) == before


def test_another_programs_database_is_refused(open_store: OpenStore, db_path: Path) -> None:
    with raw_connect(db_path) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    conn.close()
    with pytest.raises(SchemaVersionError, match="invoices"):
        open_store()
    with raw_connect(db_path) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert tables == {"invoices"}


def plan(conn: sqlite3.Connection, sql: str, params: list[Any]) -> str:
    return " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))


@pytest.mark.parametrize(
    ("filter", "index"),
    [
        (JobFilter(user_id="u"), "sync_jobs_user_created"),
        (JobFilter(user_id="u", statuses={JobStatus.RUNNING}), "sync_jobs_user_status_created"),
        (
            JobFilter(
                user_id="u",
                statuses={JobStatus.FAILED, JobStatus.CANCELLED},
                created_after=minutes(0),
                created_before=minutes(60),
            ),
            "sync_jobs_user_status_created",
        ),
        (
            JobFilter(user_id="u", created_after=minutes(0), created_before=minutes(60)),
            "sync_jobs_user_created",
        ),
        (JobFilter(statuses={JobStatus.RUNNING}), "sync_jobs_status_created"),
        (JobFilter(), "sync_jobs_created"),
        (JobFilter(created_after=minutes(0)), "sync_jobs_created"),
    ],
)
@pytest.mark.parametrize("keyset", [False, True])
def test_queries_use_the_index_made_for_them(
    store: JobPersistence, filter: JobFilter, index: str, keyset: bool
) -> None:
    statuses = _statements.status_values(filter.statuses)
    sql = _statements.select_sql(
        filter.user_id is not None,
        filter.project_id is not None,
        filter.created_after is not None,
        filter.created_before is not None,
        keyset,
        len(statuses),
    )
    params: list[Any] = [None] * sql.count("?")
    pool = storage_of(store)._pool
    conn = pool.acquire()
    try:
        text = plan(conn, sql, params)
    finally:
        pool.release(conn)
    assert f"INDEX {index}" in text
    assert "SCAN sync_jobs" not in text.replace(f"SCAN sync_jobs USING INDEX {index}", "")
    if len(statuses) <= 1:
        # The index gives the newest-first order: no sort of every match (only of the rows
        # that tie on created_at, "TEMP B-TREE FOR RIGHT PART OF ORDER BY"). Without its
        # index a shape sorts a user's, a status's or the whole history on every page:
        # see "Indexes: what each one costs and buys" in docs/performance.md.
        assert "TEMP B-TREE FOR ORDER BY" not in text


def test_the_statuses_in_sql_match_the_models() -> None:
    active = ", ".join(f"'{value}'" for value in sorted(s.value for s in ACTIVE_STATUSES))
    assert f"({active})" == ACTIVE_SQL
    leased = ", ".join(f"'{value}'" for value in sorted(s.value for s in LEASED_STATUSES))
    assert f"({leased})" == LEASED_SQL
    # The lease statements name the statuses exactly as the partial index does.
    assert f"status IN {LEASED_SQL}" == PARTIAL_INDEXES["sync_jobs_active_owner"]
    assert f"status IN {LEASED_SQL}" in _statements.RENEW_LEASES
    assert f"status IN {LEASED_SQL}" in _statements.FIND_STALE


@pytest.mark.parametrize(
    ("sql", "params", "expected"),
    [
        # heartbeat(): a search of the owner's leased jobs in the small partial index.
        (
            _statements.RENEW_LEASES,
            [1, "me"],
            "SEARCH sync_jobs USING INDEX sync_jobs_active_owner (owner_id=?)",
        ),
        # recovery: a scan of the partial index only (leased jobs), never of the table.
        (
            _statements.FIND_STALE,
            ["me", 1, 500],
            "SCAN sync_jobs USING INDEX sync_jobs_active_owner",
        ),
        # the compare-and-set: one row by its primary key.
        (
            _statements.TAKE_OVER,
            ["interrupted", "me", 1, "j", "running", "dead", 0],
            "SEARCH sync_jobs USING INDEX sqlite_autoindex_sync_jobs_1 (id=?)",
        ),
        (
            _statements.TAKE_OVER_INTERRUPTED,
            ["interrupted", "me", 1, 1, "j", "running", "dead", 0],
            "SEARCH sync_jobs USING INDEX sqlite_autoindex_sync_jobs_1 (id=?)",
        ),
        # ... of an interrupted job, handed out again.
        (
            _statements.TAKE_OVER_INTERRUPTED,
            ["interrupted", "me", 1, 1, "j", "interrupted", "dead", 0],
            "SEARCH sync_jobs USING INDEX sqlite_autoindex_sync_jobs_1 (id=?)",
        ),
    ],
)
def test_lease_statements_use_the_index_made_for_them(
    open_store: OpenStore, db_path: Path, sql: str, params: list[Any], expected: str
) -> None:
    # Also with statistics (which would lead the planner to the status index for recovery):
    # the plan is pinned.
    first = open_store()
    first.save_job(make_job("j"))
    first.close()
    with raw_connect(db_path) as conn:
        conn.execute("ANALYZE")
    conn.close()
    store = open_store()
    pool = storage_of(store)._pool
    conn = pool.acquire()
    try:
        text = plan(conn, sql, params)
    finally:
        pool.release(conn)
    assert text == expected


def test_cleanup_uses_the_finish_time_index(store: JobPersistence) -> None:
    where = " OR ".join(["(status = ? AND coalesce(completed_at, created_at) < ?)"] * 2)
    sql = (
        f"DELETE FROM sync_jobs WHERE rowid IN (SELECT rowid FROM sync_jobs WHERE {where} LIMIT ?)"
    )
    pool = storage_of(store)._pool
    conn = pool.acquire()
    try:
        text = plan(conn, sql, ["completed", 0, "failed", 0, 10])
    finally:
        pool.release(conn)
    assert text.count("USING INDEX sync_jobs_status_finished") == 2


@pytest.mark.parametrize("keyset", [False, True])
def test_a_page_of_every_job_needs_no_sort(store: JobPersistence, keyset: bool) -> None:
    # Schema version 3 put id into sync_jobs_created: newest first (created_at DESC,
    # id DESC) then comes straight from the index, and an offset page skips index entries
    # instead of sorting every skipped row (see 'page 500 by offset' in docs/performance.md).
    sql = _statements.select_sql(False, False, False, False, keyset, 0)
    pool = storage_of(store)._pool
    conn = pool.acquire()
    try:
        text = plan(conn, sql, [None] * sql.count("?"))
    finally:
        pool.release(conn)
    assert "INDEX sync_jobs_created" in text
    assert "TEMP B-TREE" not in text
