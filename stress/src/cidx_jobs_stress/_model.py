"""A reference model of a store's contents, random write operations, and comparing the two.

Operations are plain JSON-ready dicts, so a child process can write them to its journal
and the parent can replay them on the model:

* ``{"op": "save", "job": {...}}`` (the job as :func:`cidx_jobs.serialization.to_dict`
  gives it); result ``"ok"`` or ``"duplicate"``;
* ``{"op": "status", "id", "status", "error", "expected", "now"}``; result the bool;
* ``{"op": "progress", "id", "progress", "phase"}``; result the bool;
* ``{"op": "checkpoint", "id", "phase", "data", "now"}``; result the bool;
* ``{"op": "delete", "older_than"}``; result the count;
* ``{"op": "heartbeat", "now"}``; result the count of leases renewed (not modelled: the
  model keeps no leases, which job equality ignores);
* ``{"op": "recover", "now"}`` (``recover_interrupted_jobs``); result the ids it
  interrupted and re-queued, which the model applies after checking that they were
  running, pending or queued;
* ``{"op": "txn", "ops": [...], "rollback": bool}``: the operations in one
  ``transaction()`` block, rolled back on purpose when ``rollback``; result
  ``"commit"`` or ``"rollback"``.

The model applies status changes with :class:`cidx_jobs.StatusChange`, whose rules every
backend must follow exactly.
"""

from __future__ import annotations

import dataclasses
import random
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs

from cidx_jobs import ACTIVE_STATUSES, JobFilter, JobPersistence, JobStatus, SyncJob
from cidx_jobs.backend import StatusChange
from cidx_jobs.errors import DuplicateJobError
from cidx_jobs.serialization import from_dict, to_dict

__all__ = [
    "UNCHECKED",
    "OpMaker",
    "State",
    "apply",
    "diff",
    "dump",
    "execute",
    "integrity",
]

UTC = timezone.utc
Op = dict[str, Any]
CheckpointValue = tuple[dict[str, Any], datetime]


@dataclasses.dataclass
class State:
    """What a store holds: every job, and every checkpoint by (job id, phase)."""

    jobs: dict[str, SyncJob] = dataclasses.field(default_factory=dict)
    checkpoints: dict[tuple[str, str], CheckpointValue] = dataclasses.field(default_factory=dict)

    def copy(self) -> State:
        """A copy that can change without changing this one (the values are immutable)."""
        return State(dict(self.jobs), dict(self.checkpoints))


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


#: What :func:`apply` returns for a result the model cannot predict.
UNCHECKED = "<not modelled>"


class _Rollback(Exception):
    """Raised inside a transaction block to roll it back on purpose."""


# -- running operations on a store ----------------------------------------------------------


def execute(store: JobPersistence, op: Op, set_now: Callable[[datetime], None]) -> Any:
    """Run ``op`` on ``store``; returns what the model's :func:`apply` returns for it.

    ``set_now`` sets the store's clock before a call that reads it.

    :raises CidxJobsError: the store failed (the caller decides what that means).
    """
    kind = op["op"]
    if kind == "save":
        try:
            store.save_job(from_dict(op["job"], SyncJob))
        except DuplicateJobError:
            return "duplicate"
        return "ok"
    if kind == "status":
        set_now(_time(op["now"]))
        return store.update_job_status(
            op["id"], op["status"], error_message=op["error"], expected=op["expected"]
        )
    if kind == "progress":
        return store.update_job_progress(op["id"], op["progress"], op["phase"])
    if kind == "checkpoint":
        set_now(_time(op["now"]))
        return store.save_checkpoint(op["id"], op["phase"], op["data"])
    if kind == "delete":
        return store.delete_expired_jobs(_time(op["older_than"]))
    if kind == "heartbeat":
        set_now(_time(op["now"]))
        return store.heartbeat()
    if kind == "recover":
        set_now(_time(op["now"]))
        report = store.recover_interrupted_jobs()
        return {
            "interrupted": sorted(point.job.id for point in report.interrupted),
            "requeue": sorted(job.id for job in report.requeue),
        }
    if kind == "txn":
        try:
            with store.transaction():
                for inner in op["ops"]:
                    execute(store, inner, set_now)
                if op["rollback"]:
                    raise _Rollback
        except _Rollback:
            return "rollback"
        return "commit"
    raise ValueError(f"unknown operation {kind!r}")


# -- the model -----------------------------------------------------------------------------


