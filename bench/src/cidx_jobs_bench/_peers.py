"""Peer job stores on SQLite, on the operations they share with ours.

* huey's ``SqliteStorage`` (huey.storage): a task queue whose key-value table (``kv``,
  huey's result store) is the only place it can keep a record by key. Save, load and
  updates are ``put_data`` / ``peek_data`` of the whole pickled record (huey pickles);
  a checkpoint is one more key.
* persist-queue's ``SQLiteAckQueue``: a FIFO with acknowledgements. Save is ``put``,
  load is ``get(id=...)`` (a select that also marks the item "unack": a write), a status
  update is ``ack(id=...)``, a progress update rewrites the item with ``update``; the
  cleanup is ``clear_acked_data(max_delete=1000, keep_latest=0)``.
* APScheduler 3's ``SQLAlchemyJobStore`` on SQLite: save is ``add_job``, load is
  ``lookup_job``, any update is ``update_job`` (the whole pickled job state); there is
  no bulk deletion by age, so the cleanup is 1,000 ``remove_job`` calls.

For a like-for-like comparison every peer runs in WAL mode with ``synchronous=NORMAL``,
as our backend does (as shipped, huey and persist-queue use SQLite's default FULL, and
APScheduler a rollback journal). Operations a peer has no way to do are "n/a"; the README
says why. Peers are imported only here and only if installed.
"""

from __future__ import annotations

import importlib
import json
import pickle
import random
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from cidx_jobs import JobFilter, JobPersistence, JobStatus, SyncJob, serialization
from cidx_jobs_sqlite import _codec

from . import _data, _report, _sqlite
from ._report import Report
from ._settings import Settings
from ._timing import Call, interleave

OURS, HUEY, PQ, APS = (
    "cidx-jobs sqlite",
    "huey SqliteStorage",
    "persist-queue SQLiteAckQueue",
    ("APScheduler SQLAlchemyJobStore"),
)
NOT_POSSIBLE: dict[str, dict[str, str]] = {
    HUEY: {
        "query 100": "no secondary index: records are found by key only",
        "cleanup 1,000": "no deletion by age; flush_results() drops every record",
    },
    PQ: {
        "save_checkpoint": "a queue has no records by key besides its items",
        "load_checkpoint": "a queue has no records by key besides its items",
        "query 100": "a FIFO: items come out in order, with no filter",
    },
    APS: {
        "save_checkpoint": "a job store keeps scheduled jobs only",
        "load_checkpoint": "a job store keeps scheduled jobs only",
        "query 100": "jobs are found by id or by next run time only",
    },
}
OPERATIONS = (
    "save_job",
    "load_job",
    "update_job_status",
    "update_job_progress",
    "save_checkpoint",
    "load_checkpoint",
    "query 100",
    "cleanup 1,000",
)
_DATA = {"files_done": 1200, "files_total": 4810, "last": "src/app/main.py"}


def run_sync_job(**payload: Any) -> None:
    """What the APScheduler jobs would run (never called: they are only stored)."""


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


class _Peer:
    """One peer: how it does each operation (``None``: it cannot)."""

    name: str = ""

    def __init__(self, folder: Path) -> None:
        """Open the peer's store in ``folder``."""

    def prepare(self, jobs: list[dict[str, Any]]) -> None:
        """Anything untimed before the timed calls."""

    def ops(self, jobs: list[dict[str, Any]]) -> dict[str, list[Call] | None]:
        raise NotImplementedError

    def cleanup_setup(self, seed: int, count: int) -> None:
        """Make ``count`` expired records (untimed)."""

    def cleanup(self) -> Call | None:
        return None

    def file(self) -> Path:
        raise NotImplementedError

    def close(self) -> None:
        """Release the peer's connections."""


