"""The one translation of psycopg's exceptions into :mod:`cidx_jobs.errors`.

The kind comes from the SQLSTATE wherever the server sent one. Failures to connect carry
none (libpq reports them as text before a session exists), so for those alone the message
is read, to tell a wrong password or a missing database from an unreachable server.
"""

from __future__ import annotations

import psycopg
import psycopg_pool

from cidx_jobs.errors import (
    StorageBusyError,
    StorageCorruptError,
    StorageError,
    StorageFullError,
    StorageOutcomeUnknownError,
    StoragePermissionError,
    StorageUnavailableError,
)

__all__ = ["BUSY_STATES", "DISCARD_STATES", "translate"]

#: Nothing was written and a retry later may work: serialization failure, deadlock victim,
#: lock_timeout, statement_timeout (query_canceled).
BUSY_STATES = frozenset({"40001", "40P01", "55P03", "57014"})
#: States after which the connection is not worth keeping: a read-only server (a demoted
#: primary: a new connection may reach the new one), a server shutting down, or a session
#: the server ended (idle-in-transaction timeout).
DISCARD_STATES = frozenset({"25006", "57P01", "57P02", "57P03", "25P03", "08000", "08003", "08006"})
_FULL_STATES = frozenset({"53100", "53200", "53400"})
_CORRUPT_STATES = frozenset({"XX001", "XX002"})
_PERMISSION_STATES = frozenset({"42501", "28000", "28P01"})


#: The advice for a server that has no connection slot left.
_SIZING = (
    "every instance x worker x pool_max of all the stores on this server (plus the "
    "administrators' sessions) must stay below its max_connections: lower pool_max, raise "
    "max_connections (a server restart), or put PgBouncer in front. Retry later"
)


def _connect_failure(
    error: psycopg.Error, where: str, *, pool_timeout: bool = False
) -> StorageError:
    """A failure to open a session, classified by libpq's message (it has no SQLSTATE).

    :param pool_timeout: a call waited ``connect_timeout`` for the pool, whose last attempt
        to connect failed with ``error``.
    """
    text = str(error)
    if "password authentication failed" in text or "no password supplied" in text:
        return StoragePermissionError(
            f"{where}: the server refused the password ({_first_line(text)}); check the "
            "user and password in the URL (postgresql://USER:PASSWORD@host/db) or ~/.pgpass"
        )
    if "role" in text and "does not exist" in text:
        return StoragePermissionError(
            f"{where}: the role does not exist ({_first_line(text)}); create it "
            "(CREATE ROLE ... LOGIN) or fix the user name in the URL"
        )
    if "pg_hba.conf" in text:
        return StoragePermissionError(
            f"{where}: the server does not accept this host, user or database "
            f"({_first_line(text)}); add a matching line to pg_hba.conf on the server"
        )
    if "database" in text and "does not exist" in text:
        return StorageUnavailableError(
            f"{where}: the database does not exist ({_first_line(text)}); create it "
            "(createdb NAME, or CREATE DATABASE) or fix the database name in the URL's path"
        )
    if "too many connections for role" in text or "too many connections for database" in text:
        return StorageBusyError(
            f"{where}: the role or database is at its CONNECTION LIMIT ({_first_line(text)}); "
            "raise it (ALTER ROLE ... CONNECTION LIMIT n) or lower pool_max: instances x "
            "workers x pool_max must stay within it. Retry later"
        )
    if (
        "too many clients" in text
        or "too many connections" in text
        or "remaining connection slots" in text
    ):
        return StorageBusyError(
            f"{where}: the server has no connection slot left ({_first_line(text)}); {_SIZING}"
        )
    if pool_timeout:
        return StorageUnavailableError(
            f"{where}: the server is unreachable: the pool's attempts to connect fail "
            f"({_first_line(text)}), and it keeps retrying in the background with a growing "
            "delay. Check that the server runs and that host and port in the URL are right; "
            "calls work again once it answers, without a restart"
        )
    return StorageUnavailableError(
        f"{where}: cannot connect to the server ({_first_line(text)}); check that it runs "
        "and that host and port in the URL are right. Later calls reconnect"
    )


def _first_line(text: str) -> str:
    return " ".join(text.split())[:300]