def apply(state: State, op: Op, recorded: Any = None) -> Any:
    """Apply ``op`` to ``state`` in place; returns the result the store must have returned
    (:data:`UNCHECKED` where the model cannot tell). ``recorded`` is the result the store
    did return, which a recovery needs (``None``: not known, the recovery is not applied).

    :raises ValueError: the recorded recovery took a job it must not take.
    """
    kind = op["op"]
    if kind == "save":
        job = from_dict(op["job"], SyncJob)
        if job.id in state.jobs:
            return "duplicate"
        state.jobs[job.id] = job
        return "ok"
    if kind == "status":
        current = state.jobs.get(op["id"])
        if current is None:
            return False
        expected = op["expected"]
        change = StatusChange(
            status=JobStatus(op["status"]),
            error_message=op["error"],
            expected=None if expected is None else frozenset(JobStatus(s) for s in expected),
            now=_time(op["now"]),
        )
        updated = change.apply(current)
        if updated is None:
            return False
        state.jobs[current.id] = updated
        return True
    if kind == "progress":
        current = state.jobs.get(op["id"])
        if current is None:
            return False
        phase = current.phase if op["phase"] is None else op["phase"]
        state.jobs[current.id] = attrs.evolve(current, progress=op["progress"], phase=phase)
        return True
    if kind == "checkpoint":
        if op["id"] not in state.jobs:
            return False
        state.checkpoints[(op["id"], op["phase"])] = (op["data"], _time(op["now"]))
        return True
    if kind == "delete":
        cutoff = _time(op["older_than"])
        doomed = [
            job.id
            for job in state.jobs.values()
            if job.status not in ACTIVE_STATUSES and (job.completed_at or job.created_at) < cutoff
        ]
        for job_id in doomed:
            del state.jobs[job_id]
        gone = set(doomed)
        for key in [key for key in state.checkpoints if key[0] in gone]:
            del state.checkpoints[key]
        return len(doomed)
    if kind == "heartbeat":
        return UNCHECKED
    if kind == "recover":
        if recorded is None:
            return UNCHECKED
        for job_id in recorded["interrupted"]:
            running = state.jobs.get(job_id)
            # A job left interrupted (by a killed recoverer) is resumable and taken again.
            if running is None or running.status not in (
                JobStatus.RUNNING,
                JobStatus.INTERRUPTED,
            ):
                raise ValueError(f"recovery interrupted {job_id!r}, which was not resumable")
            # Interrupting stamps completed_at: retention counts from the interruption.
            state.jobs[job_id] = attrs.evolve(
                running, status=JobStatus.INTERRUPTED, completed_at=_time(op["now"])
            )
        for job_id in recorded["requeue"]:
            waiting = state.jobs.get(job_id)
            if waiting is None or waiting.status not in (JobStatus.PENDING, JobStatus.QUEUED):
                raise ValueError(f"recovery re-queued {job_id!r}, which was not pending or queued")
        return recorded
    if kind == "txn":
        if op["rollback"]:
            return "rollback"
        scratch = state.copy()
        for inner in op["ops"]:
            apply(scratch, inner)
        state.jobs, state.checkpoints = scratch.jobs, scratch.checkpoints
        return "commit"
    raise ValueError(f"unknown operation {kind!r}")


def applied(state: State, op: Op) -> tuple[State, Any]:
    """A copy of ``state`` with ``op`` applied, and the op's result."""
    after = state.copy()
    result = apply(after, op)
    return after, result


def all_jobs(store: JobPersistence, filter: JobFilter | None = None) -> Iterator[SyncJob]:
    """Every job matching ``filter``, page by page through the cursors."""
    page_filter = attrs.evolve(filter or JobFilter(), limit=1000)
    while True:
        page = store.query_page(page_filter)
        yield from page.jobs
        if page.next_cursor is None:
            return
        page_filter = page_filter.next_page(page)


def dump(store: JobPersistence) -> State:
    """Everything ``store`` holds, read through the public API."""
    state = State()
    for job in all_jobs(store):
        if job.id in state.jobs:
            raise AssertionError(f"job {job.id!r} appears twice in one walk over the pages")
        state.jobs[job.id] = job
        for checkpoint in store.list_checkpoints(job.id):
            state.checkpoints[(job.id, checkpoint.phase)] = (checkpoint.data, checkpoint.created_at)
    return state


