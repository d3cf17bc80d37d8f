"""Errors and limits: deep paths, full disks at open, read-only mounts, rows holding
invalid UTF-8, a starved writer, oversized text, and backups aimed at the database's files.

Every call must return or raise a typed error from :mod:`cidx_jobs.errors` of the kind the
fault calls for (never ``RecursionError``, ``OSError`` or a ``sqlite3`` exception), with a
message that names the real cause, and change nothing it refused.

Parts:

``deep paths``
    random paths of 1,000 to 1,500 missing folders, and paths of random lengths around
    SQLite's 504-byte limit: each opens or raises ConfigError, and a refused one creates
    no folder.
``full disk at open``
    a 1 MiB tmpfs filled to the last byte under an existing database (SQLite cannot grow
    ``-shm``), under a new one, and out of inodes for its folders (needs root): each open
    raises StorageFullError and no folder is left behind; once space is freed the
    database opens with every job.
``read-only mount``
    the tmpfs remounted read-only (needs root): each open raises StoragePermissionError
    that says the file system is mounted read-only.
``invalid UTF-8``
    random rows with random invalid UTF-8 in a random text column, written with raw
    sqlite3: each load raises a StorageCorruptError naming the job, each listing one naming
    exactly the broken jobs it includes, and ``check_on_open=full`` names every broken job.
``starved writer``
    writers that each hold the write lock for about a millisecond, back to back, and one
    more writer with a 50 ms busy timeout: every StorageBusyError it gets names both
    causes (one long transaction, or a turn never got).
``oversized text``
    random phases and error messages around and far over their limits: over a limit is
    ValidationError with nothing written; the default log observer's lines stay short.
``backup targets``
    ``backup()`` to the database, its ``-wal``, ``-shm``, ``-journal`` (also through ``..``
    and a symlink): ValidationError, and those files are unchanged.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import sqlite3
import subprocess
import threading
import time
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cidx_jobs import JobFilter, JobStatus, SyncJob
from cidx_jobs.errors import (
    ConfigError,
    StorageBusyError,
    StorageCorruptError,
    StorageFullError,
    StoragePermissionError,
    ValidationError,
)

from ._common import call, open_sqlite, remove_database
from ._config import StressConfig
from ._report import ScenarioResult
from .faults import _can_mount, _tmpfs

__all__ = ["run"]

UTC = timezone.utc
T0 = datetime(2032, 1, 1, tzinfo=UTC)
#: SQLite's limit on a database path, in bytes (cidx_jobs_sqlite._options.MAX_PATH_BYTES).
MAX_PATH_BYTES = 504
#: The documented limits of core (docs/reference.md).
MAX_PHASE = 256
MAX_ERROR_MESSAGE = 65536
#: Invalid UTF-8 byte sequences (a lone continuation byte, a truncated sequence, an
#: overlong encoding, a surrogate, a code point over U+10FFFF, bytes never used).
BAD_UTF8 = (
    b"\xff",
    b"\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
)
TEXT_COLUMNS = ("phase", "error_message", "project_id", "user_id", "owner_id")


def _job(n: int, **fields: object) -> SyncJob:
    return SyncJob(
        id=f"job-{n:05d}",
        user_id=f"user-{n % 3}",
        project_id="repo",
        created_at=T0 + timedelta(seconds=n),
        phase="git_pull",
        **fields,  # type: ignore[arg-type]
    )


def _deep_paths(
    result: ScenarioResult, config: StressConfig, folder: Path, rng: random.Random
) -> None:
    for trial in range(config.scaled(6, 40)):
        base = folder / f"deep-{trial}"
        base.mkdir()
        if trial % 2 == 0:
            path = base.joinpath(*(["d"] * rng.randint(1000, 1500)), "jobs.db")
        else:
            room = MAX_PATH_BYTES - len(os.fsencode(base)) - len("/jobs.db")
            size = rng.randint(room - 40, room + 40)
            parts = ["d"] * (size // 2)
            path = base.joinpath(*parts, "x" * (size - 2 * len(parts) + 1), "jobs.db")
        length = len(os.fsencode(path))
        outcome = call(open_sqlite, path)
        result.trials += 1
        label = f"deep paths: {length}-byte path"
        if outcome.ok:
            result.check(length <= MAX_PATH_BYTES, f"{label} opened, over the limit")
            outcome.value.close()
            result.outcomes["deep paths: opened"] += 1
        else:
            result.check(
                isinstance(outcome.error, ConfigError) and length > MAX_PATH_BYTES,
                f"{label}: {outcome.describe()}",
            )
            result.check(list(base.iterdir()) == [], f"{label}: refused, but left folders")
            result.outcomes["deep paths: refused with ConfigError"] += 1
        shutil.rmtree(base)


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as file:
        for chunk in (b"\0" * 4096, b"\0"):
            try:
                while True:
                    file.write(chunk)
            except OSError:
                pass
    return filler


def _mounted(result: ScenarioResult, config: StressConfig, folder: Path) -> None:
    reason = _can_mount()
    if reason is not None:
        result.skipped.append(f"full disk at open, read-only mount: {reason}")
        return
    for trial in range(config.scaled(3, 15)):
        with _tmpfs(folder, "1m") as point:
            if point is None:
                result.skipped.append("full disk at open: mounting a tmpfs failed")
                return
            db = point / "jobs.db"
            store = open_sqlite(db)
            jobs = [_job(n) for n in range(trial * 5 + 1)]
            with store.transaction():
                for job in jobs:
                    store.save_job(job)
            store.close()
            filler = _fill(point)
            result.faults += 1
            for target in (db, point / "new.db", point / "sub" / "dir" / "jobs.db"):
                outcome = call(open_sqlite, target)
                result.check(
                    isinstance(outcome.error, StorageFullError),
                    f"full disk at open of {target.name}: {outcome.describe()}",
                )
                if outcome.ok:
                    outcome.value.close()
                result.outcomes["full disk at open: StorageFullError"] += isinstance(
                    outcome.error, StorageFullError
                )
            filler.unlink()
            reopened = call(open_sqlite, db)
            if result.check(reopened.ok, f"after freeing space: {reopened.describe()}"):
                kept = reopened.value.query_jobs(JobFilter(limit=1000))
                result.check(len(kept) == len(jobs), f"after freeing space: {len(kept)} jobs")
                reopened.value.close()
            # Read-only: the same file system, remounted.
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True)
            result.faults += 1
            for target in (db, point / "other.db", point / "sub2" / "jobs.db"):
                outcome = call(open_sqlite, target)
                result.check(
                    isinstance(outcome.error, StoragePermissionError)
                    and "mounted read-only" in str(outcome.error)
                    and "owner or mode" not in str(outcome.error),
                    f"read-only mount, {target.name}: {outcome.describe()}",
                )
                result.outcomes["read-only mount: StoragePermissionError"] += 1
            subprocess.run(["mount", "-o", "remount,rw", str(point)], check=True)
            result.trials += 1
        # No inode left for the folders: nothing may be left behind.
        with _tmpfs(folder, "1m,nr_inodes=4") as point:
            if point is None:
                continue
            result.faults += 1
            target = point.joinpath(*["n"] * (trial + 4), "jobs.db")
            outcome = call(open_sqlite, target)
            result.check(
                isinstance(outcome.error, StorageFullError) and list(point.iterdir()) == [],
                f"no inode for a folder: {outcome.describe()}, left {list(point.iterdir())}",
            )
            result.outcomes["no inode for a folder: StorageFullError"] += 1


def _invalid_utf8(
    result: ScenarioResult, config: StressConfig, folder: Path, rng: random.Random
) -> None:
    for trial in range(config.scaled(4, 30)):
        db = folder / f"utf8-{trial}.db"
        count = rng.randint(5, 120)
        store = open_sqlite(db)
        with store.transaction():
            for n in range(count):
                store.save_job(_job(n, error_message="fine"))
        broken = set(
            rng.sample([f"job-{n:05d}" for n in range(count)], rng.randint(1, min(25, count)))
        )
        columns: dict[str, str] = {}
        with closing(sqlite3.connect(db)) as conn:
            for job_id in broken:
                column = columns[job_id] = rng.choice(TEXT_COLUMNS)
                bad = b"ok" + rng.choice(BAD_UTF8) + b"ok"
                conn.execute(
                    f"UPDATE sync_jobs SET {column} = CAST(? AS TEXT) WHERE id = ?", (bad, job_id)
                )
            conn.commit()
        result.faults += len(broken)
        for job_id in rng.sample(sorted(broken), min(5, len(broken))):
            outcome = call(store.load_job, job_id)
            error = outcome.error
            result.check(
                isinstance(error, StorageCorruptError)
                and getattr(error, "job_ids", ()) == (job_id,),
                f"invalid UTF-8: load_job({job_id!r}): {outcome.describe()}",
            )
            result.outcomes["invalid UTF-8: loads naming the job"] += 1
        for user in range(3):
            # A row whose user_id was broken no longer belongs to the user's listing.
            listed = {
                f"job-{n:05d}"
                for n in range(count)
                if n % 3 == user and columns.get(f"job-{n:05d}") != "user_id"
            }
            outcome = call(store.query_jobs, JobFilter(user_id=f"user-{user}", limit=1000))
            want = broken & listed
            if not want:
                result.check(outcome.ok, f"invalid UTF-8: clean listing {outcome.describe()}")
                result.outcomes["invalid UTF-8: listings without broken rows"] += 1
                continue
            got = set(getattr(outcome.error, "job_ids", ()))
            result.check(
                isinstance(outcome.error, StorageCorruptError) and got == want,
                f"invalid UTF-8: listing named {sorted(got)}, broken {sorted(want)}",
            )
            result.outcomes["invalid UTF-8: listings naming the jobs"] += 1
        store.close()
        outcome = call(open_sqlite, db, check_on_open="full", recover_corrupt="false")
        message = str(outcome.error)
        named = {job_id for job_id in broken if repr(job_id) in message}
        result.check(
            isinstance(outcome.error, StorageCorruptError)
            and (named == broken or len(named) == 20),
            f"invalid UTF-8: check_on_open=full named {len(named)} of {len(broken)}: {message:.200}",
        )
        result.outcomes["invalid UTF-8: found by check_on_open=full"] += 1
        if outcome.ok:
            outcome.value.close()
        result.trials += 1
        remove_database(db)


def _starved_writer(result: ScenarioResult, config: StressConfig, folder: Path) -> None:
    db = folder / "busy.db"
    writers = [open_sqlite(db, busy_timeout_ms=5000) for _ in range(4)]
    victim = open_sqlite(db, busy_timeout_ms=50)
    stop = threading.Event()
    holds: list[float] = []

    def write(store_index: int) -> None:
        store = writers[store_index]
        n = 0
        while not stop.is_set():
            with store.transaction():
                started = time.perf_counter()  # the lock is held from here to the commit
                store.save_job(
                    SyncJob(id=f"w{store_index}-{n}", user_id="w", project_id="p", created_at=T0)
                )
            holds.append(time.perf_counter() - started)
            n += 1

    threads = [threading.Thread(target=write, args=(i,), daemon=True) for i in range(len(writers))]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + config.scaled(3, 20)
    attempts = busy = 0
    try:
        while time.monotonic() < deadline:
            outcome = call(
                victim.save_job,
                SyncJob(id=f"v-{attempts}", user_id="v", project_id="p", created_at=T0),
            )
            attempts += 1
            if isinstance(outcome.error, StorageBusyError):
                busy += 1
                message = str(outcome.error)
                result.check(
                    "never got its turn" in message
                    and "longer than busy_timeout_ms" not in message,
                    f"starved writer: {message:.200}",
                )
            else:
                result.check(outcome.ok, f"starved writer: {outcome.describe()}")
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        for store in (*writers, victim):
            store.close()
        remove_database(db)
    result.trials += 1
    result.outcomes["starved writer: attempts"] += attempts
    result.outcomes["starved writer: StorageBusyError"] += busy
    result.outcomes["starved writer: writer transactions"] += len(holds)
    if holds:
        result.outcomes["starved writer: longest writer hold (ms)"] = round(max(holds) * 1000)
        holds.sort()
        result.outcomes["starved writer: median writer hold (us)"] = round(
            holds[len(holds) // 2] * 1e6
        )


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.longest = 0

    def emit(self, record: logging.LogRecord) -> None:
        self.longest = max(self.longest, len(record.getMessage()))


def _oversized(
    result: ScenarioResult, config: StressConfig, folder: Path, rng: random.Random
) -> None:
    db = folder / "limits.db"
    store = open_sqlite(db)
    lines = _Lines()
    logger = logging.getLogger("cidx_jobs")
    logger.addHandler(lines)
    try:
        store.save_job(_job(0))
        for trial in range(config.scaled(60, 400)):
            unit = rng.choice(("a", "é", "漢", "\U0001f680"))
            width = len(unit.encode())
            if rng.random() < 0.5:
                length = rng.choice(
                    (MAX_PHASE, MAX_PHASE + 1, rng.randint(1, 3 * MAX_PHASE), 10_000_000)
                )
                value = unit * length
                before = store.load_job("job-00000")
                outcome = call(store.update_job_progress, "job-00000", trial % 101, phase=value)
                over = length > MAX_PHASE
            else:
                length = rng.choice(
                    (
                        MAX_ERROR_MESSAGE // width,
                        MAX_ERROR_MESSAGE // width + 1,
                        rng.randint(1, 40_000),
                        50_000_000,
                    )
                )
                value = unit * length
                before = store.load_job("job-00000")
                status = rng.choice((JobStatus.FAILED, JobStatus.RUNNING))
                if before is not None and before.status is JobStatus.FAILED:
                    store.update_job_status(
                        "job-00000", JobStatus.RUNNING, expected=JobStatus.FAILED
                    )
                    before = store.load_job("job-00000")
                outcome = call(store.update_job_status, "job-00000", status, error_message=value)
                over = length * width > MAX_ERROR_MESSAGE
            if over:
                result.check(
                    isinstance(outcome.error, ValidationError),
                    f"oversized text: {outcome.describe()}",
                )
                result.check(
                    store.load_job("job-00000") == before, "oversized text: the job changed"
                )
                result.outcomes["oversized text: refused"] += 1
            else:
                result.check(
                    outcome.ok, f"oversized text at or under the limit: {outcome.describe()}"
                )
                result.outcomes["oversized text: stored"] += 1
            result.trials += 1
        result.check(lines.longest < 1200, f"a log line of {lines.longest} characters")
        result.outcomes["oversized text: longest log line"] = lines.longest
    finally:
        logger.removeHandler(lines)
        store.close()
        remove_database(db)


def _backup_targets(result: ScenarioResult, folder: Path) -> None:
    db = folder / "backup-source.db"
    store = open_sqlite(db)
    store.save_job(_job(1))
    storage = store.storage
    link = folder / "link-to-wal"
    link.symlink_to(db.with_name(db.name + "-wal"))
    targets = [
        db,
        db.with_name(db.name + "-wal"),
        db.with_name(db.name + "-shm"),
        db.with_name(db.name + "-journal"),
        folder / "x" / ".." / (db.name + "-wal"),
        link,
    ]
    (folder / "x").mkdir()
    try:
        for target in targets:
            files = {p: p.read_bytes() for p in (db, db.with_name(db.name + "-wal")) if p.exists()}
            outcome = call(storage.backup, target)
            result.check(
                isinstance(outcome.error, ValidationError),
                f"backup to {target}: {outcome.describe()}",
            )
            after = {p: p.read_bytes() for p in files}
            result.check(after == files, f"backup to {target} changed the database's files")
            result.check(not db.with_name(db.name + "-journal").exists(), "backup made a -journal")
            result.outcomes["backup targets: refused"] += 1
        result.check(store.load_job("job-00001") == _job(1), "backup targets: the job changed")
        result.trials += 1
    finally:
        store.close()
        remove_database(db)


def run(config: StressConfig, workdir: Path) -> ScenarioResult:
    """Every part above, each counted in the result's outcomes."""
    result = ScenarioResult("errors")
    folder = workdir / "errors"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = random.Random(f"errors-{config.seed}")
    _deep_paths(result, config, folder, rng)
    _mounted(result, config, folder)
    _invalid_utf8(result, config, folder, rng)
    _starved_writer(result, config, folder)
    _oversized(result, config, folder, rng)
    _backup_targets(result, folder)
    return result
