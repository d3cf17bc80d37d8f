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
    print(f"unknown child kind {kind!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
