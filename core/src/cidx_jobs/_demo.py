"""The demo behind ``cidx-jobs demo``: sync jobs that survive a restart.

It runs a few simulated sync jobs through the phases of a real CIDX sync,
writing progress and a checkpoint after each phase. Half-way, the "server"
stops: the store is closed with jobs still running. A new store is opened on
the same database, the cut-off jobs are marked interrupted and resumed from
their checkpoints without redoing a finished phase, and cleanup runs.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import timedelta

from . import JobFilter, JobPersistence, JobStatus, SyncJob, open_persistence, utcnow

PHASES = ("git_pull", "indexing", "validation")


def _work(store: JobPersistence, job_id: str, phases: tuple[str, ...], done: Counter[str]) -> None:
    for phase in phases:
        done[f"{job_id}/{phase}"] += 1
        index = PHASES.index(phase)
        store.update_job_progress(job_id, int(100 * (index + 1) / len(PHASES)), phase)
        store.save_checkpoint(job_id, phase, {"phase": phase, "finished": True})


def run_demo(*, directory: str, url: str | None, jobs: int) -> int:
    """Run the demo and print what happened; 0 if every job completed and no phase ran twice.

    :raises CidxJobsError: the store could not be opened or used.
    """
    started = time.perf_counter()
    if url is None:
        os.makedirs(directory, exist_ok=True)
        path = os.path.abspath(os.path.join(directory, "jobs.db"))
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.remove(path + suffix)
        url = f"sqlite:///{path}"
    print(f"cidx-jobs demo: store {url}")
    done: Counter[str] = Counter()
    ids = [f"sync-{n + 1}" for n in range(max(1, jobs))]

    # First server life: every job starts; half of them finish before the stop.
    store = open_persistence(url)
    for n, job_id in enumerate(ids):
        user = f"user-{n % 2 + 1}"
        store.save_job(SyncJob.create(id=job_id, user_id=user, project_id=f"repo-{n + 1}"))
        store.update_job_status(job_id, JobStatus.RUNNING, expected=JobStatus.PENDING)
        cut = len(PHASES) if n % 2 else 1 + n % 2
        _work(store, job_id, PHASES[:cut], done)
        if cut == len(PHASES):
            store.update_job_status(job_id, JobStatus.COMPLETED)
    running = store.count_jobs(JobFilter(statuses={JobStatus.RUNNING}))
    print(f"  {_ms(started)}  server stops with {running} job(s) still running")
    store.close()

    # Second server life: mark cut-off jobs interrupted, then resume each from its checkpoint.
    store = open_persistence(url)
    stuck = store.query_jobs(JobFilter(statuses={JobStatus.RUNNING}, limit=1000))
    for job in stuck:
        store.update_job_status(job.id, JobStatus.INTERRUPTED, expected=JobStatus.RUNNING)
    print(f"  {_ms(started)}  restart: {len(stuck)} job(s) marked interrupted")
    for job in stuck:
        finished = {c.phase for c in store.list_checkpoints(job.id) if c.data.get("finished")}
        remaining = tuple(p for p in PHASES if p not in finished)
        store.update_job_status(job.id, JobStatus.RUNNING, expected=JobStatus.INTERRUPTED)
        _work(store, job.id, remaining, done)
        store.update_job_status(job.id, JobStatus.COMPLETED)
        print(
            f"  {_ms(started)}  resumed {job.id} after {', '.join(sorted(finished)) or 'nothing'};"
            f" ran {', '.join(remaining)}"
        )

    completed = store.count_jobs(JobFilter(statuses={JobStatus.COMPLETED}))
    report = store.run_cleanup(utcnow() + timedelta(days=8), dry_run=True)
    print(
        f"  {_ms(started)}  {completed}/{len(ids)} completed; cleanup 8 days from now would"
        f" remove {report.jobs_deleted} job(s) and {report.checkpoints_deleted} checkpoint(s)"
    )
    store.close()
    redone = sorted(key for key, count in done.items() if count > 1)
    ok = completed == len(ids) and not redone and len(done) == len(ids) * len(PHASES)
    print(
        f"  {_ms(started)}  {'OK' if ok else 'FAILED'}: phases redone: {', '.join(redone) or 'none'}"
    )
    return 0 if ok else 1


def _ms(started: float) -> str:
    return f"{(time.perf_counter() - started) * 1000:7.1f} ms"
