"""Cleanup right after recovery (issue 10, item 2).

A worker dies with running jobs created 1 to 60 days ago, each with three checkpoints (its
store is closed without finishing them: nobody renews their leases). An hour later another
store on the same SQLite file recovers them and runs the default cleanup at once, as a server
does at start. What must hold: the cleanup deletes none of the jobs recovery handed out, every
one of them resumes with its checkpoints, and a job left interrupted is kept exactly for the
retention after its interruption (deleted one microsecond later).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from cidx_jobs import JobStatus, StoreSettings, SyncJob, open_persistence

from ._config import StressConfig
from ._report import ScenarioResult

__all__ = ["run"]

_PHASES = ("git_pull", "indexing", "validation")


def _trial(result: ScenarioResult, folder: Path, jobs: int) -> None:
    now = [datetime(2031, 3, 1, tzinfo=timezone.utc)]
    settings = StoreSettings(clock=lambda: now[0])
    url = f"sqlite:///{folder / 'jobs.db'}"
    dead = open_persistence(url, settings=settings)
    try:
        for i in range(jobs):
            age = timedelta(days=1 + 59 * i / max(jobs - 1, 1))
            job_id = f"job-{i:05d}"
            dead.save_job(SyncJob(id=job_id, user_id="u", project_id="p", created_at=now[0] - age))
            lease = dead.claim_job(job_id)
            for phase in _PHASES:
                dead.save_checkpoint(job_id, phase, {"done": phase}, lease=lease)
    finally:
        dead.close()
    older = sum(1 for i in range(jobs) if 1 + 59 * i / max(jobs - 1, 1) > 7)
    now[0] += timedelta(hours=1)
    with open_persistence(url, settings=settings) as worker:
        report = worker.recover_interrupted_jobs()
        cleanup = worker.run_cleanup()
        result.checked += 2
        if len(report.interrupted) != jobs:
            result.fail(f"recovery handed out {len(report.interrupted)} of {jobs} jobs")
        if cleanup.jobs_deleted or cleanup.checkpoints_deleted:
            result.fail(
                f"the cleanup right after recovery deleted {cleanup.jobs_deleted} jobs and "
                f"{cleanup.checkpoints_deleted} checkpoints ({older} were older than the retention)"
            )
        kept = sum(
            len(worker.list_checkpoints(point.job.id)) == len(_PHASES)
            for point in report.interrupted
        )
        result.checked += 1
        if kept != jobs:
            result.fail(f"{jobs - kept} recovered jobs lost checkpoints")
        resumed = sum(
            worker.update_job_status(
                point.job.id, JobStatus.RUNNING, expected=JobStatus.INTERRUPTED
            )
            for point in report.interrupted[1:]
        )
        result.outcomes["jobs recovered"] += len(report.interrupted)
        result.outcomes["recovered jobs older than the retention"] += older
        result.outcomes["jobs resumed after the cleanup"] += resumed
        # The first one is left interrupted: kept up to exactly the retention after that.
        left = report.interrupted[0].job.id
        stamp = worker.load_job(left).completed_at  # type: ignore[union-attr]
        result.checked += 2
        if stamp != now[0]:
            result.fail(
                f"the interrupted job's completed_at is {stamp}, not the recovery's {now[0]}"
            )
            return
        now[0] = stamp + worker.settings.retention
        if worker.run_cleanup().jobs_deleted != 0:
            result.fail("an interrupted job was deleted before its retention had passed")
        now[0] += timedelta(microseconds=1)
        if worker.run_cleanup().jobs_deleted != 1:
            result.fail("an interrupted job was kept after its retention had passed")
        result.outcomes["interrupted jobs deleted exactly at the retention"] += 1


def run(config: StressConfig, workdir: Path) -> ScenarioResult:
    """Run the retention trials in ``workdir``."""
    result = ScenarioResult("retention")
    for trial, jobs in enumerate([config.scaled(200, 1000)] * config.scaled(1, 3)):
        folder = workdir / f"retention-{trial}"
        folder.mkdir(parents=True)
        result.trials += 1
        try:
            _trial(result, folder, jobs)
        except Exception as error:  # a crash of a trial is a failure
            result.fail(f"retention: the trial crashed: {error!r}")
    return result
