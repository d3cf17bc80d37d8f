"""Fenced leases under a real stall (issue 10, item 10).

Each trial runs two worker processes on one SQLite file. A worker claims its jobs one after
another (``claim_job``) and, for each, makes a number of steps, each a fenced progress update
and a fenced checkpoint (``lease=``) followed by a heartbeat, then completes the job with its
lease. Every write carries who wrote it and at which step.

In half of the trials the parent stops one worker with SIGSTOP, a stall longer than the lease,
as a long GC pause, a swapped-out process or a partition would be; in the other half every
worker stays live and the taker's clock runs 10 minutes ahead of theirs (a clock step: by it,
their fresh heartbeats look 10 minutes old), so that it takes their running jobs with a
5-minute lease. It then takes the stalled worker's running job
over (``recover_interrupted_jobs`` with a lease of one second), claims it, writes its own
progress and checkpoint under its new lease and completes it, and only then resumes the
stalled worker with SIGCONT. The stalled worker goes on writing to the job it thinks it holds.

What must hold:

- every write the stalled worker makes to the taken job after the take-over raises
  ``LeaseLostError`` and stores nothing: the job ends completed with the taker's progress,
  checkpoint and owner (a late write that was accepted would be the last one stored);
- the stalled worker then goes on claiming and finishing its other jobs;
- every job a worker completed ends with that worker's last step stored, and the other
  worker's jobs are untouched by the stall (unless its lease also ran out, which is counted).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cidx_jobs import JobPersistence, JobStatus, StoreSettings, SyncJob, open_persistence
from cidx_jobs.errors import LeaseLostError

from ._common import open_sqlite, sqlite_url
from ._config import StressConfig
from ._report import ScenarioResult

__all__ = ["run", "worker"]

#: The lease the parent's recovery applies: the stall is longer than this.
LEASE = timedelta(seconds=1)
STALL_SECONDS = 2.0
STEP_PAUSE_SECONDS = 0.02
PHASE = "indexing"
TAKER_PROGRESS = 99
#: How far ahead of the workers' clocks the taker's clock is in a clock-step trial.
CLOCK_STEP = timedelta(minutes=10)


def worker(db: Path, journal: Path, prefix: str, jobs: int, steps: int) -> int:
    """One worker: claims ``prefix-0`` ... in turn and works each through ``steps`` fenced
    steps; appends one JSON line per call to ``journal`` once the call returned or raised."""
    store = open_sqlite(db)
    with journal.open("a") as out:

        def record(**fields: object) -> None:
            out.write(json.dumps(fields) + "\n")
            out.flush()

        record(kind="ready", owner=store.owner_id)
        for n in range(jobs):
            job_id = f"{prefix}-{n}"
            lease = store.claim_job(job_id, expected=JobStatus.PENDING)
            if lease is None:
                record(kind="not claimed", job=job_id)
                continue
            record(kind="claimed", job=job_id)
            try:
                for step in range(steps):
                    store.update_job_progress(job_id, step, PHASE, lease=lease)
                    store.save_checkpoint(
                        job_id, PHASE, {"by": store.owner_id, "step": step}, lease=lease
                    )
                    record(kind="step", job=job_id, step=step)
                    store.heartbeat()
                    time.sleep(STEP_PAUSE_SECONDS)
                store.update_job_status(job_id, JobStatus.COMPLETED, lease=lease)
                record(kind="completed", job=job_id)
            except LeaseLostError:
                record(kind="lease lost", job=job_id)
    store.close()
    return 0


def _journal(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _wait(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def _take_over(result: ScenarioResult, store: JobPersistence, taken: list[str]) -> None:
    """The taker's work on each job it took: claim, one fenced step, complete."""
    for job_id in taken:
        lease = store.claim_job(job_id, expected=JobStatus.INTERRUPTED)
        if lease is None:
            result.fail(f"the job {job_id} taken over could not be claimed again")
            continue
        store.update_job_progress(job_id, TAKER_PROGRESS, PHASE, lease=lease)
        store.save_checkpoint(
            job_id, PHASE, {"by": store.owner_id, "step": TAKER_PROGRESS}, lease=lease
        )
        store.update_job_status(job_id, JobStatus.COMPLETED, lease=lease)


