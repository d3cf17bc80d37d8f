"""The demo behind ``cidx-jobs demo``: sync jobs that survive a killed server.

A worker process runs simulated sync jobs through the phases of a real CIDX
sync (``git_pull``, ``indexing``, ``validation``), one thread per job, writing
progress, a checkpoint after each finished phase, and heartbeats. The demo
kills it with SIGKILL mid-way. A second worker recovers the jobs the dead one
owned (:meth:`~cidx_jobs.JobPersistence.recover_interrupted_jobs`), resumes
each from its checkpoint without redoing a finished phase, and completes
them; then cleanup runs. Every finished phase is appended to a log, so the
demo can prove that nothing finished twice.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

from . import JobFilter, JobPersistence, JobStatus, SyncJob, open_persistence, utcnow

PHASES = ("git_pull", "indexing", "validation")
PHASE_SECONDS = 0.4
LEASE = timedelta(seconds=1)


def _run_phases(store: JobPersistence, job_id: str, start: int, log: Path) -> None:
    for index in range(start, len(PHASES)):
        phase = PHASES[index]
        store.update_job_progress(job_id, int(100 * index / len(PHASES)), phase)
        time.sleep(PHASE_SECONDS)  # the "work" of the phase
        store.save_checkpoint(job_id, phase, {"finished": phase, "next": index + 1})
        store.heartbeat()
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"{job_id} {phase} {os.getpid()}\n")
    store.update_job_progress(job_id, 100, PHASES[-1])
    store.update_job_status(job_id, JobStatus.COMPLETED, expected=JobStatus.RUNNING)


def worker(url: str, log: Path, recover: bool) -> int:
    """One server life: start pending jobs, or (``recover``) resume a dead worker's jobs."""
    # The library logs recoveries as warnings; show them as part of the account.
    logging.basicConfig(
        level=logging.WARNING, format="             worker log: %(message)s", stream=sys.stdout
    )
    store = open_persistence(url)
    work: list[tuple[str, int]] = []
    if recover:
        report = store.recover_interrupted_jobs(lease_timeout=LEASE)
        for point in report.interrupted:
            start = int(point.checkpoint.data["next"]) if point.checkpoint else 0
            if store.update_job_status(
                point.job.id, JobStatus.RUNNING, expected=JobStatus.INTERRUPTED
            ):
                work.append((point.job.id, start))
        for job in report.requeue:
            if store.update_job_status(job.id, JobStatus.RUNNING, expected=job.status):
                work.append((job.id, 0))
    else:
        for job in store.query_jobs(JobFilter(statuses={JobStatus.PENDING}, limit=1000)):
            if store.update_job_status(job.id, JobStatus.RUNNING, expected=JobStatus.PENDING):
                work.append((job.id, 0))
    threads = [
        threading.Thread(target=_run_phases, args=(store, job_id, start, log))
        for job_id, start in work
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    return 0


def run_demo(*, directory: str, url: str | None, jobs: int) -> int:
    """Run the demo and print what happened; 0 only if every job completed and no
    finished phase ran twice.

    :raises CidxJobsError: the store could not be opened or used.
    """
    t0 = time.perf_counter()

    def say(message: str) -> None:
        print(f"  {time.perf_counter() - t0:6.2f} s  {message}", flush=True)

    folder = Path(directory).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "phases.log"
    if url is None:
        db = folder / "jobs.db"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{db}{suffix}").unlink(missing_ok=True)
        url = f"sqlite:///{db}"
    log.unlink(missing_ok=True)
    log.touch()
    print(f"cidx-jobs demo: {jobs} sync jobs in {url}")
    ids = [f"sync-{n + 1}" for n in range(max(1, jobs))]
    with open_persistence(url) as store:
        for n, job_id in enumerate(ids):
            store.save_job(
                SyncJob.create(id=job_id, user_id=f"user-{n % 2 + 1}", project_id=f"repo-{n + 1}")
            )
    say(f"queued {len(ids)} jobs: {', '.join(ids)}")

    first = _spawn(url, log, recover=False)
    say(f"worker 1 (pid {first.pid}) runs them: {' -> '.join(PHASES)}")
    while _finished(log) < len(ids) and first.poll() is None:
        time.sleep(0.02)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    with open_persistence(url) as store:
        running = store.query_jobs(JobFilter(statuses={JobStatus.RUNNING}))
        say(
            f"SIGKILL worker 1 after {_finished(log)} finished phases; "
            f"{len(running)} job(s) left 'running': "
            + ", ".join(f"{job.id} at {job.phase}" for job in running)
        )
    time.sleep(LEASE.total_seconds())  # let the dead worker's lease expire

    second = _spawn(url, log, recover=True)
    say(f"worker 2 (pid {second.pid}) recovers the dead worker's jobs and resumes them")
    second.wait(timeout=60)
    counts = Counter(
        tuple(line.split()[:2]) for line in log.read_text(encoding="utf-8").splitlines()
    )
    redone = sorted(f"{job}/{phase}" for (job, phase), count in counts.items() if count > 1)
    with open_persistence(url) as store:
        for job_id in ids:
            job = store.load_job(job_id)
            phases = [c.phase for c in store.list_checkpoints(job_id)]
            state = "lost" if job is None else f"{job.status.value}, {job.progress}%"
            say(f"{job_id}: {state}, checkpoints {phases}")
        completed = store.count_jobs(JobFilter(statuses={JobStatus.COMPLETED}))
        report = store.run_cleanup(utcnow() + timedelta(days=8))
        say(
            f"cleanup as of 8 days from now: removed {report.jobs_deleted} jobs and "
            f"{report.checkpoints_deleted} checkpoints; {store.count_jobs()} jobs left"
        )
    all_phases = len(counts) == len(ids) * len(PHASES)
    ok = second.returncode == 0 and completed == len(ids) and not redone and all_phases
    say(
        f"{'OK' if ok else 'FAILED'}: {completed}/{len(ids)} completed, "
        f"finished phases redone: {', '.join(redone) or 'none'}"
    )
    return 0 if ok else 1


def _spawn(url: str, log: Path, *, recover: bool) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "cidx_jobs._demo", url, str(log)]
    return subprocess.Popen([*args, "recover"] if recover else args)


def _finished(log: Path) -> int:
    return len(log.read_text(encoding="utf-8").splitlines())


if __name__ == "__main__":
    sys.exit(worker(sys.argv[1], Path(sys.argv[2]), recover=sys.argv[3:] == ["recover"]))
