"""Turning sqlite3's exceptions into cidx-jobs errors an operator can act on."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from cidx_jobs.errors import (
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

# Python 3.10 has no sqlite_errorcode; its messages are SQLite's own (sqlite3_errstr),
# so the code can be recovered from them.
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


def error_code(error: BaseException) -> int:
    """SQLite's primary result code of ``error``, or 0 when it is unknown."""
    code = getattr(error, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    message = str(error).lower()
    for text, value in _MESSAGES:
        if text in message:
            return value
    return 0


def is_busy(error: BaseException) -> bool:
    """True for SQLITE_BUSY and SQLITE_LOCKED: another connection holds a lock; retry later."""
    return error_code(error) in RETRYABLE


def permission_problem(path: Path) -> str | None:
    """What permission the process lacks to use the database at ``path``, or ``None``.

    SQLite needs to read and write the file, and to create ``-wal`` and ``-shm``
    files beside it, so it also needs write permission on the folder.
    """
    folder = path.parent
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
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
        if missing:
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
        return StorageUnavailableError(
            f"the connection to {path} was closed while {doing}; the store reconnects on the next call"
        )
    code = error_code(error)
    if code in RETRYABLE:
        return StorageUnavailableError(
            f"{path} stayed locked by another connection while {doing}; nothing was written. "
            "Another process or thread held a write transaction for longer than busy_timeout_ms: "
            "retry later, shorten long transaction() blocks, or raise busy_timeout_ms"
        )
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
        if code == READONLY:
            return StoragePermissionError(
                f"{path} is read-only for this process while {doing}: the file, its folder "
                "or the file system does not allow writing (check the mount options and the "
                f"permissions of {path}, {path}-wal and {path}-shm)"
            )
        return StorageUnavailableError(
            f"cannot open {path} while {doing}: {error}; check that the folder exists and "
            "is on a local disk"
        )
    if code in (CORRUPT, NOTADB):
        return StorageCorruptError(
            f"{path} is damaged ({error}) while {doing}. Restart the service: with "
            "recover_corrupt on (the default) the damaged file is moved aside and its readable "
            "jobs are salvaged; or restore the file from a backup"
        )
    if code in (IOERR, PROTOCOL):
        return StorageUnavailableError(
            f"I/O error on {path} while {doing} ({error}); nothing was written. The disk or "
            "file system failed, or the file was removed; the store reconnects on the next call"
        )
    if code == NOMEM:
        return StorageError(f"SQLite ran out of memory while {doing} on {path}")
    return StorageError(f"SQLite failed while {doing} on {path}: {error}")
