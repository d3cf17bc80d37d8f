"""Turning sqlite3's exceptions into cidx-jobs errors an operator can act on.

The kind of a failure is SQLite's result code, which Python 3.11 and later attach to
every exception SQLite raised (``sqlite_errorcode``, ``sqlite_errorname``). Python 3.10
attaches nothing; there, and only there, the code is recovered from the message, which
is SQLite's own text for the code (``sqlite3_errstr``).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import sys
from pathlib import Path

from cidx_jobs.errors import (
    StorageBusyError,
    StorageCorruptError,
    StorageError,
    StorageFullError,
    StoragePermissionError,
    StorageUnavailableError,
)

# SQLite's primary result codes (https://sqlite.org/rescode.html).
PERM = 3
BUSY = 5
LOCKED = 6
NOMEM = 7
READONLY = 8
IOERR = 10
CORRUPT = 11
FULL = 13
CANTOPEN = 14
PROTOCOL = 15
CONSTRAINT = 19
NOTADB = 26
# Extended codes of the constraints the primitives tell apart.
CONSTRAINT_FOREIGNKEY = 787
#: SQLite could not grow the ``-shm`` file: the disk is full (posix_fallocate failed).
IOERR_SHMSIZE = 4874
CONSTRAINT_PRIMARYKEY = 1555
CONSTRAINT_UNIQUE = 2067

#: Each primary code this backend handles: its name and SQLite's message for it.
CODES: dict[int, tuple[str, str]] = {
    PERM: ("SQLITE_PERM", "access permission denied"),
    BUSY: ("SQLITE_BUSY", "database is locked"),
    LOCKED: ("SQLITE_LOCKED", "database table is locked"),
    NOMEM: ("SQLITE_NOMEM", "out of memory"),
    READONLY: ("SQLITE_READONLY", "attempt to write a readonly database"),
    IOERR: ("SQLITE_IOERR", "disk I/O error"),
    CORRUPT: ("SQLITE_CORRUPT", "database disk image is malformed"),
    FULL: ("SQLITE_FULL", "database or disk is full"),
    CANTOPEN: ("SQLITE_CANTOPEN", "unable to open database file"),
    PROTOCOL: ("SQLITE_PROTOCOL", "locking protocol"),
    CONSTRAINT: ("SQLITE_CONSTRAINT", "constraint failed"),
    NOTADB: ("SQLITE_NOTADB", "file is not a database"),
}

#: Whether exceptions carry no code, so that it must be read from the message (3.10).
MESSAGE_FALLBACK = sys.version_info < (3, 11)

# The messages of the 3.10 fallback, most specific first ("database schema is locked"
# is SQLITE_LOCKED's other text).
_MESSAGES = (
    ("database is locked", BUSY),
    ("database is busy", BUSY),
    ("database table is locked", LOCKED),
    ("database schema is locked", LOCKED),
    ("attempt to write a readonly database", READONLY),
    ("disk i/o error", IOERR),
    ("database disk image is malformed", CORRUPT),
    ("malformed database schema", CORRUPT),
    ("database or disk is full", FULL),
    ("unable to open database file", CANTOPEN),
    ("file is not a database", NOTADB),
    ("access permission denied", PERM),
    ("constraint failed", CONSTRAINT),
    ("locking protocol", PROTOCOL),
    ("out of memory", NOMEM),
)

#: Codes after which a connection is not trusted any more and is closed.
BROKEN = frozenset({IOERR, CORRUPT, NOTADB, CANTOPEN, PROTOCOL, NOMEM})
RETRYABLE = frozenset({BUSY, LOCKED})
#: Codes that mean the file is damaged.
DAMAGE = frozenset({CORRUPT, NOTADB})

#: Below this much free space (bytes) on the database's file system, an I/O error or a
#: file SQLite cannot create is reported as a full disk: a new ``-shm`` takes 32 KiB, the
#: first WAL frames about as much.
LOW_SPACE = 64 * 1024
#: What sqlite3 itself says (no SQLite code) for stored text that is not valid UTF-8; the
#: same text from Python 3.10 to 3.13.
_UNDECODABLE = "could not decode to utf-8 column '"

# Set on an exception that stands for a lock wait that already ran out (an injected
# LOCK_TIMEOUT): it is translated like any SQLITE_BUSY, but never retried.
_EXHAUSTED = "cidx_jobs_busy_timeout_exhausted"


def extended_code(error: BaseException) -> int:
    """SQLite's extended result code of ``error``, or 0 when it is unknown."""
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code
    if not MESSAGE_FALLBACK:
        return 0
    message = str(error).lower()
    for text, value in _MESSAGES:
        if text in message:
            if value == CONSTRAINT:
                if "foreign key" in message:
                    return CONSTRAINT_FOREIGNKEY
                if "unique" in message or "primary key" in message:
                    return CONSTRAINT_UNIQUE
            return value
    return 0


