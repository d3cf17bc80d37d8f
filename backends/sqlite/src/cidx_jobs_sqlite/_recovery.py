"""Finding a damaged database at open, and salvaging what is readable into a fresh one.

The damaged file, its ``-wal`` and its ``-shm`` are never changed: the salvage reads
them as plain files (SQLite never opens them for it), a fresh database is built beside
the file under a temporary name, with the damaged file's mode and owner, and only then
are the files renamed (the damaged one to ``<name>.corrupt-<UTC timestamp>`` with its
``-wal``/``-shm``, the fresh one into place), so the path is without a database for no
longer than two renames take. A symlinked path is followed: the files are those of the
link's target, in the target's folder, and the link stays.

Reading around damage: SQLite's own reads stop at the first damaged page of a b-tree,
so a damaged interior page, root or schema page hides every row below it. The salvage
therefore parses the file itself (the `file format <https://sqlite.org/fileformat.html>`_):
it applies the committed frames of the ``-wal``, walks each table's b-tree from its root
as far as the pages are intact, then reads every table leaf page that no walk reached and
that is not on the free list (the leaves under a damaged interior page). So every row on
an intact page is kept, whichever page is damaged; a row whose overflow chain is damaged
is counted as lost. The primary-key indexes, read the same way, name the jobs and
checkpoints that could not be read. Each salvaged row is validated like user input,
because a damaged page can also yield garbage that passes the file format's checks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import sqlite3
import stat
import struct
import time
import urllib.parse
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

from cidx_jobs import Checkpoint, JobStatus, SyncJob
from cidx_jobs.errors import (
    CidxJobsError,
    StorageBusyError,
    StoragePermissionError,
    StorageUnavailableError,
)

from . import _codec, _statements
from ._errors import CORRUPT, NOTADB, error_code
from ._schema import apply_migrations

logger = logging.getLogger("cidx_jobs.sqlite")

SQLITE_MAGIC = b"SQLite format 3\x00"
#: Files that belong to a database and move with it.
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
#: The mode of a database the backend creates where none was: owner only.
NEW_DATABASE_MODE = 0o600
_LOST_IDS_LOGGED = 20
_JOBS = "sync_jobs"
_CHECKPOINTS = "job_checkpoints"
_JOBS_KEY = "sqlite_autoindex_sync_jobs_1"
_CHECKPOINTS_KEY = "sqlite_autoindex_job_checkpoints_1"
#: The b-trees whose pages are accounted for but whose content the salvage does not need.
_OTHER = "other index"
_OTHER_TABLE = "other table"
_MASTER = "sqlite_master"
#: Rows of schema version 1 have 11 columns (``ALTER TABLE`` rewrote none), of versions 2
#: and 3 13, later ones 14 (``lease_token`` last).
_JOB_WIDTHS = (len(_codec.JOB_COLUMNS) - 2, len(_codec.JOB_COLUMNS), len(_codec.JOB_COLUMNS) + 1)
_CHECKPOINT_WIDTH = 4
#: Core's limits on a job's phase (characters) and error message (bytes of UTF-8), which
#: rows written by releases before 0.2 may exceed (cidx_jobs._validate).
_PHASE_LIMIT, _ERROR_LIMIT = 256, 64 * 1024
_PAGE_SIZES = (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512)
_WAL_MAGIC = (0x377F0682, 0x377F0683)
_TABLE_INTERIOR, _TABLE_LEAF, _INDEX_INTERIOR, _INDEX_LEAF = 5, 13, 2, 10


@attrs.define(kw_only=True)
class RecoveryReport:
    """What a recovery kept and lost.

    :ivar moved_to: where the damaged file now is.
    :ivar problem: what the check at open found.
    :ivar jobs_kept: jobs copied into the fresh database.
    :ivar checkpoints_kept: checkpoints copied into it.
    :ivar jobs_lost: ids of jobs the primary-key index still names that could not be read.
    :ivar checkpoints_lost: checkpoints that could not be read or whose job was lost.
    :ivar rows_unreadable: rows (jobs or checkpoints) known to exist, from an index or
        from their cell on a page, that could not be read or were not valid; the jobs of
        ``jobs_lost`` are among them.
    :ivar complete: True only when every page of the tables was read and no row known
        to exist was lost. False when a page of a table, of the schema, or of unknown
        use could not be read, or when the free-page list was unreadable (a deleted job
        may then have come back from a free page).
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
    """True if ``path`` has SQLite's header, or, with a damaged first page, the structure
    of an SQLite database: a whole number of pages of which some are intact b-tree
    pages. Random bytes, zeros or another program's file (a tar archive, say) are not,
    so that a configuration mistake never moves them aside. An empty file is an empty
    database."""
    try:
        size = path.stat().st_size
        with path.open("rb") as file:
            head = file.read(len(SQLITE_MAGIC))
            if size == 0 or head == SQLITE_MAGIC:
                return True
            if size < 512 or size % 512:
                return False
            file.seek(257)
            if file.read(5) == b"ustar":
                return False
            with mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _guess_page_size(data, size) is not None
    except (OSError, ValueError):
        return False


