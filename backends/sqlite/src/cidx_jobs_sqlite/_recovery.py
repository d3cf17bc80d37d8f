"""Finding a damaged database at open, and salvaging what is readable into a fresh one.

The damaged file is never changed: it is read through a read-only connection, a
fresh database is built beside it under a temporary name, and only then are the
files renamed (the damaged one to ``<name>.corrupt-<UTC timestamp>`` with its
``-wal``/``-shm``, the fresh one into place), so the path is without a database for
no longer than two renames take.

Reading around damage: rows are read by rowid ranges; a range that fails is split
in halves until the damaged rows are isolated, so every row on an intact page is
kept. Each salvaged row is validated like user input, because a damaged page can
also yield garbage that SQLite does not notice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

from cidx_jobs import Checkpoint, JobStatus, SyncJob
from cidx_jobs.errors import CidxJobsError, StoragePermissionError, StorageUnavailableError

from . import _codec, _statements
from ._errors import CORRUPT, NOTADB, error_code
from ._schema import apply_migrations

logger = logging.getLogger("cidx_jobs.sqlite")

SQLITE_MAGIC = b"SQLite format 3\x00"
#: Files that belong to a database and move with it.
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
_CHUNK = 1000
#: At most this many queries are spent reading around damage (roughly ten seconds).
_QUERY_BUDGET = 1_000_000
_LOST_IDS_LOGGED = 20


@attrs.define(kw_only=True)
class RecoveryReport:
    """What a recovery kept and lost.

    :ivar moved_to: where the damaged file now is.
    :ivar problem: what the check at open found.
    :ivar jobs_kept: jobs copied into the fresh database.
    :ivar checkpoints_kept: checkpoints copied into it.
    :ivar jobs_lost: ids of jobs an index still names that could not be read.
    :ivar checkpoints_lost: checkpoints that could not be read or whose job was lost.
    :ivar rows_unreadable: row slots in damaged pages (jobs or checkpoints) that could not
        be read; some may have held no row.
    :ivar complete: False when the damage made it impossible to read the tables at all,
        or the salvage ran out of its query budget.
    """

    moved_to: Path
    problem: str
    jobs_kept: int = 0
    checkpoints_kept: int = 0
    jobs_lost: list[str] = attrs.Factory(list)
    checkpoints_lost: int = 0
    rows_unreadable: int = 0
    complete: bool = True


def looks_like_sqlite(path: Path) -> bool:
    """True if ``path`` has SQLite's header, or at least the shape of a database with a
    damaged first page (a whole number of pages). Another program's file is not
    moved aside on a configuration mistake."""
    try:
        with path.open("rb") as file:
            head = file.read(len(SQLITE_MAGIC))
        size = path.stat().st_size
    except OSError:
        return False
    if head == SQLITE_MAGIC:
        return True
    return size >= 512 and size % 512 == 0


def probe(conn: sqlite3.Connection, level: str) -> str | None:
    """What is damaged in the database, or ``None`` when it reads clean.

    :param level: ``quick`` (``PRAGMA quick_check``), ``full`` (``integrity_check``)
        or ``off`` (only the schema is read).
    :raises sqlite3.Error: a failure other than damage (e.g. an I/O error).
    """
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if level == "off":
            return None
        pragma = "quick_check" if level == "quick" else "integrity_check"
        rows = conn.execute(f"PRAGMA {pragma}(20)").fetchall()
    except sqlite3.DatabaseError as error:
        if error_code(error) in (CORRUPT, NOTADB):
            return str(error)
        raise
    if rows == [("ok",)]:
        return None
    return "; ".join(str(row[0]) for row in rows[:5])


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[None]:
    """An exclusive lock that processes opening databases in ``folder`` take to recover,
    so that two processes never recover one file at once (where flock exists).

    :raises StoragePermissionError: the folder cannot be opened for reading.
    :raises StorageUnavailableError: the folder cannot be opened or locked otherwise (a
        file system without locks, say).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except PermissionError as error:
        raise StoragePermissionError(
            f"cannot open the folder {folder} to lock it while recovering a damaged job "
            f"database: {error.strerror}; grant read permission on the folder"
        ) from error
    except OSError as error:
        raise StorageUnavailableError(
            f"cannot open the folder {folder} to lock it while recovering a damaged job "
            f"database: {error.strerror or error}"
        ) from error
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as error:
            raise StorageUnavailableError(
                f"cannot lock the folder {folder} while recovering a damaged job database: "
                f"{error.strerror or error}. Keep the database on a local file system, which "
                "supports locks"
            ) from error
        yield
    finally:
        os.close(fd)


def file_identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of the file at ``path``, or ``None`` if there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino)