def error_code(error: BaseException) -> int:
    """SQLite's primary result code of ``error``, or 0 when it is unknown."""
    return extended_code(error) & 0xFF


def error_name(error: BaseException) -> str | None:
    """SQLite's name of the code of ``error`` (``SQLITE_BUSY``), or ``None`` if unknown."""
    name = getattr(error, "sqlite_errorname", None)
    if isinstance(name, str):
        return name
    known = CODES.get(error_code(error))
    return None if known is None else known[0]


def is_busy(error: BaseException) -> bool:
    """True for SQLITE_BUSY and SQLITE_LOCKED: another connection holds a lock."""
    return error_code(error) in RETRYABLE


def is_retryable(error: BaseException) -> bool:
    """True when waiting and running the statement again may succeed (busy, not yet timed out)."""
    return error_code(error) in RETRYABLE and not getattr(error, _EXHAUSTED, False)


def driver_error(code: int, *, timed_out: bool = False) -> sqlite3.Error:
    """The exception sqlite3 raises for the primary result ``code``, with its code and name.

    :param timed_out: for SQLITE_BUSY: the lock wait already took the whole busy timeout,
        so the statement is not retried.
    """
    name, message = CODES[code]
    kind: type[sqlite3.Error]
    if code in DAMAGE:
        kind = sqlite3.DatabaseError
    elif code == CONSTRAINT:
        kind = sqlite3.IntegrityError
    else:
        kind = sqlite3.OperationalError
    error = kind(message)
    error.sqlite_errorcode = code  # type: ignore[attr-defined,unused-ignore]
    error.sqlite_errorname = name  # type: ignore[attr-defined,unused-ignore]
    if timed_out:
        setattr(error, _EXHAUSTED, True)
    return error