def probe(conn: sqlite3.Connection, level: str) -> str | None:
    """What is damaged in the database, or ``None`` when it reads clean.

    When damage is found, the file is kept from being changed by the connection's close:
    the last connection to close a WAL database checkpoints the ``-wal`` into the file
    and deletes it, which would write into the damaged file (with ``recover_corrupt``
    off too) and lose the ``-wal``. A read-only connection that lives as long as ``conn``
    makes ``conn`` not the last one; read-only, it never checkpoints itself.

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
            _hold_open(conn)
            return str(error)
        raise
    if rows == [("ok",)]:
        return None
    _hold_open(conn)
    return "; ".join(str(row[0]) for row in rows[:5])


def _hold_open(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error, ValueError, OSError):
        (file,) = (row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main")
        # An empty -wal holds nothing to lose: it is the check's own, made by opening the
        # file, and closing as usual removes it with the -shm.
        if not file or os.path.getsize(file + "-wal") == 0:
            return
        guard = sqlite3.connect(
            f"file:{urllib.parse.quote(file)}?mode=ro",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        # The read takes the shared lock that a WAL connection keeps while it is open.
        with contextlib.suppress(sqlite3.Error):
            guard.execute("PRAGMA user_version").fetchone()
        # sqlite3 connections sit in reference cycles: the guard closes when the
        # collector frees ``conn``, after ``conn`` itself was closed.
        weakref.finalize(conn, guard.close)


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


#: Where SQLite's unix VFS keeps the locks a writer needs (os_unix.c, wal.c): byte 120 of
#: the ``-shm`` is the WAL write lock and byte 121 the checkpoint lock; in the database file,
#: the 510 bytes from ``PENDING_BYTE + 2`` are the SHARED range, which a connection must hold
#: exclusively to commit in rollback-journal mode, or to checkpoint and delete the ``-wal``
#: when it closes last.
_SHM_WRITE_LOCK, _SHM_LOCKED_BYTES = 120, 2
_DB_SHARED_FIRST, _DB_SHARED_SIZE = 0x40000000 + 2, 510
_LOCK_POLL_SECONDS = 0.001
#: Descriptors that held recovery locks. Closing any descriptor of a file drops every POSIX
#: lock this process holds on it, those of its own SQLite connections included (a reader's
#: read mark, the -shm's dead-man switch): they are unlocked and kept open instead, one or
#: two per recovery, for the life of the process.
_PARKED: list[int] = []


@contextlib.contextmanager
def writers_held_off(path: Path, timeout: float) -> Iterator[None]:
    """Hold off every writer of the database at ``path`` (or at the target of a symlink
    there) for the duration of the block: a shared lock on the WAL's write and checkpoint
    bytes of its ``-shm``, and a shared lock on the SHARED range of the file itself.

    Recovery salvages the file while other processes may still have it open: a save they
    committed after the salvage read the file would be acknowledged and end up only in the
    file moved aside. With these locks held, their writes wait (and fail with the busy
    timeout if the recovery takes longer), and once the file is replaced the write that
    lands in the moved file raises, because the runner checks the file after every write.
    The same locks keep a checkpoint from rewriting the file's pages while the salvage reads
    them, and the last connection to close from checkpointing the ``-wal`` into the damaged
    file and deleting it; in rollback-journal mode (no ``-shm``) the file's lock alone keeps
    writers from committing.

    They are open-file-description locks where the system has them (Linux), which also hold
    off the writers of other stores in this process, and shared ones, so that read access to
    the ``-shm`` is enough.

    :raises StorageBusyError: a writer or a checkpoint held its lock for ``timeout`` seconds.
    :raises OSError: the file or its ``-shm`` exists but cannot be opened.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on POSIX
        yield
        return
    real = Path(os.path.realpath(path))
    ranges = [(real, _DB_SHARED_FIRST, _DB_SHARED_SIZE)]
    if os.path.exists(real.with_name(real.name + "-shm")):
        ranges.append((real.with_name(real.name + "-shm"), _SHM_WRITE_LOCK, _SHM_LOCKED_BYTES))
    ofd = getattr(fcntl, "F_OFD_SETLK", None)

    def request(fd: int, kind: int, start: int, length: int) -> bool:
        try:
            if ofd is None:  # pragma: no cover - a system without OFD locks
                flag = fcntl.LOCK_UN if kind == fcntl.F_UNLCK else fcntl.LOCK_SH | fcntl.LOCK_NB
                fcntl.lockf(fd, flag, length, start)
            else:
                # struct flock: l_type, l_whence, l_start, l_len, l_pid (0 for OFD locks).
                lock = struct.pack("hhqqi4x", kind, os.SEEK_SET, start, length, 0)
                fcntl.fcntl(fd, ofd, lock)
        except (BlockingIOError, PermissionError):
            return False  # EAGAIN or EACCES: another connection holds the byte exclusively
        return True

    held: list[tuple[int, int, int]] = []
    deadline = time.monotonic() + timeout
    try:
        for file, start, length in ranges:
            fd = os.open(file, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            _PARKED.append(fd)
            while not request(fd, fcntl.F_RDLCK, start, length):
                if time.monotonic() >= deadline:
                    raise StorageBusyError(
                        f"cannot recover the damaged {path}: a writer or a checkpoint (of "
                        f"another process or of another store of this one) kept its lock for "
                        f"{timeout * 1000:.0f} ms (busy_timeout_ms); the next open tries again"
                    )
                time.sleep(_LOCK_POLL_SECONDS)
            held.append((fd, start, length))
        yield
    finally:
        for fd, start, length in held:
            request(fd, fcntl.F_UNLCK, start, length)


def file_identity(path: Path) -> tuple[int, int] | None:
    """The (device, inode) of the file at ``path``, or ``None`` if there is none."""
    try:
        stat_result = os.stat(path)
    except OSError:
        return None
    return (stat_result.st_dev, stat_result.st_ino)


def create_like(path: Path, original: Path | None) -> None:
    """Create the empty file ``path`` with the mode and owner of ``original`` (owner-only,
    :data:`NEW_DATABASE_MODE`, when there is no original), before anything is written
    into it, so that its data is never readable by more users than the original's.

    SQLite gives a database's ``-wal``, ``-shm`` and ``-journal`` the database file's
    mode, and when it runs as root also its owner, so they follow.

    :raises FileExistsError: ``path`` exists.
    :raises OSError: the file could not be created.
    """
    like = None if original is None else os.stat(original)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_DATABASE_MODE)
    try:
        if like is None:
            # The umask may only have narrowed it.
            os.fchmod(fd, NEW_DATABASE_MODE)
        # What the file got, not the process's ids: a setgid folder gives its own group.
        elif (like.st_uid, like.st_gid) != (os.fstat(fd).st_uid, os.fstat(fd).st_gid):
            try:
                os.fchown(fd, like.st_uid, like.st_gid)
            except PermissionError:
                # Only root gives a file away; a service user recovering its own file
                # (in a folder it shares) keeps it as its own.
                logger.warning(
                    "%s could not be given the owner %d:%d of %s; it is owned by %d:%d",
                    path,
                    like.st_uid,
                    like.st_gid,
                    original,
                    os.geteuid(),
                    os.getegid(),
                )
        if like is not None:
            os.fchmod(fd, stat.S_IMODE(like.st_mode))
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.remove(path)
        raise
    os.close(fd)