def _check(
    result: ScenarioResult,
    store: JobPersistence,
    journals: dict[str, list[dict[str, object]]],
    taken: list[str],
    stalled: str,
) -> None:
    for job_id in taken:
        result.checked += 1
        job = store.load_job(job_id)
        data = store.load_checkpoint(job_id, PHASE)
        if (
            job is None
            or job.status is not JobStatus.COMPLETED
            or job.progress != TAKER_PROGRESS
            or job.owner_id != store.owner_id
            or data != {"by": store.owner_id, "step": TAKER_PROGRESS}
        ):
            result.fail(
                f"{job_id}: a late write of its former owner was stored after the take-over: "
                f"{job!r}, checkpoint {data!r}"
            )
        worker_name = job_id.split("-")[0]
        refused = [r for r in journals[worker_name] if r == {"kind": "lease lost", "job": job_id}]
        result.checked += 1
        if not refused:
            result.fail(f"{job_id}: its former owner {worker_name} was never refused")
        result.outcomes["late writes of a former owner refused"] += len(refused)
    for name, records in journals.items():
        owner = next((r["owner"] for r in records if r["kind"] == "ready"), None)
        for record in records:
            if record["kind"] != "completed" or record["job"] in taken:
                continue
            result.checked += 1
            job_id = str(record["job"])
            job = store.load_job(job_id)
            data = store.load_checkpoint(job_id, PHASE)
            last = max(
                int(str(r["step"])) for r in records if r["kind"] == "step" and r["job"] == job_id
            )
            if (
                job is None
                or job.status is not JobStatus.COMPLETED
                or job.progress != last
                or data != {"by": owner, "step": last}
            ):
                result.fail(f"{name}: {job_id} completed, but stored {job!r} and {data!r}")
            result.outcomes["jobs completed by their workers, checked"] += 1
        result.outcomes[f"{'stalled' if name == stalled else 'live'} worker: leases lost"] += sum(
            1 for r in records if r["kind"] == "lease lost"
        )


def _trial(result: ScenarioResult, folder: Path, jobs: int, steps: int, step: bool) -> None:
    """One trial: the first worker stalled with SIGSTOP, or (``step``) every worker live and
    the taker's clock 10 minutes ahead of theirs."""
    path = folder / "jobs.db"
    store = open_sqlite(path)
    stepped = (
        open_persistence(
            sqlite_url(path),
            settings=StoreSettings(clock=lambda: datetime.now(timezone.utc) + CLOCK_STEP),
        )
        if step
        else None
    )
    names = ("w0", "w1")
    for name in names:
        for n in range(jobs):
            store.save_job(SyncJob.create(id=f"{name}-{n}", user_id=name, project_id="repo"))
    journal_paths = {name: folder / f"{name}.jsonl" for name in names}
    workers = {
        name: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cidx_jobs_stress.child",
                "fenced",
                str(path),
                str(journal_paths[name]),
                name,
                str(jobs),
                str(steps),
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
    }
    stalled = names[0]
    try:
        # Stop the worker in the middle of a job, once it has made a few steps.
        if not _wait(
            lambda: sum(r["kind"] == "step" for r in _journal(journal_paths[stalled])) >= 3, 60
        ):
            result.fail("the worker to stall made no progress")
            return
        result.faults += 1
        if stepped is not None:
            # The live workers heartbeat every step; by a clock 10 minutes ahead their
            # leases look 10 minutes old, and a 5-minute lease takes their running jobs.
            # A worker may be between two jobs at this moment: look again until one runs.
            deadline = time.monotonic() + 10
            report = stepped.recover_interrupted_jobs(lease_timeout=CLOCK_STEP / 2)
            while not report.interrupted and time.monotonic() < deadline:
                time.sleep(0.01)
                report = stepped.recover_interrupted_jobs(lease_timeout=CLOCK_STEP / 2)
            taken = sorted(point.job.id for point in report.interrupted)
            if not taken:
                result.fail(f"the stepped clock took no running job: {report}")
            result.outcomes["clock step: live workers' jobs taken over"] += len(taken)
            _take_over(result, stepped, taken)
        else:
            os.kill(workers[stalled].pid, signal.SIGSTOP)
            try:
                time.sleep(STALL_SECONDS)
                report = store.recover_interrupted_jobs(lease_timeout=LEASE)
                taken = sorted(point.job.id for point in report.interrupted)
                mine = [job_id for job_id in taken if job_id.startswith(f"{stalled}-")]
                if not mine:
                    result.fail(f"the stalled worker's running job was not taken over: {report}")
                result.outcomes["jobs taken over from the stalled worker"] += len(mine)
                result.outcomes["jobs taken over from the live worker"] += len(taken) - len(mine)
                _take_over(result, store, taken)
            finally:
                os.kill(workers[stalled].pid, signal.SIGCONT)
        for name, process in workers.items():
            process.wait(timeout=300)
            if process.returncode != 0:
                result.fail(f"worker {name} failed: {process.stderr.read()[-500:]}")  # type: ignore[union-attr]
                return
        journals = {name: _journal(p) for name, p in journal_paths.items()}
        _check(result, stepped or store, journals, taken, stalled)
    finally:
        for process in workers.values():
            if process.poll() is None:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
        store.close()
        if stepped is not None:
            stepped.close()


def run(config: StressConfig, workdir: Path) -> ScenarioResult:
    """Run the fencing trials in ``workdir``."""
    result = ScenarioResult("fencing")
    jobs, steps = config.scaled(3, 6), config.scaled(15, 40)
    for trial in range(config.scaled(2, 20)):
        folder = workdir / f"fencing-{trial}"
        folder.mkdir(parents=True)
        result.trials += 1
        try:
            _trial(result, folder, jobs, steps, step=trial % 2 == 1)
        except Exception as error:  # a crash of a trial is a failure
            result.fail(f"fencing: the trial crashed: {error!r}")
    return result