def recover(path: Path, problem: str) -> RecoveryReport:
    """Move the damaged database at ``path`` aside and put a fresh one with every readable
    job and checkpoint in its place; log at ERROR what was kept and lost.

    :raises OSError: the files could not be created or renamed.
    :raises sqlite3.Error: the fresh database could not be written.
    """
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while any(
        aside.with_name(aside.name + suffix).exists() for suffix in ("", *COMPANION_SUFFIXES)
    ):
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
        counter += 1
    report = RecoveryReport(moved_to=aside, problem=problem)
    companions = [path.with_name(path.name + suffix) for suffix in COMPANION_SUFFIXES]
    existed = {companion for companion in companions if companion.exists()}
    jobs, checkpoints = _salvage(path, report)
    for companion in companions:
        # Made by the read-only connection of the salvage; they hold nothing.
        if companion not in existed:
            with contextlib.suppress(FileNotFoundError):
                os.remove(companion)
    fresh = path.with_name(f"{path.name}.recovering-{os.getpid()}")
    _remove_database(fresh)
    try:
        _write_fresh(fresh, jobs, checkpoints)
        os.replace(path, aside)
        for suffix in COMPANION_SUFFIXES:
            companion = path.with_name(path.name + suffix)
            if companion.exists():
                os.replace(companion, aside.with_name(aside.name + suffix))
        os.replace(fresh, path)
    except BaseException:
        _remove_database(fresh)
        raise
    _log(path, report)
    return report


def _remove_database(path: Path) -> None:
    for suffix in ("", *COMPANION_SUFFIXES):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path.with_name(path.name + suffix))


def _log(path: Path, report: RecoveryReport) -> None:
    lost = len(report.jobs_lost)
    shown = ", ".join(report.jobs_lost[:_LOST_IDS_LOGGED])
    more = f" and {lost - _LOST_IDS_LOGGED} more" if lost > _LOST_IDS_LOGGED else ""
    logger.error(
        "the job database %s was damaged (%s). It was moved to %s (with its -wal and -shm "
        "files) and a fresh database was created in its place. Kept %d jobs and %d "
        "checkpoints. Lost %d jobs known by id%s, %d checkpoints, and %d unreadable row "
        "slots in damaged pages%s. Restore what you need from a backup; delete %s once "
        "you no longer need it.",
        path,
        report.problem,
        report.moved_to,
        report.jobs_kept,
        report.checkpoints_kept,
        lost,
        f" ({shown}{more})" if lost else "",
        report.checkpoints_lost,
        report.rows_unreadable,
        "" if report.complete else " (the tables could not be read completely)",
        report.moved_to,
    )


class _Budget:
    def __init__(self) -> None:
        self.left = _QUERY_BUDGET
        self.started = time.monotonic()

    def spend(self) -> bool:
        self.left -= 1
        return self.left >= 0


