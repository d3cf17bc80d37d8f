"""procrastinate, the PostgreSQL peer: its own tables in the bench's throwaway schema, on the
same server, driven through its public API where it has an operation like ours.

procrastinate (procrastinate-org/procrastinate) is a task queue on PostgreSQL with psycopg 3:
a job is a row of ``procrastinate_jobs`` (its arguments as jsonb), every status change is
also an event row (triggers), and a new job notifies the workers (``pg_notify``).

What compares, and what does not:

* save_job: ``configure_task(name).defer(**record)``, one call of its
  ``procrastinate_defer_jobs_v1`` function (an INSERT, its event, a NOTIFY);
* load_job: ``job_manager.list_jobs(id=...)``, the job with its arguments;
* update_job_status: ``job_manager.cancel_job_by_id(id)`` (todo to cancelled, and its event);
* progress, checkpoints: n/a, a procrastinate job has neither;
* the filtered page: n/a, ``list_jobs`` has no LIMIT, no date filter and no user;
* cleanup: ``job_manager.delete_old_jobs(nb_hours, include_failed=True,
  include_cancelled=True)``, one DELETE of the jobs whose last event is older, with their
  events (the foreign key's cascade); async only, so it runs on an event loop of its own.

Imported by name at run time (``importlib``): procrastinate is installed in the bench
environment only, and a run without it says so instead of failing.
"""

from __future__ import annotations

import asyncio
import importlib
import random
from collections.abc import Sequence
from typing import Any

from cidx_jobs import SyncJob, serialization

from ._settings import Settings
from ._timing import Call

#: The retention the peer's cleanup applies: jobs whose last event is older are deleted.
NB_HOURS = 60 * 24
TASK = "cidx.sync_job"
OPS_NOTE = (
    "procrastinate (its sync API: SyncPsycopgConnector, whose pool checks each connection "
    "with an empty query before handing it out, its own choice; autocommit connections, as "
    "its async connector makes them): save_job is configure_task(...).defer(**the job's "
    "serialization.to_dict()), one call of its defer function (an INSERT into "
    "procrastinate_jobs, its jsonb args, an event row by trigger and a NOTIFY); load_job is "
    "job_manager.list_jobs(id=...); update_job_status is job_manager.cancel_job_by_id(id) "
    "(todo to cancelled, and its event). n/a: a procrastinate job has no progress, phase or "
    "checkpoints. Its table holds as many jobs as ours."
)
CLEANUP_NOTE = (
    "procrastinate: job_manager.delete_old_jobs(nb_hours=1440, include_failed=True, "
    "include_cancelled=True) on its own table of as many jobs (each with one event; the 1,000 "
    "expired ones finished 90 days ago), awaited on an event loop of its own: one DELETE of "
    "every job whose latest event is older, found by a DISTINCT ON over all jobs joined with "
    "their events (no index serves it); the cascade deletes their events. Its jobs deleted "
    "count is what was gone afterwards (the call returns nothing)."
)


def available() -> str | None:
    """Why the peer cannot run here, or None."""
    try:
        importlib.import_module("procrastinate")
    except ImportError:
        return "procrastinate is not installed (tox -e bench installs it)"
    return None


def _connect_kwargs(options: Any, schema: str) -> dict[str, Any]:
    kwargs: dict[str, Any] = options.connect_kwargs("cidx-jobs-bench procrastinate")
    # Its tables, types and functions live in the throwaway schema: procrastinate names
    # them unqualified, so the search path puts them there.
    kwargs["options"] = f"-c search_path={schema}"
    kwargs["autocommit"] = True
    return kwargs


def _admin(options: Any, schema: str) -> Any:
    import psycopg

    return psycopg.connect(**_connect_kwargs(options, schema))


def ensure_schema(options: Any, schema: str, jobs: int) -> None:
    """procrastinate's schema (its own ``schema.sql``) in ``schema``, once, and ``jobs``
    jobs in its table: the status mix of ours, each with the event of its last change, in
    the 30 days before now (the server's clock, which its cleanup compares with)."""
    procrastinate = importlib.import_module("procrastinate")
    with _admin(options, schema) as conn:
        found = conn.execute("SELECT to_regclass('procrastinate_jobs')").fetchone()
        if found is not None and found[0] is not None:
            return
        conn.execute(procrastinate.schema.SchemaManager.get_schema())
        conn.execute("ALTER TABLE procrastinate_jobs DISABLE TRIGGER USER")
        conn.execute(
            f"""
INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)
SELECT 'default', '{TASK}',
       jsonb_build_object('id', md5('peer:' || g)::uuid::text,
                          'user_id', 'user' || lpad((g % 1000)::text, 4, '0'),
                          'project_id', 'project' || lpad((g % 200)::text, 3, '0'),
                          'metadata', jsonb_build_object('repo', 'https://git.example.com/org/repo'
                              || (g % 1000) || '.git', 'branch', 'main', 'commit', md5(g::text)
                              || left(md5('c' || g), 8), 'files', g % 10000)),
       (CASE WHEN g % 100 < 85 THEN 'succeeded' WHEN g % 100 < 93 THEN 'failed'
             WHEN g % 100 < 96 THEN 'cancelled' ELSE 'todo' END)::procrastinate_job_status
FROM generate_series(1, {jobs}) AS g
"""
        )
        conn.execute(
            """
INSERT INTO procrastinate_events (job_id, type, at)
SELECT id, (CASE status WHEN 'todo' THEN 'deferred' ELSE status::text END)::
       procrastinate_job_event_type,
       now() - ((id * 7919) % 2592000) * interval '1 second'
FROM procrastinate_jobs
"""
        )
        conn.execute("ALTER TABLE procrastinate_jobs ENABLE TRIGGER USER")
        conn.execute("ANALYZE procrastinate_jobs")
        conn.execute("ANALYZE procrastinate_events")


