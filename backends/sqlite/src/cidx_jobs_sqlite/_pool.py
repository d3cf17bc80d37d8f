"""A bounded pool of SQLite connections shared by threads."""

from __future__ import annotations

import collections
import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable

from cidx_jobs.errors import StorageBusyError, StorageUnavailableError


class Connection(sqlite3.Connection):
    """An sqlite3 connection that remembers which file it opened.

    ``identity`` is the (device, inode) of the database file when the connection
    was made: if the path later names another file (or none), the file was removed
    or replaced under the store, and this connection writes into the void.
    """

    identity: tuple[int, int] = (0, 0)


class ConnectionPool:
    """At most ``size`` connections, opened lazily and handed to one thread at a time.

    Checkout is a lock-free pop from a LIFO stack (so a single thread keeps reusing
    one warm connection) while nobody waits; once threads wait, a released connection
    goes to the longest waiter (first come, first served), so no thread starves. Only
    when the stack is empty does a caller take the lock
    to open a connection or wait for one. :meth:`invalidate` retires every
    connection (after the file was replaced, or an I/O error): idle ones are closed
    at once, busy ones when they come back, and later checkouts open new ones.
    """

    def __init__(
        self,
        connect: Callable[[], Connection],
        size: int,
        wait_timeout: float,
        describe: str,
    ) -> None:
        self._connect = connect
        self._size = size
        self._wait_timeout = wait_timeout
        self._describe = describe
        self._idle: list[Connection] = []
        self._all: set[Connection] = set()
        self._stale: set[Connection] = set()
        self._opening = 0
        self._waiting = 0
        # FIFO hand-off: a released connection goes to the longest waiter, never to a
        # thread that barges in (the releasing thread itself, typically).
        self._queue: collections.deque[list[Connection | None]] = collections.deque()
        self._closed = False
        self._cond = threading.Condition(threading.Lock())

    @property
    def size(self) -> int:
        """The most connections the pool opens."""
        return self._size

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    @property
    def open_count(self) -> int:
        """How many connections are open now (idle or in use)."""
        return len(self._all)

    def add(self, conn: Connection) -> None:
        """Adopt an open connection as an idle one (the store's first connection)."""
        with self._cond:
            self._all.add(conn)
            self._idle.append(conn)

    def acquire(self, deadline: float | None = None) -> Connection:
        """A connection for the calling thread's exclusive use; give it back with :meth:`release`.

        :param deadline: the :func:`time.monotonic` time until which to wait for one (the
            end of the calling statement's busy timeout); by default the wait timeout from
            when the wait starts.
        :raises StorageUnavailableError: the pool is closed.
        :raises StorageBusyError: every connection stayed in use until the deadline.
        :raises StorageError: opening a new connection failed.
        """
        if not self._queue:  # threads are queued: line up behind them instead of barging in
            try:
                return self._idle.pop()
            except IndexError:
                pass
        return self._acquire_slow(deadline)

    def take_idle(self) -> Connection | None:
        """An idle connection, if one is free and no thread is queued for one; never waits.
        Give it back with :meth:`release`."""
        if not self._queue:
            try:
                return self._idle.pop()
            except IndexError:
                pass
        return None

    def _acquire_slow(self, deadline: float | None) -> Connection:
        with self._cond:
            self._waiting += 1
            # The waiter's slot in the queue: release() puts a connection in it, first come
            # first served, so a thread that releases and re-acquires in a loop cannot
            # starve the others.
            slot: list[Connection | None] | None = None
            try:
                while True:
                    if self._closed:
                        if slot is not None:
                            handed = slot[0]
                            if handed is None:
                                self._queue.remove(slot)
                            else:  # handed over as the pool closed: nobody will use it
                                self._all.discard(handed)
                                _close_quietly(handed)
                        raise self._closed_error()
                    if slot is not None and slot[0] is not None:
                        return slot[0]
                    first = not self._queue or self._queue[0] is slot
                    if first and self._idle:
                        if slot is not None:
                            self._queue.popleft()
                        return self._idle.pop()
                    if first and len(self._all) + self._opening < self._size:
                        if slot is not None:
                            self._queue.popleft()
                        self._opening += 1
                        break
                    if slot is None:
                        slot = [None]
                        self._queue.append(slot)
                        # release() hands back without the lock while nobody is queued;
                        # one that ran between the checks above and this append left its
                        # connection idle: look again before sleeping.
                        continue
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + self._wait_timeout
                    if now >= deadline:
                        self._queue.remove(slot)
                        raise StorageBusyError(
                            f"all {self._size} connections (pool_size) to {self._describe} "
                            f"stayed in use for {self._wait_timeout:g} s; long transaction() "
                            "blocks or more threads than connections hold them (shorten the "
                            "blocks, call the store from fewer threads at once, or raise "
                            "pool_size if it is below its maximum of 10)"
                        )
                    self._cond.wait(deadline - now)
            finally:
                self._waiting -= 1
        try:
            conn = self._connect()
        except BaseException:
            with self._cond:
                self._opening -= 1
                self._cond.notify_all()
            raise
        with self._cond:
            self._opening -= 1
            if not self.closed:  # it may have been closed while this thread connected
                self._all.add(conn)
                return conn
        conn.close()
        raise self._closed_error()

    def release(self, conn: Connection) -> None:
        """Give a connection back; a retired one is closed instead."""
        if self._stale and conn in self._stale:
            self.discard(conn)
            return
        try:
            if conn.in_transaction:
                # A statement was interrupted half-way; never hand out an open transaction.
                conn.execute("ROLLBACK")
        except sqlite3.Error:  # also sqlite3's refusal of a connection closed meanwhile
            self.discard(conn)
            return
        if not self._queue and not self._closed:
            # Nobody waits: no lock. A thread that queues from now on finds the connection
            # idle (it looks again after queueing), or is woken below if it queued between
            # the check above and the append.
            self._idle.append(conn)
            if self._queue:
                with self._cond:
                    if self._queue and not self._closed:
                        try:
                            idle = self._idle.pop()
                        except IndexError:  # a thread outside the queue took it first
                            return
                        self._queue.popleft()[0] = idle
                        self._cond.notify_all()
                        return
            if self.closed:  # closed meanwhile (by another thread)
                self._close_idle()
            return
        with self._cond:
            if self._queue and not self._closed:
                self._queue.popleft()[0] = conn
                self._cond.notify_all()
                return
            self._idle.append(conn)
        if self._closed:
            self._close_idle()

    def discard(self, conn: Connection) -> None:
        """Close a connection that is not trusted any more; a later checkout opens a new one."""
        with self._cond:
            self._all.discard(conn)
            self._stale.discard(conn)
            self._cond.notify_all()
        _close_quietly(conn)

    def invalidate(self) -> None:
        """Retire every connection: idle ones now, the ones in use when they are released."""
        with self._cond:
            idle, self._idle = self._idle, []
            self._all.difference_update(idle)
            self._stale.update(self._all)
            self._cond.notify_all()
        for conn in idle:
            _close_quietly(conn)

    def close(self) -> None:
        """Close every idle connection now and each busy one when it is released. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._close_idle()

    def _close_idle(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._all.difference_update(idle)
            self._stale.difference_update(idle)
        for conn in idle:
            _close_quietly(conn)

    def _closed_error(self) -> StorageUnavailableError:
        return StorageUnavailableError(f"the job store on {self._describe} is closed")


def _close_quietly(conn: sqlite3.Connection) -> None:
    # Closing finishes a WAL checkpoint that may fail on a broken disk; the handle is
    # released regardless.
    with contextlib.suppress(sqlite3.Error):
        conn.close()