class _Huey(_Peer):
    name = HUEY

    def __init__(self, folder: Path) -> None:
        storage = importlib.import_module("huey.storage")
        self.path = folder / "huey.db"
        self.storage = storage.SqliteStorage(name="cidx", filename=str(self.path))
        self.storage.conn.execute("PRAGMA synchronous = NORMAL")

    def ops(self, jobs: list[dict[str, Any]]) -> dict[str, list[Call] | None]:
        s = self.storage

        def put(key: str, value: dict[str, Any]) -> Call:
            return lambda: s.put_data(key, pickle.dumps(value))

        def get(key: str) -> Call:
            return lambda: pickle.loads(s.peek_data(key))

        def update(job: dict[str, Any], **changes: Any) -> Call:
            def call() -> None:
                job.update(changes)
                s.put_data(job["id"], pickle.dumps(job))

            return call

        return {
            "save_job": [put(job["id"], job) for job in jobs],
            "load_job": [get(job["id"]) for job in jobs],
            "update_job_status": [update(job, status="running") for job in jobs],
            "update_job_progress": [update(job, progress=40, phase="indexing") for job in jobs],
            "save_checkpoint": [put(job["id"] + ":indexing", _DATA) for job in jobs],
            "load_checkpoint": [get(job["id"] + ":indexing") for job in jobs],
            "query 100": None,
            "cleanup 1,000": None,
        }

    def file(self) -> Path:
        return self.path

    def close(self) -> None:
        self.storage.close()


class _PersistQueue(_Peer):
    name = PQ

    def __init__(self, folder: Path) -> None:
        persistqueue = importlib.import_module("persistqueue")
        self.folder = folder / "pq"
        self.queue = persistqueue.SQLiteAckQueue(
            str(self.folder), multithreading=True, auto_commit=True
        )
        for conn in {id(c): c for c in (self.queue._getter, self.queue._putter)}.values():
            conn.execute("PRAGMA synchronous = NORMAL")
        self.ids: dict[str, int] = {}

    def ops(self, jobs: list[dict[str, Any]]) -> dict[str, list[Call] | None]:
        q = self.queue
        ids = self.ids

        def put(job: dict[str, Any]) -> Call:
            return lambda: ids.__setitem__(job["id"], q.put(job))

        def get(job: dict[str, Any]) -> Call:
            return lambda: q.get(block=False, id=ids[job["id"]])

        def ack(job: dict[str, Any]) -> Call:
            return lambda: q.ack(id=ids[job["id"]])

        def update(job: dict[str, Any]) -> Call:
            def call() -> None:
                job["progress"] = 40
                job["phase"] = "indexing"
                q.update(job, id=ids[job["id"]])

            return call

        return {
            "save_job": [put(job) for job in jobs],
            "load_job": [get(job) for job in jobs],
            "update_job_status": [ack(job) for job in jobs],
            "update_job_progress": [update(job) for job in jobs],
            "save_checkpoint": None,
            "load_checkpoint": None,
            "query 100": None,
            "cleanup 1,000": [],  # filled by cleanup()
        }

    def cleanup_setup(self, seed: int, count: int) -> None:
        # Untimed: acked items inserted in one transaction, serialized as put() does.
        q = self.queue
        dumps = q._serializer.dumps
        rows = [(dumps(_payload(row)), 0.0) for row in _data.expired_rows(seed, count, 1000)]
        with q.tran_lock, q._putter as conn:
            conn.executemany(
                f"INSERT INTO {q._table_name} (data, timestamp, status) VALUES (?, ?, 5)", rows
            )

    def cleanup(self) -> Call | None:
        q = self.queue
        return lambda: q.clear_acked_data(max_delete=1000, keep_latest=0)

    def file(self) -> Path:
        return self.folder / "data.db"

    def close(self) -> None:
        self.queue.close()


