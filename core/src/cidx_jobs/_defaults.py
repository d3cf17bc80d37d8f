"""The default policies and observers, shipped as a plugin registered ``trylast``."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from ._models import Checkpoint, CleanupPolicy, CleanupReport, JobStatus, SyncJob
from .hookspecs import hookimpl

logger = logging.getLogger("cidx_jobs")

#: The name the default plugin is registered under; block it to replace every default.
DEFAULTS_PLUGIN_NAME = "cidx_jobs.defaults"
#: The most characters of a job's error message the default observer logs (a message may
#: hold up to 64 KiB; the log line stays short, and names how much was left out).
MAX_LOGGED_MESSAGE = 1000


def _shortened(message: str) -> str:
    if len(message) <= MAX_LOGGED_MESSAGE:
        return message
    left_out = len(message) - MAX_LOGGED_MESSAGE
    return f"{message[:MAX_LOGGED_MESSAGE]}... ({left_out} more characters; load_job() has all)"


@hookimpl(trylast=True)
def cidx_jobs_cleanup_policy(retention: timedelta) -> CleanupPolicy:
    return CleanupPolicy.uniform(retention)


@hookimpl(trylast=True)
def cidx_jobs_checkpoint_policy(
    job_id: str,
    phase: str,
    data: Mapping[str, Any],
    last_written_at: datetime | None,
    now: datetime,
) -> bool:
    return True


@hookimpl(trylast=True)
def cidx_jobs_resume_policy(
    checkpoints: Sequence[Checkpoint], now: datetime, max_age: timedelta
) -> Checkpoint | Literal[False]:
    if not checkpoints:
        return False
    newest = max(checkpoints, key=lambda checkpoint: checkpoint.created_at)
    return newest if now - newest.created_at <= max_age else False


@hookimpl(trylast=True)
def cidx_jobs_job_saved(job: SyncJob) -> None:
    logger.debug("job %s saved for user %s (status %s)", job.id, job.user_id, job.status.value)


@hookimpl(trylast=True)
def cidx_jobs_status_changed(
    job_id: str, status: JobStatus, error_message: str | None, changed_at: datetime
) -> None:
    # Failures are what an operator looks for; everything else is routine.
    if status is JobStatus.FAILED:
        logger.warning("job %s failed: %s", job_id, _shortened(error_message or "(no message)"))
    elif status is JobStatus.INTERRUPTED:
        logger.warning("job %s interrupted", job_id)
    else:
        logger.info("job %s is now %s", job_id, status.value)


@hookimpl(trylast=True)
def cidx_jobs_checkpoint_saved(checkpoint: Checkpoint) -> None:
    logger.debug("checkpoint %s/%s saved", checkpoint.job_id, checkpoint.phase)


@hookimpl(trylast=True)
def cidx_jobs_cleanup_done(report: CleanupReport) -> None:
    logger.info(
        "cleanup %s %d jobs and %d checkpoints",
        "would delete" if report.dry_run else "deleted",
        report.jobs_deleted,
        report.checkpoints_deleted,
    )
