"""Running ``cidx-jobs`` as an operator does: a real process, on a real SQLite file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from cidx_jobs import JobStatus, SyncJob, open_persistence, utcnow

#: Every command the operator's command line has (demo and info are older).
OPERATOR_COMMANDS = (
    "list",
    "show",
    "stats",
    "cleanup",
    "recover",
    "cancel",
    "fail",
    "migrate",
    "doctor",
    "backup",
)


def cli_env(**extra: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("CIDX_JOBS_URL", "NO_COLOR", "CIDX_JOBS_DEBUG", "FORCE_COLOR")
    }
    env["PYTHONWARNINGS"] = "error"
    env.update(extra)
    return env


def cli(*args: str, url: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """``cidx-jobs ARGS`` in a child process, piped (so plain output), with ``url`` set as
    CIDX_JOBS_URL."""
    extra = dict(env)
    if url is not None:
        extra["CIDX_JOBS_URL"] = url
    return subprocess.run(
        [sys.executable, "-m", "cidx_jobs", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=cli_env(**extra),
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single error line of a failed command (asserting it is one, without traceback)."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("cidx-jobs: "), lines[0]
    return lines[0]


def json_lines(text: str) -> list[Any]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_database(path: Path) -> str:
    """A database an operator might meet: several users, every kind of job, one job whose
    owner died an hour ago, and old finished jobs for cleanup. Returns its URL."""
    url = sqlite_url(path)
    now = utcnow()
    with open_persistence(url) as store:
        with store.transaction():
            for i in range(12):
                store.save_job(
                    SyncJob.create(
                        id=f"sync-{i:02d}",
                        user_id=("alice", "bob", "carol")[i % 3] if i < 9 else "alice",
                        project_id="backend" if i % 2 else "web",
                    )
                )
            store.save_job(
                SyncJob(
                    id="stuck",
                    user_id="dave",
                    project_id="web",
                    status=JobStatus.RUNNING,
                    progress=40,
                    phase="indexing",
                    created_at=now - timedelta(hours=2),
                    started_at=now - timedelta(hours=2),
                    owner_id="old-host:4242:dead",
                    heartbeat_at=now - timedelta(hours=1),
                )
            )
            for i in range(3):
                store.save_job(
                    SyncJob(
                        id=f"old-{i}",
                        user_id="bob",
                        project_id="web",
                        status=JobStatus.COMPLETED,
                        progress=100,
                        created_at=now - timedelta(days=30),
                        completed_at=now - timedelta(days=29),
                    )
                )
        store.save_checkpoint("stuck", "git_pull", {"next": 1})
        store.update_job_status("sync-01", JobStatus.RUNNING)
        store.update_job_status("sync-02", JobStatus.RUNNING)
        store.update_job_status("sync-02", JobStatus.FAILED, error_message="disk quota exceeded")
        store.update_job_status("sync-03", JobStatus.RUNNING)
        store.update_job_status("sync-03", JobStatus.COMPLETED)
    return url
