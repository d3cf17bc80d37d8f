"""check_health() and ``cidx-jobs doctor`` on a real server, with real faults: an index
dropped or left invalid, the schema version set back, a transaction left open, a session
waiting on a lock, deleted rows piling up. Only the test's own schema and sessions are
touched."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from cidx_jobs import JobPersistence, SyncJob, open_persistence
from cidx_jobs._cli import main
from cidx_jobs.backend import Health, HealthCheck
from cidx_jobs.errors import StorageUnavailableError
from cidx_jobs_postgres import _health
from cidx_jobs_postgres._schema import SCHEMA_VERSION

QUICK = ["tables", "server", "connections", "transactions", "locks", "vacuum", "settings"]


def _schema(url: str) -> str:
    return url.rsplit("schema=", 1)[1].split("&", 1)[0]


def _checks(store: JobPersistence, *, thorough: bool = False) -> dict[str, HealthCheck]:
    checks = store.storage.check_health(thorough=thorough)
    names = [check.name for check in checks]
    assert len(set(names)) == len(names), names
    for check in checks:
        assert check.summary
        assert "\n" not in check.summary
        assert (check.advice is None) is (check.health is Health.OK), check
        json.dumps(dict(check.data))  # --json can print it
    return {check.name: check for check in checks}


@pytest.fixture
def store(schema_url: str) -> Iterator[JobPersistence]:
    with open_persistence(schema_url) as opened:
        yield opened


@pytest.fixture
def connect(postgres_url: str) -> Iterator[Any]:
    """Opens extra sessions for a test (named, so that a test can find them) and closes
    every one afterwards."""
    opened: list[psycopg.Connection[Any]] = []

    def open_one(name: str, **kwargs: Any) -> psycopg.Connection[Any]:
        conn = psycopg.connect(
            postgres_url, application_name=f"{name}-{secrets.token_hex(3)}", **kwargs
        )
        opened.append(conn)
        return conn

    yield open_one
    for conn in opened:
        conn.close()


def test_a_fresh_store_is_healthy(store: JobPersistence, schema_url: str) -> None:
    checks = _checks(store)
    assert list(checks) == QUICK
    assert [c.name for c in checks.values() if c.health is Health.PROBLEM] == []
    tables = checks["tables"]
    assert tables.health is Health.OK
    assert f"at version {SCHEMA_VERSION}" in tables.summary
    # What the migrations leave is exactly what the catalog holds: the expected objects
    # stay in step with _schema.py.
    expected_tables, expected_indexes = _health.expected_objects()
    assert tables.data["tables"] == sorted(expected_tables)
    assert tables.data["indexes"] == sorted(expected_indexes)
    assert tables.data["extra_indexes"] == []
    assert checks["server"].data["in_recovery"] is False
    assert checks["connections"].data["pool_max"] == 10
    assert checks["settings"].data["options"]["schema"] == _schema(schema_url)  # type: ignore[index]
    assert "password" not in checks["settings"].data["options"]  # type: ignore[operator]
    # Autovacuum is off on this project's shared server: then this warns whatever the rows.
    if checks["vacuum"].data["autovacuum"] != "on":
        assert checks["vacuum"].health is Health.WARNING
        assert "autovacuum is off" in checks["vacuum"].summary


def test_thorough_counts_rows_and_reports_amcheck(store: JobPersistence) -> None:
    store.save_job(SyncJob(id="job-1", user_id="alice", project_id="repo"))
    store.save_job(SyncJob(id="job-2", user_id="alice", project_id="repo"))
    store.save_checkpoint("job-1", "clone", {"done": 1})
    checks = _checks(store, thorough=True)
    assert list(checks) == [*QUICK, "rows", "amcheck"]
    assert checks["rows"].data == {"jobs": 2, "checkpoints": 1}
    amcheck = checks["amcheck"]
    if amcheck.data["installed"]:
        assert amcheck.health is Health.OK
        assert len(amcheck.data["checked"]) == len(_health.expected_objects()[1])  # type: ignore[arg-type]
    else:  # never installed here by the tests: the shared server is not theirs
        assert amcheck.health is Health.WARNING
        assert "CREATE EXTENSION amcheck" in (amcheck.advice or "")


def test_a_dropped_index_is_a_problem_with_its_statement(store: JobPersistence, admin: Any) -> None:
    schema = store.storage.schema  # type: ignore[attr-defined]
    admin.execute(f"DROP INDEX {schema}.sync_jobs_created")
    tables = _checks(store)["tables"]
    assert tables.health is Health.PROBLEM
    assert "index(es) missing: sync_jobs_created" in tables.summary
    assert tables.data["missing_indexes"] == ["sync_jobs_created"]
    (rebuild,) = tables.data["rebuild"]  # type: ignore[misc]
    assert rebuild in (tables.advice or "")
    assert rebuild.startswith("CREATE INDEX CONCURRENTLY sync_jobs_created ON")
    # The advice repairs it (built without CONCURRENTLY here, which would wait for every
    # older transaction of the shared database).
    admin.execute(rebuild.replace(" CONCURRENTLY", "", 1))
    assert _checks(store)["tables"].health is Health.OK


def test_an_index_left_invalid_by_a_failed_build_is_a_problem(
    store: JobPersistence, admin: Any
) -> None:
    schema = store.storage.schema  # type: ignore[attr-defined]
    store.save_job(SyncJob(id="job-1", user_id="alice", project_id="repo"))
    store.save_job(SyncJob(id="job-2", user_id="alice", project_id="repo"))
    # A unique index built concurrently over duplicates fails and stays behind, invalid.
    with pytest.raises(psycopg.errors.UniqueViolation):
        admin.execute(f"CREATE UNIQUE INDEX CONCURRENTLY by_user ON {schema}.sync_jobs (user_id)")
    tables = _checks(store)["tables"]
    assert tables.health is Health.PROBLEM
    assert tables.data["invalid_indexes"] == ["by_user"]
    assert "left invalid" in tables.summary
    assert "by_user" in tables.summary
    drop = f'DROP INDEX CONCURRENTLY "{schema}".by_user'
    assert drop in (tables.advice or "")
    admin.execute(drop)
    assert _checks(store)["tables"].health is Health.OK


def test_a_schema_version_set_back_is_a_problem(store: JobPersistence, admin: Any) -> None:
    schema = store.storage.schema  # type: ignore[attr-defined]
    admin.execute(f"UPDATE {schema}.cidx_schema_version SET version = 1")
    tables = _checks(store)["tables"]
    assert tables.health is Health.PROBLEM
    assert f"the stored schema version is 1; this release writes {SCHEMA_VERSION}" in (
        tables.summary
    )
    assert "cidx-jobs migrate" in (tables.advice or "")


def test_a_missing_schema_is_a_problem(schema_url: str) -> None:
    with open_persistence(f"{schema_url}&migrate=false") as store:
        tables = _checks(store)["tables"]
    assert tables.health is Health.PROBLEM
    assert "holds no cidx-jobs tables" in tables.summary


def test_a_transaction_left_open_is_a_warning_naming_its_session(
    store: JobPersistence, connect: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    schema = store.storage.schema  # type: ignore[attr-defined]
    holder = connect("cidx-health-idle")
    holder.execute(f"SELECT count(*) FROM {schema}.sync_jobs").fetchone()  # BEGIN, then idle
    pid = holder.info.backend_pid
    name = holder.info.parameter_status("application_name")
    assert pid not in [s["pid"] for s in _checks(store)["transactions"].data["sessions"]]  # type: ignore[attr-defined]
    monkeypatch.setattr(_health, "LONG_TRANSACTION_SECONDS", 0.0)
    found = _checks(store)["transactions"]
    assert found.health is Health.WARNING
    (mine,) = [s for s in found.data["sessions"] if s["pid"] == pid]  # type: ignore[attr-defined]
    assert mine["state"] == "idle in transaction"
    assert mine["application_name"] == name
    assert mine["locks_this_schema"] is True
    if len(found.data["sessions"]) <= _health.SESSIONS_SHOWN:  # type: ignore[arg-type]
        assert f"pid {pid} ({name}" in found.summary
    assert "pg_terminate_backend" in (found.advice or "")
    holder.rollback()


def test_a_session_waiting_on_a_lock_is_a_warning_naming_the_blocker(
    schema_url: str, connect: Any, admin: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A short lock_timeout: the thorough checks that read the locked table give up soon.
    with open_persistence(f"{schema_url}&lock_timeout_ms=200") as store:
        schema = store.storage.schema  # type: ignore[attr-defined]
        locker = connect("cidx-health-locker")
        waiter = connect("cidx-health-waiter", autocommit=True)
        waiter.execute("SET lock_timeout = '10s'")
        locker.execute(f"LOCK TABLE {schema}.sync_jobs IN ACCESS EXCLUSIVE MODE")
        errors: list[BaseException] = []

        def blocked() -> None:
            try:
                waiter.execute(f"SELECT count(*) FROM {schema}.sync_jobs").fetchone()
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

        thread = threading.Thread(target=blocked, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                row = admin.execute(
                    "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s",
                    (waiter.info.backend_pid,),
                ).fetchone()
                if row and row[0] == "Lock":
                    break
                time.sleep(0.01)
            monkeypatch.setattr(_health, "LOCK_WAIT_SECONDS", 0.0)
            checks = _checks(store, thorough=True)
        finally:
            locker.rollback()
            thread.join(10)
        assert not thread.is_alive()
        assert not errors
    locks = checks["locks"]
    assert locks.health is Health.WARNING
    (waiting,) = [w for w in locks.data["waiting"] if w["pid"] == waiter.info.backend_pid]  # type: ignore[attr-defined]
    assert waiting["blocked_by"] == [locker.info.backend_pid]
    assert waiting["tables"] == "sync_jobs"
    assert f"blocked by pid(s) {locker.info.backend_pid}" in locks.summary
    # What the lock keeps from running is a finding, not an exception.
    assert checks["rows"].health is Health.WARNING
    assert "did not finish" in checks["rows"].summary


def test_many_deleted_rows_are_a_vacuum_warning(store: JobPersistence, connect: Any) -> None:
    schema = store.storage.schema  # type: ignore[attr-defined]
    writer = connect("cidx-health-writer", autocommit=True)
    # No autovacuum for this test's table, whatever the server's setting: the dead rows stay.
    writer.execute(f"ALTER TABLE {schema}.sync_jobs SET (autovacuum_enabled = off)")
    writer.execute(
        f"INSERT INTO {schema}.sync_jobs (id, user_id, project_id, status, created_at) "
        "SELECT 'job-' || g, 'alice', 'repo', 'completed', now() "
        "FROM generate_series(1, 12000) AS g"
    )
    writer.execute(f"DELETE FROM {schema}.sync_jobs")
    writer.close()  # a session's statistics reach the server by its exit at the latest
    deadline = time.monotonic() + 5
    while True:
        vacuum = _checks(store)["vacuum"]
        dead = vacuum.data["tables"]["sync_jobs"]["dead_rows"]  # type: ignore[index]
        if dead >= 12_000 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert dead == 12_000
    assert vacuum.health is Health.WARNING
    assert "dead rows pile up: sync_jobs 12000 dead of 12000 rows (100%)" in vacuum.summary
    assert f'VACUUM (ANALYZE) on "{schema}".sync_jobs' in (vacuum.advice or "")
    assert vacuum.data["autovacuum_disabled_tables"] == ["sync_jobs"]


def test_a_closed_store_raises_a_typed_error(schema_url: str) -> None:
    store = open_persistence(schema_url)
    store.close()
    with pytest.raises(StorageUnavailableError):
        store.storage.check_health()


def _doctor(url: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    status = main(["doctor", "--url", url, "--json"])
    out = capsys.readouterr().out
    return status, json.loads(out)


def test_doctor_exits_0_on_a_healthy_store_and_1_on_a_problem(
    store: JobPersistence, schema_url: str, admin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    status, report = _doctor(schema_url, capsys)
    by_name = {check["name"]: check for check in report["checks"]}
    assert status == 0
    assert report["ok"] is True
    assert set(QUICK) <= set(by_name)
    assert "storage" not in by_name  # not "the backend has no self-check" any more
    assert by_name["tables"]["data"]["schema_version"] == SCHEMA_VERSION

    assert main(["doctor", "--url", schema_url]) == 0
    text = capsys.readouterr().out
    assert "no problems" in text
    assert "connections" in text

    schema = store.storage.schema  # type: ignore[attr-defined]
    admin.execute(f"DROP INDEX {schema}.sync_jobs_user_created")
    status, report = _doctor(schema_url, capsys)
    by_name = {check["name"]: check for check in report["checks"]}
    assert status == 1
    assert report["ok"] is False
    assert by_name["tables"]["health"] == "problem"
    assert by_name["tables"]["data"]["missing_indexes"] == ["sync_jobs_user_created"]
    assert "CREATE INDEX CONCURRENTLY sync_jobs_user_created" in by_name["tables"]["advice"]
