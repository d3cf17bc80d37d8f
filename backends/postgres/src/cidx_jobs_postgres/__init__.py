"""The PostgreSQL backend of cidx-jobs (``postgresql://user@host:5432/database``).

Many server instances on one database: jobs and checkpoints in the tables of one
PostgreSQL schema (option ``schema``, default ``cidx_jobs``), a connection pool per
process (psycopg 3 and psycopg_pool), fenced leases and typed errors for every failure
of the server. Open it through :func:`cidx_jobs.open_persistence`; the store's
``storage`` is then a :class:`PostgresStorage`. See the "PostgreSQL backend" docs page.
"""

from __future__ import annotations

from ._options import PostgresOptions
from ._runner import PostgresFaultInjector
from ._schema import MIGRATIONS, SCHEMA_VERSION, Migration
from ._storage import PostgresStorage

__all__ = [
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "PostgresFaultInjector",
    "PostgresOptions",
    "PostgresStorage",
]
