"""Several processes on one file, and a writer killed at random moments."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest

from cidx_jobs import JobFilter, JobPersistence, JobStatus, SyncJob

from .conftest import OpenStore, make_job

PRELUDE = """
import json, os, sys, threading
from cidx_jobs import Hooks, JobFilter, JobPersistence, SyncJob, get_plugin_manager
from cidx_jobs_sqlite import SqliteOptions, SqliteStorage

def open_store(path):
    hooks = Hooks(get_plugin_manager(load_entrypoints=False))
    return JobPersistence(SqliteStorage(SqliteOptions.parse(path)), hooks=hooks)
"""

MIXED_WORKER = (
    PRELUDE
    + """
path, proc, threads, rounds, shared = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
store = open_store(path)
lock = threading.Lock()
result = {"wins": [], "errors": [], "increments": 0}

def work(t):
    for r in range(rounds):
        try:
            job_id = f"p{proc}-t{t}-{r}"
            store.save_job(SyncJob.create(id=job_id, user_id=f"user{proc}", project_id="repo"))
            assert store.update_job_status(job_id, "running", expected="pending")
            store.update_job_progress(job_id, 50, "indexing")
            store.save_checkpoint(job_id, "indexing", {"r": r})
            assert store.update_job_status(job_id, "completed", expected="running")
            # Every thread of every process races for the shared jobs: one wins each.
            target = f"shared-{(t + r) % shared}"
            if store.update_job_status(target, "running", expected="pending"):
                with lock:
                    result["wins"].append(target)
            # A read-modify-write in a transaction never loses an update.
            with store.transaction():
                count = store.load_checkpoint("counter", "n")["n"]
                store.save_checkpoint("counter", "n", {"n": count + 1})
            with lock:
                result["increments"] += 1
            assert len(store.query_jobs(JobFilter(user_id=f"user{proc}", limit=5))) >= 1
            assert store.load_job(job_id).status.value == "completed"
        except Exception as error:
            with lock:
                result["errors"].append(repr(error))

workers = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
for w in workers: w.start()
for w in workers: w.join()
store.close()
print(json.dumps(result))
"""
)


def spawn(code: str, *args: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_four_processes_with_threads_lose_nothing(open_store: OpenStore, db_path: Path) -> None:
    processes, threads, rounds, shared = 4, 4, 12, 8
    store = open_store()
    for n in range(shared):
        store.save_job(make_job(f"shared-{n}"))
    store.save_job(make_job("counter"))
    store.save_checkpoint("counter", "n", {"n": 0})
    children = [spawn(MIXED_WORKER, db_path, p, threads, rounds, shared) for p in range(processes)]
    results = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        results.append(json.loads(out))
    assert [r["errors"] for r in results] == [[]] * processes
    wins = [win for r in results for win in r["wins"]]
    assert sorted(wins) == sorted(f"shared-{n}" for n in range(shared))  # each exactly once
    total = sum(r["increments"] for r in results)
    assert total == processes * threads * rounds
    assert store.load_checkpoint("counter", "n") == {"n": total}
    for p in range(processes):
        for t in range(threads):
            for r in range(rounds):
                job = store.load_job(f"p{p}-t{t}-{r}")
                assert job is not None
                assert (job.status, job.progress, job.phase) == (
                    JobStatus.COMPLETED,
                    50,
                    "indexing",
                )
                assert store.load_checkpoint(job.id, "indexing") == {"r": r}


CRASH_WRITER = (
    PRELUDE
    + """
path, tag = sys.argv[1], sys.argv[2]
store = open_store(path)

def ack(kind, job_id):
    # Written only after the call returned; one short write is atomic on a pipe.
    os.write(1, f"{kind} {job_id}\\n".encode())

ack("ready", "-")
i = 0
while True:
    job_id = f"{tag}-{i}"
    store.save_job(SyncJob.create(id=job_id, user_id="crash", project_id="repo", metadata={"i": i, "pad": "x" * (i % 500)}))
    ack("saved", job_id)
    store.update_job_status(job_id, "running")
    ack("running", job_id)
    store.save_checkpoint(job_id, "indexing", {"i": i})
    ack("checkpoint", job_id)
    with store.transaction():
        store.save_job(SyncJob.create(id="a-" + job_id, user_id="pair", project_id="repo"))
        store.update_job_progress(job_id, 7)
        store.save_job(SyncJob.create(id="b-" + job_id, user_id="pair", project_id="repo"))
    ack("pair", job_id)
    i += 1
