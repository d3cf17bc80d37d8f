"""A connection that fails on cue, to drive the backend's error paths."""

from __future__ import annotations

import sqlite3
import threading
from typing import Any

from cidx_jobs_sqlite import SqliteStorage
from cidx_jobs_sqlite._errors import driver_error
from cidx_jobs_sqlite._pool import Connection

__all__ = ["FAULTS", "Faults", "FaultyConnection", "FaultyStorage", "driver_error"]


class Faults:
    """Queued failures: the next statement starting with ``prefix`` raises ``error``.

    Build the errors with :func:`driver_error`, which gives them SQLite's code as
    sqlite3 does (Python 3.11 and later read the kind of a failure from its code).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[tuple[str, sqlite3.Error]] = []
        self.executed: list[str] = []

    def add(self, prefix: str, error: sqlite3.Error, times: int = 1) -> None:
        with self._lock:
            self._queue.extend([(prefix, error)] * times)

    def take(self, sql: str) -> sqlite3.Error | None:
        with self._lock:
            self.executed.append(sql)
            for index, (prefix, error) in enumerate(self._queue):
                if sql.startswith(prefix):
                    del self._queue[index]
                    return error
        return None

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)


FAULTS = Faults()


class FaultyConnection(Connection):
    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        error = FAULTS.take(sql)
        if error is not None:
            raise error
        return super().execute(sql, parameters)


class FaultyStorage(SqliteStorage):
    _connection_class = FaultyConnection
