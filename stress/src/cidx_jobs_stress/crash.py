"""Crash consistency: a writer killed with SIGKILL at random moments never loses a returned write.

Each trial starts ``python -m cidx_jobs_stress.child crash`` on the same SQLite file. The
child makes random writes of every kind (new jobs, duplicates, status changes with and
without ``expected``, progress, checkpoints, cleanups, and ``transaction()`` blocks, some
rolled back on purpose) and journals each call: its intent before, its result after it
returned (fsynced). The parent kills it at a random moment (a tenth of the time before it
has even finished opening the store), then:

1. checks the file with a plain read-only ``sqlite3`` connection: ``PRAGMA
   integrity_check`` and ``foreign_key_check`` (no checkpoint without its job);
2. replays the journal on its model of the store, checking each recorded result (a
   compare-and-set that returned ``True`` must have been allowed, a cleanup's count must
   be exact, ...);
3. opens the store through the public API (no recovery may be needed) and compares all
   of it, job by job and checkpoint by checkpoint, with the model. The call in flight at
   the kill may or may not have landed (both are accepted, never half of it; a cleanup
   may have completed some of its batches); a transaction block is all or nothing.

The next trial's writer continues on the same file, so the store must keep working.
"""

from __future__ import annotations

import json
import random
import select
import shutil
import signal
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs

from cidx_jobs import ACTIVE_STATUSES, JobStatus

from ._common import Clock, call, open_sqlite, reaped, spawn_child, tail
from ._config import StressConfig
from ._model import UNCHECKED, Op, OpMaker, State, applied, apply, diff, dump, execute, integrity
from ._report import ScenarioResult

__all__ = ["run"]

UTC = timezone.utc
START = datetime(2030, 1, 1, tzinfo=UTC)
#: How long a child may take to open the store before the trial counts as failed.
_READY_TIMEOUT = 120.0


def _journal(path: Path) -> tuple[list[tuple[Op, dict[str, Any]]], Op | None]:
    """The calls that ended (with their end record) and the call in flight, if any."""
    ended: list[tuple[Op, dict[str, Any]]] = []
    pending: Op | None = None
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return [], None
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # the last line, cut short by the kill (or the empty tail)
        if record["k"] == "intent":
            pending = record["op"]
        elif pending is not None:
            ended.append((pending, record))
            pending = None
    return ended, pending


def _latest_time(ops: list[Op], current: datetime) -> datetime:
    latest = current
    for op in ops:
        for key in ("now", "older_than"):
            if key in op:
                latest = max(latest, datetime.fromisoformat(op[key]))
        if op["op"] == "txn":
            latest = _latest_time(op["ops"], latest)
    return latest


def _partial_delete(model: State, op: Op, actual: State) -> State | None:
    """The model after a cleanup that was cut off between its batches, if ``actual`` is one."""
    cutoff = datetime.fromisoformat(op["older_than"])
    doomed = {
        job.id
        for job in model.jobs.values()
        if job.status not in ACTIVE_STATUSES and (job.completed_at or job.created_at) < cutoff
    }
    gone = model.jobs.keys() - actual.jobs.keys()
    if not gone <= doomed:
        return None
    after = model.copy()
    for job_id in gone:
        del after.jobs[job_id]
    for key in [key for key in after.checkpoints if key[0] in gone]:
        del after.checkpoints[key]
    return after


def _partial_recovery(model: State, actual: State) -> State | None:
    """The model after a recovery cut off between its take-overs, if ``actual`` is one:
    some running jobs became interrupted, nothing else changed."""
    after = model.copy()
    for job_id, job in actual.jobs.items():
        before = model.jobs.get(job_id)
        if before is not None and before != job:
            if (
                before.status is not JobStatus.RUNNING
                or job.status is not JobStatus.INTERRUPTED
                or job.completed_at is None
            ):
                return None
            # The cut-off recovery's clock is not journalled: its stamp is taken as found.
            after.jobs[job_id] = attrs.evolve(
                before, status=JobStatus.INTERRUPTED, completed_at=job.completed_at
            )
    return after


