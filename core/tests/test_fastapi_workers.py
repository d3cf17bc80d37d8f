"""The FastAPI example of docs/lifecycle.md under real ``uvicorn --workers 3``, on an SQLite file.

A worker SIGKILLed in the middle of a job is replaced by uvicorn at once, and its replacement's
start-up recovery sees the dead worker's lease still fresh; the job must reach a live worker
anyway (LeaseRunner's periodic sweep) and resume from its last checkpoint, with no finished
phase run again. A worker stopped with SIGTERM hands its jobs over, and a sibling resumes them
at once. A SIGTERM to the master leaves no job ``running``. The times are printed (run with
``-s``); docs/lifecycle.md quotes them. Only a generous timeout is asserted.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from cidx_jobs import JobPersistence, JobStatus, SyncJob, open_persistence

from .test_doc_examples import examples

pytest.importorskip("fastapi", reason="the example is a FastAPI application")
pytest.importorskip("uvicorn", reason="the example runs under uvicorn")
pytest.importorskip("cidx_jobs_sqlite", reason="the workers share an SQLite file")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not sys.platform.startswith("linux"), reason="finds uvicorn's workers in /proc"
    ),
]

WORKERS = 3
PHASE_NAMES = ("fetch", "checkout", "parse", "index", "publish")  # the example's, of 1 s each
PHASES = len(PHASE_NAMES)
TIMEOUT = 90.0  # seconds; the defaults move a killed worker's jobs within about 25 s
T = TypeVar("T")
#: A job a worker stopped running: its id, the worker's pid, and its record of the phases that
#: worker had finished.
Stopped = tuple[str, int, list[int]]


def example_app() -> str:
    """The code of the one FastAPI example of docs/lifecycle.md."""
    found = [e for e in examples("lifecycle.md") if "fastapi" in e.requires]
    assert len(found) == 1, "docs/lifecycle.md should have one FastAPI example"
    code = found[0].code
    assert "LeaseRunner(store, on_recovered=" in code, "the example runs LeaseRunner"
    return code


def wait_for(what: str, check: Callable[[], T | None], timeout: float = TIMEOUT) -> T:
    """Poll ``check`` until it returns something other than None or False; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.05)


class Server:
    """``uvicorn jobs_app:app --workers 3`` in tmp_path, and what a test needs of it."""

    def __init__(self, tmp_path: Path) -> None:
        (tmp_path / "jobs_app.py").write_text(example_app(), encoding="utf-8")
        self.db = tmp_path / "jobs.db"
        self.log_path = tmp_path / "uvicorn.log"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = {**os.environ, "CIDX_JOBS_URL": f"sqlite:///{self.db}"}
        env.pop("CIDX_JOBS_BLOCK_PLUGINS", None)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    *(sys.executable, "-m", "uvicorn", "jobs_app:app"),
                    *("--workers", str(WORKERS), "--host", "127.0.0.1", "--port", str(self.port)),
                ],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def started(self) -> int:
        """How many workers have completed their start-up so far."""
        return self.log.count("Application startup complete.")

    def workers(self) -> set[int]:
        """The pids of uvicorn's live worker processes (children of the master)."""
        pids: set[int] = set()
        for children in Path(f"/proc/{self.process.pid}/task").glob("*/children"):
            pids.update(int(pid) for pid in children.read_text().split())
        return {pid for pid in pids if alive(pid) and b"spawn_main" in cmdline(pid)}

    def call(self, method: str, path: str, body: Any = None, user: str = "alice") -> Any:
        """(status, JSON) of one request."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"X-User": user, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as reply:
                return reply.status, json.loads(reply.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def create(self, count: int, user: str = "alice") -> list[str]:
        ids = []
        for _ in range(count):
            status, job = self.call("POST", "/jobs", {"project_id": "repo"}, user=user)
            assert status == 202, job
            ids.append(job["id"])
        return ids

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # the group of the master we started
            self.process.wait(timeout=30)


def alive(pid: int) -> bool:
    """Whether the process runs (not gone, not a zombie waiting for its parent)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def pid_of(owner_id: str | None) -> int:
    """The process id in an owner id, ``host:pid:random``."""
    assert owner_id is not None
    return int(owner_id.rsplit(":", 2)[1])