"""
)


def crash_rounds() -> int:
    return int(os.environ.get("CIDX_JOBS_CRASH_ROUNDS", "6"))


@pytest.mark.slow
def test_a_writer_killed_at_random_moments_never_loses_a_returned_write(
    open_store: OpenStore, db_path: Path
) -> None:
    rng = random.Random(os.environ.get("CIDX_JOBS_CRASH_SEED", "cidx"))
    open_store().close()  # the schema exists before the first writer starts
    acked: list[tuple[str, str]] = []
    for round_ in range(crash_rounds()):
        child = spawn(CRASH_WRITER, db_path, f"r{round_}")
        lines: list[str] = []
        assert child.stdout is not None
        first = child.stdout.readline()
        assert first == "ready -\n", child.stderr.read() if child.stderr else ""
        reader = threading.Thread(target=lines.extend, args=(child.stdout,))
        reader.start()
        time.sleep(rng.uniform(0.0, 0.25))
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        reader.join(timeout=60)
        assert child.stderr is not None
        child.stdout.close()
        child.stderr.close()
        for line in lines:
            kind, job_id = line.split()
            acked.append((kind, job_id))
        check_after_crash(db_path, open_store, acked)
    assert len([kind for kind, _ in acked if kind == "saved"]) > 0


def check_after_crash(db_path: Path, open_store: OpenStore, acked: list[tuple[str, str]]) -> None:
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()
    store = open_store()
    try:
        for kind, job_id in acked:
            job = store.load_job(job_id)
            assert job is not None, (kind, job_id)
            if kind in ("running", "checkpoint", "pair"):
                assert job.status is JobStatus.RUNNING
            if kind in ("checkpoint", "pair"):
                assert store.load_checkpoint(job_id, "indexing") is not None
            if kind == "pair":
                assert job.progress == 7
        # A transaction is all or nothing, acknowledged or not.
        pairs = all_jobs(store, JobFilter(user_id="pair"))
        assert {j.id[2:] for j in pairs if j.id.startswith("a-")} == {
            j.id[2:] for j in pairs if j.id.startswith("b-")
        }
    finally:
        store.close()


def all_jobs(store: JobPersistence, filter: JobFilter) -> list[SyncJob]:
    jobs: list[SyncJob] = []
    page_filter = attrs.evolve(filter, limit=1000)
    while True:
        page = store.query_page(page_filter)
        jobs.extend(page.jobs)
        if page.next_cursor is None:
            return jobs
        page_filter = page_filter.next_page(page)


RECOVERING_OPENER = (
    PRELUDE
    + """
import time
path, start = sys.argv[1], float(sys.argv[2])
time.sleep(max(0.0, start - time.time()))
store = open_store(path)
report = store.storage.recovery
print(json.dumps({"recovered": report is not None, "jobs": store.count_jobs()}))
store.close()
"""
)


@pytest.mark.slow
def test_processes_opening_one_damaged_file_recover_it_once(
    open_store: OpenStore, db_path: Path
) -> None:
    from .test_failures import damage_pages, fill_for_damage, table_leaf_pages

    fill_for_damage(open_store, db_path)
    leaves = table_leaf_pages(db_path, "sync_jobs")
    damage_pages(db_path, leaves[len(leaves) // 2 : len(leaves) // 2 + 1])
    start = time.time() + 1.0  # after the interpreters have started
    children = [spawn(RECOVERING_OPENER, db_path, start) for _ in range(3)]
    results = []
    for child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
        results.append(json.loads(out))
    assert sum(r["recovered"] for r in results) == 1
    assert len({r["jobs"] for r in results}) == 1
    assert 300 <= results[0]["jobs"] < 400
    aside = db_path.parent.glob("jobs.db.corrupt-*")
    assert len([p for p in aside if not p.name.endswith(("-wal", "-shm"))]) == 1


# -- leases and recovery across processes -----------------------------------------------------

LONG_AGO = datetime(2020, 1, 1, tzinfo=timezone.utc)
DEAD_OWNER = "dead:1:x"

RECOVERER = (
    PRELUDE
    + """
import time
from datetime import timedelta
path, start, lease, rounds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
store = open_store(path)
time.sleep(max(0.0, start - time.time()))  # every recoverer starts at the same moment
result = {"owner": store.owner_id, "interrupted": [], "requeue": []}
for round_ in range(rounds):
    if round_:
        time.sleep(0.25)
    report = store.recover_interrupted_jobs(lease_timeout=timedelta(seconds=lease))
    result["interrupted"] += [point.job.id for point in report.interrupted]
    result["requeue"] += [job.id for job in report.requeue]
store.close()
print(json.dumps(result))
"""
)

SIBLING = (
    PRELUDE
    + """
import time
path, tag, jobs, beat, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
store = open_store(path)
ids = [f"{tag}-{n}" for n in range(jobs)]
for job_id in ids:
    store.save_job(SyncJob.create(id=job_id, user_id=tag, project_id="repo"))
    assert store.update_job_status(job_id, "running", expected="pending")