def recover(path: Path, problem: str) -> RecoveryReport:
    """Move the damaged database at ``path`` (or at the target of a symlink there) aside
    with its ``-wal``/``-shm``, and put a fresh one with every readable job and checkpoint
    and the damaged file's mode and owner in its place; log at ERROR what was kept and
    lost.

    :raises OSError: the files could not be read, created or renamed.
    :raises sqlite3.Error: the fresh database could not be written.
    """
    # The link stays; the database it names is recovered in its own folder.
    path = Path(os.path.realpath(path))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    counter = 1
    while any(
        os.path.lexists(aside.with_name(aside.name + suffix))
        for suffix in ("", *COMPANION_SUFFIXES)
    ):
        aside = path.with_name(f"{path.name}.corrupt-{stamp}-{counter}")
        counter += 1
    report = RecoveryReport(moved_to=aside, problem=problem)
    jobs, checkpoints = _salvage(path, report)
    fresh = path.with_name(f"{path.name}.recovering-{os.getpid()}")
    _remove_database(fresh)
    try:
        create_like(fresh, path)
        _write_fresh(fresh, jobs, checkpoints)
        os.replace(path, aside)
        for suffix in COMPANION_SUFFIXES:
            companion = path.with_name(path.name + suffix)
            if os.path.lexists(companion):
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
        "checkpoints. Lost %d jobs known by id%s, %d checkpoints, and %d unreadable "
        "rows%s. Restore what you need from a backup; delete %s once you no longer "
        "need it.",
        path,
        report.problem,
        report.moved_to,
        report.jobs_kept,
        report.checkpoints_kept,
        lost,
        f" ({shown}{more})" if lost else "",
        report.checkpoints_lost,
        report.rows_unreadable,
        ""
        if report.complete
        else " (incomplete: some pages could not be read, so more may be lost than counted)",
        report.moved_to,
    )


# -- reading the file ---------------------------------------------------------------------------


class _Unreadable(Exception):
    """A page or a record that does not parse: damage."""


