"""One worker process of the multi-host test (``test_multihost.py``), run as a script:

    python _multihost_worker.py '{"name": ..., "url": ..., "log": ..., ...}'

It opens its own store (its own pool, its own owner id ``NAME:random``) on the shared
database, runs the library's :class:`~cidx_jobs.LeaseRunner` (heartbeats, and recovery
sweeps if it is a sweeper), creates and works its own job, and resumes every job its sweeps
recover. Every write is fenced (``lease=``) and carries a tag unique in the whole test
(``NAME.SEQ``: in the checkpoint's data, and after the ``/`` of the progress's phase), so the
test can find each write in the database's history.

Every outcome goes to the worker's event log, one JSON line each, written, flushed and
fsynced before the worker goes on: an ``ack`` line is written only after the call returned
success, and before the next write is attempted, so a worker SIGKILLed at any moment leaves
behind a log whose ``ack`` lines are all writes the store acknowledged (the last line may be
cut short; the reader skips it). Other lines: ``lost`` (LeaseLostError: the write was
refused), ``error`` and ``unknown`` (a StorageError, or StorageOutcomeUnknownError; the worker
retries with a new tag), ``claimed``, ``recovered``, ``completed``.

Standard input controls it: ``go`` starts its own job (so that every worker starts together,
whatever its start-up took), ``finish`` makes its own job complete at its next step, ``exit``
waits for its jobs, stops the runner (which hands over what it still owns) and exits 0.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from cidx_jobs import (
    JobStatus,
    Lease,
    LeaseRunner,
    RecoveryReport,
    StoreSettings,
    SyncJob,
    open_persistence,
)
from cidx_jobs.errors import LeaseLostError, StorageError, StorageOutcomeUnknownError

PHASES = ("fetch", "index", "validate")
#: A write that fails with a storage error is tried again this often, at most this many
#: times (a worker behind a partition retries until it heals, or its lease is found lost).
RETRY_DELAY = 0.1
MAX_ATTEMPTS = 300


def phase_of(step: int, steps: int) -> str:
    """The phase a step belongs to (the checkpoint's phase)."""
    return PHASES[min((step - 1) * len(PHASES) // steps, len(PHASES) - 1)]


def progress_of(step: int, steps: int) -> int:
    """The progress written at a step: never decreasing with the step, 100 at the last."""
    return step * 100 // steps


class EventLog:
    """The worker's durable log: every line is on disk before :meth:`write` returns."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (closed in close())
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        line = json.dumps({"ev": event, "t": time.time(), **fields}, sort_keys=True)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()
            os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            self._file.close()


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.name: str = config["name"]
        self.own_job: str | None = config.get("own_job")
        self.own_steps: int = config["own_steps"]
        self.step_delay: float = config["step_delay"]
        self.resume_delay: float = config["resume_delay"]
        self.sweeper: bool = config["sweeper"]
        self.heartbeat_interval: float = config["heartbeat_interval"]
        self.lease_timeout: float = config["lease_timeout"]
        self.sweep_interval: float = config["sweep_interval"]
        self.log = EventLog(config["log"])
        self.store = open_persistence(config["url"], settings=StoreSettings(owner_id=self.name))
        self.go = threading.Event()
        self.finish = threading.Event()
        self.threads: list[threading.Thread] = []
        self._seq = itertools.count(1)
        self._seq_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._runner_thread = threading.Thread(target=self._run_runner, name="lease-runner")

    # -- writes --------------------------------------------------------------------------------

    def _tag(self) -> str:
        with self._seq_lock:
            return f"{self.name}.{next(self._seq)}"

    def _write(
        self, kind: str, job_id: str, step: int, value: Any, call: Callable[[str], object]
    ) -> bool:
        """Make one fenced write, retrying storage errors; ``True`` once acknowledged,
        ``False`` when the lease is lost (or the job is gone, or the retries ran out)."""
        for _ in range(MAX_ATTEMPTS):
            tag = self._tag()
            started = time.time()
            fields = {"kind": kind, "job": job_id, "step": step, "value": value, "tag": tag}
            try:
                result = call(tag)
            except LeaseLostError as lost:
                status = getattr(lost.status, "value", lost.status)
                self.log.write(
                    "lost", **fields, t0=started, reason=lost.reason, owner=lost.owner_id,
                    status=status,
                )  # fmt: skip
                return False
            except StorageOutcomeUnknownError as error:
                self.log.write("unknown", **fields, t0=started, error=repr(error))
            except StorageError as error:
                self.log.write("error", **fields, t0=started, error=repr(error))
            else:
                if result is False:  # save_checkpoint: the job no longer exists
                    self.log.write("missing", **fields, t0=started)
                    return False
                self.log.write("ack", **fields, t0=started)
                return True
            time.sleep(RETRY_DELAY)
        self.log.write("gave-up", kind=kind, job=job_id, step=step)
        return False

    def work(self, lease: Lease, start: int, steps: int, delay: float, own: bool) -> None:
        """Steps ``start``..``steps`` of a job (a checkpoint, then the progress, each), then
        the fenced completion; stops at the first write whose lease is lost."""
        store, job_id = self.store, lease.job_id
        step = start
        while step <= steps:
            if own and self.finish.is_set():
                step = steps
            phase = phase_of(step, steps)
            progress = progress_of(step, steps)

            def checkpoint(tag: str, phase: str = phase, step: int = step) -> object:
                data = {"step": step, "tag": tag}
                return store.save_checkpoint(job_id, phase, data, lease=lease)

            def advance(tag: str, phase: str = phase, progress: int = progress) -> object:
                return store.update_job_progress(job_id, progress, f"{phase}/{tag}", lease=lease)

            if not self._write("checkpoint", job_id, step, phase, checkpoint):
                return
            if not self._write("progress", job_id, step, progress, advance):
                return
            step += 1
            if step <= steps:
                time.sleep(delay)

        def complete(tag: str) -> object:
            return store.update_job_status(job_id, JobStatus.COMPLETED, lease=lease)

        if self._write("status", job_id, steps, "completed", complete):
            self.log.write("completed", job=job_id)

    def _thread(self, target: Callable[[], None], name: str) -> None:
        def run() -> None:
            try:
                target()
            except BaseException:
                self.log.write("crash", where=name, error=traceback.format_exc())
                raise

        thread = threading.Thread(target=run, name=name)
        self.threads.append(thread)
        thread.start()

    def run_own_job(self) -> None:
        job_id = self.own_job
        assert job_id is not None
        self.go.wait()
        job = SyncJob.create(
            id=job_id, user_id="alice", project_id="repo", metadata={"steps": self.own_steps}
        )
        self.store.save_job(job)
        lease = self.store.claim_job(job_id)
        assert lease is not None, "a fresh job of this worker's is claimable"
        self.log.write("claimed", job=job_id, token=lease.token, start=1, own=True)
        self.work(lease, 1, self.own_steps, self.step_delay, own=True)

    def resume(self, job_id: str) -> None:
        """Resume a job this worker's sweep recovered, from its last checkpoint."""
        store = self.store
        lease = store.claim_job(job_id, expected=JobStatus.INTERRUPTED)
        if lease is None:
            self.log.write("claim-failed", job=job_id)
            return
        point = store.resume_point(job_id)
        job = store.load_job(job_id)
        assert job is not None
        start = int(point.data["step"]) + 1 if point is not None else 1
        steps = int(job.metadata["steps"])
        self.log.write(
            "claimed", job=job_id, token=lease.token, start=start, own=False,
            progress=job.progress, checkpoint=None if point is None else point.data,
        )  # fmt: skip
        self.work(lease, start, steps, self.resume_delay, own=False)

    # -- the lease runner ------------------------------------------------------------------------

    def on_recovered(self, report: RecoveryReport) -> None:
        for point in report.interrupted:
            self.log.write(
                "recovered", job=point.job.id,
                checkpoint=None if point.checkpoint is None else point.checkpoint.data,
            )  # fmt: skip
            self._thread(functools.partial(self.resume, point.job.id), f"resume-{point.job.id}")
        for job in report.requeue:
            self.log.write("requeue", job=job.id)

    def _run_runner(self) -> None:
        asyncio.run(self._lifespan())

    async def _lifespan(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = LeaseRunner(
            self.store,
            on_recovered=self.on_recovered,
            heartbeat_interval=self.heartbeat_interval,
            lease_timeout=self.lease_timeout,
            # A worker that is no sweeper still runs the runner's start-up sweep (it finds
            # nothing: every lease is fresh then), then never sweeps again.
            sweep_interval=self.sweep_interval if self.sweeper else 3600.0,
        )
        async with runner:
            self._started.set()
            await self._stop.wait()
        self.log.write("runner-stopped", failures=runner.failures, sweeps=runner.sweeps)

    def start(self) -> None:
        self._runner_thread.start()
        if not self._started.wait(60):
            raise RuntimeError("the lease runner did not start within 60 s")
        if self.own_job is not None:
            self._thread(self.run_own_job, f"own-{self.own_job}")

    def shutdown(self) -> None:
        # Jobs started by a sweep that is still running are joined too: wait in rounds.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            alive = [thread for thread in self.threads if thread.is_alive()]
            if not alive:
                break
            alive[0].join(timeout=max(0.0, deadline - time.monotonic()))
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._runner_thread.join(timeout=30)
        self.store.close()
        self.log.write("exit")
        self.log.close()


def main(argv: list[str]) -> int:
    config = json.loads(argv[1])
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format=f"%(asctime)s {config['name']} %(levelname)s %(name)s: %(message)s",
    )
    worker = Worker(config)
    worker.start()
    worker.log.write("ready", owner=worker.store.owner_id, pid=os.getpid())
    for line in sys.stdin:
        command = line.strip()
        if command == "go":
            worker.go.set()
        elif command == "finish":
            worker.finish.set()
        elif command == "exit":
            break
    worker.go.set()
    worker.finish.set()
    worker.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
