"""The child processes of the stress scenarios: ``python -m cidx_jobs_stress.child KIND ...``.

``crash DB JOURNAL SEED PREFIX START``
    Random writes against the SQLite file ``DB`` until killed. Before each call it
    appends the operation to ``JOURNAL`` (``intent``), and after the call returned it
    appends the result (``done``) and fsyncs, so the parent knows every call that
    returned and the one that may have been in flight. Prints ``ready`` once the store
    is open.

``concurrency DB LOGDIR PROCESS THREADS SECONDS SEED START``
    One worker process of the concurrency scenario (see
    :mod:`cidx_jobs_stress.concurrency`).

``faults MODE DB SEED OPS``
    A fault trial that must run in a process of its own (see
    :mod:`cidx_jobs_stress.faults`); prints its result as JSON.

``fenced DB JOURNAL PREFIX JOBS STEPS``
    One worker of the fencing scenario (see :mod:`cidx_jobs_stress.fencing`).

``store DB``
    A store open on the SQLite file ``DB``, driven over stdin one command at a time (see
    :mod:`cidx_jobs_stress.shm_files`): ``save ID``, ``count``, ``q``; it prints ``open``
    (or ``refused TYPE``) once, then one line per command.

``saver DB ACKED STOP``
    Saves new jobs into the SQLite file ``DB`` until the file ``STOP`` exists, appending
    the id of each save that returned to ``ACKED``; prints how many calls raised.
"""

from __future__ import annotations

import json
import os
import random
import sys
from datetime import datetime
from pathlib import Path

from ._common import Clock, open_sqlite, quiet_logging
from ._model import OpMaker, all_jobs, execute

__all__ = ["main"]

#: A child whose parent is gone stops after this many operations anyway.
_MAX_OPS = 1_000_000
#: The journal is fsynced every this many records. Each record reaches the kernel (which a
#: SIGKILL cannot undo) before the next call starts; an fsync per record would make the
#: writer spend most of its time in the journal's fsync, so that few kills would land
#: inside a store call, which is what the scenario is for.
JOURNAL_FSYNC_EVERY = 32


def _append(fd: int, record: dict[str, object], *, sync: bool) -> None:
    os.write(fd, (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))
    if sync:
        os.fsync(fd)


def crash(db: Path, journal: Path, seed: str, prefix: str, start: datetime) -> int:
    """The writer the crash scenario kills; runs until killed (or orphaned)."""
    parent = os.getppid()
    clock = Clock(start)
    store = open_sqlite(db, clock)
    maker = OpMaker(random.Random(seed), prefix, start, lifecycle=True)
    maker.ids = [job.id for job in all_jobs(store)]
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for seq in range(_MAX_OPS):
        if seq % 64 == 0 and os.getppid() != parent:
            break
        op = maker.next()
        # The intent need not be synced: a killed process loses nothing the kernel has.
        _append(fd, {"seq": seq, "k": "intent", "op": op}, sync=False)
        try:
            result = execute(store, op, clock.set)
        except Exception as error:
            _append(
                fd,
                {"seq": seq, "k": "error", "type": type(error).__name__, "message": str(error)},
                sync=True,
            )
            continue
        _append(
            fd, {"seq": seq, "k": "done", "result": result}, sync=seq % JOURNAL_FSYNC_EVERY == 0
        )
    store.close()
    os.close(fd)
    return 0


def saver(db: Path, acked: Path, stop: Path) -> int:
    """The live writer of the recovery-files scenario: saves until ``stop`` exists."""
    from cidx_jobs import SyncJob
    from cidx_jobs.errors import StorageError

    store = open_sqlite(db)
    errors = n = 0
    with acked.open("a") as out:
        while not stop.exists() and n < _MAX_OPS:
            job_id = f"live-{n:06d}"
            n += 1
            try:
                store.save_job(SyncJob.create(id=job_id, user_id="writer", project_id="repo"))
            except StorageError:
                errors += 1
                continue
            # Only once the call returned: each id in the file is an acknowledged write.
            out.write(job_id + "\n")
            out.flush()
    store.close()
    print(errors)
    return 0


def store_commands(db: Path) -> int:
    """A store driven over stdin: one answer line per command line."""
    from cidx_jobs import SyncJob
    from cidx_jobs.errors import CidxJobsError

    try:
        store = open_sqlite(db)
    except CidxJobsError as error:
        print("refused", type(error).__name__, flush=True)
        return 0
    print("open", flush=True)
    for line in sys.stdin:
        command = line.split()
        try:
            if command[0] == "save":
                store.save_job(SyncJob.create(id=command[1], user_id="u", project_id="repo"))
                print("ok", flush=True)
            elif command[0] == "count":
                print("count", store.count_jobs(), flush=True)
            else:
                break
        except CidxJobsError as error:
            print("error", type(error).__name__, flush=True)
    store.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the child named by the first argument."""
    args = sys.argv[1:] if argv is None else argv
    quiet_logging()
    kind, rest = args[0], args[1:]
    if kind == "crash":
        db, journal, seed, prefix, start = rest
        return crash(Path(db), Path(journal), seed, prefix, datetime.fromisoformat(start))
    if kind == "concurrency":
        from .concurrency import worker

        db, logdir, process, threads, seconds, seed, start = rest
        return worker(
            Path(db), Path(logdir), int(process), int(threads), float(seconds), seed, float(start)
        )
    if kind == "faults":
        from .faults import child_trial

        mode, db, seed, ops = rest
        print(json.dumps(child_trial(mode, Path(db), seed, int(ops))))
        return 0
    if kind == "fenced":
        from .fencing import worker as fenced_worker

        db, journal, prefix, jobs, steps = rest
        return fenced_worker(Path(db), Path(journal), prefix, int(jobs), int(steps))
    if kind == "store":
        (db,) = rest
        return store_commands(Path(db))
    if kind == "saver":
        db, acked, stop = rest
        return saver(Path(db), Path(acked), Path(stop))
    print(f"unknown child kind {kind!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
