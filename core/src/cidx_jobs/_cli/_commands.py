"""The commands of ``cidx-jobs`` for operators: each takes the parsed arguments and an
:class:`~._output.Output`, and returns the exit status (0 ok, 1 problems found); a failure
raises, and :func:`cidx_jobs._cli.main` turns it into one line and a status."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cidx_jobs import serialization
from cidx_jobs._models import (
    ACTIVE_STATUSES,
    JobFilter,
    JobStatus,
    SyncJob,
    utcnow,
)
from cidx_jobs._persistence import JobPersistence
from cidx_jobs.backend import Health, HealthCheck, StorageInfo
from cidx_jobs.errors import (
    CidxJobsError,
    ConfigError,
    StorageCorruptError,
    StoragePermissionError,
    StorageUnavailableError,
    UnsupportedOperationError,
)

from ._output import (
    Cell,
    Column,
    Output,
    format_age,
    format_bytes,
    format_time,
    health_cell,
    status_cell,
)
from ._progress import BatchReporting
from ._store import CommandError, backend_name, check_schema, configured_url, open_store

#: Page size when a command pages through jobs (JobFilter's largest).
PAGE = 1000
#: The most jobs with an expired lease that ``stats`` and ``doctor`` read.
STALE_LIMIT = 10_000
#: The statuses an operator override may leave: never a finished (terminal) job.
NOT_FINISHED = frozenset(ACTIVE_STATUSES | {JobStatus.INTERRUPTED})
#: The heartbeat a lease that ``recover`` gives back gets: long expired for any lease timeout.
RELEASED_HEARTBEAT = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: A clock offset from this (seconds) is a warning; from a tenth of the lease timeout, a problem.
CLOCK_WARNING_SECONDS = 1.0


#: What to do about a damaged file: the CLI never salvages it (a server may be writing it).
DAMAGE_ADVICE = (
    "stop every server, keep a copy of the database with its -wal and -shm files, then "
    "start one server: it checks the file at open and, with recover_corrupt on (the "
    "default), moves it aside and salvages every readable job into a fresh file; or "
    "restore the last good backup"
)


def _open_failure(error: CidxJobsError) -> CommandError | None:
    """A clearer error for a store that cannot be opened, or ``None`` to keep ``error``."""
    if isinstance(error, StorageCorruptError):
        return CommandError(
            f"the database is damaged ({error}); cidx-jobs reads it as it is and never "
            f"repairs it: {DAMAGE_ADVICE}"
        )
    missing, found, _ = str(error).partition(" does not exist")
    if isinstance(error, StorageUnavailableError) and found:
        return CommandError(
            f"{missing} does not exist: check the URL (the server's), or create the database "
            "with `cidx-jobs migrate`"
        )
    return None


def _open(args: argparse.Namespace, out: Output, *, writes: bool) -> JobPersistence:
    return open_url(configured_url(args.url), out, writes=writes)


def open_url(url: str, out: Output, *, writes: bool) -> JobPersistence:
    """The store at ``url`` for a command, read-only unless ``writes``, never migrated; an
    outdated schema is a warning (or, for a write, an error that says to migrate).

    :raises CommandError: the store cannot be opened or its schema refuses the command.
    :raises CidxJobsError: as :func:`open_store` raises it.
    """
    try:
        store, _ = open_store(url, read_only=not writes)
    except CidxJobsError as error:
        clearer = _open_failure(error)
        if clearer is None:
            raise
        raise clearer from None
    try:
        warning = check_schema(store, writes=writes)
    except BaseException:
        store.close()
        raise
    if warning is not None:
        out.warn(warning)
        OUTDATED.append(warning)
    return store


#: The schema warnings of the stores this process opened: a storage failure after one is
#: most likely the old schema, and the error line says so (see cidx_jobs._cli.main).
OUTDATED: list[str] = []


def _job_json(job: SyncJob) -> dict[str, Any]:
    return serialization.to_dict(job)


def _short(text: str | None, width: int = 40) -> str:
    if not text:
        return "-"
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _lease_timeout(args: argparse.Namespace, store: JobPersistence) -> timedelta:
    seconds = getattr(args, "lease_timeout", None)
    return store.settings.lease_timeout if seconds is None else timedelta(seconds=seconds)


# -- list -----------------------------------------------------------------------------------


def _filter(args: argparse.Namespace) -> JobFilter:
    statuses = None
    if args.status:
        statuses = {
            JobStatus.parse(name.strip(), "--status")
            for value in args.status
            for name in value.split(",")
            if name.strip()
        }
    return JobFilter(
        user_id=args.user,
        project_id=args.project,
        statuses=statuses,
        created_after=args.since,
        created_before=args.until,
        limit=PAGE if args.all else min(args.limit, PAGE),
    )


def _pages(store: JobPersistence, filter: JobFilter, limit: int | None) -> Iterator[list[SyncJob]]:
    """The matching jobs page by page (keyset cursors), at most ``limit`` in all."""
    seen = 0
    while True:
        page = store.query_page(filter)
        jobs = page.jobs if limit is None else page.jobs[: limit - seen]
        seen += len(jobs)
        yield jobs
        if page.next_cursor is None or (limit is not None and seen >= limit):
            return
        filter = filter.next_page(page)


_LIST_COLUMNS = (
    Column("id"),
    Column("user", fold=True),
    Column("project", fold=True, drop=2),
    Column("status"),
    Column("progress", right=True, drop=1),
    Column("phase", fold=True, drop=4),
    Column("created"),
    Column("finished", drop=3),
    Column("error", fold=True),
)


def _list_row(job: SyncJob) -> list[Cell | str]:
    return [
        job.id,
        job.user_id,
        job.project_id,
        status_cell(job.status.value),
        f"{job.progress}%",
        job.phase or "-",
        format_time(job.created_at),
        format_time(job.completed_at),
        Cell(_short(job.error_message), "red" if job.error_message else None),
    ]


def cmd_list(args: argparse.Namespace, out: Output) -> int:
    with _open(args, out, writes=False) as store:
        filter = _filter(args)
        limit = None if args.all else args.limit
        total = store.count_jobs(filter) if args.all and out.progress_bars else None
        rows: list[list[Cell | str]] = []
        bar = out.progress("reading jobs", total) if args.all else contextlib.nullcontext(None)
        with bar as advance:
            for jobs in _pages(store, filter, limit):
                for job in jobs:
                    if args.json:
                        out.json(_job_json(job))
                    else:
                        rows.append(_list_row(job))
                if advance is not None:
                    advance(len(jobs))
        if args.json:
            return 0
        if not rows:
            out.line("no jobs match")
            return 0
        out.table(_LIST_COLUMNS, rows)
        if limit is not None and len(rows) == limit:
            matching = store.count_jobs(filter)
            if matching > limit:
                out.line(
                    f"{limit} of {matching} matching jobs, newest first; "
                    "--limit N or --all for more",
                    "dim",
                )
    return 0


# -- show -----------------------------------------------------------------------------------


def _lease_state(job: SyncJob, now: datetime, timeout: timedelta) -> tuple[str, bool | None]:
    if job.status not in ACTIVE_STATUSES:
        return "no lease (the job is not active)", None
    if job.heartbeat_at is None:
        return "expired (no heartbeat recorded)", True
    left = job.heartbeat_at + timeout - now
    if left.total_seconds() <= 0:
        taker = (
            "cidx-jobs recover marks it interrupted"
            if job.status is JobStatus.RUNNING
            else "a server's recovery re-queues it"
        )
        return f"expired {format_age(-left)} ago ({taker})", True
    return f"held, {format_age(left)} left", False


def cmd_show(args: argparse.Namespace, out: Output) -> int:
    with _open(args, out, writes=False) as store:
        job = store.load_job(args.id)
        if job is None:
            raise CommandError(f"no job with id {args.id!r}: check the id (cidx-jobs list)")
        checkpoints = store.list_checkpoints(job.id)
        resume = store.resume_point(job.id) if job.status is JobStatus.INTERRUPTED else None
        now = store.now()
        timeout = _lease_timeout(args, store)
        lease, expired = _lease_state(job, now, timeout)
    if args.json:
        out.json(
            {
                "job": _job_json(job),
                "lease": {
                    "owner_id": job.owner_id,
                    "heartbeat_at": job.heartbeat_at,
                    "expired": expired,
                    "lease_timeout_seconds": timeout.total_seconds(),
                },
                "checkpoints": [serialization.to_dict(c) for c in checkpoints],
                "resume_from": None if resume is None else resume.phase,
            }
        )
        return 0
    out.heading(f"job {job.id}")
    out.fields(
        [
            ("user", job.user_id),
            ("project", job.project_id),
            ("status", status_cell(job.status.value)),
            ("progress", f"{job.progress}%" + (f" ({job.phase})" if job.phase else "")),
            ("created", format_time(job.created_at)),
            ("started", format_time(job.started_at)),
            ("finished", format_time(job.completed_at)),
            ("error", Cell(job.error_message or "-", "red" if job.error_message else None)),
            ("metadata", json.dumps(job.metadata, ensure_ascii=False)),
        ]
    )
    out.heading("lease")
    heartbeat = format_time(job.heartbeat_at)
    if job.heartbeat_at is not None:
        heartbeat += f" ({format_age(now - job.heartbeat_at)} ago)"
    out.fields(
        [
            ("owner", job.owner_id or "-"),
            ("heartbeat", heartbeat),
            ("state", Cell(lease, "red" if expired else None)),
        ]
    )
    out.heading(f"checkpoints ({len(checkpoints)})")
    if checkpoints:
        out.table(
            (Column("phase"), Column("written"), Column("data", fold=True)),
            [
                [c.phase, format_time(c.created_at), _short(json.dumps(c.data), 60)]
                for c in checkpoints
            ],
            indent=2,
        )
    if job.status is JobStatus.INTERRUPTED:
        where = "the start" if resume is None else f"the {resume.phase!r} checkpoint"
        out.line(f"resumes from {where}")
    return 0


# -- stats ----------------------------------------------------------------------------------


def _oldest_active(store: JobPersistence) -> SyncJob | None:
    # One query per active status where the backend has it; the interface's default pages.
    return store.storage.oldest_active()


def _stale(store: JobPersistence, timeout: timedelta) -> list[SyncJob]:
    # A read: find_stale changes nothing; recovery's take_over is what takes a job.
    before = store.now() - timeout
    return store.storage.find_stale(before, store.owner_id, STALE_LIMIT)


def _describe(store: JobPersistence) -> StorageInfo | str:
    try:
        return store.storage.describe()
    except UnsupportedOperationError as error:
        return str(error)


def _count_row(status: JobStatus, jobs: int) -> list[Cell | str]:
    return [status_cell(status.value), str(jobs)]


def cmd_stats(args: argparse.Namespace, out: Output) -> int:
    with _open(args, out, writes=False) as store:
        counts = {status: store.count_jobs(JobFilter(statuses={status})) for status in JobStatus}
        total = store.count_jobs()
        oldest = _oldest_active(store)
        timeout = _lease_timeout(args, store)
        stale = _stale(store, timeout)
        top = store.storage.top_users(args.top)
        info = _describe(store)
        now = store.now()
    storage: dict[str, Any]
    if isinstance(info, StorageInfo):
        storage = {
            "location": info.location,
            "size_bytes": info.size_bytes,
            "schema_version": info.schema_version,
            "latest_schema_version": info.latest_schema_version,
            "pending_migrations": list(info.pending_migrations),
        }
    else:
        storage = {"unsupported": info}
    if args.json:
        out.json(
            {
                "jobs_by_status": {status.value: n for status, n in counts.items()},
                "total": total,
                "oldest_active": None if oldest is None else _job_json(oldest),
                "expired_leases": {
                    "lease_timeout_seconds": timeout.total_seconds(),
                    "count": len(stale),
                    "complete": len(stale) < STALE_LIMIT,
                    "job_ids": [job.id for job in stale],
                },
                "top_users": [{"user_id": user, "jobs": n} for user, n in top],
                "storage": storage,
            }
        )
        return 0
    out.heading("jobs by status")
    out.table(
        (Column("status"), Column("jobs", right=True)),
        [
            *(_count_row(status, n) for status, n in counts.items()),
            [Cell("total", "bold"), Cell(str(total), "bold")],
        ],
        indent=2,
    )
    out.line()
    if oldest is None:
        oldest_text: Cell | str = "none"
    else:
        oldest_text = (
            f"{oldest.id}: {oldest.status.value} since {format_time(oldest.created_at)} "
            f"({format_age(now - oldest.created_at)} ago), user {oldest.user_id}"
        )
    more = "" if len(stale) < STALE_LIMIT else "+"
    if stale:
        ids = ", ".join(job.id for job in stale[:5]) + (", …" if len(stale) > 5 else "")
        stale_text: Cell | str = Cell(
            f"{len(stale)}{more} active job(s) silent for over {format_age(timeout)}: {ids} "
            "(cidx-jobs recover marks the running ones interrupted; a server's recovery "
            "re-queues the others)",
            "red",
        )
    else:
        stale_text = f"none (lease timeout {format_age(timeout)})"
    out.fields([("oldest active job", oldest_text), ("expired leases", stale_text)], indent=0)
    out.line()
    out.heading(f"top {args.top} users")
    if top:
        out.table(
            (Column("user"), Column("jobs", right=True)),
            [[user, str(n)] for user, n in top],
            indent=2,
        )
    else:
        out.line("  none")
    out.line()
    out.heading("storage")
    if isinstance(info, StorageInfo):
        schema = "-" if info.schema_version is None else str(info.schema_version)
        if info.latest_schema_version is not None:
            schema += f" (this release writes {info.latest_schema_version})"
        out.fields(
            [
                ("location", info.location),
                ("size", format_bytes(info.size_bytes)),
                ("schema version", schema),
            ]
        )
    else:
        out.fields([("details", f"not supported by this backend: {info}")])
    return 0


# -- cleanup --------------------------------------------------------------------------------


def _cutoff_rows(cutoffs: dict[JobStatus, datetime]) -> list[list[Cell | str]]:
    return [
        [status_cell(status.value), format_time(cutoff)]
        for status, cutoff in sorted(cutoffs.items(), key=lambda item: item[0].value)
    ]


def cmd_cleanup(args: argparse.Namespace, out: Output) -> int:
    retention = None if args.retention_days is None else timedelta(days=args.retention_days)
    with _open(args, out, writes=not args.dry_run) as store:
        now = store.now()
        if args.dry_run or out.progress_bars:
            preview = store.run_cleanup(now, retention=retention, dry_run=True)
        if args.dry_run:
            if args.json:
                out.json(
                    {
                        "dry_run": True,
                        "jobs": preview.jobs_deleted,
                        "checkpoints": preview.checkpoints_deleted,
                        "cutoffs": {s.value: c for s, c in preview.cutoffs.items()},
                    }
                )
                return 0
            out.line(
                f"dry run: would delete {preview.jobs_deleted} job(s) and "
                f"{preview.checkpoints_deleted} checkpoint(s), nothing deleted"
            )
            if preview.cutoffs:
                out.line("jobs of these statuses that finished before these times go:")
                out.table(
                    (Column("status"), Column("finished before")),
                    _cutoff_rows(dict(preview.cutoffs)),
                    indent=2,
                )
            return 0
        total = preview.jobs_deleted if out.progress_bars else None
        started = time.monotonic()
        with out.progress("deleting expired jobs", total) as advance:
            reporting = JobPersistence(
                BatchReporting(store.storage, advance), hooks=store.hooks, settings=store.settings
            )
            report = reporting.run_cleanup(now, retention=retention)
        seconds = time.monotonic() - started
    if args.json:
        out.json(
            {
                "dry_run": False,
                "jobs": report.jobs_deleted,
                "checkpoints": report.checkpoints_deleted,
                "seconds": round(seconds, 3),
                "cutoffs": {s.value: c for s, c in report.cutoffs.items()},
            }
        )
        return 0
    out.line(
        f"deleted {report.jobs_deleted} job(s) and {report.checkpoints_deleted} "
        f"checkpoint(s) in {seconds:.2f} s"
    )
    return 0


# -- recover --------------------------------------------------------------------------------


def cmd_recover(args: argparse.Namespace, out: Output) -> int:
    with _open(args, out, writes=True) as store:
        timeout = _lease_timeout(args, store)
        report = store.recover_interrupted_jobs(lease_timeout=timeout)
        owner = store.owner_id
        # Give back the leases of the pending and queued jobs it took: held by this command,
        # whose process ends now, they would wait a whole lease timeout for a server; with a
        # heartbeat long past, the next server's recovery re-queues them at once.
        released = [
            job.id
            for job in report.requeue
            if store.storage.take_over(job, job.status, owner, RELEASED_HEARTBEAT)
        ]
    if args.json:
        out.json(
            {
                "lease_timeout_seconds": timeout.total_seconds(),
                "owner_id": owner,
                "interrupted": [
                    {
                        "job": _job_json(point.job),
                        "resume_from": None if point.checkpoint is None else point.checkpoint.phase,
                    }
                    for point in report.interrupted
                ],
                "requeue": [_job_json(job) for job in report.requeue],
                "released": released,
            }
        )
        return 0
    taken = len(report.interrupted) + len(report.requeue)
    if not taken:
        out.line(f"nothing to recover: no active job is silent for over {format_age(timeout)}")
        return 0
    rows: list[list[Cell | str]] = []
    for point in report.interrupted:
        resume = "start" if point.checkpoint is None else point.checkpoint.phase
        rows.append(
            [point.job.id, point.job.user_id, "running", status_cell("interrupted"), resume]
        )
    for job in report.requeue:
        rows.append([job.id, job.user_id, job.status.value, status_cell(job.status.value), "-"])
    out.line(f"took over {taken} job(s) whose owner was silent for over {format_age(timeout)}:")
    out.table(
        (
            Column("id"),
            Column("user", fold=True),
            Column("was"),
            Column("now"),
            Column("resume from"),
        ),
        rows,
        indent=2,
    )
    if report.interrupted:
        out.line(
            "interrupted jobs wait for a worker to resume them: a server finds them with "
            "query_jobs(JobFilter(statuses={'interrupted'})) and resume_point(id), then calls "
            "update_job_status(id, 'running', expected='interrupted')"
        )
    if report.requeue:
        out.line(
            "pending and queued jobs keep their status, with their lease released: the next "
            "server's recovery (at its start) takes them to re-queue"
        )
    return 0


# -- cancel and fail ------------------------------------------------------------------------


def _override(args: argparse.Namespace, out: Output, status: JobStatus) -> int:
    with _open(args, out, writes=True) as store:
        before = store.load_job(args.id)
        if before is None:
            raise CommandError(f"no job with id {args.id!r}: check the id (cidx-jobs list)")
        # Compare-and-set: a job that finished meanwhile is never reopened or rewritten.
        changed = store.update_job_status(
            args.id, status, error_message=args.reason, expected=NOT_FINISHED
        )
        after = store.load_job(args.id)
    current = after.status if after is not None else before.status
    if args.json:
        out.json(
            {
                "job_id": args.id,
                "changed": changed,
                "previous_status": before.status.value,
                "status": current.value,
            }
        )
    elif changed:
        out.line(f"job {args.id}: {before.status.value} -> {status.value}")
        if before.status is JobStatus.RUNNING:
            out.line(
                f"its worker ({before.owner_id or 'unknown owner'}) is not told; it should "
                "check the status before it writes again"
            )
    if not changed:
        if not args.json:
            out.error(
                f"job {args.id} is {current.value}, which is finished: it was not changed "
                f"(only {', '.join(sorted(s.value for s in NOT_FINISHED))} jobs can be "
                f"marked {status.value})"
            )
        return 1
    return 0


def cmd_cancel(args: argparse.Namespace, out: Output) -> int:
    return _override(args, out, JobStatus.CANCELLED)


def cmd_fail(args: argparse.Namespace, out: Output) -> int:
    return _override(args, out, JobStatus.FAILED)


# -- migrate --------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, out: Output) -> int:
    url = configured_url(args.url)
    backend = backend_name(url)
    created = False
    try:
        store, without_migrating = open_store(url, read_only=args.check, migrating=not args.check)
    except StorageUnavailableError as error:
        clearer = _open_failure(error)
        if clearer is None:
            raise
        if args.check:
            raise CommandError(
                f"{clearer}; `cidx-jobs migrate --check` looks without creating it"
            ) from None
        # `migrate` creates the database a mistyped path would never get from other commands.
        store, without_migrating = open_store(url, create=True)
        created = True
    with store:
        try:
            info = store.storage.describe()
        except UnsupportedOperationError:
            info = None
        if info is None or info.schema_version is None:
            message = f"the {backend} backend has no versioned schema: nothing to migrate"
            if args.json:
                out.json({"schema_version": None, "pending": [], "migrated": False})
            else:
                out.line(message)
            return 0
        before = info.schema_version
        pending = list(info.pending_migrations)
        if created:
            if args.json:
                out.json(
                    {"schema_version": before, "previous_schema_version": None, "created": True}
                )
            else:
                out.line(f"{info.location}: created the database, at schema version {before}")
            return 0
        if args.check:
            if args.json:
                out.json(
                    {
                        "schema_version": before,
                        "latest_schema_version": info.latest_schema_version,
                        "pending": pending,
                    }
                )
            elif pending:
                out.line(
                    f"{info.location}: schema version {before}, this release writes "
                    f"{info.latest_schema_version}; `cidx-jobs migrate` would apply:"
                )
                for step in pending:
                    out.line(f"  {step}")
            else:
                out.line(f"{info.location}: schema version {before}, up to date")
            return 1 if pending else 0
        if without_migrating:
            with out.activity("migrating"):
                before, after = store.storage.migrate()
        else:
            after = before  # the backend migrated when it opened
    if args.json:
        out.json(
            {
                "schema_version": after,
                "previous_schema_version": before,
                "migrated": after != before,
                "applied": pending if after != before else [],
            }
        )
    elif after != before:
        out.line(f"{info.location}: migrated from schema version {before} to {after}")
        for step in pending:
            out.line(f"  applied {step}")
    else:
        out.line(f"{info.location}: schema version {after}, already up to date")
    return 0


# -- doctor ---------------------------------------------------------------------------------


def _schema_check(info: StorageInfo | str) -> HealthCheck:
    if not isinstance(info, StorageInfo) or info.schema_version is None:
        return HealthCheck(name="schema", health=Health.OK, summary="no versioned schema")
    if info.latest_schema_version is None or info.schema_version >= info.latest_schema_version:
        return HealthCheck(
            name="schema",
            health=Health.OK,
            summary=f"schema version {info.schema_version}, up to date",
            data={"schema_version": info.schema_version},
        )
    return HealthCheck(
        name="schema",
        health=Health.PROBLEM,
        summary=(
            f"schema version {info.schema_version}; this release writes "
            f"{info.latest_schema_version}"
        ),
        advice="upgrade every server to this release, then run cidx-jobs migrate",
        data={"schema_version": info.schema_version, "pending": list(info.pending_migrations)},
    )


def _lease_check(store: JobPersistence, timeout: timedelta) -> HealthCheck:
    stale = _stale(store, timeout)
    if not stale:
        return HealthCheck(
            name="leases",
            health=Health.OK,
            summary=f"no active job is silent for over {format_age(timeout)}",
        )
    running = [job for job in stale if job.status is JobStatus.RUNNING]
    ids = ", ".join(job.id for job in stale[:5]) + (", …" if len(stale) > 5 else "")
    more = "+" if len(stale) >= STALE_LIMIT else ""
    if not running:
        # Pending or queued jobs of a dead owner (or released by cidx-jobs recover): a
        # server's recovery re-queues them; running recover again would change nothing.
        return HealthCheck(
            name="leases",
            health=Health.WARNING,
            summary=(
                f"{len(stale)}{more} pending or queued job(s) whose owner has been silent for "
                f"over {format_age(timeout)}: {ids}"
            ),
            advice=(
                "a server's recover_interrupted_jobs() re-queues them (at its start, or in its "
                "periodic sweep); if none runs, start one"
            ),
            data={"job_ids": [job.id for job in stale], "running": 0},
        )
    return HealthCheck(
        name="leases",
        health=Health.PROBLEM,
        summary=(
            f"{len(stale)}{more} active job(s) ({len(running)} running) whose owner has been "
            f"silent for over {format_age(timeout)}: {ids}"
        ),
        advice=(
            "run cidx-jobs recover (a restarting server does it too); if their worker is alive, "
            "make it call store.heartbeat() more often than the lease timeout"
        ),
        data={"job_ids": [job.id for job in stale], "running": len(running)},
    )


def _clock_check(store: JobPersistence, timeout: timedelta) -> HealthCheck:
    try:
        sent = utcnow()
        server = store.storage.server_time()
        received = utcnow()
    except UnsupportedOperationError:
        return HealthCheck(
            name="clock",
            health=Health.OK,
            summary="no database server: the embedded database uses this host's clock",
        )
    trip = received - sent
    offset = (server - (sent + trip / 2)).total_seconds()
    data = {"offset_seconds": offset, "round_trip_seconds": trip.total_seconds()}
    summary = (
        f"the database server's clock is {abs(offset):.3f} s "
        f"{'ahead of' if offset > 0 else 'behind'} this host's "
        f"(±{trip.total_seconds() / 2:.3f} s)"
    )
    if abs(offset) < CLOCK_WARNING_SECONDS:
        return HealthCheck(name="clock", health=Health.OK, summary=summary, data=data)
    problem = abs(offset) >= timeout.total_seconds() / 10
    return HealthCheck(
        name="clock",
        health=Health.PROBLEM if problem else Health.WARNING,
        summary=summary,
        advice=(
            "synchronise the clocks of the servers and the database host (chrony or "
            "systemd-timesyncd); leases compare times that different hosts wrote"
        ),
        data=data,
    )


def _open_check(error: CidxJobsError) -> HealthCheck:
    if isinstance(error, StorageCorruptError):
        advice = DAMAGE_ADVICE
    elif isinstance(error, StoragePermissionError):
        advice = (
            "run cidx-jobs as a user that can read the database (the service's user), or "
            "grant read permission on it; the servers need read and write permission"
        )
    else:
        advice = "check the URL, the file and its folder, then run cidx-jobs doctor again"
    return HealthCheck(
        name="open",
        health=Health.PROBLEM,
        summary=f"cannot open the store: {type(error).__name__}: {error}",
        advice=advice,
    )


def _doctor_checks(args: argparse.Namespace, out: Output, backend: str) -> list[HealthCheck]:
    try:
        store, _ = open_store(configured_url(args.url), read_only=True)
    except (ConfigError, UnsupportedOperationError):
        raise
    except CidxJobsError as error:  # a problem to report, with what to do about it
        return [_open_check(error)]
    with store:
        timeout = _lease_timeout(args, store)
        checks = [_schema_check(_describe(store))]
        try:
            with out.activity("checking the database"):
                checks.extend(store.storage.check_health(thorough=args.full))
        except UnsupportedOperationError:
            checks.append(
                HealthCheck(
                    name="storage",
                    health=Health.OK,
                    summary=f"the {backend} backend has no self-check",
                )
            )
        try:
            checks.append(_lease_check(store, timeout))
        except CidxJobsError as error:
            checks.append(
                HealthCheck(
                    name="leases",
                    health=Health.PROBLEM,
                    summary=f"cannot read the leases: {type(error).__name__}: {error}",
                    advice=DAMAGE_ADVICE
                    if isinstance(error, StorageCorruptError)
                    else "if the schema check found an old schema, that is why: upgrade every "
                    "server to this release, then run cidx-jobs migrate",
                )
            )
        checks.append(_clock_check(store, timeout))
    return checks


def cmd_doctor(args: argparse.Namespace, out: Output) -> int:
    backend = backend_name(configured_url(args.url))
    checks = _doctor_checks(args, out, backend)
    problems = [c for c in checks if c.health is Health.PROBLEM]
    if args.json:
        out.json(
            {
                "ok": not problems,
                "checks": [
                    {
                        "name": c.name,
                        "health": c.health.value,
                        "summary": c.summary,
                        "advice": c.advice,
                        "data": dict(c.data),
                    }
                    for c in checks
                ],
            }
        )
        return 1 if problems else 0
    out.table(
        (Column("check"), Column("health"), Column("finding", fold=True)),
        [[c.name, health_cell(c.health.value), c.summary] for c in checks],
    )
    todo = [c for c in checks if c.health is not Health.OK and c.advice]
    if todo:
        out.line()
        out.heading("what to do")
        for c in todo:
            out.line(f"  {c.name}: {c.advice}", HEALTH_STYLE_OF.get(c.health))
    out.line()
    warnings = sum(c.health is Health.WARNING for c in checks)
    if problems:
        out.line(f"{len(problems)} problem(s), {warnings} warning(s)", "bold red")
        return 1
    out.line(f"no problems, {warnings} warning(s)", "green")
    return 0


HEALTH_STYLE_OF = {Health.WARNING: "yellow", Health.PROBLEM: "red"}


# -- backup ---------------------------------------------------------------------------------


#: The first bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"


def _backup_target(dest: str, force: bool) -> Path:
    target = Path(dest).expanduser()
    if dest.endswith(("/", os.sep)) and not target.is_dir():
        raise CommandError(
            f"the folder {target} does not exist: create it, or drop the trailing / to name a file",
            status=2,
        )
    if target.is_dir():
        target = target / f"jobs-{utcnow().strftime('%Y%m%dT%H%M%SZ')}.db"
    if not target.parent.is_dir():
        raise CommandError(f"the folder {target.parent} does not exist: create it", status=2)
    if target.exists():
        if not force:
            raise CommandError(
                f"{target} exists: choose another name, or pass --force to replace it", status=2
            )
        if not target.is_file() or not _looks_like_a_database(target):
            raise CommandError(
                f"{target} is not an SQLite database, so --force does not replace it: "
                "remove it yourself, or choose another name",
                status=2,
            )
    return target


def _looks_like_a_database(path: Path) -> bool:
    try:
        with open(path, "rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError:
        return False
    # Not an empty file: the database's own -wal is empty whenever nobody wrote since it
    # was opened, and replacing it would break every server that has the database open.
    return head == SQLITE_HEADER


def _is_part_of(source: Path, target: Path) -> bool:
    """Whether ``target`` is the database ``source`` or one of the files SQLite keeps beside it."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        own = Path(f"{source}{suffix}")
        if _same_file(own, target) or own.absolute() == target.absolute():
            return True
    return False


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def cmd_backup(args: argparse.Namespace, out: Output) -> int:
    backend = backend_name(configured_url(args.url))
    target = _backup_target(args.dest, args.force)
    with _open(args, out, writes=False) as store:
        info = _describe(store)
        source_path = Path(info.location) if isinstance(info, StorageInfo) else None
        if source_path is not None and _is_part_of(source_path, target):
            raise CommandError(
                f"{target} is the database itself or one of its companion files (-wal, -shm, "
                "-journal): write the backup to another file",
                status=2,
            )
        # Copy beside the target, then rename over it: an interrupted copy leaves the
        # previous backup whole.
        partial = target.parent / f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        started = time.monotonic()
        try:
            with out.activity(f"backing up to {target}"):
                store.storage.backup(partial.absolute())
            if partial.exists():
                # The copy holds what the database holds: never readable by more people
                # than the database (or the backup it replaces) is.
                modes = [
                    path.stat().st_mode
                    for path in (source_path, target)
                    if path is not None and path.exists()
                ]
                if modes:
                    os.chmod(partial, min(mode & 0o777 for mode in modes) & partial.stat().st_mode)
                os.replace(partial, target)
        except UnsupportedOperationError as error:
            raise CommandError(str(error), status=2) from None
        finally:
            with contextlib.suppress(OSError):
                partial.unlink()
        seconds = time.monotonic() - started
    size = target.stat().st_size if target.is_file() else None
    source = info.location if isinstance(info, StorageInfo) else f"the {backend} store"
    if args.json:
        out.json(
            {
                "source": source,
                "target": str(target.absolute()),
                "bytes": size,
                "seconds": round(seconds, 3),
            }
        )
        return 0
    out.line(f"backed up {source} to {target} ({format_bytes(size)}, {seconds:.2f} s)")
    return 0