print(json.dumps({"owner": store.owner_id}), flush=True)
renewed = []
while not os.path.exists(stop):
    if beat > 0:
        renewed.append(store.heartbeat())  # a live worker; beat 0 is one that hangs
        time.sleep(beat)
    else:
        time.sleep(0.05)
jobs_now = [store.load_job(job_id) for job_id in ids]
store.close()
print(json.dumps({
    "renewed": renewed,
    "statuses": [job.status.value for job in jobs_now],
    "owners": [job.owner_id for job in jobs_now],
}))
"""
)


def save_orphan(store: JobPersistence, job_id: str, status: JobStatus) -> None:
    """A job owned by a process that died long ago."""
    store.save_job(
        make_job(
            job_id, status=status, created_at=LONG_AGO, owner_id=DEAD_OWNER, heartbeat_at=LONG_AGO
        )
    )


def finish(child: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    result: dict[str, Any] = json.loads(out.splitlines()[-1])
    return result


@pytest.mark.slow
def test_processes_recovering_at_once_take_each_job_exactly_once(
    open_store: OpenStore, db_path: Path
) -> None:
    store = open_store()
    running = [f"dead-run-{n:03d}" for n in range(240)]
    waiting = [f"dead-wait-{n:03d}" for n in range(60)]
    with store.transaction():
        for job_id in running:
            save_orphan(store, job_id, JobStatus.RUNNING)
        for n, job_id in enumerate(waiting):
            save_orphan(store, job_id, JobStatus.PENDING if n % 2 else JobStatus.QUEUED)
        for n in range(20):  # finished jobs of the dead owner stay as they are
            save_orphan(store, f"dead-done-{n}", JobStatus.COMPLETED)
    start = time.time() + 1.5  # after the interpreters have started and opened the store
    children = [spawn(RECOVERER, db_path, start, 300, 1) for _ in range(3)]
    results = [finish(child) for child in children]
    assert len({r["owner"] for r in results}) == 3
    interrupted = [job_id for r in results for job_id in r["interrupted"]]
    requeue = [job_id for r in results for job_id in r["requeue"]]
    assert sorted(interrupted) == running  # each exactly once, none lost
    assert sorted(requeue) == waiting
    for r in results:
        for job_id in r["interrupted"] + r["requeue"]:
            job = store.load_job(job_id)
            assert job is not None
            assert job.owner_id == r["owner"], job_id  # the winner's, as it reported
            assert job.heartbeat_at is not None
            assert job.heartbeat_at > LONG_AGO
        for job_id in r["interrupted"]:
            job = store.load_job(job_id)
            assert job is not None
            assert job.status is JobStatus.INTERRUPTED
    for job_id in waiting:
        job = store.load_job(job_id)
        assert job is not None
        assert job.status in (JobStatus.PENDING, JobStatus.QUEUED)
    for n in range(20):
        job = store.load_job(f"dead-done-{n}")
        assert job is not None
        assert (job.status, job.owner_id, job.heartbeat_at) == (
            JobStatus.COMPLETED,
            DEAD_OWNER,
            LONG_AGO,
        )


@pytest.mark.slow
def test_a_live_sibling_keeps_its_jobs_through_another_processes_recovery(
    open_store: OpenStore, db_path: Path, tmp_path: Path
) -> None:
    lease = 2.0
    store = open_store()
    dead = [f"dead-{n}" for n in range(10)]
    for job_id in dead:
        save_orphan(store, job_id, JobStatus.RUNNING)
    stop = tmp_path / "stop"
    siblings = {
        "live": spawn(SIBLING, db_path, "live", 10, 0.05, stop),
        "hung": spawn(SIBLING, db_path, "hung", 10, 0, stop),  # alive, never heartbeats
    }
    owners = {}
    try:
        for name, child in siblings.items():
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, f"the {name} sibling failed to start"
            owners[name] = json.loads(line)["owner"]
        # Long enough for the hung sibling's leases to expire, with a wide margin.
        time.sleep(lease + 0.5)
        recoverer = finish(spawn(RECOVERER, db_path, time.time(), lease, 4))
    finally:
        stop.touch()
        live_result, hung_result = (finish(child) for child in siblings.values())
    hung_ids = [f"hung-{n}" for n in range(10)]
    assert sorted(recoverer["interrupted"]) == sorted(dead + hung_ids)
    assert recoverer["requeue"] == []
    # The live sibling kept every job, running and its own, and renewed all ten each time.
    assert live_result["statuses"] == ["running"] * 10
    assert live_result["owners"] == [owners["live"]] * 10
    assert live_result["renewed"]
    assert set(live_result["renewed"]) == {10}
    # The hung one's went to the recoverer.
    assert hung_result["statuses"] == ["interrupted"] * 10
    assert hung_result["owners"] == [recoverer["owner"]] * 10