class _APScheduler(_Peer):
    name = APS

    def __init__(self, folder: Path) -> None:
        sqlalchemy = importlib.import_module("sqlalchemy")
        jobstores = importlib.import_module("apscheduler.jobstores.sqlalchemy")
        schedulers = importlib.import_module("apscheduler.schedulers.background")
        self._job = importlib.import_module("apscheduler.job").Job
        self._trigger = importlib.import_module("apscheduler.triggers.date").DateTrigger
        self.path = folder / "apscheduler.db"
        engine = sqlalchemy.create_engine(f"sqlite:///{self.path}")

        def pragmas(conn: Any, _record: Any) -> None:
            cursor = conn.cursor()
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.close()

        sqlalchemy.event.listen(engine, "connect", pragmas)
        self.scheduler = schedulers.BackgroundScheduler(timezone="UTC")
        self.store = jobstores.SQLAlchemyJobStore(engine=engine)
        self.store.start(self.scheduler, "default")
        self.jobs: dict[str, Any] = {}
        self.expired: list[str] = []

    def make(self, payload: dict[str, Any]) -> Any:
        return self._job(
            self.scheduler,
            id=payload["id"],
            func=f"{__name__}:run_sync_job",
            trigger=self._trigger(run_date=_data.NOW, timezone="UTC"),
            executor="default",
            args=(),
            kwargs=payload,
            name="sync",
            misfire_grace_time=None,
            coalesce=True,
            max_instances=1,
            next_run_time=_data.NOW,
        )

    def prepare(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = {job["id"]: self.make(job) for job in jobs}

    def ops(self, jobs: list[dict[str, Any]]) -> dict[str, list[Call] | None]:
        store = self.store
        made = self.jobs

        def add(job_id: str) -> Call:
            return lambda: store.add_job(made[job_id])

        def lookup(job_id: str) -> Call:
            return lambda: store.lookup_job(job_id)

        def update(job_id: str, **changes: Any) -> Call:
            def call() -> None:
                job = made[job_id]
                job.kwargs.update(changes)
                store.update_job(job)

            return call

        ids = [job["id"] for job in jobs]
        return {
            "save_job": [add(i) for i in ids],
            "load_job": [lookup(i) for i in ids],
            "update_job_status": [update(i, status="running") for i in ids],
            "update_job_progress": [update(i, progress=40, phase="indexing") for i in ids],
            "save_checkpoint": None,
            "load_checkpoint": None,
            "query 100": None,
            "cleanup 1,000": [],
        }

    def cleanup_setup(self, seed: int, count: int) -> None:
        # Untimed: the rows add_job() would write, inserted in one transaction.
        store = self.store
        rows = _data.expired_rows(seed, count, 1000)
        self.expired = [row[_data.ID] for row in rows]
        values = []
        for row in rows:
            job = self.make(_payload(row))
            values.append(
                {
                    "id": job.id,
                    "next_run_time": job.next_run_time.timestamp(),
                    "job_state": pickle.dumps(job.__getstate__(), store.pickle_protocol),
                }
            )
        with store.engine.begin() as conn:
            conn.execute(store.jobs_t.insert(), values)

    def cleanup(self) -> Call | None:
        store = self.store

        def call() -> None:
            for job_id in self.expired:
                store.remove_job(job_id)

        return call

    def file(self) -> Path:
        return self.path

    def close(self) -> None:
        self.store.shutdown()


class _Ours(_Peer):
    name = OURS

    def __init__(self, folder: Path) -> None:
        self.path = folder / "ours.db"
        _sqlite.remove_db(self.path)
        self.store: JobPersistence = _sqlite.open_store(self.path)
        self.filled = False
        self.filters = [
            JobFilter(
                user_id=_data.user_name(i),
                statuses={JobStatus.COMPLETED},
                created_after=_data.NOW - timedelta(days=14),
                created_before=_data.NOW,
                limit=100,
            )
            for i in range(20)
        ]

    def ops(self, jobs: list[dict[str, Any]]) -> dict[str, list[Call] | None]:
        store = self.store
        objects = [serialization.from_dict(job, SyncJob) for job in jobs]
        filters = self.filters

        def save(job: Any) -> Call:
            return lambda: store.save_job(job)

        def by_id(fn: Callable[..., object], *args: Any) -> Call:
            return lambda: fn(*args)

        ids = [job.id for job in objects]
        return {
            "save_job": [save(job) for job in objects],
            "load_job": [by_id(store.load_job, i) for i in ids],
            "update_job_status": [by_id(store.update_job_status, i, "running") for i in ids],
            "update_job_progress": [
                by_id(store.update_job_progress, i, 40, "indexing") for i in ids
            ],
            "save_checkpoint": [by_id(store.save_checkpoint, i, "indexing", _DATA) for i in ids],
            "load_checkpoint": [by_id(store.load_checkpoint, i, "indexing") for i in ids],
            "query 100": [
                by_id(store.query_page, filters[k % len(filters)]) for k in range(len(ids))
            ],
            "cleanup 1,000": [],
        }

    def cleanup_setup(self, seed: int, count: int) -> None:
        conn = _sqlite.raw_connect(self.path)
        try:
            rows = _data.expired_rows(seed, count, 1000)
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_sqlite.INSERT_JOB, rows)
            conn.execute("COMMIT")
        finally:
            conn.close()

    def cleanup(self) -> Call | None:
        store = self.store
        cutoff = _data.NOW - timedelta(days=60)
        return lambda: store.delete_expired_jobs(cutoff)

    def file(self) -> Path:
        return self.path

    def close(self) -> None:
        self.store.close()


