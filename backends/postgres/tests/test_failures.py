"""Real failures of a real server, each typed, and the store recovering from them (no mocks)."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from typing import Any

import psycopg
import pytest

from cidx_jobs import JobStatus, SyncJob, open_persistence
from cidx_jobs.errors import (
    SchemaVersionError,
    StorageBusyError,
    StorageCorruptError,
    StorageError,
    StorageOutcomeUnknownError,
    StoragePermissionError,
    StorageUnavailableError,
)
from cidx_jobs_postgres import PostgresStorage
from cidx_jobs_postgres._runner import NONE


def job(job_id: str, **fields: Any) -> SyncJob:
    return SyncJob(id=job_id, user_id="alice", project_id="repo", **fields)


def _schema(url: str) -> str:
    return url.rsplit("schema=", 1)[1].split("&", 1)[0]


def _terminate(admin: Any, application_name: str, *, wait: bool = False) -> int:
    """Terminate the sessions named ``application_name``; with ``wait``, until they are gone
    (pg_terminate_backend only signals: the session exits, and says so, a moment later)."""
    rows = admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = %s AND pid <> pg_backend_pid()",
        (application_name,),
    ).fetchall()
    deadline = time.monotonic() + 10
    while wait and time.monotonic() < deadline:
        left = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
            (application_name,),
        ).fetchone()[0]
        if left == 0:
            break
        time.sleep(0.01)
    return len(rows)


def test_a_killed_idle_session_is_replaced_before_a_call_uses_it(
    schema_url: str, admin: Any
) -> None:
    # The session dies while it sits in the pool: the checkout sees it closed, and the call
    # runs on a new connection instead of failing (a write was never sent, so it is not
    # "outcome unknown" either).
    with open_persistence(f"{schema_url}&application_name=cidx-kill&pool_max=1") as store:
        store.save_job(job("job-1"))
        assert _terminate(admin, "cidx-kill", wait=True) == 1
        assert store.update_job_progress("job-1", 10)
        assert _terminate(admin, "cidx-kill", wait=True) == 1
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.progress == 10


def test_without_the_check_a_write_on_a_killed_session_is_outcome_unknown(
    schema_url: str, admin: Any
) -> None:
    # check_connections=false saves the check's cost: then a dead session is found only by
    # the statement sent on it, and a write's outcome is unknown; the next call reconnects.
    url = f"{schema_url}&application_name=cidx-nocheck&pool_max=1&check_connections=false"
    with open_persistence(url) as store:
        store.save_job(job("job-1"))
        assert _terminate(admin, "cidx-nocheck", wait=True) == 1
        with pytest.raises(StorageOutcomeUnknownError) as raised:
            store.update_job_progress("job-1", 10)
        assert isinstance(raised.value.__cause__, psycopg.Error)
        assert store.update_job_progress("job-1", 20)


def test_killed_connections_are_replaced_even_when_all_die(schema_url: str, admin: Any) -> None:
    # As after a server restart: every pooled session is gone at once.
    with open_persistence(
        f"{schema_url}&application_name=cidx-killall&pool_min=3&pool_max=3"
    ) as store:
        store.save_job(job("job-1"))
        deadline = time.monotonic() + 10
        while (
            admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'cidx-killall'"
            ).fetchone()[0]
            < 3
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert _terminate(admin, "cidx-killall") == 3
        failures = 0
        for _ in range(2):
            try:
                store.load_job("job-1")
            except StorageUnavailableError:
                failures += 1
        assert failures <= 1, "after one failure the pool must have dropped every dead session"
        assert store.load_job("job-1") is not None


def test_a_statement_timeout_is_busy(schema_url: str, admin: Any) -> None:
    url = f"{schema_url}&statement_timeout_ms=200&lock_timeout_ms=0"
    with open_persistence(url) as store:
        store.save_job(job("job-1"))
        with admin.transaction():
            admin.execute(f'LOCK TABLE "{_schema(schema_url)}".sync_jobs IN ACCESS EXCLUSIVE MODE')
            started = time.monotonic()
            with pytest.raises(StorageBusyError, match="statement_timeout_ms"):
                store.count_jobs()
            assert time.monotonic() - started < 5
        assert store.count_jobs() == 1


def test_a_lock_timeout_is_busy_and_writes_nothing(schema_url: str, admin: Any) -> None:
    with open_persistence(f"{schema_url}&lock_timeout_ms=100") as store:
        store.save_job(job("job-1"))
        with admin.transaction():
            admin.execute(
                f'SELECT 1 FROM "{_schema(schema_url)}".sync_jobs WHERE id = %s FOR UPDATE',
                ("job-1",),
            )
            with pytest.raises(StorageBusyError, match="lock_timeout_ms"):
                store.update_job_progress("job-1", 50)
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.progress == 0


def test_a_deadlock_victim_is_busy_and_the_other_block_commits(schema_url: str) -> None:
    with open_persistence(f"{schema_url}&lock_timeout_ms=0") as store:
        store.save_job(job("a"))
        store.save_job(job("b"))
        barrier = threading.Barrier(2, timeout=30)
        outcomes: dict[str, object] = {}

        def block(first: str, second: str) -> None:
            try:
                with store.transaction():
                    store.update_job_progress(first, 1)
                    barrier.wait()
                    store.update_job_progress(second, 2)
                outcomes[first] = "committed"
            except StorageError as error:
                outcomes[first] = error

        threads = [threading.Thread(target=block, args=pair) for pair in (("a", "b"), ("b", "a"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        results = sorted(outcomes.values(), key=str)
        assert results.count("committed") == 1, outcomes
        (victim,) = [value for value in results if value != "committed"]
        assert isinstance(victim, StorageBusyError)
        assert "deadlock" in str(victim)


def test_a_read_only_server_is_unavailable_and_the_connection_is_dropped(
    schema_url: str,
) -> None:
    # The session a demoted primary would give: every write fails with 25006.
    with open_persistence(f"{schema_url}&pool_max=1") as store:
        storage = store.storage
        assert isinstance(storage, PostgresStorage)
        storage._runner.run(
            NONE, "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", (), "testing"
        )
        with pytest.raises(StorageUnavailableError, match="read-only") as raised:
            store.save_job(job("job-1"))
        assert not isinstance(raised.value, StorageBusyError)
        # The pool dropped that session: the next write gets a new, writable one.
        assert store.save_job(job("job-1"))
        assert store.load_job("job-1") is not None


def test_a_connection_lost_during_commit_is_outcome_unknown(schema_url: str, admin: Any) -> None:
    with open_persistence(f"{schema_url}&application_name=cidx-commit&pool_max=1") as store:
        with pytest.raises(StorageOutcomeUnknownError, match="may or may not be stored"):
            with store.transaction():
                store.save_job(job("job-1"))
                assert _terminate(admin, "cidx-commit") == 1
        # The server rolled the block back with the session; the store works again.
        assert store.load_job("job-1") is None
        assert store.save_job(job("job-2"))


def test_a_missing_database_says_what_to_do(postgres_url: str) -> None:
    url = postgres_url.rsplit("/", 1)[0] + "/cidx_no_such_database"
    with pytest.raises(StorageUnavailableError) as raised:
        open_persistence(url)
    assert "does not exist" in str(raised.value)
    assert "createdb" in str(raised.value)


def test_an_unknown_role_says_what_to_do(postgres_url: str) -> None:
    url = postgres_url.replace("postgres@", "cidx_no_such_role@", 1)
    if url == postgres_url:
        pytest.skip("the test URL names no user to replace")
    with pytest.raises(StoragePermissionError, match="role"):
        open_persistence(url)


def test_an_unreachable_server_is_unavailable_and_quick() -> None:
    started = time.monotonic()
    with pytest.raises(StorageUnavailableError, match="cannot connect"):
        open_persistence("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2")
    assert time.monotonic() - started < 5


def test_a_newer_schema_is_refused_unchanged(schema_url: str, admin: Any) -> None:
    schema = _schema(schema_url)
    open_persistence(schema_url).close()
    admin.execute(f'UPDATE "{schema}".cidx_schema_version SET version = 99')
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        open_persistence(schema_url)
    version = admin.execute(f'SELECT version FROM "{schema}".cidx_schema_version').fetchone()
    assert version == (99,)


def test_a_schema_of_another_program_is_refused(schema_url: str, admin: Any) -> None:
    schema = _schema(schema_url)
    admin.execute(f'CREATE SCHEMA "{schema}"')
    admin.execute(f'CREATE TABLE "{schema}".other (x int)')
    with pytest.raises(SchemaVersionError, match="not made by cidx-jobs-postgres"):
        open_persistence(schema_url)


def test_processes_starting_at_once_migrate_exactly_once(
    schema_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    barrier = threading.Barrier(6, timeout=30)
    errors: list[BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            open_persistence(schema_url).close()
        except BaseException as error:
            errors.append(error)

    with caplog.at_level(logging.INFO, logger="cidx_jobs.postgres"):
        threads = [threading.Thread(target=start) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    created = [record for record in caplog.records if "created the job schema" in record.message]
    assert len(created) == 1


def test_a_forked_child_gets_its_own_pool(schema_url: str) -> None:
    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    with open_persistence(schema_url) as store:
        store.save_job(job("parent-1"))  # the parent's pool exists now
        with warnings.catch_warnings():
            # Python 3.12+ warns about fork() in a process with threads (the pool's).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            code = 1
            try:
                store.save_job(job("child-1"))
                code = 0 if store.load_job("parent-1") is not None else 2
            finally:
                sys.stdout.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent's sessions were left alone by the child.
        assert store.load_job("child-1") is not None
        assert store.update_job_status("parent-1", JobStatus.RUNNING)


def test_a_block_left_idle_past_the_timeout_is_unavailable_and_stores_nothing(
    schema_url: str,
) -> None:
    with open_persistence(f"{schema_url}&idle_in_transaction_timeout_ms=200&pool_max=1") as store:
        with pytest.raises(StorageError):
            with store.transaction():
                store.save_job(job("job-1"))
                time.sleep(1.0)  # the server ends the session meanwhile
                with pytest.raises(StorageUnavailableError):
                    store.save_job(job("job-2"))
        assert store.load_job("job-1") is None
        assert store.save_job(job("job-3"))


def test_the_scratch_factory_drops_its_schema_and_the_inventory_sees_it(
    postgres_url: str, tmp_path: Any
) -> None:
    from cidx_jobs_postgres._plugin import postgres_inventory, postgres_scratch

    before = set(postgres_inventory(postgres_url))
    with postgres_scratch(postgres_url, tmp_path) as config:
        with open_persistence(config) as store:
            store.save_job(job("job-1"))
        made = set(postgres_inventory(postgres_url)) - before
        assert len(made) == 1
        assert str(config).endswith(f"schema={made.pop()}")
    assert set(postgres_inventory(postgres_url)) == before
    assert list(tmp_path.iterdir()) == []


def test_a_write_whose_connection_dies_after_it_was_sent_is_outcome_unknown(
    schema_url: str, admin: Any
) -> None:
    # An autocommit write is its own commit: once sent, a lost connection leaves its
    # outcome unknown. A read in the same place is merely unavailable.
    url = f"{schema_url}&application_name=cidx-sent&pool_max=2&lock_timeout_ms=0"
    with open_persistence(url) as store:
        store.save_job(job("job-1"))
        outcome: dict[str, BaseException] = {}

        def call(name: str, work: Any) -> None:
            try:
                work()
            except BaseException as error:
                outcome[name] = error

        with admin.transaction():
            admin.execute(f'LOCK TABLE "{_schema(schema_url)}".sync_jobs IN ACCESS EXCLUSIVE MODE')
            threads = [
                threading.Thread(
                    target=call, args=("write", lambda: store.update_job_progress("job-1", 5))
                ),
                threading.Thread(target=call, args=("read", lambda: store.load_job("job-1"))),
            ]
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                waiting = admin.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                    "'cidx-sent' AND wait_event_type = 'Lock'"
                ).fetchone()[0]
                if waiting == 2:
                    break
                time.sleep(0.05)
            assert _terminate(admin, "cidx-sent") == 2
            for thread in threads:
                thread.join(timeout=30)
        assert isinstance(outcome["write"], StorageOutcomeUnknownError), outcome
        assert isinstance(outcome["read"], StorageUnavailableError), outcome
        assert not isinstance(outcome["read"], StorageBusyError)
        loaded = store.load_job("job-1")
        assert loaded is not None
        assert loaded.progress == 0  # here the server had rolled it back


def test_a_fenced_checkpoint_waits_for_a_take_over_in_flight_and_is_refused(
    schema_url: str, admin: Any
) -> None:
    from cidx_jobs.errors import LeaseLostError

    with open_persistence(schema_url) as store:
        store.save_job(job("job-1"))
        lease = store.claim_job("job-1")
        assert lease is not None
        outcome: list[object] = []

        def late_checkpoint() -> None:
            try:
                outcome.append(
                    store.save_checkpoint("job-1", "indexing", {"late": True}, lease=lease)
                )
            except LeaseLostError as error:
                outcome.append(error)

        with admin.transaction():
            # Another instance's take-over, not committed yet: the fenced checkpoint must wait
            # for it and then see that the lease is gone.
            admin.execute(
                f'UPDATE "{_schema(schema_url)}".sync_jobs SET status = %s, owner_id = %s, '
                "lease_token = NULL WHERE id = %s",
                ("interrupted", "another:1:x", "job-1"),
            )
            writer = threading.Thread(target=late_checkpoint)
            writer.start()
            writer.join(timeout=0.5)
            assert writer.is_alive(), f"the fenced checkpoint did not wait: {outcome}"
        writer.join(timeout=30)
        assert len(outcome) == 1
        assert isinstance(outcome[0], LeaseLostError)
        assert store.load_checkpoint("job-1", "indexing") is None


def test_a_nested_storage_block_is_refused(schema_url: str) -> None:
    with open_persistence(schema_url) as store:
        storage = store.storage
        with storage.transaction():
            with pytest.raises(StorageError, match="already open in this thread"):
                with storage.transaction():
                    pass


def test_a_password_of_the_wrong_type_is_not_printed() -> None:
    from cidx_jobs.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        open_persistence(
            {"backend": "postgresql", "host": "127.0.0.1", "port": 1, "password": 12345678}
        )
    assert "12345678" not in str(caught.value)


def test_an_infinite_time_stored_by_hand_is_corrupt_data_naming_the_job(
    schema_url: str, admin: Any
) -> None:
    schema = _schema(schema_url)
    with open_persistence(schema_url) as store:
        store.save_job(job("job-inf"))
        store.save_job(job("job-ok"))
        store.save_checkpoint("job-ok", "indexing", {"files": 1})
        admin.execute(
            f"UPDATE \"{schema}\".sync_jobs SET completed_at = 'infinity' WHERE id = 'job-inf'"
        )
        admin.execute(
            f"UPDATE \"{schema}\".job_checkpoints SET created_at = '-infinity' "
            "WHERE job_id = 'job-ok'"
        )
        with pytest.raises(StorageCorruptError, match="job-inf") as raised:
            store.load_job("job-inf")
        assert "completed_at is infinity" in str(raised.value)
        with pytest.raises(StorageCorruptError, match="job-inf"):
            store.query_jobs()
        with pytest.raises(StorageCorruptError, match="created_at is -infinity"):
            store.storage.get_checkpoint("job-ok", "indexing")
        with pytest.raises(StorageCorruptError, match="job-ok"):
            store.list_checkpoints("job-ok")
        assert store.load_checkpoint("job-ok", "indexing") == {"files": 1}  # no time read
        loaded = store.load_job("job-ok")  # the other rows stay readable
        assert loaded is not None


@pytest.mark.parametrize("text", ['{"a": 1}garbage', '{"a": 1} ', "[1]", ""])
def test_metadata_that_is_not_one_json_object_is_corrupt_data(
    schema_url: str, admin: Any, text: str
) -> None:
    with open_persistence(schema_url) as store:
        store.save_job(job("job-1", metadata={"a": 1}))
        admin.execute(
            f'UPDATE "{_schema(schema_url)}".sync_jobs SET metadata = %s WHERE id = %s',
            (text, "job-1"),
        )
        with pytest.raises(StorageCorruptError, match="job-1"):
            store.load_job("job-1")


def test_checkpoint_data_with_trailing_text_is_corrupt_data(schema_url: str, admin: Any) -> None:
    with open_persistence(schema_url) as store:
        store.save_job(job("job-1"))
        store.save_checkpoint("job-1", "indexing", {"files": 1})
        admin.execute(
            f'UPDATE "{_schema(schema_url)}".job_checkpoints SET data = data || %s',
            ('{"more": 2}',),
        )
        with pytest.raises(StorageCorruptError, match="after its value"):
            store.load_checkpoint("job-1", "indexing")


def test_a_block_whose_statement_failed_unseen_is_not_reported_committed(
    schema_url: str,
) -> None:
    # A statement of the block failed on the server but its error never reached the
    # storage (here: run behind its back and caught): COMMIT then answers ROLLBACK without
    # raising, and the block must not pass for committed.
    with open_persistence(schema_url) as store:
        storage = store.storage
        assert isinstance(storage, PostgresStorage)
        with pytest.raises(StorageError, match="rolled the transaction back") as raised:
            with storage.transaction():
                storage.insert_job(job("job-1"), "{}")
                conn = storage._runner._state.conn
                assert conn is not None
                with pytest.raises(psycopg.errors.DivisionByZero):
                    conn.execute("SELECT 1 / 0")
        assert not isinstance(raised.value, StorageOutcomeUnknownError)
        assert store.load_job("job-1") is None
        assert store.save_job(job("job-2"))  # the connection went back clean


def test_a_connection_lost_while_commit_runs_is_outcome_unknown(
    schema_url: str, admin: Any
) -> None:
    # A deferred constraint trigger makes COMMIT itself take a while on the server, so the
    # session is killed while the COMMIT is in flight (not before it is sent).
    schema = _schema(schema_url)
    with open_persistence(f"{schema_url}&application_name=cidx-incommit&pool_max=1") as store:
        admin.execute(
            f'CREATE FUNCTION "{schema}".slow_commit() RETURNS trigger LANGUAGE plpgsql AS '
            "$$ BEGIN PERFORM pg_sleep(2); RETURN NULL; END $$"
        )
        admin.execute(
            f'CREATE CONSTRAINT TRIGGER slow_commit AFTER INSERT ON "{schema}".sync_jobs '
            f'DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION "{schema}".slow_commit()'
        )
        outcome: list[BaseException] = []

        def write() -> None:
            try:
                with store.transaction():
                    store.save_job(job("job-1"))
            except BaseException as error:
                outcome.append(error)

        writer = threading.Thread(target=write)
        writer.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            row = admin.execute(
                "SELECT query FROM pg_stat_activity WHERE application_name = 'cidx-incommit' "
                "AND state = 'active'"
            ).fetchone()
            if row is not None and row[0] == "COMMIT":
                break
            time.sleep(0.02)
        else:
            pytest.fail("the block's COMMIT never ran")
        assert _terminate(admin, "cidx-incommit") == 1
        writer.join(timeout=30)
        assert len(outcome) == 1
        assert isinstance(outcome[0], StorageOutcomeUnknownError), outcome
        assert "may or may not be stored" in str(outcome[0])
        admin.execute(f'DROP TRIGGER slow_commit ON "{schema}".sync_jobs')
        assert store.load_job("job-1") is None  # killed before the commit finished
        assert store.save_job(job("job-2"))


@pytest.mark.parametrize(
    "schema", ['x"; DROP TABLE users; --', "Public", "public", "pg_catalog", "a-b", ""]
)
def test_drop_schema_refuses_what_is_not_a_schema_of_ours(postgres_url: str, schema: str) -> None:
    from cidx_jobs.errors import ConfigError
    from cidx_jobs_postgres._plugin import drop_schema

    with pytest.raises(ConfigError, match="drop_schema"):
        drop_schema(postgres_url, schema)
