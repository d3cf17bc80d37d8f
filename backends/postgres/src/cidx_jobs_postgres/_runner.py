"""Running statements: the one place where the storage's SQL reaches psycopg.

* :meth:`Runner.run` runs one statement: on the calling thread's transaction block if it
  has one, else on a pooled autocommit connection (atomic on its own);
* :meth:`Runner.unit` runs several statements as one transaction (or as part of the block);
* :meth:`Runner._execute` is where every statement meets psycopg, and so where
  :class:`PostgresFaultInjector` makes the next one fail, through the same translation
  (:func:`~cidx_jobs_postgres._errors.translate`) as a real failure.

The pool is created lazily, per process: a pool (its connections and its worker threads)
made before a fork belongs to the parent, and a child that used the parent's sockets would
interleave its statements with the parent's on one server session.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import pq

from cidx_jobs.backend import Fault, FaultInjector
from cidx_jobs.errors import StorageError, StorageUnavailableError

from . import _statements as sql_text
from ._codec import ADAPTERS
from ._errors import is_connection_error, translate
from ._options import PostgresOptions

logger = logging.getLogger("cidx_jobs.postgres")

#: What :meth:`Runner.run` returns: the first row, every row, the row count, nothing, the
#: command's status (``"COMMIT"``).
ONE, ALL, ROWCOUNT, NONE, STATUS = range(5)
_T = TypeVar("_T")
#: Pools a forked child inherited from its parent (see Runner._get_pool).
_INHERITED: list[object] = []
Execute = Callable[[int, str, Sequence[Any]], Any]


class _ConnectionClosed(psycopg.OperationalError):
    """The connection was closed before a statement was sent: nothing reached the server
    (so a COMMIT that meets it has a known outcome: nothing committed)."""


if hasattr(select, "poll"):

    def _readable(fd: int) -> bool:
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return bool(poller.poll(0))

else:  # pragma: no cover - Windows

    def _readable(fd: int) -> bool:
        return bool(select.select([fd], [], [], 0)[0])


def _alive(conn: psycopg.Connection[Any]) -> bool:
    """Whether a pooled connection is still open, without a round trip.

    An idle session has nothing to say: a socket with something to read holds the
    server's farewell (the FATAL error of a terminated session or of a shutdown) or its
    end of file. Only then is it asked once more (an empty query, one round trip), which a
    mere notice would pass.
    """
    if conn.closed:
        return False
    try:
        if not _readable(conn.pgconn.socket):
            return True
        conn.execute("")
    except (psycopg.Error, OSError, ValueError):
        return False
    return conn.info.transaction_status == pq.TransactionStatus.IDLE


class _ThreadState(threading.local):
    #: The connection of this thread's transaction() block, and its pool, if one is open.
    conn: psycopg.Connection[Any] | None = None
    pool: psycopg_pool.ConnectionPool[Any] | None = None
    #: Why the open block is doomed (a storage failure inside it), if it is.
    aborted: str | None = None
    #: The driver's error that doomed it: it decides whether the session may be reused.
    failure: psycopg.Error | None = None


def _take_aborted(state: _ThreadState) -> str | None:
    """Why the thread's block is doomed (set by a failure inside it), cleared."""
    aborted, state.aborted = state.aborted, None
    return aborted


#: The driver's exception each injected fault raises (CONNECTION_LOST closes instead).
_FAULT_ERRORS: dict[Fault, Callable[[], psycopg.Error]] = {
    Fault.LOCK_TIMEOUT: lambda: psycopg.errors.LockNotAvailable(
        "injected: canceling statement due to lock timeout"
    ),
    Fault.DISK_FULL: lambda: psycopg.errors.DiskFull(
        "injected: could not extend file: No space left on device"
    ),
    Fault.PERMISSION_DENIED: lambda: psycopg.errors.InsufficientPrivilege(
        "injected: permission denied for table sync_jobs"
    ),
    Fault.CORRUPT: lambda: psycopg.errors.DataCorrupted(
        "injected: invalid page in block 0 of relation"
    ),
}


