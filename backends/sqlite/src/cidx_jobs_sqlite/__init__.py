"""The production SQLite backend of cidx-jobs (``sqlite:///path/to/jobs.db``).

One database file in WAL mode, shared by the threads of a process through a
bounded connection pool and by several processes; typed errors for every storage
failure; forward schema migrations; recovery of a damaged file at open. Open it
through :func:`cidx_jobs.open_persistence`; see the "SQLite backend" docs page
for the options, the schema and operations.
"""

from __future__ import annotations

from ._options import SYNCHRONOUS_LEVELS, SqliteOptions
from ._recovery import RecoveryReport
from ._schema import MIGRATIONS, SCHEMA_VERSION, Migration
from ._store import SqliteJobStore

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SYNCHRONOUS_LEVELS",
    "Migration",
    "RecoveryReport",
    "SqliteJobStore",
    "SqliteOptions",
]