def _salvage(
    path: Path, report: RecoveryReport
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Read every readable job and checkpoint of the damaged database, validated."""
    try:
        src = sqlite3.connect(
            path.as_uri() + "?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error:
        report.complete = False
        return [], []
    budget = _Budget()
    try:
        try:
            tables = {
                row[0] for row in src.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
        except sqlite3.DatabaseError:
            report.complete = False
            return [], []
        jobs: list[tuple[Any, ...]] = []
        kept_ids: set[str] = set()
        if "sync_jobs" in tables:
            known_ids = _known_job_ids(src)
            rows = _read_table(src, "sync_jobs", _codec.JOB_COLUMNS, budget, report)
            for row in rows:
                params = _valid_job(row)
                if params is None:
                    report.rows_unreadable += 1
                elif params[0] not in kept_ids:
                    kept_ids.add(params[0])
                    jobs.append(params)
            report.jobs_lost = sorted(known_ids - kept_ids)
        else:
            report.complete = False
        checkpoints: list[tuple[Any, ...]] = []
        if "job_checkpoints" in tables:
            seen: set[tuple[str, str]] = set()
            columns = ("job_id", "phase", "data", "created_at")
            for row in _read_table(src, "job_checkpoints", columns, budget, report):
                params = _valid_checkpoint(row)
                if params is None or params[0] not in kept_ids or params[:2] in seen:
                    report.checkpoints_lost += 1
                    continue
                seen.add((params[0], params[1]))
                checkpoints.append(params)
        report.jobs_kept = len(jobs)
        report.checkpoints_kept = len(checkpoints)
        if budget.left < 0:
            report.complete = False
        return jobs, checkpoints
    finally:
        src.close()


def _known_job_ids(src: sqlite3.Connection) -> set[str]:
    """The job ids the primary-key index still lists (as many as can be read)."""
    ids: set[str] = set()
    with contextlib.suppress(sqlite3.Error):
        for (job_id,) in src.execute("SELECT id FROM sync_jobs ORDER BY id"):
            if isinstance(job_id, str):
                ids.add(job_id)
    return ids


def _rowid_bounds(src: sqlite3.Connection, table: str) -> tuple[int, int]:
    low, high = 1, 0
    try:
        row = src.execute(f"SELECT min(rowid), max(rowid) FROM {table}").fetchone()
        if row[0] is not None:
            return int(row[0]), int(row[1])
        return 1, 0
    except sqlite3.Error:
        pass
    # The table's outer pages are damaged: learn the rowids from its indexes, and bound
    # them by the file's size.
    indexes = [
        name
        for (name,) in src.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?", (table,)
        )
    ]
    for index in indexes:
        with contextlib.suppress(sqlite3.Error):
            for (rowid,) in src.execute(f'SELECT rowid FROM {table} INDEXED BY "{index}"'):
                high = max(high, int(rowid))
    with contextlib.suppress(sqlite3.Error):
        pages = int(src.execute("PRAGMA page_count").fetchone()[0])
        page_size = int(src.execute("PRAGMA page_size").fetchone()[0])
        # A table row takes at least a few bytes; this bounds the rowids SQLite hands out
        # in order (the backend never chooses rowids itself).
        high = max(high, pages * page_size // 8)
    return low, high


def _read_table(
    src: sqlite3.Connection,
    table: str,
    columns: tuple[str, ...],
    budget: _Budget,
    report: RecoveryReport,
) -> list[tuple[Any, ...]]:
    available = set()
    with contextlib.suppress(sqlite3.Error):
        available = {row[1] for row in src.execute(f"PRAGMA table_info({table})")}
    # A column an older schema lacks reads as NULL (validation then decides).
    select = ", ".join(name if name in available else "NULL" for name in columns)
    sql = f"SELECT {select} FROM {table} WHERE rowid BETWEEN ? AND ?"
    low, high = _rowid_bounds(src, table)
    rows: list[tuple[Any, ...]] = []
    start = low
    while start <= high:
        pending = [(start, min(start + _CHUNK - 1, high))]
        start += _CHUNK
        while pending:
            first, last = pending.pop()
            if not budget.spend():
                report.complete = False
                return rows
            try:
                rows.extend(src.execute(sql, (first, last)).fetchall())
            except sqlite3.DatabaseError:
                if first == last:
                    report.rows_unreadable += 1
                    continue
                middle = (first + last) // 2
                pending.append((middle + 1, last))
                pending.append((first, middle))
    return rows


def _valid_job(row: tuple[Any, ...]) -> tuple[Any, ...] | None:
    """The INSERT parameters of a salvaged job row, or ``None`` if the row is garbage."""
    try:
        values = dict(zip(_codec.JOB_COLUMNS, row, strict=True))
        for name in ("created_at", "started_at", "completed_at", "heartbeat_at"):
            value = values[name]
            if value is not None and type(value) is not int:
                return None
        metadata_json = values["metadata"]
        if not isinstance(metadata_json, str):
            return None
        metadata = json.loads(metadata_json)
        job = SyncJob(
            id=values["id"],
            user_id=values["user_id"],
            project_id=values["project_id"],
            status=JobStatus.parse(values["status"]),
            progress=values["progress"],
            phase=values["phase"],
            created_at=_codec.decode_time(values["created_at"]),
            started_at=None
            if values["started_at"] is None
            else _codec.decode_time(values["started_at"]),
            completed_at=None
            if values["completed_at"] is None
            else _codec.decode_time(values["completed_at"]),
            error_message=values["error_message"],
            metadata=metadata,
            # The lease is kept as it was, so recovery at start treats the job as before.
            owner_id=values["owner_id"],
            heartbeat_at=None
            if values["heartbeat_at"] is None
            else _codec.decode_time(values["heartbeat_at"]),
        )
        return _codec.job_params(job, metadata_json)
    except (CidxJobsError, ValueError, TypeError, OverflowError, KeyError):
        return None


def _valid_checkpoint(row: tuple[Any, ...]) -> tuple[Any, ...] | None:
    try:
        job_id, phase, data_json, created_at = row
        if type(created_at) is not int or not isinstance(data_json, str):
            return None
        checkpoint = Checkpoint(
            job_id=job_id,
            phase=phase,
            data=json.loads(data_json),
            created_at=_codec.decode_time(created_at),
        )
        return (checkpoint.job_id, checkpoint.phase, data_json, created_at)
    except (CidxJobsError, ValueError, TypeError, OverflowError):
        return None


def _write_fresh(
    path: Path, jobs: list[tuple[Any, ...]], checkpoints: list[tuple[Any, ...]]
) -> None:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA foreign_keys = ON")
        apply_migrations(conn, path, lambda c: c.execute("BEGIN IMMEDIATE").close())
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_statements.INSERT_JOB, jobs)
        conn.executemany(_statements.INSERT_CHECKPOINT, checkpoints)
        conn.execute("COMMIT")
    finally:
        conn.close()