class Runner:
    """Runs the storage's statements on a per-process pool of connections to one database."""

    def __init__(self, options: PostgresOptions) -> None:
        self.options = options
        self.where = options.location
        self._lock = threading.Lock()
        self._pool: psycopg_pool.ConnectionPool[Any] | None = None
        self._pid = 0
        self._closed = False
        self._state = _ThreadState()
        #: The fault a coming statement meets, and how many statements pass before it.
        self._fault: Fault | None = None
        self._fault_after = 0
        #: The last failure to open a pooled connection, and when, to tell "the server is
        #: down" from "every connection is in use" when the pool times out.
        self._connect_error: tuple[float, psycopg.Error] | None = None

    # -- connections ---------------------------------------------------------------------------

    def connect_kwargs(self) -> dict[str, Any]:
        """What ``psycopg.connect`` takes for a connection of this store."""
        kwargs = self.options.connect_kwargs(f"cidx-jobs {socket.gethostname()}:{os.getpid()}")
        kwargs["autocommit"] = True
        kwargs["prepare_threshold"] = self.options.prepare_threshold
        kwargs["context"] = ADAPTERS
        return kwargs

    def configure(self, conn: psycopg.Connection[Any]) -> None:
        """A new connection's session settings (one round trip)."""
        options = self.options
        conn.execute(
            "SELECT set_config('statement_timeout', %s, false), "
            "set_config('lock_timeout', %s, false), "
            "set_config('idle_in_transaction_session_timeout', %s, false), "
            "set_config('TimeZone', 'UTC', false)",
            (
                str(options.statement_timeout_ms),
                str(options.lock_timeout_ms),
                str(options.idle_in_transaction_timeout_ms),
            ),
        )
        self._connect_error = None

    def connect(self, doing: str) -> psycopg.Connection[Any]:
        """A new connection outside the pool (for opening the store), configured.

        :raises StorageError: a subclass for every failure.
        """
        try:
            conn = psycopg.connect(**self.connect_kwargs())
        except psycopg.Error as error:
            raise translate(error, self.where, doing) from error
        try:
            self.configure(conn)
        except psycopg.Error as error:
            conn.close()
            raise translate(error, self.where, doing) from error
        return conn

    def _new_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        runner = self

        class _Connection(psycopg.Connection[Any]):
            # Remember why the pool's background connect failed: a call that then times
            # out waiting for a connection reports that cause, not "pool timeout".
            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> Any:
                try:
                    return super().connect(*args, **kwargs)
                except psycopg.Error as error:
                    runner._connect_error = (time.monotonic(), error)
                    raise

        options = self.options
        pool: psycopg_pool.ConnectionPool[Any] = psycopg_pool.ConnectionPool(
            kwargs=self.connect_kwargs(),
            connection_class=_Connection,
            min_size=options.pool_min,
            max_size=options.pool_max,
            open=False,
            configure=self.configure,
            timeout=options.connect_timeout,
            name=f"cidx-jobs {options.database}/{options.schema}",
            num_workers=2,
        )
        pool.open(wait=False)
        return pool

    def _get_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        pool = self._pool
        if pool is not None and self._pid == os.getpid():
            return pool
        with self._lock:
            if self._closed:
                raise StorageUnavailableError(f"the job store {self.where} is closed")
            if self._pool is None or self._pid != os.getpid():
                # After a fork the parent's pool is the parent's: never close or use its
                # sockets here (closing would end the parent's sessions). It is kept
                # referenced so that no finalizer of it or its connections ever runs here.
                if self._pool is not None:
                    _INHERITED.append(self._pool)
                self._pool = self._new_pool()
                self._pid = os.getpid()
            return self._pool

    def _acquire(self, doing: str) -> tuple[psycopg_pool.ConnectionPool[Any], Any]:
        if self._closed:
            raise StorageUnavailableError(
                f"the job store {self.where} is closed; open a new one to go on"
            )
        pool = self._get_pool()
        deadline = time.monotonic() + pool.timeout
        # Every connection of the pool may be dead (a server restart): try each once, and
        # one more that the pool makes meanwhile.
        for _ in range(pool.max_size + 2):
            try:
                conn = pool.getconn(max(deadline - time.monotonic(), 0.0))
            except psycopg_pool.PoolTimeout as error:
                failed = self._connect_error
                if failed is not None:
                    # The pool's last attempt to connect failed and none succeeded since:
                    # the server is unreachable (or refuses sessions), whatever the back-off
                    # of the pool's retries made of the time since.
                    raise translate(failed[1], self.where, doing, pool_timeout=True) from error
                raise translate(error, self.where, doing) from error
            except psycopg_pool.PoolClosed as error:
                raise StorageUnavailableError(f"the job store {self.where} is closed") from error
            if not self.options.check_connections or _alive(conn):
                return pool, conn
            # Closed by the server (killed, restarted, timed out) while it sat in the pool:
            # nothing was sent on it, so take another instead of failing the call.
            logger.info("discarding a pooled connection the server closed: %s", self.where)
            conn.close()
            with contextlib.suppress(psycopg_pool.PoolClosed):
                pool.putconn(conn)
            self._after_connection_loss(pool)
        raise StorageUnavailableError(
            f"{self.where}: {doing}: every pooled connection was closed by the server and no "
            "new one lasted; check the server's log. Later calls reconnect"
        )

    def _release(
        self,
        pool: psycopg_pool.ConnectionPool[Any],
        conn: psycopg.Connection[Any],
        error: BaseException | None = None,
    ) -> None:
        """Give ``conn`` back, or drop it when ``error`` says it cannot be trusted."""
        lost = error is not None and (
            is_connection_error(error) or not isinstance(error, psycopg.Error)
        )
        if not lost and not conn.closed:
            status = conn.info.transaction_status
            if status != pq.TransactionStatus.IDLE:
                try:
                    conn.execute(sql_text.ROLLBACK)
                except psycopg.Error:
                    lost = True
        if lost and not conn.closed:
            conn.close()  # the pool then replaces it
        try:
            pool.putconn(conn)
        except psycopg_pool.PoolClosed:
            conn.close()
        if lost and isinstance(error, psycopg.Error):
            self._after_connection_loss(pool)

    def _after_connection_loss(self, pool: psycopg_pool.ConnectionPool[Any]) -> None:
        # One dead session often means all are (a server restart, a failover): test the
        # idle ones now, so that the next calls get live connections instead of each
        # meeting a dead one in turn.
        with contextlib.suppress(Exception):
            pool.check()

    # -- statements ----------------------------------------------------------------------------

    @property
    def in_transaction(self) -> bool:
        """Whether the calling thread is inside a :meth:`transaction` block."""
        return self._state.conn is not None

    def run(self, mode: int, sql: str, params: Sequence[Any], doing: str) -> Any:
        """Run one statement; what it returns depends on ``mode`` (:data:`ONE`, ...).

        Every statement run with :data:`ROWCOUNT` outside a block is a write that commits
        on its own: a connection lost after it was sent raises
        :class:`~cidx_jobs.errors.StorageOutcomeUnknownError`, never "nothing was written".

        :param doing: what the call does, for the error message ("loading a job").
        :raises StorageError: a subclass for every failure.
        """
        state = self._state
        if state.conn is not None:
            return self._run_in_block(state.conn, mode, sql, params, doing)
        pool, conn = self._acquire(doing)
        try:
            result = self._execute(conn, mode, sql, params)
        except BaseException as error:
            self._release(pool, conn, error)
            if isinstance(error, psycopg.Error):
                # On an autocommit connection a write is its own COMMIT: if the connection
                # died after the statement was sent, the server may have committed it.
                sent_write = mode == ROWCOUNT and not isinstance(error, _ConnectionClosed)
                raise translate(error, self.where, doing, committing=sent_write) from error
            raise
        pool.putconn(conn)
        return result

    def unit(self, doing: str, work: Callable[[Execute], _T]) -> _T:
        """``work(execute)`` as one transaction of its own, or as part of the calling
        thread's block; ``execute(mode, sql, params)`` runs one statement of it.

        :raises StorageError: a subclass for every failure; nothing was written (except
            StorageOutcomeUnknownError from the COMMIT).
        """
        state = self._state
        if state.conn is not None:
            block = state.conn
            return work(
                lambda mode, sql, params: self._run_in_block(block, mode, sql, params, doing)
            )
        pool, conn = self._acquire(doing)
        try:
            self._execute(conn, NONE, sql_text.BEGIN, ())
            result = work(lambda mode, sql, params: self._execute(conn, mode, sql, params))
        except BaseException as error:
            self._release(pool, conn, error)
            if isinstance(error, psycopg.Error):
                raise translate(error, self.where, doing) from error
            raise
        self._commit(pool, conn, doing)
        return result

    def _execute(
        self, conn: psycopg.Connection[Any], mode: int, sql: str, params: Sequence[Any]
    ) -> Any:
        """Where every statement meets psycopg (the fault-injection seam)."""
        if self._fault is not None:
            self._inject(conn)
        if conn.closed:
            raise _ConnectionClosed("the connection is closed")
        cursor = conn.execute(sql, params, binary=True)
        if mode == ONE:
            return cursor.fetchone()
        if mode == ALL:
            return cursor.fetchall()
        if mode == ROWCOUNT:
            return cursor.rowcount
        if mode == STATUS:
            return cursor.statusmessage
        return None

    def _run_in_block(
        self, conn: psycopg.Connection[Any], mode: int, sql: str, params: Sequence[Any], doing: str
    ) -> Any:
        state = self._state
        if state.aborted is not None:
            raise StorageError(
                f"{self.where}: an earlier call of this transaction() block failed "
                f"({state.aborted}), so the block is rolled back and nothing of it is "
                "stored: leave the block and retry it"
            )
        try:
            return self._execute(conn, mode, sql, params)
        except psycopg.Error as error:
            # Any server error aborts a PostgreSQL transaction: the block cannot go on,
            # even if the caller catches the error.
            state.aborted = " ".join(str(error).split())[:200]
            state.failure = error
            raise translate(error, self.where, doing) from error

    def _commit(
        self, pool: psycopg_pool.ConnectionPool[Any], conn: psycopg.Connection[Any], doing: str
    ) -> None:
        try:
            failed = conn.info.transaction_status == pq.TransactionStatus.INERROR
            status = self._execute(conn, STATUS, sql_text.COMMIT, ())
            # COMMIT of a transaction the server aborted (a statement failed without the
            # error reaching this code) does not raise: it rolls back and says ROLLBACK.
            if failed or status != "COMMIT":
                self._release(pool, conn)
                raise StorageError(
                    f"{self.where}: {doing}: the server rolled the transaction back instead "
                    f"of committing it (COMMIT answered {status}: a statement in it "
                    "had failed); nothing of it is stored: retry it"
                )
        except StorageError:
            raise
        except BaseException as error:
            self._release(pool, conn, error)
            if isinstance(error, psycopg.Error):
                # A COMMIT that reached the server and lost its connection may have
                # committed; one that never left this process did not.
                sent = not isinstance(error, _ConnectionClosed)
                raise translate(error, self.where, doing, committing=sent) from error
            raise
        pool.putconn(conn)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One connection for the calling thread's block, in REPEATABLE READ: commit on a
        clean exit, roll back on an exception.

        A storage failure inside the block dooms it, even when the caller caught the error
        and went on: its later statements and its end raise, and nothing is stored.

        :raises StorageBusyError: a concurrent transaction changed a row the block wrote
            (serialization failure), a deadlock, or a lock or statement timeout; retry.
        :raises StorageError: the commit failed, or a failure inside the block doomed it.
        """
        state = self._state
        if state.conn is not None:
            # Taking a second connection would leave the outer block's statements outside
            # it; the facade's transaction() nests by joining the outer block instead.
            raise StorageError(
                f"{self.where}: a transaction block is already open in this thread; nest "
                "blocks through JobPersistence.transaction(), which joins the outer one"
            )
        pool, conn = self._acquire("starting a transaction")
        try:
            self._execute(conn, NONE, sql_text.BEGIN_BLOCK, ())
        except BaseException as error:
            self._release(pool, conn, error)
            if isinstance(error, psycopg.Error):
                raise translate(error, self.where, "starting a transaction") from error
            raise
        state.conn, state.pool, state.aborted, state.failure = conn, pool, None, None
        try:
            yield
        except BaseException as error:
            failure = state.failure
            state.conn = state.pool = state.aborted = state.failure = None
            # The driver's error that doomed the block, not the caller's exception, says
            # whether the session may serve again (a read-only server's may not).
            self._release(pool, conn, failure if isinstance(error, Exception) else error)
            raise
        aborted = _take_aborted(state)
        failure, state.failure = state.failure, None
        state.conn = state.pool = None
        if aborted is not None:
            self._release(pool, conn, failure)
            raise StorageError(
                f"{self.where}: the transaction was rolled back after a failure inside it "
                f"({aborted}); nothing of it is stored"
            )
        self._commit(pool, conn, "committing a transaction")

    def close(self) -> None:
        """Close the pool (connections in use close when given back); idempotent."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
            mine = self._pid == os.getpid()
        if pool is not None and mine:
            pool.close(timeout=1.0)

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

    def _inject(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            fault = self._fault
            if fault is None:  # another thread's statement met it first
                return
            if self._fault_after > 0:
                self._fault_after -= 1
                return
            self._fault = None
        if fault is Fault.CONNECTION_LOST:
            # Really gone: the socket is closed, and the server rolls back whatever
            # transaction the session had open.
            conn.close()
            return
        raise _FAULT_ERRORS[fault]()


class PostgresFaultInjector(FaultInjector):
    """The PostgreSQL backend's fault-injection seam (see :class:`~cidx_jobs.backend.FaultInjector`).

    A coming statement the storage sends, from any thread, meets the fault where it reaches
    psycopg, before it runs: the next one, or with ``after=N`` the one after the next ``N``
    (``BEGIN`` and ``COMMIT`` count; a ``ROLLBACK`` or a new connection's setup does not).
    :attr:`~cidx_jobs.backend.Fault.CONNECTION_LOST` closes that statement's connection
    (the pool replaces it); the others raise psycopg's own exception for the SQLSTATE a
    server sends for it: 55P03 (lock_not_available), 53100 (disk_full), 42501
    (insufficient_privilege) and XX001 (data_corrupted).
    """

    def __init__(self, runner: Runner) -> None:
        self._runner = runner

    def fail_next(self, fault: Fault, *, after: int = 0) -> None:
        """Make the statement after the next ``after`` ones fail with ``fault``.

        :raises TypeError: ``fault`` is not a :class:`~cidx_jobs.backend.Fault`.
        :raises ValueError: ``after`` is not an int of 0 or more.
        """
        if not isinstance(fault, Fault):
            raise TypeError(f"fail_next() takes a cidx_jobs.backend.Fault, got {fault!r}")
        if type(after) is not int or after < 0:
            raise ValueError(f"fail_next() takes after= as an int of 0 or more, got {after!r}")
        self._runner.arm(fault, after)

    def clear(self) -> bool:
        """Cancel a fault that no statement has met yet; whether there was one."""
        return self._runner.disarm()
