"""The production SQLite backend of cidx-jobs (``sqlite:///path/to/jobs.db``).

One database file in WAL mode, shared by the threads of a process through a
bounded connection pool and by several processes; typed errors for every storage
failure; forward schema migrations; recovery of a damaged file at open. Open it
through :func:`cidx_jobs.open_persistence`; the store's ``storage`` is then a
:class:`SqliteStorage`, with the extras ``backup()``, ``recovery``, ``path`` and
``options``. See the "SQLite backend" docs page for the options, the schema and
operations.
"""

from __future__ import annotations

from ._options import SYNCHRONOUS_LEVELS, SqliteOptions
from ._recovery import RecoveryReport
from ._runner import SqliteFaultInjector
from ._schema import MIGRATIONS, SCHEMA_VERSION, Migration
from ._storage import SqliteStorage

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SYNCHRONOUS_LEVELS",
    "Migration",
    "RecoveryReport",
    "SqliteFaultInjector",
    "SqliteOptions",
    "SqliteStorage",
]
