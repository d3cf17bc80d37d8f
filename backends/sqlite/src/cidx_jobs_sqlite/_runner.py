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
    ConstraintError,
    driver_error,
    error_code,
    is_retryable,
    translate,
)
from ._pool import Connection, ConnectionPool
from ._recovery import file_identity
from ._shm import ShmWatch

logger = logging.getLogger("cidx_jobs.sqlite")

#: What :meth:`Runner.run` returns: the first row, every row, the rows changed, or the
#: rows changed with every row the statement changed (cascades included).
ONE, ALL, ROWCOUNT, CHANGES = range(4)
#: How often (seconds) reads check that the path still names the file the pool opened.
IDENTITY_CHECK_INTERVAL = 1.0

_T = TypeVar("_T")


def retry_busy(
    attempt: Callable[[], _T],
    deadline: float,
    *,
    first: sqlite3.Error | None = None,
    retryable: Callable[[sqlite3.Error], bool] = is_retryable,
    conn: sqlite3.Connection | None = None,
    timeout: float = 0.0,
) -> _T:
    """``attempt()``, again while it fails because another connection holds a lock, until
    ``deadline`` (a :func:`time.monotonic` time), with jittered exponential backoff (1 ms to
    100 ms).

    The deadline bounds the whole call, not only the retries: SQLite's own busy handler
    already waits inside an attempt (up to the connection's busy timeout), and the retries
    cover the cases it skips (a lock upgrade that would deadlock, a WAL recovery by another
    connection), which fail at once. With ``conn``, each retry runs with that handler
    limited to the time left (see :func:`limit_wait`), and it is set back to ``timeout``
    afterwards.

    :param first: the failure of an attempt already made.
    :param retryable: which failures to wait out; by default SQLITE_BUSY and SQLITE_LOCKED.
    :raises sqlite3.Error: the last failure, once it is not retryable or time ran out.
    """
    delay = 0.001
    error = first
    limited = False
    try:
        while True:
            if error is not None:
                now = time.monotonic()
                if now >= deadline or not retryable(error):
                    raise error
                time.sleep(min(delay, deadline - now) * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 0.1)
                if conn is not None:
                    limited = True
                    limit_wait(conn, deadline)
            try:
                return attempt()
            except sqlite3.Error as failed:
                error = failed
    finally:
        if limited:
            assert conn is not None
            restore_wait(conn, timeout)


def limit_wait(conn: sqlite3.Connection, deadline: float) -> None:
    """Let SQLite's busy handler on ``conn`` wait only until ``deadline`` (the end of the
    call's busy timeout), for the next statements; :func:`restore_wait` undoes it.

    :raises sqlite3.Error: the connection is closed.
    """
    left = max(0, int((deadline - time.monotonic()) * 1000))
    conn.execute(f"PRAGMA busy_timeout = {left}")


def restore_wait(conn: sqlite3.Connection, timeout: float) -> None:
    """Set SQLite's busy handler on ``conn`` back to ``timeout`` seconds (a closed
    connection needs none)."""
    with contextlib.suppress(sqlite3.Error):
        conn.execute(f"PRAGMA busy_timeout = {round(timeout * 1000)}")


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
    #: Why the open block is doomed (a storage failure inside it), if it is.
    aborted: str | None = None


def _take_aborted(state: _ThreadState) -> str | None:
    """Why the thread's block is doomed (set by a failure inside it), cleared."""
    aborted, state.aborted = state.aborted, None
    return aborted


def _in_transaction(conn: Connection) -> bool:
    try:
        return conn.in_transaction
    except sqlite3.ProgrammingError:  # closed: whatever it had open was rolled back
        return False


