"""With the default clock and a storage that has a server clock, the store writes server time:
the last reading of the server's clock plus the monotonic time since, read again at each
heartbeat and recovery.

The server here is a memory storage whose ``server_time()`` runs a set offset from this host's
clock, as a database server's clock may: a real server on this machine shares its clock.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import pytest

from cidx_jobs import JobPersistence, StoreSettings, SyncJob, utcnow
from cidx_jobs.errors import StorageUnavailableError
from cidx_jobs_memory import MemoryStorage

#: How far apart two readings of "now" may be in this test: generous, since the point is an
#: offset of an hour, not the microseconds a reading takes.
SLACK = timedelta(seconds=2)


class ServerStorage(MemoryStorage):
    """A memory storage with a server clock ``offset`` from this host's; ``down`` fails it."""

    def __init__(self, offset: timedelta) -> None:
        super().__init__()
        self.offset = offset
        self.down = False
        self.readings = 0

    def server_time(self) -> datetime:
        if self.down:
            raise StorageUnavailableError("the server is down")
        self.readings += 1
        return utcnow() + self.offset


def running_job(store: JobPersistence, job_id: str = "j1") -> SyncJob:
    store.save_job(SyncJob.create(id=job_id, user_id="u", project_id="p"))
    assert store.claim_job(job_id) is not None
    job = store.load_job(job_id)
    assert job is not None
    assert job.heartbeat_at is not None
    assert job.started_at is not None
    return job


def near(when: datetime | None, expected: datetime) -> bool:
    return when is not None and abs(when - expected) < SLACK


def test_the_store_writes_the_servers_time_not_the_hosts() -> None:
    storage = ServerStorage(timedelta(hours=1))
    store = JobPersistence(storage)
    assert store.uses_server_clock
    assert storage.readings == 1, "read once when the store opens"
    job = running_job(store)
    assert near(job.heartbeat_at, utcnow() + timedelta(hours=1))
    assert near(job.started_at, utcnow() + timedelta(hours=1))
    assert near(store.now(), utcnow() + timedelta(hours=1))


def test_between_readings_the_monotonic_time_elapsed_is_added() -> None:
    storage = ServerStorage(timedelta(hours=1))
    store = JobPersistence(storage)
    first = running_job(store, "a").heartbeat_at
    time.sleep(0.2)
    second = running_job(store, "b").heartbeat_at
    assert first is not None
    assert second is not None
    assert timedelta(seconds=0.19) <= second - first < SLACK
    assert storage.readings == 1, "no reading per call"


def test_heartbeat_and_recovery_read_the_servers_clock_again() -> None:
    storage = ServerStorage(timedelta(hours=1))
    store = JobPersistence(storage)
    running_job(store)
    storage.offset = timedelta(hours=2)  # the server's clock was stepped
    assert store.heartbeat() == 1
    assert storage.readings == 2
    job = store.load_job("j1")
    assert job is not None
    assert near(job.heartbeat_at, utcnow() + timedelta(hours=2))
    store.recover_interrupted_jobs()
    assert storage.readings == 3


def test_a_failed_reading_keeps_the_last_one() -> None:
    storage = ServerStorage(timedelta(hours=1))
    store = JobPersistence(storage)
    running_job(store)
    storage.down = True  # only the clock reading fails here; the heartbeat's write works
    assert store.heartbeat() == 1
    job = store.load_job("j1")
    assert job is not None
    assert near(job.heartbeat_at, utcnow() + timedelta(hours=1))


def test_a_server_that_cannot_be_read_at_open_leaves_the_hosts_clock_until_it_can(
    caplog: pytest.LogCaptureFixture,
) -> None:
    storage = ServerStorage(timedelta(hours=1))
    storage.down = True
    store = JobPersistence(storage)
    assert store.uses_server_clock
    assert "could not read the database server's clock" in caplog.text
    assert near(running_job(store, "a").heartbeat_at, utcnow())
    storage.down = False
    store.heartbeat()
    assert near(running_job(store, "b").heartbeat_at, utcnow() + timedelta(hours=1))


def test_no_server_clock_without_a_server_or_with_a_clock_of_ones_own() -> None:
    assert not JobPersistence(MemoryStorage()).uses_server_clock
    fixed = utcnow() - timedelta(days=3)
    storage = ServerStorage(timedelta(hours=1))
    store = JobPersistence(storage, settings=StoreSettings(clock=lambda: fixed))
    assert not store.uses_server_clock
    assert storage.readings == 0
    assert running_job(store).heartbeat_at == fixed