def diff(expected: State, actual: State, limit: int = 4) -> list[str]:
    """The differences between two states (at most ``limit`` of them); empty when equal."""
    found: list[str] = []
    for job_id in sorted(expected.jobs.keys() | actual.jobs.keys()):
        want, got = expected.jobs.get(job_id), actual.jobs.get(job_id)
        if want == got:
            continue
        if got is None:
            found.append(f"job {job_id!r} is missing")
        elif want is None:
            found.append(f"job {job_id!r} should not exist (status {got.status.value})")
        else:
            fields = [
                f"{name}: want {getattr(want, name)!r:.80} got {getattr(got, name)!r:.80}"
                for name in attrs.fields_dict(SyncJob)
                if getattr(want, name) != getattr(got, name)
            ]
            found.append(f"job {job_id!r} differs: {'; '.join(fields)}")
        if len(found) >= limit:
            return found
    for key in sorted(expected.checkpoints.keys() | actual.checkpoints.keys()):
        want_cp, got_cp = expected.checkpoints.get(key), actual.checkpoints.get(key)
        if want_cp != got_cp:
            found.append(f"checkpoint {key!r}: want {want_cp!r:.100} got {got_cp!r:.100}")
            if len(found) >= limit:
                return found
    return found


def integrity(path: Path) -> list[str]:
    """Problems a plain read-only ``sqlite3`` connection finds in the file (empty when none):
    ``PRAGMA integrity_check``, ``foreign_key_check`` (checkpoints without a job)."""
    uri = path.absolute().as_uri() + "?mode=ro"
    with closing(sqlite3.connect(uri, uri=True, isolation_level=None)) as conn:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        problems = [] if rows == [("ok",)] else [str(row[0]) for row in rows[:5]]
        orphans = conn.execute("PRAGMA foreign_key_check").fetchall()
        if orphans:
            problems.append(f"{len(orphans)} rows break a foreign key (e.g. {orphans[0]!r})")
    return problems


# -- random operations ---------------------------------------------------------------------

_PHASES = ("git_pull", "change_detection", "indexing", "validation")
_TEXT = "abcdefghijklmnopqrstuvwxyz ÄéøßЖ漢字🙂'\";--%_\\"