def translate(
    error: BaseException,
    where: str,
    doing: str,
    *,
    committing: bool = False,
    pool_timeout: bool = False,
) -> StorageError:
    """The cidx-jobs error for ``error``, which psycopg or its pool raised while ``doing``.

    :param where: the store, for the message (server, database, schema).
    :param committing: the error met a ``COMMIT`` that was sent: a lost connection then
        leaves the outcome unknown.
    :param pool_timeout: ``error`` is the pool's last failure to connect, met by a call
        that waited ``connect_timeout`` for a connection.
    """
    if isinstance(error, psycopg_pool.PoolTimeout):
        return StorageBusyError(
            f"{where}: {doing}: no connection became free within connect_timeout (every "
            "pooled connection stayed in use); retry later, or raise pool_max"
        )
    if isinstance(error, psycopg_pool.PoolClosed):
        return StorageUnavailableError(f"{where} is closed; open the store again")
    if not isinstance(error, psycopg.Error):
        return StorageError(f"{where}: {doing} failed: {error!r}")
    state = error.sqlstate
    message = _first_line(str(error))
    if state is None:
        if isinstance(error, psycopg.OperationalError):
            if committing:
                return StorageOutcomeUnknownError(
                    f"{where}: the connection was lost while {doing}, with its commit in flight "
                    f"({message}); the write may or may not be stored: read the job back "
                    "before repeating it"
                )
            if (
                pool_timeout
                or "connection failed" in str(error)
                or "connection to server" in str(error)
            ):
                return _connect_failure(error, where, pool_timeout=pool_timeout)
            return StorageUnavailableError(
                f"{where}: the connection was lost while {doing} ({message}); nothing was "
                "written, and the next call uses a new connection"
            )
        if isinstance(error, psycopg.InterfaceError):
            return StorageUnavailableError(
                f"{where}: {doing}: the connection is not usable ({message}); the next call "
                "uses a new connection"
            )
        return StorageError(f"{where}: {doing} failed: {message}")
    if state in BUSY_STATES:
        reason = {
            "40001": "a concurrent transaction changed the same rows (serialization failure)",
            "40P01": "the server chose this call as a deadlock victim",
            "55P03": "a lock stayed taken for lock_timeout_ms",
            "57014": "the statement ran longer than statement_timeout_ms, or was cancelled",
        }[state]
        return StorageBusyError(
            f"{where}: {doing}: {reason} ({message}); nothing was written (a transaction "
            "block is rolled back as a whole): retry later"
        )
    if state == "53300":
        if "for role" in message or "for database" in message:
            return _connect_failure(error, where)
        return StorageBusyError(
            f"{where}: {doing}: the server has no connection slot left ({message}); {_SIZING}"
        )
    if state == "25006":
        return StorageUnavailableError(
            f"{where}: {doing}: the server is read-only ({message}), e.g. a standby or a "
            "demoted primary; the connection was dropped, and later calls reconnect (point "
            "the URL at the primary, or list every host: host=a,b&target_session_attrs=...)"
        )
    if state in _FULL_STATES:
        return StorageFullError(
            f"{where}: {doing}: the server is out of disk space or memory ({message}); "
            "nothing was written: free space on the database server, then retry"
        )
    if state in _PERMISSION_STATES:
        return StoragePermissionError(
            f"{where}: {doing}: permission denied ({message}); grant the role USAGE and "
            "CREATE on the schema and SELECT, INSERT, UPDATE, DELETE on its tables, or "
            "connect as the role that owns them"
        )
    if state in _CORRUPT_STATES:
        return StorageCorruptError(
            f"{where}: {doing}: the server reports damaged data ({message}); check the "
            "server's log, REINDEX the named index, or restore from a backup"
        )
    if state.startswith(("08", "57P")):
        if committing:
            return StorageOutcomeUnknownError(
                f"{where}: the connection was lost while {doing}, with its commit in flight "
                f"({message}); the write may or may not be stored: read the job back "
                "before repeating it"
            )
        return StorageUnavailableError(
            f"{where}: {doing}: the connection was lost or the server is shutting down "
            f"({message}); nothing was written, later calls reconnect"
        )
    if state == "25P03":
        return StorageUnavailableError(
            f"{where}: {doing}: the server ended a session left idle inside a transaction "
            f"for idle_in_transaction_timeout_ms ({message}); nothing of it was stored"
        )
    if state in ("3F000", "42P01"):
        return StorageError(
            f"{where}: {doing}: the job tables are missing ({message}); they were dropped "
            "after the store opened, or it was opened with migrate=false: run "
            "`cidx-jobs migrate`"
        )
    return StorageError(f"{where}: {doing} failed ({state}): {message}")


def is_connection_error(error: BaseException) -> bool:
    """Whether ``error`` means the connection is gone or must not be reused."""
    if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
        state = getattr(error, "sqlstate", None)
        return state is None or state in DISCARD_STATES or state.startswith("08")
    return isinstance(error, psycopg.Error) and error.sqlstate in DISCARD_STATES