def _varint(data: bytes | mmap.mmap, pos: int, end: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if pos + i >= end:
            raise _Unreadable
        byte = data[pos + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, pos + i + 1
    if pos + 8 >= end:
        raise _Unreadable
    return (value << 8) | data[pos + 8], pos + 9


def _decode_record(payload: bytes, widths: tuple[int, ...] = ()) -> list[Any] | None:
    """The values of a record (https://sqlite.org/fileformat.html#record_format); ``None``
    if ``widths`` are given and the record has another number of columns."""
    end = len(payload)
    header_size, pos = _varint(payload, 0, end)
    if header_size > end or header_size < pos:
        raise _Unreadable
    types = []
    while pos < header_size:
        serial, pos = _varint(payload, pos, header_size)
        types.append(serial)
    if pos != header_size:
        raise _Unreadable
    if widths and len(types) not in widths:
        return None
    values: list[Any] = []
    body = header_size
    for serial in types:
        if serial == 0:
            values.append(None)
            continue
        if serial in (8, 9):
            values.append(serial - 8)
            continue
        if serial in (10, 11):
            raise _Unreadable
        if serial <= 6:
            size = (0, 1, 2, 3, 4, 6, 8)[serial]
        elif serial == 7:
            size = 8
        else:
            size = (serial - 12) // 2
        if body + size > end:
            raise _Unreadable
        chunk = payload[body : body + size]
        body += size
        if serial <= 6:
            values.append(int.from_bytes(chunk, "big", signed=True))
        elif serial == 7:
            values.append(struct.unpack(">d", chunk)[0])
        elif serial % 2:
            try:
                values.append(chunk.decode("utf-8"))
            except UnicodeDecodeError:
                raise _Unreadable from None
        else:
            values.append(bytes(chunk))
    if body != end:
        raise _Unreadable
    return values


class _Image:
    """The pages of a database file with the committed frames of its ``-wal`` applied,
    read as plain bytes (SQLite never opens the file for this)."""

    def __init__(self, data: mmap.mmap | bytes, size: int, wal: bytes | None) -> None:
        self.data = data
        self.header_ok = data[: len(SQLITE_MAGIC)] == SQLITE_MAGIC
        self.frames: dict[int, int] = {}
        self.wal = wal or b""
        wal_size, wal_pages = self._read_wal()
        page_size = self._header_page_size() or wal_size or _guess_page_size(data, size)
        if page_size is None:
            raise _Unreadable
        self.page_size = page_size
        # A commit records the database's size: pages past it are left over.
        self.pages = wal_pages or size // page_size
        reserved = data[20] if self.header_ok and size > 20 else 0
        self.usable = page_size - reserved
        if self.frames and 1 in self.frames:
            first = self.page(1)
            self.header_ok = first[: len(SQLITE_MAGIC)] == SQLITE_MAGIC
        self.auto_vacuum = self.header_ok and self.page(1)[52:56] != bytes(4)
        # The page of the byte-range locks is never used (files over 1 GiB).
        self.lock_page = 1 + (1 << 30) // page_size

    def _header_page_size(self) -> int | None:
        if not self.header_ok or len(self.data) < 100:
            return None
        value = int.from_bytes(self.data[16:18], "big")
        value = 65536 if value == 1 else value
        return value if value in _PAGE_SIZES else None

    def _read_wal(self) -> tuple[int | None, int]:
        """Index the committed frames of the WAL (https://sqlite.org/fileformat.html#the_write_ahead_log):
        frames are valid while their salts match the header and their running checksum
        holds; only those up to the last commit frame count."""
        wal = self.wal
        if len(wal) < 32:
            return None, 0
        magic, _version, page_size, _seq, salt1, salt2 = struct.unpack(">6I", wal[:24])
        if magic not in _WAL_MAGIC or page_size not in _PAGE_SIZES:
            return None, 0
        order = ">" if magic & 1 else "<"
        sums = _wal_checksum(wal[:24], order, (0, 0))
        if sums != struct.unpack(">2I", wal[24:32]):
            return None, 0
        frame_size = 24 + page_size
        committed: dict[int, int] = {}
        pending: dict[int, int] = {}
        pages = 0
        offset = 32
        while offset + frame_size <= len(wal):
            pgno, commit, fsalt1, fsalt2, sum1, sum2 = struct.unpack(
                ">6I", wal[offset : offset + 24]
            )
            if (fsalt1, fsalt2) != (salt1, salt2) or pgno == 0:
                break
            sums = _wal_checksum(wal[offset : offset + 8], order, sums)
            sums = _wal_checksum(wal[offset + 24 : offset + frame_size], order, sums)
            if sums != (sum1, sum2):
                break
            pending[pgno] = offset + 24
            if commit:
                committed.update(pending)
                pending.clear()
                pages = commit
            offset += frame_size
        self.frames = committed
        return (page_size if committed else None), pages

    def page(self, pgno: int) -> bytes:
        """The bytes of page ``pgno`` (1-based) as the last commit left it."""
        size = self.page_size
        if not 1 <= pgno <= self.pages:
            raise _Unreadable
        frame = self.frames.get(pgno)
        if frame is not None:
            return self.wal[frame : frame + size]
        start = (pgno - 1) * size
        chunk = self.data[start : start + size]
        if len(chunk) != size:
            raise _Unreadable
        return bytes(chunk)


def _wal_checksum(data: bytes, order: str, sums: tuple[int, int]) -> tuple[int, int]:
    words = struct.unpack(f"{order}{len(data) // 4}I", data)
    s1, s2 = sums
    for i in range(0, len(words), 2):
        s1 = (s1 + words[i] + s2) & 0xFFFFFFFF
        s2 = (s2 + words[i + 1] + s1) & 0xFFFFFFFF
    return s1, s2


def _guess_page_size(data: mmap.mmap | bytes, size: int) -> int | None:
    """The page size under which the file has the most intact b-tree pages, for a file
    whose header is damaged; ``None`` if it has none (it is not an SQLite database)."""
    best: tuple[int, int] | None = None
    for page_size in _PAGE_SIZES:
        if size % page_size or size < page_size:
            continue
        # A sample is enough to tell: the first 300 pages and the last ones.
        count = size // page_size
        sample = [*range(2, min(count, 300) + 1), *range(max(301, count - 100), count + 1)]
        found = 0
        for pgno in sample:
            start = (pgno - 1) * page_size
            page = bytes(data[start : start + page_size])
            with contextlib.suppress(_Unreadable):
                _strict_page(page, 0, page_size, page_size)
                found += 1
        if found and (best is None or found > best[1]):
            best = (page_size, found)
    return None if best is None else best[0]


def _strict_page(page: bytes, offset: int, usable: int, page_size: int) -> None:
    """Accept only a b-tree page whose every cell parses (random bytes practically never
    do), for telling a database with a damaged header from another program's file."""
    kind, cells, _right = _btree(page, offset, usable)
    if not cells:
        raise _Unreadable
    for cell in cells:
        if kind == _TABLE_LEAF:
            size, pos = _varint(page, cell, usable)
            _rowid, pos = _varint(page, pos, usable)
            if size <= usable - 35:
                _decode_record(page[pos : pos + size])
            elif pos + 4 > usable:
                raise _Unreadable
        elif kind == _TABLE_INTERIOR:
            if cell + 4 > usable or int.from_bytes(page[cell : cell + 4], "big") == 0:
                raise _Unreadable
            _varint(page, cell + 4, usable)
        else:
            pos = cell + (4 if kind == _INDEX_INTERIOR else 0)
            size, pos = _varint(page, pos, usable)
            if size <= ((usable - 12) * 64 // 255) - 23:
                _decode_record(page[pos : pos + size])


def _btree(page: bytes, offset: int, usable: int) -> tuple[int, list[int], int]:
    """The kind, cell offsets and right-most child of a b-tree page, checked as SQLite
    checks them when it loads a page."""
    if offset + 8 > usable:
        raise _Unreadable
    kind = page[offset]
    if kind not in (_TABLE_INTERIOR, _TABLE_LEAF, _INDEX_INTERIOR, _INDEX_LEAF):
        raise _Unreadable
    count = int.from_bytes(page[offset + 3 : offset + 5], "big")
    content = int.from_bytes(page[offset + 5 : offset + 7], "big") or 65536
    interior = kind in (_TABLE_INTERIOR, _INDEX_INTERIOR)
    header = offset + (12 if interior else 8)
    first_cell = header + 2 * count
    if first_cell > usable or content > usable or (count and content < first_cell):
        raise _Unreadable
    right = int.from_bytes(page[offset + 8 : offset + 12], "big") if interior else 0
    if interior and right == 0:
        raise _Unreadable
    cells = []
    for i in range(count):
        cell = int.from_bytes(page[header + 2 * i : header + 2 * i + 2], "big")
        if cell < first_cell or cell > usable - 4:
            raise _Unreadable
        cells.append(cell)
    return kind, cells, right


@attrs.define
class _Scan:
    """What a pass over the file found."""

    image: _Image
    #: page number -> the b-tree (table or index name) a walk from a root found it in.
    owner: dict[int, str] = attrs.Factory(dict)
    overflow: set[int] = attrs.Factory(set)
    free: set[int] = attrs.Factory(set)
    free_known: bool = True
    damaged: dict[int, str | None] = attrs.Factory(dict)
    #: table name -> rowid -> the record's values.
    rows: dict[str, dict[int, list[Any]]] = attrs.Factory(dict)
    #: rows whose cell was found but not its whole payload (damaged overflow chain).
    broken_rows: dict[str, set[int]] = attrs.Factory(dict)
    #: index name -> its keys.
    keys: dict[str, list[list[Any]]] = attrs.Factory(dict)

    def payload(self, page: bytes, pos: int, size: int, local_max: int) -> bytes:
        usable = self.image.usable
        if size <= local_max:
            if pos + size > usable:
                raise _Unreadable
            return page[pos : pos + size]
        least = ((usable - 12) * 32 // 255) - 23
        local = least + (size - least) % (usable - 4)
        if local > local_max:
            local = least
        if pos + local + 4 > usable:
            raise _Unreadable
        parts = [page[pos : pos + local]]
        have = local
        nxt = int.from_bytes(page[pos + local : pos + local + 4], "big")
        seen: set[int] = set()
        while have < size:
            if nxt in seen or nxt in self.free:
                raise _Unreadable
            seen.add(nxt)
            chunk = self.image.page(nxt)
            self.overflow.add(nxt)
            take = min(size - have, usable - 4)
            parts.append(chunk[4 : 4 + take])
            have += take
            nxt = int.from_bytes(chunk[:4], "big")
        return b"".join(parts)

    def read_page(self, pgno: int, tree: str | None) -> tuple[int, list[int]]:
        """Parse one b-tree page, keeping its rows or keys; its children's page numbers."""
        image = self.image
        page = image.page(pgno)
        usable = image.usable
        kind, cells, right = _btree(page, 100 if pgno == 1 else 0, usable)
        children = []
        for cell in cells:
            if kind == _TABLE_INTERIOR:
                children.append(int.from_bytes(page[cell : cell + 4], "big"))
            elif kind == _TABLE_LEAF:
                self._table_cell(page, cell, tree)
            else:
                pos = cell
                if kind == _INDEX_INTERIOR:
                    children.append(int.from_bytes(page[cell : cell + 4], "big"))
                    pos += 4
                if tree == _OTHER:
                    continue
                with contextlib.suppress(_Unreadable):
                    size, pos = _varint(page, pos, usable)
                    local_max = ((usable - 12) * 64 // 255) - 23
                    # Of a page no walk placed, only the keys of the primary keys matter.
                    key = _decode_record(
                        self.payload(page, pos, size, local_max), () if tree else (2, 3)
                    )
                    name = _OTHER if key is None else tree or _key_shape(key)
                    if key is not None and name != _OTHER:
                        self.keys.setdefault(name, []).append(key)
        if right:
            children.append(right)
        return kind, children

    def _table_cell(self, page: bytes, cell: int, tree: str | None) -> None:
        usable = self.image.usable
        size, pos = _varint(page, cell, usable)
        rowid, pos = _varint(page, pos, usable)
        try:
            values = _decode_record(self.payload(page, pos, size, usable - 35))
        except _Unreadable:
            if tree is not None:
                self.broken_rows.setdefault(tree, set()).add(rowid)
            return
        if values is None:  # pragma: no cover - no widths were asked for
            return
        table = tree if tree is not None else _row_shape(values)
        if table is not None and table != _OTHER:
            self.rows.setdefault(table, {}).setdefault(rowid, values)

    def walk(self, root: int, tree: str, *, table: bool) -> None:
        """Every page of one b-tree that can be reached from its root."""
        pending = [root]
        kinds = (_TABLE_INTERIOR, _TABLE_LEAF) if table else (_INDEX_INTERIOR, _INDEX_LEAF)
        while pending:
            pgno = pending.pop()
            if pgno in self.owner or pgno in self.damaged:
                continue
            try:
                kind, children = self.read_page(pgno, tree)
                if kind not in kinds:
                    raise _Unreadable
            except _Unreadable:
                self.damaged[pgno] = tree
                continue
            self.owner[pgno] = tree
            pending.extend(children)

    def read_free_list(self) -> None:
        data = self.image.page(1)
        trunk = int.from_bytes(data[32:36], "big")
        expected = int.from_bytes(data[36:40], "big")
        seen: set[int] = set()
        while trunk:
            if trunk in seen or not 1 < trunk <= self.image.pages:
                self.free_known = False
                return
            seen.add(trunk)
            page = self.image.page(trunk)
            count = int.from_bytes(page[4:8], "big")
            if count > self.image.usable // 4 - 2:
                self.free_known = False
                return
            self.free.add(trunk)
            for i in range(count):
                self.free.add(int.from_bytes(page[8 + 4 * i : 12 + 4 * i], "big"))
            trunk = int.from_bytes(page[:4], "big")
        if len(self.free) != expected:
            self.free_known = False


def _row_shape(values: list[Any]) -> str | None:
    """The table a row found on a page no walk reached belongs to, by its columns."""
    if len(values) in _JOB_WIDTHS and isinstance(values[0], str):
        return _JOBS
    if len(values) == _CHECKPOINT_WIDTH and isinstance(values[0], str):
        return _CHECKPOINTS
    return None


def _key_shape(key: list[Any]) -> str:
    """The primary-key index a key found on a page no walk reached belongs to."""
    if len(key) == 2 and isinstance(key[0], str) and isinstance(key[1], int):
        return _JOBS_KEY
    if len(key) == 3 and isinstance(key[0], str) and isinstance(key[1], str):
        return _CHECKPOINTS_KEY
    return _OTHER


def _scan(image: _Image) -> tuple[_Scan, bool]:
    """Read every table row and primary key on an intact page; whether the schema was
    read whole."""
    scan = _Scan(image)
    roots: dict[str, tuple[int, bool]] = {}
    schema_whole = image.header_ok
    if image.header_ok:
        scan.walk(1, _MASTER, table=True)
        schema_whole = not scan.damaged
        for values in scan.rows.pop(_MASTER, {}).values():
            # type, name, tbl_name, rootpage, sql
            if (
                len(values) == 5
                and values[0] in ("table", "index")
                and isinstance(values[1], str)
                and isinstance(values[3], int)
                and values[3] > 0
            ):
                roots[values[1]] = (values[3], values[0] == "table")
        try:
            scan.read_free_list()
        except _Unreadable:
            scan.free_known = False
    else:
        scan.free_known = False
    for name in (_JOBS, _CHECKPOINTS, _JOBS_KEY, _CHECKPOINTS_KEY):
        if name in roots:
            root, table = roots[name]
            scan.walk(root, name, table=table)
    for root, table in roots.values():
        scan.walk(root, _OTHER if not table else _OTHER_TABLE, table=table)
    scan.rows.pop(_OTHER_TABLE, None)
    _read_orphans(scan, roots)
    return scan, schema_whole


def _read_orphans(scan: _Scan, roots: dict[str, tuple[int, bool]]) -> None:
    """Read the pages no walk reached: those under a damaged interior page or root, or all
    of them when the schema was unreadable.

    Pages on the free list hold deleted rows (``secure_delete=FAST`` leaves them), which
    must not come back. When the free list was unreadable, its trunk pages are recognised
    by their shape; and a primary-key index read whole from its root names every live row
    of its table, so a row it does not name is a deleted one.
    """
    image = scan.image
    found: dict[int, _Scan] = {}
    for pgno in range(2, image.pages + 1):
        if pgno in scan.owner or pgno in scan.free or pgno == image.lock_page:
            continue
        if pgno in scan.damaged or pgno in scan.overflow:
            continue
        page_scan = _Scan(image, free=scan.free)
        with contextlib.suppress(_Unreadable):
            page_scan.read_page(pgno, None)
            found[pgno] = page_scan
    overflow = set().union(*(page_scan.overflow for page_scan in found.values()))
    if not scan.free_known:
        for pgno in range(2, image.pages + 1):
            if pgno in scan.owner or pgno in scan.damaged or pgno in found:
                continue
            if pgno in scan.overflow or pgno in overflow or pgno == image.lock_page:
                continue
            leaves = _trunk_leaves(image, image.page(pgno))
            if leaves is not None:
                scan.free.add(pgno)
                scan.free.update(leaves)
    whole = {
        name: name in roots and name not in scan.damaged.values()
        for name in (_JOBS_KEY, _CHECKPOINTS_KEY)
    }
    live: dict[str, set[tuple[Any, ...]]] = {
        _JOBS: {(key[0], key[-1]) for key in scan.keys.get(_JOBS_KEY, [])},
        _CHECKPOINTS: {(key[0], key[1], key[-1]) for key in scan.keys.get(_CHECKPOINTS_KEY, [])},
    }
    for pgno, page_scan in found.items():
        if pgno in scan.free:
            continue
        scan.owner[pgno] = "orphan"
        scan.overflow |= page_scan.overflow
        for table, rows in page_scan.rows.items():
            key_name = _JOBS_KEY if table == _JOBS else _CHECKPOINTS_KEY
            for rowid, values in rows.items():
                if whole[key_name]:
                    key = (values[0], rowid) if table == _JOBS else (*values[:2], rowid)
                    if key not in live[table]:
                        continue
                scan.rows.setdefault(table, {}).setdefault(rowid, values)
        for name, keys in page_scan.keys.items():
            # A whole index has every key already; other copies are stale.
            if not whole.get(name, True):
                scan.keys.setdefault(name, []).extend(keys)


def _trunk_leaves(image: _Image, page: bytes) -> list[int] | None:
    """The free pages a page lists if it has the shape of a free-list trunk page."""
    following = int.from_bytes(page[:4], "big")
    count = int.from_bytes(page[4:8], "big")
    if following > image.pages or following == 1 or count > image.usable // 4 - 2:
        return None
    leaves = [int.from_bytes(page[8 + 4 * i : 12 + 4 * i], "big") for i in range(count)]
    if any(not 1 < leaf <= image.pages for leaf in leaves):
        return None
    return leaves


def _salvage(
    path: Path, report: RecoveryReport
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Read every readable job and checkpoint of the damaged database, validated."""
    wal_path = path.with_name(path.name + "-wal")
    try:
        wal = wal_path.read_bytes()
    except FileNotFoundError:
        wal = None
    with path.open("rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            data: mmap.mmap | bytes = b""
        else:
            data = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            image = _Image(data, size, wal)
            scan, schema_whole = _scan(image)
            rows = _collect(scan, schema_whole, report)
        except _Unreadable:
            report.complete = False
            return [], []
        finally:
            if isinstance(data, mmap.mmap):
                data.close()
    return rows


def _collect(
    scan: _Scan, schema_whole: bool, report: RecoveryReport
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    jobs: list[tuple[Any, ...]] = []
    kept_ids: set[str] = set()
    unreadable = 0
    job_rows = scan.rows.get(_JOBS, {})
    for values in job_rows.values():
        params = _valid_job(values)
        if params is None:
            unreadable += 1
        elif params[0] not in kept_ids:
            kept_ids.add(params[0])
            jobs.append(params)
    job_keys = scan.keys.get(_JOBS_KEY, [])
    known_ids = {key[0] for key in job_keys if isinstance(key[0], str)}
    report.jobs_lost = sorted(known_ids - kept_ids)
    # Rows an index names (by rowid) that were never found, or found without their payload.
    found_rowids = set(job_rows)
    missing = {key[-1] for key in job_keys if isinstance(key[-1], int)} - found_rowids
    unreadable += len(missing | scan.broken_rows.get(_JOBS, set()) - found_rowids)

    checkpoints: list[tuple[Any, ...]] = []
    seen: set[tuple[str, str]] = set()
    dropped = 0
    checkpoint_rows = scan.rows.get(_CHECKPOINTS, {})
    for values in checkpoint_rows.values():
        params = _valid_checkpoint(values)
        if params is None:
            unreadable += 1
            dropped += 1
        elif params[0] not in kept_ids or params[:2] in seen:
            dropped += 1
        else:
            seen.add((params[0], params[1]))
            checkpoints.append(params)
    checkpoint_keys = scan.keys.get(_CHECKPOINTS_KEY, [])
    found_rowids = set(checkpoint_rows)
    missing = {key[-1] for key in checkpoint_keys if isinstance(key[-1], int)} - found_rowids
    missing |= scan.broken_rows.get(_CHECKPOINTS, set()) - found_rowids
    unreadable += len(missing)
    report.checkpoints_lost = dropped + len(missing)
    report.rows_unreadable = unreadable
    report.jobs_kept = len(jobs)
    report.checkpoints_kept = len(checkpoints)
    # A damaged page is harmless only when a walk from an index's root showed it is an
    # index page: a table page, a schema page, or a page nobody could place may have held
    # rows no index names.
    unplaced = [
        pgno
        for pgno in range(2, scan.image.pages + 1)
        if pgno not in scan.owner
        and pgno not in scan.damaged
        and pgno not in scan.free
        and pgno not in scan.overflow
        and pgno != scan.image.lock_page
        and not _is_pointer_map(scan.image, pgno)
    ]
    harmless = {_OTHER, _JOBS_KEY, _CHECKPOINTS_KEY}
    table_damage = [pgno for pgno, tree in scan.damaged.items() if tree not in harmless]
    report.complete = (
        schema_whole
        and scan.free_known
        and not table_damage
        and not unplaced
        and not report.jobs_lost
        and not unreadable
        and not report.checkpoints_lost
    )
    return jobs, checkpoints


def _is_pointer_map(image: _Image, pgno: int) -> bool:
    # Only auto-vacuum files have them (this backend never turns it on).
    return image.auto_vacuum and (pgno - 2) % (image.usable // 5 + 1) == 0


def _valid_job(row: list[Any]) -> tuple[Any, ...] | None:
    """The INSERT parameters of a salvaged job row, or ``None`` if the row is garbage."""
    try:
        # A row from before schema version 2 has no lease columns: they read as NULL. The
        # lease token is dropped: the salvaged job keeps its owner, whose fenced writes are
        # refused from now on (the safe side after damage) until it claims the job again.
        row = row[: len(_codec.JOB_COLUMNS)]
        padded = [*row, *[None] * (len(_codec.JOB_COLUMNS) - len(row))]
        values = dict(zip(_codec.JOB_COLUMNS, padded, strict=True))
        for name in ("created_at", "started_at", "completed_at", "heartbeat_at"):
            value = values[name]
            if value is not None and type(value) is not int:
                return None
        metadata_json = values["metadata"]
        if not isinstance(metadata_json, str):
            return None
        # Rows written before core limited these two were stored whole: such a job is kept,
        # with the text cut at today's limit (the moved-aside file keeps it whole).
        phase, error = values["phase"], values["error_message"]
        if isinstance(phase, str) and len(phase) > _PHASE_LIMIT:
            values["phase"] = phase[:_PHASE_LIMIT]
        if isinstance(error, str) and len(error.encode("utf-8", "replace")) > _ERROR_LIMIT:
            values["error_message"] = error.encode("utf-8", "replace")[:_ERROR_LIMIT].decode(
                "utf-8", "ignore"
            )
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
    except (CidxJobsError, ValueError, TypeError, OverflowError, KeyError, RecursionError):
        return None


def _valid_checkpoint(row: list[Any]) -> tuple[Any, ...] | None:
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
    except (CidxJobsError, ValueError, TypeError, OverflowError, RecursionError):
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
