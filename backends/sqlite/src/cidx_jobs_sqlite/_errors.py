"""Turning sqlite3's exceptions into cidx-jobs errors an operator can act on.

The kind of a failure is SQLite's result code, which Python 3.11 and later attach to
every exception SQLite raised (``sqlite_errorcode``, ``sqlite_errorname``). Python 3.10
attaches nothing; there, and only there, the code is recovered from the message, which
is SQLite's own text for the code (``sqlite3_errstr``).
"""

from __future__ import annotations

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