def _payload(row: tuple[Any, ...]) -> dict[str, Any]:
    """A job as the JSON-ready dict every peer stores (serialization.to_dict)."""
    return serialization.to_dict(_codec.decode_job(row))


def _make_peers(folder: Path, log: Callable[[str], None]) -> tuple[list[_Peer], dict[str, str]]:
    peers: list[_Peer] = [_Ours(folder / "ours")]
    missing: dict[str, str] = {}
    for name, module, cls in (
        (HUEY, "huey.storage", _Huey),
        (PQ, "persistqueue", _PersistQueue),
        (APS, "apscheduler.jobstores.sqlalchemy", _APScheduler),
    ):
        if _module(module) is None:
            missing[name] = f"not installed (pip install the bench env's peers; {module})"
            continue
        sub = folder / name.split()[0]
        sub.mkdir(parents=True, exist_ok=True)
        try:
            peers.append(cls(sub))
        except Exception as error:  # a peer that cannot start is reported, not fatal
            missing[name] = f"failed to start: {type(error).__name__}: {error}"
            log(f"peer {name}: {missing[name]}")
    return peers, missing


def run(settings: Settings, report: Report) -> None:
    """Time each peer against our SQLite backend, interleaved, and compare file sizes."""
    folder = settings.work_dir / "peers"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ours").mkdir(exist_ok=True)
    settings.log("peers ...")
    peers, missing = _make_peers(folder, settings.log)
    section = report.section(
        "peers",
        "Peers on SQLite (WAL, synchronous=NORMAL for all; µs per call, ratio = peer / ours)",
        ["operation", *[p.name for p in peers], *missing],
    )
    try:
        _measure(settings, section, peers, missing)
    finally:
        for peer in peers:
            peer.close()
    section.notes.append(
        "ratio: the peer's median / cidx-jobs' median in the same interleaved rounds "
        "(above 1: the peer is slower). n/a: the peer has no way to do it (see "
        "bench/README.md). size: file / the JSON payload of what the peer holds "
        f"({settings.peer_size_jobs:,} jobs with 1 KB metadata; with 3 checkpoints of 1 KB "
        "each where the peer can keep checkpoints)."
    )


def _measure(
    settings: Settings, section: _report.Section, peers: list[_Peer], missing: dict[str, str]
) -> None:
    n = settings.peer_ops
    rng = random.Random("peers")
    rows = [_data.job_row(rng, settings.users) for _ in range(n)]
    per_peer_jobs = {p.name: [_payload(row) for row in rows] for p in peers}
    for peer in peers:
        peer.prepare(per_peer_jobs[peer.name])
    planned = {peer.name: peer.ops(per_peer_jobs[peer.name]) for peer in peers}
    rounds = min(settings.rounds, n)
    results: dict[str, dict[str, float | None]] = {op: {} for op in OPERATIONS}
    for op in OPERATIONS:
        if op == "cleanup 1,000":
            continue
        if op == "query 100":
            # Our query needs jobs: the saved ones are one user's few; load the 10k database.
            _fill_for_query(peers[0], settings)
        contenders = {
            name: calls for name, by_op in planned.items() if (calls := by_op[op]) is not None
        }
        samples = interleave(contenders, rounds)
        for name, sample in samples.items():
            results[op][name] = sample.median_us()
    # cleanup: 1,000 expired records, fresh each round
    cleaners = {p.name: p for p in peers}
    cleanup_calls: dict[str, list[Call]] = {}
    for peer in peers:
        call = peer.cleanup()
        if call is not None:
            cleanup_calls[peer.name] = [call] * min(settings.cleanup_rounds, 5)

    def setup(name: str, round_: int) -> None:
        cleaners[name].cleanup_setup(20_000 + round_, 1000)

    samples = interleave(cleanup_calls, min(settings.cleanup_rounds, 5), setup=setup)
    for name, sample in samples.items():
        results["cleanup 1,000"][name] = sample.median_us()

    ours = OURS
    for op in OPERATIONS:
        base = results[op].get(ours)
        cells = [op]
        for peer in peers:
            value = results[op].get(peer.name)
            if value is None:
                cells.append(_report.NA)
            elif peer.name == ours:
                cells.append(_report.us(value))
            else:
                r = value / base if base else None
                cells.append(f"{_report.us(value)} ({_report.ratio(r)})")
        cells.extend(_report.NA for _ in missing)
        section.add(
            cells,
            operation=op,
            median_us=results[op],
            ratio_to_ours={
                name: (value / base if base and value else None)
                for name, value in results[op].items()
            },
            not_possible={
                p.name: NOT_POSSIBLE.get(p.name, {}).get(op)
                for p in peers
                if p.name not in results[op]
            },
        )
    _sizes(settings, section, peers, missing)


