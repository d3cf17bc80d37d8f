"""Running statements: the one place where the storage's SQL reaches sqlite3.

* :meth:`Runner.run` runs one statement, on the calling thread's transaction if it has one,
  else on a pooled connection (atomic on its own);
* :func:`retry_busy` is the one busy-retry loop (statements, ``BEGIN IMMEDIATE``,
  ``COMMIT``, and the opening of the file);
* :class:`translating` is the one context manager that turns sqlite3's exceptions into
  :mod:`cidx_jobs.errors`;
* :meth:`Runner._execute` is where every statement meets sqlite3, and so where
  :class:`SqliteFaultInjector` makes the next one fail, through the same translation as a
  real failure.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn, TypeVar

from cidx_jobs.backend import Fault, FaultInjector
from cidx_jobs.errors import StorageError, StorageUnavailableError

from . import _statements as sql_text
from ._errors import (
    BROKEN,
    BUSY,
    CORRUPT,
    FULL,
    IOERR,
    PROTOCOL,
    READONLY,
    driver_error,
    error_code,
    is_retryable,
    translate,
)
from ._pool import Connection, ConnectionPool
from ._recovery import file_identity

logger = logging.getLogger("cidx_jobs.sqlite")

#: What :meth:`Runner.run` returns: the first row, every row, the rows changed, or the
#: rows changed with every row the statement changed (cascades included).
ONE, ALL, ROWCOUNT, CHANGES = range(4)
#: How often (seconds) reads check that the path still names the file the pool opened.
IDENTITY_CHECK_INTERVAL = 1.0

_T = TypeVar("_T")


def retry_busy(
    attempt: Callable[[], _T],
    timeout: float,
    *,
    first: sqlite3.Error | None = None,
    retryable: Callable[[sqlite3.Error], bool] = is_retryable,
) -> _T:
    """``attempt()``, again while it fails because another connection holds a lock, for
    at most ``timeout`` seconds, with jittered exponential backoff (1 ms to 100 ms).

    SQLite's own busy handler already waits up to the busy timeout in most cases; this
    covers the ones it skips (a lock upgrade that would deadlock, a WAL recovery by
    another connection), which fail at once.

    :param first: the failure of an attempt already made (the waiting starts from it).
    :param retryable: which failures to wait out; by default SQLITE_BUSY and SQLITE_LOCKED.
    :raises sqlite3.Error: the last failure, once it is not retryable or time ran out.
    """
    deadline: float | None = None
    delay = 0.001
    error = first
    while True:
        if error is not None:
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
            if now >= deadline or not retryable(error):
                raise error
            time.sleep(min(delay, deadline - now) * random.uniform(0.5, 1.0))
            delay = min(delay * 2, 0.1)
        try:
            return attempt()
        except sqlite3.Error as failed:
            error = failed


class translating:  # lower case: it reads like a function, ``with translating(path, doing):``
    """Translate an sqlite3 exception raised in the block into a cidx-jobs error.

    The one place where driver exceptions become :mod:`cidx_jobs.errors` (chained as
    ``__cause__``); every other exception passes through unchanged. A class rather than
    a generator, because it also wraps each statement inside a transaction.
    """

    __slots__ = ("_doing", "_path")

    def __init__(self, path: Path, doing: str) -> None:
        self._path = path
        self._doing = doing

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if isinstance(error, sqlite3.Error):
            raise translate(error, self._path, self._doing) from error


class _ThreadState(threading.local):
    #: The connection of this thread's transaction() block, if one is open.
    conn: Connection | None = None
    #: Why SQLite rolled back the open block, if it did.
    aborted: str | None = None


def _take_aborted(state: _ThreadState) -> str | None:
    """Why SQLite rolled back the thread's block (set by a statement inside it), cleared."""
    aborted, state.aborted = state.aborted, None
    return aborted


def _in_transaction(conn: Connection) -> bool:
    try:
        return conn.in_transaction
    except sqlite3.ProgrammingError:  # closed: whatever it had open was rolled back
        return False


#: The primary result code each injected fault raises (CONNECTION_LOST closes instead).
_FAULT_CODES = {
    Fault.LOCK_TIMEOUT: BUSY,
    Fault.DISK_FULL: FULL,
    Fault.PERMISSION_DENIED: READONLY,
    Fault.CORRUPT: CORRUPT,
}