def _is_answer(error: StorageError) -> bool:
    """Whether a translated failure is an answer the primitive that ran the statement reads
    (a duplicate id, a checkpoint of no job), rather than a storage failure."""
    return isinstance(error, ConstraintError) and error.kind != "other"


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

    A call waits at most the busy timeout in all, for a pooled connection and for another
    connection's write lock together.
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
        self._shm = ShmWatch(path, IDENTITY_CHECK_INTERVAL)
        #: The fault a coming statement meets (see SqliteFaultInjector), if one is armed,
        #: and how many statements pass before it.
        self._fault: Fault | None = None
        self._fault_after = 0
        #: How long getting a connection may take before a statement's own lock wait is
        #: shortened to what is left of the busy timeout: a tenth of it, at most 50 ms (and
        #: never, for a busy timeout of 0, which SQLite's busy handler already keeps).
        self._slack = min(0.05, busy_timeout / 10) if busy_timeout > 0 else float("inf")

    @property
    def in_transaction(self) -> bool:
        """Whether the calling thread is inside a :meth:`transaction` block."""
        return self._state.conn is not None

    def doom(self, reason: str) -> None:
        """Doom the calling thread's open block, if it has one: a storage failure happened
        inside it (the storage calls this for a row it cannot read). The block will not
        commit: its later statements and its end raise :class:`StorageError`."""
        state = self._state
        if state.conn is not None and state.aborted is None:
            state.aborted = reason

    # -- statements --------------------------------------------------------------------------

    def run(self, mode: int, sql: str, params: Sequence[Any], doing: str) -> Any:
        """Run one statement; what it returns depends on ``mode`` (:data:`ONE`, ...).

        Outside a transaction the statement runs on a pooled connection and is atomic on
        its own; a busy database is waited for and the statement run again, for at most
        the busy timeout from the start of the call (the wait for a connection included).

        :param doing: what the call does, for the error message ("loading a job").
        :raises StorageError: a subclass for every failure; ConstraintError for a
            broken constraint, which the caller interprets.
        """
        conn = self._state.conn
        if conn is not None:
            return self._run_in_transaction(conn, mode, sql, params, doing)
        started = time.monotonic()
        if mode < CHANGES and self._fault is None:
            idle = self.pool.take_idle()
            if idle is not None:
                # The common call, inline: a statement costs 5-25 us, and the general
                # path's frames, clock reads and deadline arithmetic cost 1-2 us more,
                # about twice that once SQLite's work has cooled the caches
                # (docs/performance.md). With a free connection there is no wait, so the
                # busy timeout SQLite applies on its own is the call's whole budget, as
                # in _attempt.
                pool = self.pool
                result: Any
                try:
                    cursor = idle.execute(sql, params)
                    if mode == ROWCOUNT:
                        result = cursor.rowcount
                        self._check_written(idle)
                    else:
                        result = cursor.fetchone() if mode == ONE else cursor.fetchall()
                        if started >= self._next_check:
                            self._check_file(idle)
                except sqlite3.Error as error:
                    self._give_back(idle, error)
                    return self._after_error(error, mode, sql, params, started, doing)
                except BaseException:
                    pool.release(idle)
                    raise
                pool.release(idle)
                return result
        try:
            return self._attempt(mode, sql, params, started)
        except sqlite3.Error as error:
            return self._after_error(error, mode, sql, params, started, doing)

    def _after_error(
        self,
        error: sqlite3.Error,
        mode: int,
        sql: str,
        params: Sequence[Any],
        started: float,
        doing: str,
    ) -> Any:
        """Translate ``error`` of a statement outside a transaction, or, when the database
        was busy, run the statement again until the busy timeout from ``started``."""
        with translating(self._path, doing):
            if not is_retryable(error):
                raise error
            # The statement rolled back on its own; run it again once the lock is free.
            return retry_busy(
                functools.partial(self._attempt, mode, sql, params, started, limited=True),
                started + self._busy,
                first=error,
            )

    def _attempt(
        self, mode: int, sql: str, params: Sequence[Any], started: float, *, limited: bool = False
    ) -> Any:
        """One try of a statement on a pooled connection (sqlite3's exception is raised as
        it is), for a call that started at ``started``.

        :param limited: limit SQLite's lock wait to what is left of the busy timeout (a
            retry); otherwise it is limited only if getting the connection took a while.
        """
        pool = self.pool
        deadline = started + self._busy
        conn = pool.acquire(deadline)
        try:
            if limited or time.monotonic() - started > self._slack:
                limit_wait(conn, deadline)
                try:
                    result = self._execute(conn, mode, sql, params)
                finally:
                    restore_wait(conn, self._busy)
            else:
                result = self._execute(conn, mode, sql, params)
            if mode >= ROWCOUNT:
                self._check_written(conn)
            elif time.monotonic() >= self._next_check:
                # Reads check now and then.
                self._check_file(conn)
        except sqlite3.Error as error:
            self._give_back(conn, error)
            raise
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
                f"an earlier call of this transaction() block failed ({state.aborted}), so "
                "the block is rolled back and nothing of it is stored: leave the block and "
                "retry it"
            )
        try:
            return self._execute(conn, mode, sql, params)
        except sqlite3.Error as error:
            translated = translate(error, self._path, doing)
            if not _is_answer(translated):
                # A storage failure dooms the block even if the caller goes on: SQLite may
                # have rolled it back already (disk full, I/O error, a lost connection), and
                # if not, committing half of what the caller meant is no better.
                state.aborted = str(error)
            raise translated from error

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

    def _check_written(self, conn: Connection) -> None:
        # The write is committed: make sure it went into the file at the path, so that
        # the call that wrote into a removed or replaced file raises (docs/sqlite.md).
        try:
            stat = os.stat(self._path_str)
        except OSError:  # gone, or a folder of the path is gone or no folder now
            self._file_changed()
        if (stat.st_dev, stat.st_ino) != conn.identity:
            self._file_changed()

    def _check_file(self, conn: Connection, *, committed: bool = False) -> None:
        self._next_check = time.monotonic() + IDENTITY_CHECK_INTERVAL
        try:
            stat = os.stat(self._path_str)
        except OSError:
            self._file_changed()
        if (stat.st_dev, stat.st_ino) != conn.identity:
            self._file_changed()
        # And the -shm, whose removal SQLite does not notice (docs/sqlite.md).
        self._shm.check(self.pool.invalidate, committed=committed)

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

        A storage failure inside the block dooms it, even when the caller caught the error
        and went on (but not a duplicate id or another answer a primitive reads from a
        constraint): its later statements and its end raise, and nothing of it is stored.

        :raises StorageBusyError: the write lock (or a pooled connection) stayed taken for
            the busy timeout.
        :raises StorageError: the commit failed, or a failure inside the block doomed it;
            nothing was stored.
        """
        state = self._state
        pool = self.pool
        started = time.monotonic()
        conn = pool.acquire(started + self._busy)
        with translating(self._path, "starting a transaction"):
            try:
                self._begin(conn, started)
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
                f"the transaction was rolled back after a failure inside it ({aborted}); "
                "nothing of it is stored"
            )
        self._commit(conn)

    def _begin(self, conn: Connection, started: float) -> None:
        """``BEGIN IMMEDIATE``, waiting for the write lock until the busy timeout (counted
        from ``started``) runs out."""
        deadline = started + self._busy
        begin = functools.partial(self._execute, conn, ROWCOUNT, sql_text.BEGIN, ())
        limited = time.monotonic() - started > self._slack
        try:
            if limited:  # the pool kept the call waiting: less is left for the lock
                limit_wait(conn, deadline)
            try:
                begin()
            except sqlite3.Error as error:
                if not is_retryable(error):
                    raise
                retry_busy(begin, deadline, first=error, conn=conn, timeout=self._busy)
        finally:
            if limited:
                restore_wait(conn, self._busy)

    def _commit(self, conn: Connection) -> None:
        started = time.monotonic()
        commit = functools.partial(self._execute, conn, ROWCOUNT, sql_text.COMMIT, ())
        with translating(self._path, "committing a transaction"):
            try:
                try:
                    commit()
                except sqlite3.Error as error:
                    # COMMIT can wait for readers only outside WAL mode; it keeps the
                    # transaction open, so retrying is safe while it is open.
                    if not (is_retryable(error) and _in_transaction(conn)):
                        raise
                    retry_busy(
                        commit,
                        started + self._busy,
                        first=error,
                        retryable=lambda error: is_retryable(error) and _in_transaction(conn),
                        conn=conn,
                        timeout=self._busy,
                    )
            except sqlite3.Error as error:
                self._rollback(conn, release=False)
                self._give_back(conn, error)
                raise
            except BaseException:
                self._rollback(conn)
                raise
        try:
            self._check_file(conn, committed=True)
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

    def arm(self, fault: Fault, after: int) -> None:
        """Make the statement after the next ``after`` ones (from any thread) meet ``fault``."""
        with self._lock:
            self._fault, self._fault_after = fault, after

    def disarm(self) -> bool:
        """Cancel the armed fault; whether one was armed and not met yet."""
        with self._lock:
            pending = self._fault is not None
            self._fault, self._fault_after = None, 0
        return pending

    def _inject(self, conn: Connection) -> None:
        with self._lock:
            fault = self._fault
            if fault is None:  # another thread's statement met it first
                return
            if self._fault_after > 0:  # this statement is one of those that pass
                self._fault_after -= 1
                return
            self._fault = None
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

    A coming statement the storage sends, from any thread, meets the fault where it reaches
    sqlite3, before it runs: the next one, or with ``after=N`` the one after the next ``N``
    (``BEGIN IMMEDIATE`` and ``COMMIT`` count; a ``ROLLBACK`` or a connection's own setup
    does not). :attr:`~cidx_jobs.backend.Fault.CONNECTION_LOST` closes that statement's
    connection (sqlite3 then refuses it, and the pool opens a new connection for later
    calls); the other faults raise the exception sqlite3 raises for SQLITE_BUSY after the
    busy timeout, SQLITE_FULL, SQLITE_READONLY and SQLITE_CORRUPT. Inside a
    ``transaction()`` block, the whole block is rolled back. An injected ``CORRUPT`` never
    moves the file aside: that happens only for damage found when the store opens.
    """

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def fail_next(self, fault: Fault, *, after: int = 0) -> None:
        """Make the statement after the next ``after`` ones fail with ``fault`` (replacing a
        fault not met yet)."""
        if not isinstance(fault, Fault):
            raise TypeError(f"fail_next() takes a cidx_jobs.backend.Fault, got {fault!r}")
        if type(after) is not int or after < 0:
            raise ValueError(f"fail_next() takes after= as an int of 0 or more, got {after!r}")
        self._runner.arm(fault, after)

    def clear(self) -> bool:
        """Cancel a fault that no statement has met yet; whether there was one."""
        return self._runner.disarm()
