"""A claim whose connection is lost after it was sent: ``claim_job()`` finds out whether it was
stored (a fenced write that changes nothing) and returns the lease, or claims once more.

Real faults: the claim's session is ended by ``pg_terminate_backend`` while its UPDATE runs
(never committed), or the server commits it and the reply is lost, with the store's
connections going through a TCP proxy that holds the reply and then resets the connection.
A trigger in the test's schema makes the first claim's UPDATE take half a second, so that the
fault lands while it runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit, urlunsplit

import psycopg
import pytest

from cidx_jobs import JobPersistence, JobStatus, Lease, SyncJob, open_persistence

from ._proxy import TcpProxy

#: How long the slowed claim runs: long enough to land a fault in it.
SLOW = 0.5


def _schema(url: str) -> str:
    return parse_qs(urlsplit(url).query)["schema"][0]


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(postgres_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as forwarder:
        yield forwarder


def _slow_the_next_claim(admin: psycopg.Connection[tuple[object, ...]], schema: str) -> None:
    """The next move to running sleeps SLOW seconds inside its UPDATE (once: the marker row
    goes with the claim's transaction, and comes back if that transaction is rolled back)."""
    admin.execute(f'CREATE TABLE "{schema}".slow_once (x int)')
    admin.execute(f'INSERT INTO "{schema}".slow_once VALUES (1)')
    admin.execute(
        f'CREATE FUNCTION "{schema}".slow_claim() RETURNS trigger LANGUAGE plpgsql AS $$ '
        f'BEGIN IF EXISTS (SELECT 1 FROM "{schema}".slow_once) THEN '
        f'DELETE FROM "{schema}".slow_once; PERFORM pg_sleep({SLOW}); END IF; '
        "RETURN NEW; END $$"
    )
    admin.execute(
        f'CREATE TRIGGER slow_claim BEFORE UPDATE ON "{schema}".sync_jobs FOR EACH ROW '
        "WHEN (NEW.status = 'running' AND OLD.status <> 'running') "
        f'EXECUTE FUNCTION "{schema}".slow_claim()'
    )


def _claim_session(
    admin: psycopg.Connection[tuple[object, ...]], store: JobPersistence, state: str
) -> int:
    """The pid of the store's session running the claim's UPDATE, once it is in ``state``."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT pid FROM pg_stat_activity WHERE application_name = %s AND state = %s "
            "AND query LIKE 'UPDATE%%'",
            (store.owner_id[:63], state),
        ).fetchone()
        if row is not None:
            return int(str(row[0]))
        time.sleep(0.005)
    raise AssertionError(f"the claim's session never was {state}")


def _claim_in_thread(store: JobPersistence) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def claim() -> None:
        try:
            outcome.append(store.claim_job("j1"))
        except Exception as error:  # handed to the test
            outcome.append(error)

    thread = threading.Thread(target=claim)
    thread.start()
    return thread, outcome


def _check_the_lease(store: JobPersistence, lease: object) -> None:
    assert isinstance(lease, Lease), lease
    job = store.load_job("j1")
    assert job is not None
    assert (job.status, job.owner_id) == (JobStatus.RUNNING, store.owner_id)
    assert store.update_job_progress("j1", 10, "clone", lease=lease), "the lease is the job's"


def test_a_claim_whose_session_died_before_it_committed_is_made_again(
    schema_url: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    with open_persistence(f"{schema_url}&pool_max=2") as store:
        store.save_job(SyncJob.create(id="j1", user_id="u", project_id="p"))
        _slow_the_next_claim(admin, _schema(schema_url))
        thread, outcome = _claim_in_thread(store)
        pid = _claim_session(admin, store, "active")
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        thread.join(timeout=30)
        [lease] = outcome
        _check_the_lease(store, lease)


def test_a_claim_committed_whose_reply_was_lost_returns_its_lease(
    schema_url: str, admin: psycopg.Connection[tuple[object, ...]], proxy: TcpProxy
) -> None:
    url = _through(schema_url, proxy.port)
    with open_persistence(f"{url}&pool_max=2") as store:
        store.save_job(SyncJob.create(id="j1", user_id="u", project_id="p"))
        _slow_the_next_claim(admin, _schema(schema_url))
        thread, outcome = _claim_in_thread(store)
        _claim_session(admin, store, "active")
        proxy.cut()  # the reply of the commit will be held here
        _claim_session(admin, store, "idle")  # committed on the server
        assert proxy.reset() >= 1  # the reply is lost with the connection
        proxy.heal()
        thread.join(timeout=30)
        [lease] = outcome
        _check_the_lease(store, lease)