def status(store: JobPersistence, job_id: str) -> JobStatus:
    job = store.load_job(job_id)
    assert job is not None, job_id
    return job.status


def owner(store: JobPersistence, job_id: str) -> str:
    job = store.load_job(job_id)
    assert job is not None, job_id
    assert job.owner_id is not None, job_id
    return job.owner_id


def ran_by(store: JobPersistence, job_id: str) -> list[int]:
    """The example's record of which process ran each finished phase of a job."""
    point = store.resume_point(job_id)
    return [] if point is None else list(point.data["ran_by"])


def mid_job(store: JobPersistence, ids: list[str]) -> SyncJob | None:
    """A running job with a phase finished and at least two to go: the moment to stop it."""
    for job_id in ids:
        job = store.load_job(job_id)
        if job is not None and job.status is JobStatus.RUNNING and 20 <= job.progress <= 60:
            return job
    return None


def running_elsewhere(store: JobPersistence, job_id: str, owner: str) -> SyncJob | None:
    job = store.load_job(job_id)
    if job is not None and job.status is JobStatus.RUNNING and job.owner_id != owner:
        return job
    return None


def by(job: SyncJob, siblings: set[int]) -> str:
    """Which worker runs the job now: one that was there before, or uvicorn's replacement."""
    pid = pid_of(job.owner_id)
    return f"{'sibling' if pid in siblings else 'the replacement'} {pid}"


def phases_done(log: str, job_id: str) -> list[str]:
    """The phases the example logged as done for a job, in order, over every worker."""
    return re.findall(rf"job {job_id}: (\w+) done", log)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started = Server(tmp_path)
    try:
        wait_for(f"{WORKERS} workers to start", lambda: started.started() >= WORKERS, 60)
        yield started
    finally:
        started.stop()
        print(f"\n--- uvicorn log ({started.log_path}), last lines:")
        print("\n".join(started.log.splitlines()[-15:]))


def test_jobs_move_to_a_live_worker_when_one_is_killed_or_stopped(server: Server) -> None:
    with open_persistence(f"sqlite:///{server.db}") as store:
        cancelled = check_the_api(server, store)
        first = server.create(6)
        killed = kill_a_worker(server, store, first)
        second = server.create(4)
        stopped = stop_a_worker(server, store, second)

        wait_for(
            "every job to complete",
            lambda: all(status(store, j) is JobStatus.COMPLETED for j in first + second),
        )
        log = server.log
        for job_id in first + second:
            assert len(ran_by(store, job_id)) == PHASES, job_id
            done = phases_done(log, job_id)
            assert len(done) == len(set(done)), f"job {job_id} ran a phase twice: {done}"
            assert [c.phase for c in store.list_checkpoints(job_id)] == list(PHASE_NAMES)
        for job_id, pid, finished in (killed, stopped):
            # What the stopped worker finished was kept, and the rest ran on another worker.
            runs = ran_by(store, job_id)
            assert runs[: len(finished)] == finished, (runs, finished)
            assert pid not in runs[len(finished) :], (runs, finished)
        job = store.load_job(cancelled)
        assert job is not None
        assert job.status is JobStatus.CANCELLED
        assert job.progress < 100

        last = server.create(3)
        wait_for(
            "the last jobs to run",
            lambda: all(status(store, j) is JobStatus.RUNNING for j in last),
        )
        owners = {owner(store, j) for j in last}
    stop_the_server(server, last, owners)


def check_the_api(server: Server, store: JobPersistence) -> str:
    """Create, read (scoped to the user, without the lease fields) and cancel; returns the id
    of the cancelled job."""
    [job_id] = server.create(1, user="bob")
    code, job = server.call("GET", f"/jobs/{job_id}", user="bob")
    assert code == 200
    assert (job["id"], job["user_id"], job["project_id"]) == (job_id, "bob", "repo")
    assert not {"owner_id", "heartbeat_at"} & set(job)  # to_public_dict()
    assert server.call("GET", f"/jobs/{job_id}", user="mallory")[0] == 403
    assert server.call("POST", f"/jobs/{job_id}/cancel", user="mallory")[0] == 403
    assert server.call("GET", "/jobs/no-such-job")[0] == 404
    assert server.call("POST", "/jobs", {"project_id": ""})[0] == 400  # ValidationError
    wait_for("bob's job to run", lambda: status(store, job_id) is JobStatus.RUNNING)
    code, job = server.call("POST", f"/jobs/{job_id}/cancel", user="bob")
    assert code == 200
    assert job["status"] == "cancelled"
    assert server.call("POST", f"/jobs/{job_id}/cancel", user="bob")[0] == 409
    return job_id