class Peer:
    """procrastinate's sync API on a pool of its own (its SyncPsycopgConnector)."""

    def __init__(self, options: Any, schema: str, settings: Settings) -> None:
        procrastinate = importlib.import_module("procrastinate")
        ensure_schema(options, schema, settings.postgres_jobs)
        connector = procrastinate.SyncPsycopgConnector(
            kwargs=_connect_kwargs(options, schema),
            min_size=options.pool_min,
            max_size=options.pool_max,
        )
        self.app = procrastinate.App(connector=connector)
        self.app.open()
        self.deferrer = self.app.configure_task(TASK, allow_unknown=True)
        self.manager = self.app.job_manager
        self.ids: list[int] = []

    def save_calls(self, jobs: Sequence[SyncJob]) -> list[Call]:
        """One defer per job, its arguments the job's JSON-ready dict."""
        records = [serialization.to_dict(job) for job in jobs]
        defer, ids = self.deferrer.defer, self.ids

        def call(record: dict[str, Any]) -> Call:
            return lambda: ids.append(defer(**record))

        return [call(record) for record in records]

    def load_calls(self) -> list[Call]:
        """``list_jobs(id=...)`` of each job it saved, shuffled."""
        ids = self.ids[:]
        random.Random(5).shuffle(ids)
        list_jobs = self.manager.list_jobs

        def call(job_id: int) -> Call:
            return lambda: list_jobs(id=job_id)

        return [call(i) for i in ids]

    def status_calls(self) -> list[Call]:
        """``cancel_job_by_id`` of each job it saved (todo to cancelled)."""
        ids = self.ids[:]
        random.Random(6).shuffle(ids)
        cancel = self.manager.cancel_job_by_id

        def call(job_id: int) -> Call:
            return lambda: cancel(job_id)

        return [call(i) for i in ids]

    def close(self) -> None:
        """Close its pool."""
        self.app.close()


class CleanupPeer:
    """procrastinate's delete_old_jobs (async only) on an event loop of its own."""

    def __init__(self, options: Any, schema: str, settings: Settings) -> None:
        procrastinate = importlib.import_module("procrastinate")
        ensure_schema(options, schema, settings.postgres_jobs)
        self.options, self.schema = options, schema
        connector = procrastinate.PsycopgConnector(
            kwargs=_connect_kwargs(options, schema),
            min_size=options.pool_min,
            max_size=options.pool_max,
        )
        self.app = procrastinate.App(connector=connector)
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self.app.open_async())
        self.admin = _admin(options, schema)

    def add_expired(self, count: int, tag: str) -> None:
        """``count`` jobs that finished 90 days ago (one in ten failed or cancelled)."""
        self.admin.execute(
            f"""
WITH new_jobs AS (
    INSERT INTO procrastinate_jobs (queue_name, task_name, args, status)
    SELECT 'default', '{TASK}', jsonb_build_object('id', md5('{tag}:' || g)::uuid::text),
           (CASE WHEN g % 20 = 0 THEN 'failed' WHEN g % 20 = 10 THEN 'cancelled'
                 ELSE 'succeeded' END)::procrastinate_job_status
    FROM generate_series(1, {count}) AS g
    RETURNING id, status
)
INSERT INTO procrastinate_events (job_id, type, at)
SELECT id, status::text::procrastinate_job_event_type, now() - interval '90 days'
FROM new_jobs
"""
        )

    def expired_left(self) -> int:
        """Jobs whose last event is older than the retention (what a cleanup should delete)."""
        row = self.admin.execute(
            "SELECT count(DISTINCT job_id) FROM procrastinate_events e WHERE at < now() - "
            "%s * interval '1 hour' AND NOT EXISTS (SELECT 1 FROM procrastinate_events l "
            "WHERE l.job_id = e.job_id AND l.at >= now() - %s * interval '1 hour')",
            (NB_HOURS, NB_HOURS),
        ).fetchone()
        return int(row[0]) if row else 0

    def cleanup_call(self) -> Call:
        """One delete_old_jobs, awaited (it returns nothing: see :meth:`expired_left`)."""
        manager, loop = self.app.job_manager, self.loop

        def call() -> None:
            loop.run_until_complete(
                manager.delete_old_jobs(
                    nb_hours=NB_HOURS, include_failed=True, include_cancelled=True
                )
            )

        return call

    def close(self) -> None:
        """Close its pool, loop and connection."""
        try:
            self.loop.run_until_complete(self.app.close_async())
        finally:
            self.loop.close()
            self.admin.close()


def open_peer(options: Any, settings: Settings) -> Peer | None:
    """The peer for the single-row operations on the schema of ``options`` (the store's
    PostgresOptions), or None when it cannot run here."""
    if available() is not None:
        return None
    return Peer(options, options.schema, settings)


def open_cleanup_peer(options: Any, settings: Settings) -> CleanupPeer | None:
    """The peer for the cleanup, or None when it cannot run here."""
    if available() is not None:
        return None
    return CleanupPeer(options, options.schema, settings)