#: How many ids of lost jobs ``salvage`` prints (``--json`` lists them all).
LOST_IDS_SHOWN = 20


def cmd_salvage(args: argparse.Namespace, out: Output) -> int:
    # Salvage reads SQLite's file format: it is the sqlite backend's, not a store's
    # (a damaged file must never be opened as a store), so it is reached directly.
    try:
        from cidx_jobs_sqlite._operations import salvage_file
    except ImportError:
        raise CommandError(
            "salvage reads SQLite files with the sqlite backend's own salvage, which is not "
            "installed: pip install cidx-jobs-sqlite",
            status=2,
        ) from None
    with out.activity(f"salvaging {args.source}"):
        report = salvage_file(Path(args.source), Path(args.target), force=args.force)
    status = 0 if report.complete else 1
    if args.json:
        out.json(
            {
                "source": str(report.source),
                "target": str(report.target),
                "jobs_kept": report.jobs_kept,
                "checkpoints_kept": report.checkpoints_kept,
                "jobs_lost": list(report.jobs_lost),
                "checkpoints_lost": report.checkpoints_lost,
                "rows_unreadable": report.rows_unreadable,
                "wal_repair": report.wal_repair,
                "wal_damage": report.wal_damage,
                "complete": report.complete,
                "seconds": round(report.seconds, 3),
            }
        )
        return status
    out.line(
        f"salvaged {report.source} into {report.target} ({report.seconds:.2f} s): kept "
        f"{report.jobs_kept} job(s) and {report.checkpoints_kept} checkpoint(s)"
    )
    lost = len(report.jobs_lost)
    if lost:
        shown = ", ".join(report.jobs_lost[:LOST_IDS_SHOWN])
        more = (
            f" and {lost - LOST_IDS_SHOWN} more (--json lists them all)"
            if lost > LOST_IDS_SHOWN
            else ""
        )
        out.line(f"lost {lost} job(s) that an index still names: {shown}{more}")
    if report.checkpoints_lost or report.rows_unreadable:
        out.line(
            f"lost {report.checkpoints_lost} checkpoint(s); {report.rows_unreadable} row(s) "
            "could not be read"
        )
    if report.wal_repair is not None:
        out.line(f"repaired in the salvage's copy (the file is unchanged): {report.wal_repair}")
    if report.wal_damage is not None:
        out.line(f"not salvaged: {report.wal_damage}")
    if report.complete:
        out.line("complete: every page of the tables was read and nothing known was lost")
    else:
        out.line(
            "incomplete: some pages or commits could not be read, so more may be lost than "
            f"counted; keep {report.source} (with its -wal) until you have what you need"
        )
    return status