def kill_a_worker(server: Server, store: JobPersistence, ids: list[str]) -> Stopped:
    """SIGKILL the worker of a running job; the job must run again on another worker."""
    victim = wait_for("a job in the middle of its phases", lambda: mid_job(store, ids))
    dead_owner = owner(store, victim.id)
    dead = pid_of(dead_owner)
    siblings = server.workers()
    assert dead in siblings, f"{dead_owner} is not one of uvicorn's workers"
    started_before = server.started()
    os.kill(dead, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for("the killed worker to die", lambda: not alive(dead), 10)
    # What the dead worker finished of the job: nothing can change it any more.
    finished = ran_by(store, victim.id)
    assert 1 <= len(finished) < PHASES, finished
    assert set(finished) == {dead}, finished
    orphans = [j for j in store.query_jobs() if j.owner_id == dead_owner and j.status.is_active]

    wait_for("uvicorn to replace the killed worker", lambda: server.started() > started_before)
    restarted = time.monotonic() - killed_at
    # The replacement's start-up sweep came too early: the dead worker's lease was fresh.
    fresh = owner(store, victim.id) == dead_owner
    resumed = wait_for(
        "the killed worker's job to run on another worker",
        lambda: running_elsewhere(store, victim.id, dead_owner),
    )
    moved = time.monotonic() - killed_at
    print(
        f"\nSIGKILL of worker {dead} (job {victim.id} at {victim.progress}%): replaced after "
        f"{restarted:.1f} s, whose start-up sweep {'left' if fresh else 'took'} the job; "
        f"running again after {moved:.1f} s on {by(resumed, siblings)}; "
        f"{len(orphans)} unfinished job(s) of the dead worker"
    )
    return victim.id, dead, finished


def stop_a_worker(server: Server, store: JobPersistence, ids: list[str]) -> Stopped:
    """SIGTERM the worker of a running job: it hands the job over, and another worker runs it."""
    job = wait_for("a job in the middle of its phases", lambda: mid_job(store, ids))
    stopped_owner = owner(store, job.id)
    stopped = pid_of(stopped_owner)
    siblings = server.workers()
    os.kill(stopped, signal.SIGTERM)
    terminated_at = time.monotonic()
    taken = wait_for(
        "the stopped worker's job to run on another worker",
        lambda: running_elsewhere(store, job.id, stopped_owner),
    )
    handed = time.monotonic() - terminated_at
    print(
        f"SIGTERM of worker {stopped} (job {job.id} at {job.progress}%): running again "
        f"after {handed:.1f} s on {by(taken, siblings)}"
    )
    wait_for("the stopped worker to exit", lambda: not alive(stopped), 30)
    assert re.search(
        rf"handed over \d+ job\(s\) of owner {re.escape(stopped_owner)} to the other workers; "
        rf"interrupted: [^\n]*{job.id}",
        server.log,
    ), "the stopped worker did not log its hand-over"
    # Its last checkpoint was written before the hand-over, which ended its lease.
    finished = [pid for pid in ran_by(store, job.id) if pid == stopped]
    assert finished, "the stopped worker had finished a phase"
    return job.id, stopped, finished


def stop_the_server(server: Server, running: list[str], owners: set[str]) -> None:
    """SIGTERM the master: every worker hands its jobs over, and none is left running."""
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=60) == 0
    log = server.log
    with open_persistence(f"sqlite:///{server.db}") as after:
        left = [j.id for j in after.query_jobs() if j.status is JobStatus.RUNNING]
        assert left == [], f"jobs left running after the server stopped: {left}"
        for job_id in running:
            assert status(after, job_id) is JobStatus.INTERRUPTED, job_id
    for worker in owners:
        assert re.search(rf"handed over \d+ job\(s\) of owner {re.escape(worker)}", log), (
            f"worker {worker} did not log its hand-over"
        )
    for job_id in running:
        assert re.search(rf"interrupted: [^\n]*{job_id}", log), f"{job_id} was not handed over"
