"""Concurrency: 4 processes x 4 threads of mixed operations on one SQLite file, checked against
their logs.

The workload is built so that the final state is checkable from the logs alone:

* **Own jobs.** Each thread writes jobs of its own user (new jobs, duplicates, status
  changes with and without ``expected``, progress, checkpoints, ``transaction()`` blocks,
  some rolled back on purpose). One writer per job, so replaying the thread's log on the
  model gives each job's exact final state, and each logged result must match the model.
  The thread also reads its own user's jobs back while the others write (count, load, a
  walk over the pages) and must see exactly its own writes.
* **Compare-and-set races.** Every thread races on shared jobs, moving each along
  pending -> queued -> running -> completed with ``update_job_status(expected=current)``:
  each step must have exactly one winner, and the job must end in the state its winners'
  writes made (status, error message, ``started_at``, ``completed_at``).
* **Last write wins.** Every thread writes the progress (and a checkpoint) of a few shared
  jobs; the stored value must come from a write that could have been the last one (none
  started after it ended; the logs carry monotonic start and end times).
* **Cleanup under load.** Old finished "archive" jobs are deleted by ``delete_expired_jobs``
  and ``run_cleanup`` calls racing each other: their counts must add up to the number of
  archive jobs exactly, and no other job may go.

Afterwards: no duplicates in a walk over all pages, ``count_jobs()`` agrees, no job lost or
added, ``integrity_check`` ok, and no call failed (in particular no "database is locked").
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cidx_jobs import JobFilter, JobPersistence, JobStatus, SyncJob
from cidx_jobs.errors import CidxJobsError

from ._common import ThreadClock, open_sqlite, reaped, spawn_child, tail
from ._config import StressConfig
from ._model import OpMaker, State, all_jobs, apply, diff, dump, execute, integrity
from ._report import ScenarioResult

__all__ = ["run", "worker"]

UTC = timezone.utc
BASE = datetime(2030, 6, 1, tzinfo=UTC)
ARCHIVE_TIME = datetime(2020, 1, 1, tzinfo=UTC)
ARCHIVE_CUTOFF = datetime(2021, 1, 1, tzinfo=UTC)
LADDER = {
    JobStatus.PENDING: JobStatus.QUEUED,
    JobStatus.QUEUED: JobStatus.RUNNING,
    JobStatus.RUNNING: JobStatus.COMPLETED,
}
PROCESSES = 4
THREADS = 4
LWW_JOBS = 4
_OPEN = frozenset({JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING})


# -- the worker processes ------------------------------------------------------------------


class _Thread:
    def __init__(self, store: JobPersistence, clock: ThreadClock, name: str, seed: str) -> None:
        self.store = store
        self.clock = clock
        self.name = name
        self.rng = random.Random(seed)
        self.maker = OpMaker(self.rng, name, BASE, big=4000, users=(name,), deletes=False)
        self.model = State()
        self.log: list[dict[str, Any]] = []
        self.races: list[str] = []
        self.seq = 0

    def record(self, entry: dict[str, Any]) -> None:
        self.log.append(entry)

    def own(self) -> None:
        op = self.maker.next()
        t0 = time.monotonic()
        result = execute(self.store, op, self.clock.set)
        self.record({"kind": "own", "op": op, "result": result, "t0": t0, "t1": time.monotonic()})
        apply(self.model, op)

    def read_back(self) -> None:
        store = self.store
        mine = JobFilter(user_id=self.name)
        count = store.count_jobs(mine)
        problems: list[str] = []
        if count != len(self.model.jobs):
            problems.append(f"count_jobs gave {count}, this thread wrote {len(self.model.jobs)}")
        if self.rng.random() < 0.2:
            seen = [job.id for job in all_jobs(store, mine)]
            if sorted(seen) != sorted(self.model.jobs):
                problems.append(
                    f"a walk over the pages gave {len(seen)} jobs, want {len(self.model.jobs)}"
                )
        if self.model.jobs:
            job_id = self.rng.choice(list(self.model.jobs))
            if store.load_job(job_id) != self.model.jobs[job_id]:
                problems.append(f"load_job({job_id!r}) differs from what this thread wrote")
        self.record({"kind": "read", "problems": problems})

    def new_race(self) -> None:
        self.seq += 1
        job_id = f"race-{self.name}-{self.seq}"
        now = BASE + timedelta(seconds=self.seq)
        self.store.save_job(SyncJob.create(id=job_id, user_id="race", project_id="r", now=now))
        self.record({"kind": "race-new", "id": job_id, "created_at": now.isoformat()})

    def race(self) -> None:
        store = self.store
        if not self.races or self.rng.random() < 0.2:
            found = store.query_jobs(JobFilter(user_id="race", statuses=_OPEN, limit=4))
            self.races = [job.id for job in found]
        if not self.races:
            self.new_race()
            return
        job_id = self.rng.choice(self.races)
        job = store.load_job(job_id)
        if job is None or job.status not in LADDER:
            self.races.remove(job_id)
            return
        self.seq += 1
        tag = f"{self.name}#{self.seq}"
        now = BASE + timedelta(days=1, microseconds=self.rng.randrange(10**12))
        self.clock.set(now)
        target = LADDER[job.status]
        won = store.update_job_status(job_id, target, expected=job.status, error_message=tag)
        self.record(
            {
                "kind": "cas",
                "id": job_id,
                "from": job.status.value,
                "to": target.value,
                "won": won,
                "tag": tag,
                "now": now.isoformat(),
            }
        )

    def last_write(self) -> None:
        store = self.store
        job_id = f"lww-{self.rng.randrange(LWW_JOBS)}"
        self.seq += 1
        tag = f"{self.name}#{self.seq}"
        if self.rng.random() < 0.6:
            progress = self.rng.randint(0, 100)
            t0 = time.monotonic()
            store.update_job_progress(job_id, progress, tag)
            entry = {"kind": "lww-progress", "id": job_id, "progress": progress, "tag": tag}
        else:
            now = BASE + timedelta(days=2, microseconds=self.rng.randrange(10**12))
            self.clock.set(now)
            t0 = time.monotonic()
            store.save_checkpoint(job_id, "shared", {"tag": tag})
            entry = {"kind": "lww-checkpoint", "id": job_id, "tag": tag, "now": now.isoformat()}
        entry.update(t0=t0, t1=time.monotonic())
        self.record(entry)

    def cleanup(self) -> None:
        roll = self.rng.random()
        if roll < 0.5:
            deleted = self.store.delete_expired_jobs(ARCHIVE_CUTOFF)
        else:
            self.clock.set(BASE)
            report = self.store.run_cleanup(dry_run=roll > 0.85)
            deleted = 0 if report.dry_run else report.jobs_deleted
        self.record({"kind": "cleanup", "deleted": deleted})

    def run(self, deadline: float) -> None:
        actions = (
            (0.55, self.own),
            (0.65, self.read_back),
            (0.67, self.new_race),
            (0.85, self.race),
            (0.97, self.last_write),
            (1.00, self.cleanup),
        )
        while time.time() < deadline:
            roll = self.rng.random()
            action = next(action for limit, action in actions if roll < limit)
            try:
                action()
            except Exception as error:
                self.record(
                    {
                        "kind": "error",
                        "action": action.__name__,
                        "type": f"{type(error).__module__}.{type(error).__name__}",
                        "typed": isinstance(error, CidxJobsError),
                        "message": str(error)[:300],
                    }
                )
                if action == self.own:
                    # The call's effect is unknown to this thread from now on: stop writing
                    # own jobs rather than report every later difference.
                    self.maker.ids.clear()


def worker(
    db: Path, logdir: Path, process: int, threads: int, seconds: float, seed: str, start: float
) -> int:
    """One worker process: ``threads`` threads sharing one store for ``seconds`` from ``start``
    (a ``time.time()`` value, so that every process starts together)."""
    clock = ThreadClock(BASE)
    store = open_sqlite(db, clock)
    time.sleep(max(0.0, start - time.time()))
    deadline = start + seconds
    workers = [
        _Thread(store, clock, f"w{process}-{index}", f"{seed}-{process}-{index}")
        for index in range(threads)
    ]
    running = [threading.Thread(target=w.run, args=(deadline,)) for w in workers]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join()
    store.close()
    for w in workers:
        with (logdir / f"{w.name}.jsonl").open("w", encoding="utf-8") as file:
            for entry in w.log:
                file.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return 0


# -- the parent ------------------------------------------------------------------------------


def _setup(db: Path, archive: int) -> None:
    store = open_sqlite(db)
    try:
        with store.transaction():
            for n in range(archive):
                job = SyncJob(
                    id=f"archive-{n}",
                    user_id="archive",
                    project_id="old",
                    status=random.Random(n).choice(
                        [
                            JobStatus.COMPLETED,
                            JobStatus.FAILED,
                            JobStatus.CANCELLED,
                            JobStatus.INTERRUPTED,
                        ]
                    ),
                    created_at=ARCHIVE_TIME,
                    completed_at=ARCHIVE_TIME + timedelta(hours=1),
                )
                store.save_job(job)
                store.save_checkpoint(job.id, "indexing", {"n": n})
            for n in range(LWW_JOBS):
                store.save_job(
                    SyncJob(
                        id=f"lww-{n}",
                        user_id="lww",
                        project_id="shared",
                        status=JobStatus.RUNNING,
                        created_at=BASE,
                    )
                )
    finally:
        store.close()


def _check_own(
    result: ScenarioResult, logs: dict[str, list[dict[str, Any]]], actual: State
) -> set[str]:
    expected_ids: set[str] = set()
    for name, entries in sorted(logs.items()):
        model = State()
        for entry in entries:
            if entry["kind"] == "own":
                want = apply(model, entry["op"])
                result.check(
                    want == entry["result"],
                    f"{name}: {entry['op']['op']} returned {entry['result']!r}, model says {want!r}",
                )
            elif entry["kind"] == "read":
                result.check(not entry["problems"], f"{name}: read back: {entry['problems']}")
        jobs = {k: v for k, v in actual.jobs.items() if v.user_id == name}
        mine = State(jobs, {k: v for k, v in actual.checkpoints.items() if k[0] in jobs})
        problems = diff(model, mine)
        result.check(not problems, f"{name}: own jobs differ from its log: {problems}")
        expected_ids |= model.jobs.keys()
    return expected_ids


def _check_races(
    result: ScenarioResult, logs: dict[str, list[dict[str, Any]]], actual: State
) -> set[str]:
    created: set[str] = set()
    wins: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    attempts = lost = 0
    for entries in logs.values():
        for entry in entries:
            if entry["kind"] == "race-new":
                created.add(entry["id"])
            elif entry["kind"] == "cas":
                attempts += 1
                if entry["won"]:
                    wins[entry["id"]][entry["from"]].append(entry)
                else:
                    lost += 1
    result.outcomes["compare-and-set attempts"] += attempts
    result.outcomes["compare-and-set attempts that lost a race"] += lost
    contested = 0
    for job_id in sorted(created):
        job = actual.jobs.get(job_id)
        if not result.check(job is not None, f"race job {job_id} was lost"):
            continue
        assert job is not None
        status = JobStatus.PENDING
        expected_fields: dict[str, Any] = {
            "error_message": None,
            "started_at": None,
            "completed_at": None,
        }
        while status in LADDER:
            winners = wins[job_id].get(status.value, [])
            if not winners:
                break
            contested += 1
            result.check(
                len(winners) == 1,
                f"race job {job_id}: {len(winners)} winners of {status.value} -> {LADDER[status].value}: "
                f"{[w['tag'] for w in winners]}",
            )
            winner = winners[0]
            status = LADDER[status]
            expected_fields["error_message"] = winner["tag"]
            if status is JobStatus.RUNNING:
                expected_fields["started_at"] = datetime.fromisoformat(winner["now"])
            if status is JobStatus.COMPLETED:
                expected_fields["completed_at"] = datetime.fromisoformat(winner["now"])
        later = [s for s in wins[job_id] if _rank(JobStatus(s)) >= _rank(status)]
        result.check(
            not later, f"race job {job_id}: a later step won without the one before: {later}"
        )
        got = {name: getattr(job, name) for name in expected_fields}
        result.check(
            job.status is status and got == expected_fields,
            f"race job {job_id}: stored {job.status.value} {got}, the winners made {status.value} {expected_fields}",
        )
    result.outcomes["contested transitions"] += contested
    return created


def _rank(status: JobStatus) -> int:
    order = [JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED]
    return order.index(status)


def _check_last_writes(
    result: ScenarioResult, logs: dict[str, list[dict[str, Any]]], actual: State
) -> set[str]:
    writes: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for entries in logs.values():
        for entry in entries:
            if entry["kind"] in ("lww-progress", "lww-checkpoint"):
                writes[(entry["kind"], entry["id"])].append(entry)
    for (kind, job_id), entries in sorted(writes.items()):
        latest_start = max(entry["t0"] for entry in entries)
        candidates = {entry["tag"]: entry for entry in entries if entry["t1"] >= latest_start}
        job = actual.jobs.get(job_id)
        if not result.check(job is not None, f"shared job {job_id} was lost"):
            continue
        assert job is not None
        if kind == "lww-progress":
            winner = candidates.get(job.phase or "")
            result.check(
                winner is not None and winner["progress"] == job.progress,
                f"{job_id}: stored progress {job.progress} phase {job.phase!r} is not from a write "
                f"that could have been last ({sorted(candidates)})",
            )
        else:
            stored = actual.checkpoints.get((job_id, "shared"))
            tag = None if stored is None else stored[0].get("tag")
            winner = candidates.get(tag or "")
            result.check(
                stored is not None
                and winner is not None
                and stored[1] == datetime.fromisoformat(winner["now"]),
                f"{job_id}: stored checkpoint {stored!r:.100} is not from a write that could have "
                f"been last ({sorted(candidates)})",
            )
        result.outcomes["last-write-wins writes"] += len(entries)
    return {f"lww-{n}" for n in range(LWW_JOBS)}


def run(config: StressConfig, workdir: Path) -> ScenarioResult:
    """Run the workers for ``config.concurrency_seconds`` and check the file against their logs."""
    result = ScenarioResult("concurrency")
    folder = workdir / "concurrency"
    shutil.rmtree(folder, ignore_errors=True)
    logdir = folder / "logs"
    logdir.mkdir(parents=True)
    db = folder / "jobs.db"
    archive = config.scaled(200, 3000)
    _setup(db, archive)
    seconds = config.concurrency_seconds
    start = time.time() + 3.0  # time for every interpreter to start
    children = [
        spawn_child(
            [
                "concurrency",
                str(db),
                str(logdir),
                str(p),
                str(THREADS),
                str(seconds),
                str(config.seed),
                str(start),
            ],
            folder / f"worker-{p}.err",
        )
        for p in range(PROCESSES)
    ]
    for p, child in enumerate(children):
        with reaped(child):
            try:
                code: int | None = child.wait(timeout=seconds + 300)
            except subprocess.TimeoutExpired:
                code = None
        result.trials += 1
        result.check(
            code == 0, f"worker {p} exited with {code}: {tail(folder / f'worker-{p}.err')}"
        )
    logs = {
        path.stem: [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for path in sorted(logdir.glob("*.jsonl"))
    }
    result.check(
        len(logs) == PROCESSES * THREADS, f"{len(logs)} worker logs, want {PROCESSES * THREADS}"
    )
    locked = 0
    for name, entries in logs.items():
        result.outcomes["calls logged"] += len(entries)
        for entry in entries:
            if entry["kind"] == "error":
                locked += "locked" in entry["message"]
                result.fail(f"{name}: {entry['action']} raised {entry['type']}: {entry['message']}")
    result.outcomes["'database is locked' reaching a caller"] += locked
    store = open_sqlite(db)
    try:
        actual = dump(store)  # raises on a job seen twice in one walk
        result.check(
            store.count_jobs() == len(actual.jobs),
            "count_jobs() disagrees with a walk over the pages",
        )
        final_cleanup = store.delete_expired_jobs(ARCHIVE_CUTOFF)
    finally:
        store.close()
    deleted = sum(
        e["deleted"] for entries in logs.values() for e in entries if e["kind"] == "cleanup"
    )
    result.check(
        deleted + final_cleanup == archive,
        f"cleanups running at once deleted {deleted} + {final_cleanup} archive jobs, want {archive}",
    )
    expected = _check_own(result, logs, actual)
    expected |= _check_races(result, logs, actual)
    expected |= _check_last_writes(result, logs, actual)
    expected |= {f"archive-{n}" for n in range(archive)} & actual.jobs.keys()
    lost = expected - actual.jobs.keys()
    extra = actual.jobs.keys() - expected
    result.check(not lost, f"{len(lost)} jobs lost, e.g. {sorted(lost)[:5]}")
    result.check(not extra, f"{len(extra)} jobs nobody wrote, e.g. {sorted(extra)[:5]}")
    problems = integrity(db)
    result.check(not problems, f"integrity: {problems}")
    result.outcomes["jobs at the end"] = len(actual.jobs)
    return result