def _fill_for_query(ours: _Peer, settings: Settings) -> None:
    if not isinstance(ours, _Ours) or ours.filled:
        return
    conn = _sqlite.raw_connect(ours.path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_sqlite.INSERT_JOB, _data.job_rows("peers-query", 10_000, 20))
        conn.execute("COMMIT")
    finally:
        conn.close()
    ours.filled = True


def _sizes(
    settings: Settings, section: _report.Section, peers: list[_Peer], missing: dict[str, str]
) -> None:
    count = settings.peer_size_jobs
    settings.log(f"peer sizes ({count:,} jobs) ...")
    rows = list(_data.job_rows("peer-size", count, settings.users, metadata_bytes=1024))
    jobs = [_payload(row) for row in rows]
    checkpoints = _data.checkpoint_rows("peer-size", [row[_data.ID] for row in rows], size=1024)
    job_bytes = sum(len(json.dumps(job, ensure_ascii=False).encode()) for job in jobs)
    cp_bytes = sum(
        len(
            json.dumps(
                {"job_id": j, "phase": p, "data": json.loads(d), "created_at": "x" * 32},
                ensure_ascii=False,
            ).encode()
        )
        for j, p, d, _ in checkpoints
    )
    folder = settings.work_dir / "peer-sizes"
    cells = ["size: file / payload"]
    figures: dict[str, Any] = {}
    for peer in peers:
        sub = folder / peer.name.split()[0]
        sub.mkdir(parents=True, exist_ok=True)
        fresh = type(peer)(sub)
        try:
            holds_checkpoints = _store_all(fresh, jobs, checkpoints)
        finally:
            fresh.close()
        size = _sqlite.file_bytes(fresh.file())
        payload = job_bytes + (cp_bytes if holds_checkpoints else 0)
        figures[peer.name] = {
            "file_bytes": size,
            "payload_bytes": payload,
            "ratio": size / payload,
            "holds_checkpoints": holds_checkpoints,
        }
        cells.append(_report.ratio(size / payload) + ("" if holds_checkpoints else " (jobs only)"))
    cells.extend(_report.NA for _ in missing)
    section.add(cells, operation="size", sizes=figures, jobs=count)


def _store_all(
    peer: _Peer, jobs: list[dict[str, Any]], checkpoints: list[tuple[str, str, str, int]]
) -> bool:
    """Store every job (and checkpoint, if the peer can); True if it kept checkpoints."""
    if isinstance(peer, _Ours):
        store = peer.store
        with_cp = iter(checkpoints)
        for start in range(0, len(jobs), 500):
            with store.transaction():
                for job in jobs[start : start + 500]:
                    store.save_job(serialization.from_dict(job, SyncJob))
                    for _ in range(3):
                        job_id, phase, data, _created = next(with_cp)
                        store.save_checkpoint(job_id, phase, json.loads(data))
        return True
    if isinstance(peer, _Huey):
        s = peer.storage
        for job in jobs:
            s.put_data(job["id"], pickle.dumps(job))
        for job_id, phase, data, _created in checkpoints:
            s.put_data(f"{job_id}:{phase}", pickle.dumps(json.loads(data)))
        return True
    if isinstance(peer, _PersistQueue):
        for job in jobs:
            peer.queue.put(job)
        return False
    if isinstance(peer, _APScheduler):
        for job in jobs:
            peer.store.add_job(peer.make(job))
        return False
    raise TypeError(peer)
