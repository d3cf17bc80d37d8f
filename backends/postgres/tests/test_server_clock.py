"""On PostgreSQL the store writes the server's time (``JobPersistence.uses_server_clock``): the
lease times of every host sharing the server follow one clock."""

from __future__ import annotations

from datetime import datetime, timedelta

import psycopg

from cidx_jobs import StoreSettings, SyncJob, open_persistence, utcnow


def test_lease_times_are_the_servers_clock(
    schema_url: str, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    with open_persistence(schema_url) as store:
        assert store.uses_server_clock
        store.save_job(SyncJob.create(id="j1", user_id="u", project_id="p"))
        assert store.claim_job("j1") is not None
        assert store.heartbeat() == 1
        job = store.load_job("j1")
        row = admin.execute("SELECT now()").fetchone()
        assert row is not None
        assert isinstance(row[0], datetime)
        server_now = row[0]
        assert job is not None
        assert job.heartbeat_at is not None
        # The reading's error is half a round trip; a second covers a loaded test machine.
        assert abs(server_now - job.heartbeat_at) < timedelta(seconds=1)


def test_a_clock_of_ones_own_is_kept(schema_url: str) -> None:
    fixed = utcnow() - timedelta(days=2)
    with open_persistence(schema_url, settings=StoreSettings(clock=lambda: fixed)) as store:
        assert not store.uses_server_clock
        store.save_job(SyncJob.create(id="j1", user_id="u", project_id="p"))
        assert store.claim_job("j1") is not None
        job = store.load_job("j1")
        assert job is not None
        assert job.heartbeat_at == fixed