class OpMaker:
    """Random write operations over a growing set of jobs, with a clock that moves forward.

    :param rng: the source of randomness.
    :param prefix: starts every new job id, so makers never collide.
    :param start: the clock's first reading.
    :param big: the largest metadata or checkpoint payload, in characters.
    :param users: the user ids new jobs get.
    :param deletes: whether to make cleanup operations.
    :param large: the share of payloads that span many pages.
    :param lifecycle: whether to make heartbeats and recoveries (outside transactions).
    """

    def __init__(
        self,
        rng: random.Random,
        prefix: str,
        start: datetime,
        *,
        big: int = 120_000,
        users: tuple[str, ...] = ("alice", "bob", "carol", "o'brien", "Алиса"),
        deletes: bool = True,
        large: float = 0.03,
        lifecycle: bool = False,
    ) -> None:
        self.rng = rng
        self.prefix = prefix
        self.now = start
        self.big = big
        self.users = users
        self.deletes = deletes
        self.large = large
        self.lifecycle = lifecycle
        self.ids: list[str] = []
        self.counter = 0

    def tick(self) -> str:
        """Move the clock forward (up to 20 minutes) and return its reading."""
        self.now += timedelta(microseconds=self.rng.randrange(1, 20 * 60 * 1_000_000))
        return self.now.isoformat()

    def text(self, low: int = 0, high: int = 12) -> str:
        """Random text from an alphabet with quotes, wildcards and non-ASCII characters."""
        return "".join(self.rng.choice(_TEXT) for _ in range(self.rng.randint(low, high)))

    def payload(self) -> dict[str, Any]:
        """A JSON object, usually small, sometimes spanning many database pages."""
        rng = self.rng
        roll = rng.random()
        size = (
            rng.randrange(40_000, max(self.big, 40_001))
            if roll < self.large
            else rng.randrange(1000, 20_000)
            if roll < self.large + 0.17
            else rng.randrange(0, 64)
        )
        size = min(size, self.big)
        return {
            "n": rng.randrange(-(10**12), 10**12),
            "f": rng.choice([0.5, -1e-300, 1e300, 3.25, -0.0]),
            "s": self.text(),
            "pad": "x" * size,
            "nested": {"list": [1, "two", None, True, {"deep": [self.text(0, 3)]}]},
        }

    def job_id(self) -> str:
        """A known job id (possibly deleted since), or an unknown one now and then."""
        if not self.ids or self.rng.random() < 0.03:
            return f"{self.prefix}-missing-{self.rng.randrange(10**6)}"
        # Favour recent jobs: they are the ones a server updates.
        if self.rng.random() < 0.7:
            return self.rng.choice(self.ids[-50:])
        return self.rng.choice(self.ids)

    def new_job(self) -> Op:
        """Save a new job with random values in every field."""
        rng = self.rng
        self.counter += 1
        job_id = f"{self.prefix}-{self.counter}"
        self.ids.append(job_id)
        now = _time(self.tick())
        status = rng.choice(list(JobStatus))
        started = now - timedelta(seconds=rng.randrange(1, 3600)) if rng.random() < 0.5 else None
        completed = now if status.is_terminal and rng.random() < 0.7 else None
        job = SyncJob(
            id=job_id,
            user_id=rng.choice(self.users),
            project_id=rng.choice(["repo-a", "repo-b", "repo/c"]),
            status=status,
            progress=rng.randint(0, 100),
            phase=rng.choice([None, *_PHASES]),
            created_at=now - timedelta(microseconds=rng.randrange(0, 3 * 86_400_000_000)),
            started_at=started,
            completed_at=completed,
            error_message=self.text(1, 40) if rng.random() < 0.2 else None,
            metadata=self.payload(),
        )
        return {"op": "save", "job": to_dict(job)}

    def duplicate(self) -> Op:
        """Save a job under an id that (probably) exists: must change nothing."""
        op = self.new_job()
        self.ids.pop()
        op["job"]["id"] = self.rng.choice(self.ids) if self.ids else op["job"]["id"]
        return op

    def status(self) -> Op:
        """A status change, last-write-wins or compare-and-set."""
        rng = self.rng
        terminal = [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED]
        target = rng.choice(terminal) if rng.random() < 0.55 else rng.choice(list(JobStatus))
        expected = None
        if rng.random() < 0.4:
            expected = sorted(s.value for s in rng.sample(list(JobStatus), rng.randint(1, 3)))
        return {
            "op": "status",
            "id": self.job_id(),
            "status": target.value,
            "error": self.text(1, 30) if rng.random() < 0.3 else None,
            "expected": expected,
            "now": self.tick(),
        }

    def progress(self) -> Op:
        """A progress update, with or without a phase."""
        return {
            "op": "progress",
            "id": self.job_id(),
            "progress": self.rng.randint(0, 100),
            "phase": self.rng.choice([None, *_PHASES]),
        }

    def checkpoint(self) -> Op:
        """A checkpoint of one phase (replacing that phase's previous one)."""
        return {
            "op": "checkpoint",
            "id": self.job_id(),
            "phase": self.rng.choice(_PHASES),
            "data": self.payload(),
            "now": self.tick(),
        }

    def delete(self) -> Op:
        """Delete the jobs that finished more than a few hours or days ago."""
        age = timedelta(hours=self.rng.choice([1, 6, 24, 72]))
        return {"op": "delete", "older_than": (_time(self.tick()) - age).isoformat()}

    def single(self, *, duplicates: bool = True, lifecycle: bool = True) -> Op:
        """One operation; ``duplicates`` allows saving a job under an existing id,
        ``lifecycle`` a heartbeat or a recovery (if the maker makes them at all)."""
        roll = self.rng.random()
        if roll < 0.25:
            return self.new_job()
        if roll < 0.27:
            return self.duplicate() if duplicates else self.new_job()
        if roll < 0.5:
            return self.status()
        if roll < 0.63:
            return self.progress()
        if roll < 0.8:
            return self.checkpoint()
        if roll < 0.88 and self.lifecycle and lifecycle:
            return {"op": self.rng.choice(["heartbeat", "recover"]), "now": self.tick()}
        return self.delete() if self.deletes else self.checkpoint()

    def transaction(self) -> Op:
        """A block of 2 to 6 writes, now and then rolled back on purpose."""
        # No duplicate inside a block: its error would end the block.
        ops = [
            self.single(duplicates=False, lifecycle=False) for _ in range(self.rng.randint(2, 6))
        ]
        return {"op": "txn", "ops": ops, "rollback": self.rng.random() < 0.15}

    def next(self) -> Op:
        """The next operation: single ones mostly, a transaction block a quarter of the time."""
        if self.rng.random() < 0.25:
            return self.transaction()
        return self.single()