class ConstraintError(StorageError):
    """A statement broke a constraint; the primitive that ran it decides what that means.

    :ivar kind: ``"unique"`` (a primary key or unique index), ``"foreign_key"`` or ``"other"``.
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class UnreadableTextError(StorageCorruptError):
    """A stored row holds text that is not valid UTF-8 (edited outside cidx-jobs, or
    damaged), so sqlite3 cannot read it; the storage names the row where it knows it.

    :ivar column: the column holding the text.
    :ivar job_ids: the jobs whose rows hold it, where the storage could tell.
    """

    def __init__(self, message: str, column: str, job_ids: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.column = column
        self.job_ids = job_ids


def undecodable_column(error: BaseException) -> str | None:
    """The column whose stored text is not valid UTF-8, if ``error`` is sqlite3's
    refusal to read it (``Could not decode to UTF-8 column 'phase' with text ...``)."""
    if not isinstance(error, sqlite3.OperationalError):
        return None
    message = str(error)
    start = message.lower().find(_UNDECODABLE)
    if start < 0:
        return None
    start += len(_UNDECODABLE)
    end = message.find("'", start)
    return message[start:end] if end > start else "?"


def _existing_folder(path: Path) -> Path:
    """The nearest folder of ``path`` (its own folder, or an ancestor) that exists."""
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing


def read_only_mount(path: Path) -> Path | None:
    """The folder of ``path`` (or its nearest existing ancestor) if it is on a file system
    mounted read-only, else ``None`` (also where that cannot be told)."""
    folder = _existing_folder(path)
    try:
        flags = os.statvfs(folder).f_flag
    except (OSError, AttributeError):  # no statvfs (Windows), or the folder went away
        return None
    return folder if flags & getattr(os, "ST_RDONLY", 1) else None


def disk_full(path: Path) -> bool:
    """Whether the file system of ``path`` has less than :data:`LOW_SPACE` bytes or no
    inode left for this process (False where that cannot be told)."""
    try:
        stat = os.statvfs(_existing_folder(path))
    except (OSError, AttributeError):
        return False
    no_inodes = stat.f_files > 0 and stat.f_favail == 0
    return no_inodes or stat.f_bavail * stat.f_frsize < LOW_SPACE


def _full_message(path: Path, doing: str) -> str:
    return (
        f"the disk holding {path} is full while {doing}: SQLite could not create or grow the "
        f"database's files ({path.name}, {path.name}-wal, {path.name}-shm); nothing was "
        "written and earlier data is intact. Free disk space (or inodes: `df -h`, `df -i`), "
        "then retry"
    )


def folder_error(path: Path, error: OSError) -> StorageError:
    """The cidx-jobs error for ``error``, raised while creating a folder of ``path``.

    :param path: the database file whose folder was being created.
    """
    folder = path.parent
    if error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return StorageFullError(
            f"cannot create the folder {folder} for the job database: no space (or no "
            f"inode) is left on the disk ({error.strerror}). No folder was left behind; free "
            "disk space or inodes (`df -h`, `df -i`), then retry"
        )
    if isinstance(error, PermissionError) or error.errno == errno.EROFS:
        problem = permission_problem(path)
        return StoragePermissionError(
            problem or f"cannot create the folder {folder}: {error.strerror or error}"
        )
    if isinstance(error, (FileExistsError, NotADirectoryError)):
        return StorageUnavailableError(
            f"cannot create the folder {folder} for the job database: {error.filename} is a "
            "file, not a folder; move it, or choose another path"
        )
    return StorageUnavailableError(
        f"cannot create the folder {folder} for the job database: {error}"
    )


def permission_problem(path: Path) -> str | None:
    """What permission the process lacks to use the database at ``path``, or ``None``.

    SQLite needs to read and write the file, and to create ``-wal`` and ``-shm``
    files beside it, so it also needs write permission on the folder. A file system
    mounted read-only is reported as that, not as a permission of the file.
    """
    folder = path.parent
    mount = read_only_mount(path)
    if mount is not None:
        return (
            f"the file system holding {mount} is mounted read-only, so the job database "
            f"{path} cannot be created or written there. Remount it read-write (e.g. `mount "
            "-o remount,rw` on its mount point) or move the database to a writable disk. A "
            "store opened with read_only=true reads a WAL database on a read-only file "
            f"system only if {path.name}-wal and {path.name}-shm already exist beside it"
        )
    existing = _existing_folder(path)
    if existing != folder:
        if not os.access(existing, os.W_OK | os.X_OK):
            return (
                f"cannot create the folder {folder} for the job database: no write permission "
                f"on {existing} (create the folder, or grant write permission)"
            )
        return None
    if not os.access(folder, os.X_OK):
        return f"no search (execute) permission on the folder {folder} that holds {path.name}"
    wanted = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
    for file in wanted:
        if not file.exists():
            continue
        missing = [
            name
            for name, flag in (("read", os.R_OK), ("write", os.W_OK))
            if not os.access(file, flag)
        ]
        # The last process to close deletes -wal and -shm: one gone since it was seen is no
        # permission problem (os.access answers "no" for a file that is not there).
        if missing and file.exists():
            return (
                f"no {' and '.join(missing)} permission on {file}: the job database needs read "
                "and write permission on it (fix the file's owner or mode)"
            )
    if not os.access(folder, os.W_OK):
        return (
            f"no write permission on the folder {folder}: SQLite creates {path.name}-wal and "
            f"{path.name}-shm beside the database (grant write permission on the folder)"
        )
    return None


def translate(error: BaseException, path: Path, doing: str) -> StorageError:
    """The cidx-jobs error for an sqlite3 ``error`` raised while ``doing`` something on ``path``.

    The caller chains ``error`` as the cause.
    """
    if isinstance(error, sqlite3.ProgrammingError) and "closed" in str(error).lower():
        # sqlite3's own refusal (no SQLite code): the connection was closed under the call.
        return StorageUnavailableError(
            f"the connection to {path} was closed while {doing}; nothing was written. The "
            "store opens a new connection on the next call"
        )
    if isinstance(error, sqlite3.IntegrityError):
        code = extended_code(error)
        kind = (
            "foreign_key"
            if code == CONSTRAINT_FOREIGNKEY
            else "unique"
            if code in (CONSTRAINT_PRIMARYKEY, CONSTRAINT_UNIQUE)
            else "other"
        )
        return ConstraintError(f"{doing} broke a constraint of {path}: {error}", kind)
    code = error_code(error)
    if code in RETRYABLE:
        return StorageBusyError(
            f"{path} stayed locked by other connections for the whole busy_timeout_ms while "
            f"{doing}; nothing was written. Either one transaction held the write lock that "
            "long, or writers took it one after another and this call never got its turn. "
            "Retrying later is safe; if it recurs, raise busy_timeout_ms, keep transaction() "
            "blocks short, or let fewer threads and processes write at the same time"
        )
    column = undecodable_column(error)
    if column is not None:
        # sqlite3's message quotes the whole text, which may be huge: name the column only.
        return UnreadableTextError(
            f"{path} holds a row whose {column!r} is not valid UTF-8 (changed outside "
            f"cidx-jobs, or damaged) while {doing}",
            column,
        )
    if extended_code(error) == IOERR_SHMSIZE:
        return StorageFullError(_full_message(path, doing))
    if code == FULL:
        return StorageFullError(
            f"the disk holding {path} is full, or the database reached its max_size_mb limit, "
            f"while {doing}; the write was rolled back and earlier data is intact. Free disk "
            "space, raise max_size_mb, or delete expired jobs (run_cleanup), then retry"
        )
    if code in (READONLY, PERM, CANTOPEN):
        problem = permission_problem(path)
        if problem is not None:
            return StoragePermissionError(f"{problem} (while {doing})")
        if code == CANTOPEN and disk_full(path):
            return StorageFullError(_full_message(path, doing))
        if code in (READONLY, PERM):
            return StoragePermissionError(
                f"{path} is read-only for this process while {doing}: the file, its folder "
                "or the file system does not allow writing (check the mount options and the "
                f"permissions of {path}, {path}-wal and {path}-shm)"
            )
        return StorageUnavailableError(
            f"cannot open {path} while {doing}: {error}; check that the folder exists and "
            "is on a local disk"
        )
    if code in DAMAGE:
        return StorageCorruptError(
            f"{path} is damaged ({error}) while {doing}. Restart the service: with "
            "recover_corrupt on (the default) the damaged file is moved aside and its readable "
            "jobs are salvaged; or restore the file from a backup"
        )
    if code == IOERR and disk_full(path):
        return StorageFullError(_full_message(path, doing))
    if code in (IOERR, PROTOCOL):
        return StorageUnavailableError(
            f"I/O error on {path} while {doing} ({error}); nothing was written. The disk or "
            "file system failed, or the file was removed; the store reconnects on the next call"
        )
    if code == NOMEM:
        return StorageError(f"SQLite ran out of memory while {doing} on {path}")
    name = error_name(error)
    return StorageError(
        f"SQLite failed while {doing} on {path}: {error}{f' ({name})' if name else ''}"
    )