class _Trial:
    def __init__(self, result: ScenarioResult, db: Path, model: State) -> None:
        self.result = result
        self.db = db
        self.model = model

    def replay(self, ended: list[tuple[Op, dict[str, Any]]], trial: int) -> None:
        result = self.result
        for op, record in ended:
            if record["k"] == "error":
                # No fault is injected here: a failing call is a defect (it wrote nothing).
                result.fail(
                    f"trial {trial}: {op['op']} raised {record['type']}: {record['message']}"
                )
                continue
            try:
                want = apply(self.model, op, record["result"])
            except ValueError as error:
                result.fail(f"trial {trial}: {error}")
                continue
            if op["op"] == "recover":
                result.outcomes["jobs taken over by recoveries"] += len(want["interrupted"]) + len(
                    want["requeue"]
                )
            if want == UNCHECKED:
                result.outcomes[f"{op['op']} calls (result not modelled)"] += 1
                continue
            result.check(
                want == record["result"],
                f"trial {trial}: {op['op']} on {op.get('id', '-')} returned "
                f"{record['result']!r}, the model says {want!r}",
            )

    def verify(self, pending: Op | None, trial: int) -> str:
        """Check the file and the store against the model; the in-flight outcome."""
        result = self.result
        raw_check = call(integrity, self.db) if self.db.exists() else None
        if raw_check is not None and raw_check.ok:
            result.check(not raw_check.value, f"trial {trial}: integrity: {raw_check.value}")
        opened = call(open_sqlite, self.db)
        if not opened.ok:
            result.fail(
                f"trial {trial}: the store does not open after the kill: {opened.describe()}"
            )
            return "unopenable"
        store = opened.value
        try:
            recovery = getattr(store.storage, "recovery", None)
            result.check(
                recovery is None, f"trial {trial}: a kill made the store recover: {recovery}"
            )
            read = call(dump, store)
            if not read.ok:
                result.fail(f"trial {trial}: reading the store failed: {read.describe()}")
                return "unreadable"
            actual: State = read.value
        finally:
            store.close()
        if raw_check is None or not raw_check.ok:
            # Killed while the file was being created: a read-only connection cannot
            # look at it before a writer has set it up; check it now.
            problems = integrity(self.db)
            result.check(not problems, f"trial {trial}: integrity after reopening: {problems}")
        if pending is None:
            problems = diff(self.model, actual)
            result.check(not problems, f"trial {trial}: state differs from the journal: {problems}")
            self.model = actual
            return "nothing in flight"
        landed, _ = applied(self.model, pending)
        if not diff(landed, actual):
            outcome = (
                "in flight, landed" if diff(self.model, actual) else "in flight, no visible change"
            )
        elif not diff(self.model, actual):
            outcome = "in flight, not landed"
        else:
            partial = None
            if pending["op"] == "delete":
                partial = _partial_delete(self.model, pending, actual)
            elif pending["op"] == "recover":
                partial = _partial_recovery(self.model, actual)
            if partial is not None and not diff(partial, actual):
                what = "a cleanup" if pending["op"] == "delete" else "a recovery"
                outcome = f"in flight, {what} landed whole or in part (it is several steps)"
            else:
                result.fail(
                    f"trial {trial}: state matches neither outcome of the in-flight "
                    f"{pending['op']}: vs landed {diff(landed, actual)}; "
                    f"vs not landed {diff(self.model, actual)}"
                )
                outcome = "mismatch"
        result.checked += 1
        if pending["op"] == "txn":
            outcome += " (transaction block)"
        self.model = actual
        return outcome


def run(config: StressConfig, workdir: Path) -> ScenarioResult:
    """Kill a writer ``config.crash_kills`` times and check the file after each kill."""
    result = ScenarioResult("crash consistency")
    folder = workdir / "crash"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    db = folder / "jobs.db"
    rng = random.Random(f"crash-{config.seed}")
    state = _Trial(result, db, State())
    start = START
    for trial in range(config.crash_kills):
        journal = folder / f"journal-{trial}.jsonl"
        stderr = folder / f"child-{trial}.err"
        child = spawn_child(
            [
                "crash",
                str(db),
                str(journal),
                f"{config.seed}-{trial}",
                f"t{trial}",
                start.isoformat(),
            ],
            stderr,
        )
        early = rng.random() < 0.1
        with reaped(child):
            assert child.stdout is not None
            if early:
                # Before (or while) the store opens: creating, migrating, switching to WAL.
                time.sleep(rng.uniform(0.0, 0.6))
            else:
                ready, _, _ = select.select([child.stdout], [], [], _READY_TIMEOUT)
                line = child.stdout.readline() if ready else b""
                if line != b"ready\n":
                    result.fail(f"trial {trial}: the writer did not start: {tail(stderr)}")
                    continue
                time.sleep(rng.expovariate(1 / 0.12))
            if child.poll() is not None:
                if child.returncode != 0:
                    result.fail(
                        f"trial {trial}: the writer exited with {child.returncode}: {tail(stderr)}"
                    )
            else:
                child.send_signal(signal.SIGKILL)
                result.kills += 1
            child.wait()
        result.trials += 1
        ended, pending = _journal(journal)
        state.replay(ended, trial)
        outcome = state.verify(pending, trial)
        result.outcomes["early kill (while opening)" if early else outcome] += 1
        result.outcomes["calls journalled"] += len(ended)
        start = _latest_time([op for op, _ in ended] + ([pending] if pending else []), start)
        start += timedelta(minutes=1)
        journal.unlink(missing_ok=True)
        if stderr.stat().st_size == 0:
            stderr.unlink()
    _after_the_last_kill(result, db, state.model, start)
    result.outcomes["jobs in the store at the end"] = len(state.model.jobs)
    return result


def _after_the_last_kill(result: ScenarioResult, db: Path, model: State, start: datetime) -> None:
    """The store keeps working after the last kill too: writes, then reads back, reopened."""
    clock = Clock(start)
    opened = call(open_sqlite, db, clock)
    if not result.check(
        opened.ok, f"after the last kill the store does not open: {opened.describe()}"
    ):
        return
    store = opened.value
    maker = OpMaker(random.Random("after"), "after", start)
    maker.ids = list(model.jobs)
    try:
        for _ in range(50):
            op = maker.next()
            done = call(execute, store, op, clock.set)
            want = apply(model, op, done.value)
            result.check(
                done.ok and (want == UNCHECKED or want == done.value),
                f"after the last kill: {op['op']} gave {done.describe()}, the model says {want!r}",
            )
    finally:
        store.close()
    reopened = open_sqlite(db)
    try:
        problems = diff(model, dump(reopened))
    finally:
        reopened.close()
    result.check(not problems, f"after the last kill, writes did not stick: {problems}")