class Runner:
    """Runs the storage's statements on a pool of connections to one file.

    Besides running statements it notices when the path stops naming the file the pool
    opened (the file was removed or replaced), retires connections that failed in a way
    that makes them untrustworthy, and holds each thread's :meth:`transaction`.
    """

    def __init__(self, pool: ConnectionPool, path: Path, busy_timeout: float) -> None:
        self.pool = pool
        self._path = path
        self._path_str = str(path)
        self._busy = busy_timeout
        self._state = _ThreadState()
        self._next_check = 0.0
        self._lock = threading.Lock()
        self._reported: set[tuple[int, int] | None] = set()
        #: The fault the next statement meets (see SqliteFaultInjector), if one is armed.
        self._fault: Fault | None = None

    @property
    def in_transaction(self) -> bool:
        """Whether the calling thread is inside a :meth:`transaction` block."""
        return self._state.conn is not None

    # -- statements --------------------------------------------------------------------------

    def run(
        self, mode: int, sql: str, params: Sequence[Any], doing: str, *, retry: bool = True
    ) -> Any:
        """Run one statement; what it returns depends on ``mode`` (:data:`ONE`, ...).

        Outside a transaction the statement runs on a pooled connection and is atomic on
        its own; a busy database is waited for (up to the busy timeout) and the statement
        run again.

        :param doing: what the call does, for the error message ("loading a job").
        :param retry: ``False`` for one try whose sqlite3 exception is raised as it is
            (the tries of :func:`retry_busy`).
        :raises StorageError: a subclass for every failure; ConstraintError for a
            broken constraint, which the caller interprets.
        """
        conn = self._state.conn
        if conn is not None:
            return self._run_in_transaction(conn, mode, sql, params, doing)
        pool = self.pool
        conn = pool.acquire()
        try:
            result = self._execute(conn, mode, sql, params)
            if mode >= ROWCOUNT:
                # The write is committed: make sure it went into the file at the path.
                stat = os.stat(self._path_str)
                if (stat.st_dev, stat.st_ino) != conn.identity:
                    self._file_changed()
            elif time.monotonic() >= self._next_check:
                # Reads check now and then.
                self._check_file(conn)
        except sqlite3.Error as error:
            self._give_back(conn, error)
            if not retry:
                raise
            with translating(self._path, doing):
                if not is_retryable(error):
                    raise
                # The statement rolled back on its own; run it again once the lock is free.
                return retry_busy(
                    functools.partial(self.run, mode, sql, params, doing, retry=False),
                    self._busy,
                    first=error,
                )
        except FileNotFoundError:
            pool.release(conn)
            self._file_changed()
        except BaseException:
            pool.release(conn)
            raise
        pool.release(conn)
        return result

    def _execute(self, conn: Connection, mode: int, sql: str, params: Sequence[Any]) -> Any:
        """Where every statement meets sqlite3 (the fault-injection seam)."""
        # With no fault armed, the seam costs this one attribute read.
        if self._fault is not None:
            self._inject(conn)
        if mode == ONE:
            return conn.execute(sql, params).fetchone()
        if mode == ALL:
            return conn.execute(sql, params).fetchall()
        if mode == ROWCOUNT:
            return conn.execute(sql, params).rowcount
        before = conn.total_changes
        count = conn.execute(sql, params).rowcount
        return count, conn.total_changes - before

    def _run_in_transaction(
        self, conn: Connection, mode: int, sql: str, params: Sequence[Any], doing: str
    ) -> Any:
        state = self._state
        if state.aborted is not None:
            raise StorageError(
                f"the transaction was rolled back by an earlier error ({state.aborted}); "
                "nothing of it is stored: leave the transaction() block and retry it"
            )
        with translating(self._path, doing):
            try:
                return self._execute(conn, mode, sql, params)
            except sqlite3.Error as error:
                if not _in_transaction(conn):
                    # SQLite rolled the whole transaction back (disk full, I/O error, a
                    # lost connection): later calls in the block must not run outside it.
                    state.aborted = str(error)
                raise

    def _give_back(self, conn: Connection, error: sqlite3.Error) -> None:
        """Return ``conn`` to the pool after ``error``, or retire it (and, after an I/O
        error, every connection) when it cannot be trusted any more."""
        pool = self.pool
        code = error_code(error)
        if code == READONLY and file_identity(self._path) != conn.identity:
            pool.release(conn)
            self._file_changed()
        if code in BROKEN or isinstance(error, sqlite3.ProgrammingError):
            pool.discard(conn)
            if code in (IOERR, PROTOCOL):
                # The disk failed under every connection; start afresh next call.
                pool.invalidate()
        else:
            pool.release(conn)

    # -- the file under the path -------------------------------------------------------------

    def _check_file(self, conn: Connection) -> None:
        self._next_check = time.monotonic() + IDENTITY_CHECK_INTERVAL
        try:
            stat = os.stat(self._path_str)
        except OSError:
            self._file_changed()
        if (stat.st_dev, stat.st_ino) != conn.identity:
            self._file_changed()

    def _file_changed(self) -> NoReturn:
        """The path no longer names the file the pool opened: retire every connection."""
        identity = file_identity(self._path)
        with self._lock:
            first = identity not in self._reported
            self._reported.add(identity)
        if first:
            logger.error(
                "the job database %s was removed or replaced while open; writes made through "
                "the old file since then are lost. Reopening %s (a new, empty database if it "
                "is gone); restore it from a backup if it was removed by mistake",
                self._path,
                self._path,
            )
        self.pool.invalidate()
        raise StorageUnavailableError(
            f"the job database {self._path} was removed or replaced while open; this call "
            "was not stored in it. The store reopens the file on the next call"
        )

    # -- transactions ------------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One connection for the calling thread's block, holding the write lock from its
        start (``BEGIN IMMEDIATE``): commit on a clean exit, roll back on an exception.

        :raises StorageBusyError: the write lock stayed taken for the busy timeout.
        :raises StorageError: the commit failed, or SQLite rolled the block back by itself
            (then every later statement in the block raised too); nothing was stored.
        """
        state = self._state
        pool = self.pool
        conn = pool.acquire()
        with translating(self._path, "starting a transaction"):
            try:
                retry_busy(
                    functools.partial(self._execute, conn, ROWCOUNT, sql_text.BEGIN, ()),
                    self._busy,
                )
            except sqlite3.Error as error:
                self._give_back(conn, error)
                raise
            except BaseException:
                pool.release(conn)
                raise
        state.conn = conn
        state.aborted = None
        try:
            yield
        except BaseException:
            state.conn = None
            _take_aborted(state)
            self._rollback(conn)
            raise
        state.conn = None
        aborted = _take_aborted(state)
        if aborted is not None:
            self._rollback(conn)
            raise StorageError(
                f"the transaction was rolled back by an earlier error ({aborted}); nothing "
                "of it is stored"
            )
        self._commit(conn)

    def _commit(self, conn: Connection) -> None:
        with translating(self._path, "committing a transaction"):
            try:
                # COMMIT can wait for readers only outside WAL mode; it keeps the
                # transaction open, so retrying is safe while it is open.
                retry_busy(
                    functools.partial(self._execute, conn, ROWCOUNT, sql_text.COMMIT, ()),
                    self._busy,
                    retryable=lambda error: is_retryable(error) and _in_transaction(conn),
                )
            except sqlite3.Error as error:
                self._rollback(conn, release=False)
                self._give_back(conn, error)
                raise
            except BaseException:
                self._rollback(conn)
                raise
        try:
            self._check_file(conn)
        finally:
            self.pool.release(conn)

    def _rollback(self, conn: Connection, *, release: bool = True) -> None:
        try:
            if conn.in_transaction:
                conn.execute(sql_text.ROLLBACK)
        except sqlite3.Error:
            # A connection that cannot roll back is not trusted with anything else.
            if release:
                self.pool.discard(conn)
            return
        if release:
            self.pool.release(conn)

    # -- other uses of a connection ------------------------------------------------------------

    @contextlib.contextmanager
    def connection(self, doing: str, path: Path | None = None) -> Iterator[Connection]:
        """A pooled connection for something other than a statement (e.g. a backup), with
        sqlite3's failures translated (naming ``path``, by default the database's).

        :raises StorageError: a subclass for every failure.
        """
        pool = self.pool
        conn = pool.acquire()
        with translating(self._path if path is None else path, doing):
            try:
                yield conn
            except sqlite3.Error as error:
                self._give_back(conn, error)
                raise
            except BaseException:
                pool.release(conn)
                raise
        pool.release(conn)

    def close(self) -> None:
        """Close every connection (busy ones when they come back). Idempotent."""
        self.pool.close()

    # -- fault injection -----------------------------------------------------------------------

    def arm(self, fault: Fault | None) -> None:
        """Make the next statement (from any thread) meet ``fault``; ``None`` disarms."""
        with self._lock:
            self._fault = fault

    def _inject(self, conn: Connection) -> None:
        with self._lock:
            fault, self._fault = self._fault, None
        if fault is None:  # another thread's statement met it first
            return
        if fault is Fault.CONNECTION_LOST:
            # Really gone: sqlite3 itself refuses the statement ("Cannot operate on a closed
            # database"), and an open transaction went with the connection.
            conn.close()
            return
        if _in_transaction(conn):
            # As SQLite does for a full disk or damage, and a server for a deadlock victim:
            # the whole block is rolled back, so the block fails as a whole.
            conn.execute(sql_text.ROLLBACK)
        raise driver_error(_FAULT_CODES[fault], timed_out=fault is Fault.LOCK_TIMEOUT)


class SqliteFaultInjector(FaultInjector):
    """The SQLite backend's fault-injection seam (see :class:`~cidx_jobs.backend.FaultInjector`).

    The next statement the storage sends, from any thread, meets the fault where it
    reaches sqlite3, before it runs: :attr:`~cidx_jobs.backend.Fault.CONNECTION_LOST`
    closes that statement's connection (sqlite3 then refuses it, and the pool opens a new
    connection for later calls); the other faults raise the exception sqlite3 raises for
    SQLITE_BUSY after the busy timeout, SQLITE_FULL, SQLITE_READONLY and SQLITE_CORRUPT.
    Inside a ``transaction()`` block, the whole block is rolled back. An injected
    ``CORRUPT`` never moves the file aside: that happens only for damage found when the
    store opens.
    """

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def fail_next(self, fault: Fault) -> None:
        """Make the next statement fail with ``fault`` (replacing one not met yet)."""
        if not isinstance(fault, Fault):
            raise TypeError(f"fail_next() takes a cidx_jobs.backend.Fault, got {fault!r}")
        self._runner.arm(fault)

    def clear(self) -> None:
        """Cancel a fault that no statement has met yet."""
        self._runner.arm(None)
