"""Indexes: what each secondary index of ``sync_jobs`` costs on writes and buys on reads.

Two tables, both on raw ``sqlite3`` with the backend's pragmas and statements (the floor's
connection), so that the figures are the schema's and nothing else's:

* **writes**: the same inserts, status updates and deletes on copies of one database that
  differ only in their indexes: the backend's schema, the backend's schema without one of
  its indexes (each in turn), with ``sync_jobs_status_finished`` made partial (finished
  jobs only), the *story schema* of issue 14 (only ``(user_id, status, created_at)`` and
  ``(created_at)``), and no secondary index at all. Interleaved like every other table, so
  the differences are the indexes' cost.
* **reads**: every query shape the product has (the API's filters and pages, the lease
  statements, the cleanup, the counts, and the statistics the CLI will show), explained
  on the backend's schema to find the indexes it uses; then, for each index, every shape
  that uses it is timed on a copy of the large database without that index against the
  copy with every index, with both query plans. Where a different SQL shape (or a changed
  index) would do without the index, it is timed too (``rewritten`` / ``changed``): what
  the backend's SQL would have to change to.

The variants are built once from the cached query databases (indexes dropped or created,
then ``VACUUM``) and cached beside them.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cidx_jobs import JobStatus
from cidx_jobs_sqlite._schema import ACTIVE_SQL, LEASED_SQL

from . import _data, _report, _sqlite
from ._report import Report
from ._settings import Settings
from ._timing import Call, Samples, interleave, time_once

BACKEND, STORY, NONE = "the backend's schema", "story schema", "no secondary index"
EXPIRED = 1000
DAY_US = 86_400_000_000
PAGE_SIZE = 100
QUERY_USERS = 20
#: The statuses a job can have, sorted as the backend sorts them in its SQL.
ALL_STATUSES = sorted(status.value for status in JobStatus)
ACTIVE = sorted(status.value for status in JobStatus if status.is_active)
#: The one change of an index the figures favour, measured beside its removal:
#: ``sync_jobs_status_finished`` holding finished jobs only, so that saving a job and starting
#: it no longer touch it. SQLite uses a partial index only for a query whose WHERE clause
#: contains the index's own terms, so the cleanup's terms must then say it too.
FINISHED_INDEX = "sync_jobs_status_finished"
PARTIAL = f"{FINISHED_INDEX} of finished jobs only"
PARTIAL_FINISHED = (
    "CREATE INDEX sync_jobs_status_finished ON sync_jobs "
    f"(status, coalesce(completed_at, created_at)) WHERE status NOT IN {ACTIVE_SQL}"
)

WRITE_HEADERS = [
    "schema",
    "secondary indexes",
    "insert µs",
    "to running µs",
    "to completed µs",
    f"delete {EXPIRED:,}: CPU ms",
    "insert x story",
]
READ_HEADERS = [
    "index removed",
    "query shape",
    "plan with every index",
    "plan without it",
    "with µs",
    "without µs",
    "x",
]


@dataclasses.dataclass(frozen=True)
class Shape:
    """One query shape: its SQL and the parameter lists its calls rotate over."""

    name: str
    sql: str
    params: list[list[Any]]
    #: The result has one order (else a LIMIT may pick other rows: compare counts only).
    ordered: bool = True


@dataclasses.dataclass(frozen=True)
class Alternative:
    """Another way to serve the shapes of ``index`` without it: other SQL for them
    (``rewrites``: shape name -> SQL and parameter lists), on the database without the
    index, where the statements ``replacement`` (a changed index) are run first."""

    index: str
    label: str
    replacement: tuple[str, ...]
    rewrites: dict[str, tuple[str, list[list[Any]]]]


def run(settings: Settings, report: Report) -> None:
    """Measure the write cost and the read benefit of every secondary index."""
    indexes = _sqlite.backend_indexes(settings.cache_dir)
    writes(settings, report, indexes)
    reads(settings, report, indexes)


# -- writes -----------------------------------------------------------------------------------


def write_variants(indexes: dict[str, str]) -> list[tuple[str, list[str], list[str]]]:
    """(label, indexes dropped, statements run) of each schema the write table compares."""
    every = list(indexes)
    changed = [(PARTIAL, [FINISHED_INDEX], [PARTIAL_FINISHED])] if FINISHED_INDEX in every else []
    return [
        (BACKEND, [], []),
        *[(f"without {name}", [name], []) for name in every],
        *changed,
        (STORY, every, list(_sqlite.STORY_INDEXES)),
        (NONE, every, []),
    ]


def story_db(settings: Settings, base: Path, indexes: dict[str, str] | None = None) -> Path:
    """``base`` (a cached query database) rebuilt with the story schema's two indexes."""
    every = list(indexes if indexes is not None else _sqlite.backend_indexes(settings.cache_dir))
    return _sqlite.variant_db(
        settings.cache_dir, base, "story", every, _sqlite.STORY_INDEXES, settings.log
    )


def _variant_path(
    settings: Settings, base: Path, label: str, drop: list[str], create: list[str]
) -> Path:
    if label == STORY:
        return story_db(settings, base)
    # The backend's schema is vacuumed too, so that every variant is laid out alike.
    if label == BACKEND:
        name = "vacuumed"
    elif label == NONE:
        name = "bare"
    elif label == PARTIAL:
        name = "partial-finished"
    else:
        name = "without-" + "-".join(drop)
    return _sqlite.variant_db(settings.cache_dir, base, name, drop, create, settings.log)


def writes(settings: Settings, report: Report, indexes: dict[str, str]) -> None:
    """Insert, status updates and deletes on databases that differ only in their indexes."""
    size = settings.ops_db_size
    base = _sqlite.query_db(settings.cache_dir, size, settings.users, settings.log)
    variants = write_variants(indexes)
    sources = {
        label: _variant_path(settings, base, label, drop, create)
        for label, drop, create in variants
    }
    settings.log(f"index write costs on {size:,}-job databases ({len(variants)} schemas) ...")
    paths = {
        label: _sqlite.copy_db(source, settings.work_dir / f"indexes-write-{i}.db")
        for i, (label, source) in enumerate(sources.items())
    }
    conns = {label: _sqlite.raw_connect(path) for label, path in paths.items()}
    try:
        figures = _measure_writes(settings, conns)
        counts = {label: len(_sqlite.secondary_indexes(conn)) for label, conn in conns.items()}
    finally:
        for conn in conns.values():
            conn.close()
        for path in paths.values():
            _sqlite.remove_db(path)

    section = report.section(
        "indexes-writes",
        f"Indexes, write side: raw sqlite3 on {size:,}-job databases that differ only in "
        "their indexes",
        WRITE_HEADERS,
    )
    full = {kind: figures[kind][BACKEND] for kind in figures}
    story_insert = figures["insert"][STORY].median_us()
    for label, drop, _create in variants:
        cells = [label, str(counts[label])]
        data: dict[str, Any] = {
            "schema": label,
            "dropped": drop,
            "secondary_indexes": counts[label],
        }
        for kind in ("insert", "to running", "to completed", "delete"):
            sample = figures[kind][label]
            median = sample.median_us()
            saved = full[kind].median_us() - median
            if kind == "delete":
                # A few runs of a batch that writes thousands of pages: the wall time is
                # the disk's noise more than the indexes' (runs differ by half), the
                # thread's CPU time is steady.
                cpu = sample.cpu_us() or 0.0
                cpu_saved = (full[kind].cpu_us() or 0.0) - cpu
                cell = _report.ms(cpu / 1000)
                if label != BACKEND:
                    cell += f" ({_signed(-cpu_saved / 1000, ms=True)})"
            else:
                cell = _report.us(median)
                if label != BACKEND:
                    cell += f" ({_signed(-saved)})"
            cells.append(cell)
            key = kind.replace(" ", "_")
            data[f"{key}_median_us"] = median
            data[f"{key}_p99_us"] = sample.p99_us()
            data[f"{key}_cpu_us"] = sample.cpu_us()
            data[f"{key}_saved_us"] = saved
            cpu_now, cpu_full = sample.cpu_us(), full[kind].cpu_us()
            data[f"{key}_cpu_saved_us"] = (
                cpu_full - cpu_now if cpu_now is not None and cpu_full is not None else None
            )
            data[f"{key}_round_spread"] = sample.spread()
            data[f"{key}_calls"] = sample.n
        insert_median = figures["insert"][label].median_us()
        cells.append(_report.ratio(insert_median / story_insert))
        data["insert_ratio_to_story"] = insert_median / story_insert
        section.add(cells, **data)
    section.notes.append(
        f"{settings.index_ops:,} inserts of new pending jobs (the backend's INSERT, with the "
        "lease stamp save_job binds), then the same jobs moved to running (the backend's "
        "UPDATE: status, started_at and the lease) and to completed (status, completed_at), "
        f"each call one autocommit statement, in {settings.rounds} interleaved rounds; "
        f"delete: {EXPIRED:,} expired jobs (no checkpoints) deleted by one statement that "
        "finds them by rowid, so that only their indexes' upkeep is timed (finding them is "
        f"in the read table), {settings.cleanup_rounds} runs, the WAL checkpointed before "
        "each; the thread's CPU time per run (the JSON has the wall times too, which the "
        "disk makes vary by half from run to run). Every database is a vacuumed copy of "
        "the same jobs. Medians per call but for the delete. In brackets: the difference "
        "from the backend's schema (for one index removed: what it costs). "
        "Progress updates (progress, phase) and checkpoint saves touch no secondary index; "
        "status updates touch only the indexes with status (or the lease columns) in them. "
        f"{PARTIAL}: the index changed to a partial one, WHERE status NOT IN the active "
        "ones. story schema: only (user_id, status, created_at) and (created_at), issue "
        "14's baseline. insert x story: the insert's median / the story schema's."
    )


def _signed(value: float, *, ms: bool = False) -> str:
    text = _report.ms(abs(value)) if ms else _report.us(abs(value))
    return ("+" if value >= 0 else "-") + text


def _measure_writes(
    settings: Settings, conns: dict[str, sqlite3.Connection]
) -> dict[str, dict[str, Samples]]:
    n, rounds = settings.index_ops, settings.rounds
    jobs = _data.new_jobs(seed=701, count=n, users=settings.users)
    owner = _sqlite.FLOOR_OWNER
    params = [_sqlite.insert_params(job, _compact(job.metadata), owner, _data.NOW) for job in jobs]
    ids = [job.id for job in jobs]
    order = ids[:]
    random.Random(7).shuffle(order)
    now = _data.NOW_US

    def run_all(make: Callable[[sqlite3.Connection], list[Call]]) -> dict[str, Samples]:
        return interleave({label: make(conn) for label, conn in conns.items()}, rounds)

    def bind(conn: sqlite3.Connection, sql: str, p: Sequence[Any]) -> Call:
        return lambda: conn.execute(sql, p)

    insert = _sqlite.INSERT_JOB
    figures = {"insert": run_all(lambda c: [bind(c, insert, p) for p in params])}

    def updates(status: JobStatus) -> Callable[[sqlite3.Connection], list[Call]]:
        sql = _sqlite.status_sql(status)
        return lambda c: [bind(c, sql, _sqlite.status_params(status, now, i, owner)) for i in order]

    figures["to running"] = run_all(updates(JobStatus.RUNNING))
    figures["to completed"] = run_all(updates(JobStatus.COMPLETED))
    for label, conn in conns.items():
        row = conn.execute(
            "SELECT count(*) FROM sync_jobs WHERE id = ? AND status = 'completed' AND owner_id = ?",
            (ids[0], owner),
        ).fetchone()
        if row[0] != 1:
            raise RuntimeError(f"{label}: the status updates did not apply")

    # Deletes: each run deletes rows inserted just before it (untimed), found by rowid.
    first: dict[str, int] = {}

    def setup(label: str, round_: int) -> None:
        conn = conns[label]
        first[label] = int(conn.execute("SELECT max(rowid) FROM sync_jobs").fetchone()[0])
        rows = _data.expired_rows(30_000 + round_, EXPIRED, settings.users)
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_sqlite.INSERT_JOB, rows)
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    deleted: dict[str, list[int]] = {label: [] for label in conns}

    def delete(label: str) -> Call:
        conn = conns[label]

        def call() -> None:
            cursor = conn.execute("DELETE FROM sync_jobs WHERE rowid > ?", (first[label],))
            deleted[label].append(cursor.rowcount)

        return call

    runs = settings.cleanup_rounds
    figures["delete"] = interleave(
        {label: [delete(label)] * runs for label in conns}, runs, setup=setup
    )
    for label, counts in deleted.items():
        if set(counts) != {EXPIRED}:
            raise RuntimeError(f"{label}: the deletes removed {counts} rows, not {EXPIRED}")
    return figures


def _compact(value: dict[str, Any]) -> str:
    # What core binds: compact JSON, UTF-8 kept.
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# -- reads ------------------------------------------------------------------------------------


def shapes(settings: Settings) -> list[Shape]:
    """Every query shape of the product: the API's pages and counts, the lease statements,
    the cleanup, and the statistics the CLI will show. Each one's SQL is the backend's
    (its query builder's, its lease statements, its cleanup batch's subquery and dry run),
    except the statistics, whose SQL is not written yet: for them, the plain SQL (and for
    the oldest active job also one index range per active status)."""
    now = _data.NOW_US
    day = DAY_US
    two_weeks = now - 14 * day
    cursor = [now - 15 * day, "~"]  # mid-history; "~" sorts after every id
    users = [_data.user_name((i * 37) % settings.users) for i in range(QUERY_USERS)]
    projects = [f"project{(i * 7) % 200:03d}" for i in range(QUERY_USERS)]
    select, count, page = _sqlite.select_sql, _sqlite.count_sql, _sqlite.page_params
    limit = PAGE_SIZE + 1  # one more row tells whether a next page exists

    def per_user(statuses: Sequence[str], *rest: Any) -> list[list[Any]]:
        return [page(statuses, [u, *rest], limit) for u in users]

    def once(statuses: Sequence[str], *rest: Any, offset: int = 0) -> list[list[Any]]:
        return [page(statuses, list(rest), limit, offset)]

    statuses = [s.value for s in _sqlite.FINISHED]

    def cutoff(at: int, tail: Sequence[Any] = ()) -> list[list[Any]]:
        params: list[Any] = []
        for status in statuses:
            params += [status, at]
        return [params + list(tail)]

    batch = f"SELECT rowid FROM sync_jobs WHERE {_sqlite.cleanup_where(len(statuses))} LIMIT ?"
    stale_before = now - 3600 * 1_000_000
    every_job = [
        Shape(
            "every job, page 500 by offset",
            select(),
            once([], offset=499 * PAGE_SIZE),
        )
    ]
    return [
        Shape("user's newest page", select(user=True), per_user([])),
        Shape(
            "user's newest page, one status (failed)",
            select(user=True, statuses=1),
            per_user(["failed"]),
        ),
        Shape(
            "user, completed, last 14 days (query 100)",
            select(user=True, created_after=True, created_before=True, statuses=1),
            per_user(["completed"], two_weeks, now),
        ),
        Shape(
            "user, failed or cancelled, last 14 days",
            select(user=True, created_after=True, created_before=True, statuses=2),
            per_user(["cancelled", "failed"], two_weeks, now),
        ),
        Shape(
            "user, last 14 days, any status",
            select(user=True, created_after=True, created_before=True),
            per_user([], two_weeks, now),
        ),
        Shape(
            "user's page by cursor (mid-history)",
            select(user=True, keyset=True),
            per_user([], *cursor),
        ),
        *(every_job if _size_of(settings) > 500 * PAGE_SIZE else []),
        Shape("every job, page by cursor (mid-history)", select(keyset=True), once([], *cursor)),
        Shape("every running job, newest first", select(statuses=1), once(["running"])),
        Shape("every completed job, newest first", select(statuses=1), once(["completed"])),
        Shape(
            "every failed job, by cursor (mid-history)",
            select(keyset=True, statuses=1),
            once(["failed"], *cursor),
        ),
        Shape(
            "every job of one day",
            select(created_after=True, created_before=True),
            once([], now - 2 * day, now - day),
        ),
        Shape(
            "every job of a project",
            select(project=True),
            [page([], [p], limit) for p in projects],
        ),
        # The cleanup's batch (the subquery of its DELETE) with a cutoff that expires the
        # oldest day of the history, and with one that expires nothing (the daily run of a
        # server that cleaned up yesterday); and its dry run.
        Shape(
            "cleanup batch (1,000 of the oldest day)",
            batch,
            cutoff(now - 29 * day, [1000]),
            ordered=False,
        ),
        Shape(
            "cleanup batch, nothing expired", batch, cutoff(now - 60 * day, [1000]), ordered=False
        ),
        Shape("cleanup dry run (count)", _sqlite.count_expired_sql(), cutoff(now - 29 * day)),
        Shape("heartbeat (an owner's leased jobs)", _sqlite.RENEW_LEASES, [[now, "bench-owner"]]),
        Shape(
            "recovery (leased jobs, stale lease)",
            _sqlite.FIND_STALE,
            [["bench-owner", stale_before, 500]],
            ordered=False,
        ),
        Shape("count: a user's jobs", count(user=True), [[u] for u in users]),
        Shape(
            "count: a user's jobs of a status",
            count(user=True, statuses=1),
            [["completed", u] for u in users],
        ),
        Shape("count: running jobs", count(statuses=1), [["running"]]),
        Shape(
            "count: one day's jobs",
            count(created_after=True, created_before=True),
            [[now - 2 * day, now - day]],
        ),
        Shape("count: every job", count(), [[]]),
        Shape(
            "stats: jobs per status", "SELECT status, count(*) FROM sync_jobs GROUP BY status", [[]]
        ),
        Shape(
            "stats: oldest active job, IN list",
            f"SELECT {_sqlite.JOB_COLUMNS_SQL} FROM sync_jobs WHERE status IN {ACTIVE_SQL} "
            "ORDER BY created_at, id LIMIT 1",
            [[]],
        ),
        Shape(
            "stats: oldest active job, one range per status",
            f"SELECT {_sqlite.JOB_COLUMNS_SQL} FROM sync_jobs WHERE rowid = (SELECT r FROM ("
            + " UNION ALL ".join(
                "SELECT * FROM (SELECT rowid AS r, created_at AS c, id AS i FROM sync_jobs "
                "WHERE status = ? ORDER BY created_at, id LIMIT 1)"
                for _ in ACTIVE
            )
            + ") ORDER BY c, i LIMIT 1)",
            [list(ACTIVE)],
        ),
        Shape(
            "stats: leased jobs whose lease expired",
            "SELECT count(*) FROM sync_jobs INDEXED BY sync_jobs_active_owner "
            f"WHERE status IN {LEASED_SQL} AND (heartbeat_at IS NULL OR heartbeat_at < ?)",
            [[stale_before]],
        ),
        Shape(
            "stats: top 10 users by jobs",
            "SELECT user_id, count(*) AS jobs FROM sync_jobs GROUP BY user_id "
            "ORDER BY jobs DESC, user_id LIMIT 10",
            [[]],
        ),
    ]


def alternatives(settings: Settings) -> list[Alternative]:
    """The other ways to serve the shapes of an index, measured beside its removal."""
    now = _data.NOW_US
    two_weeks = now - 14 * DAY_US
    cursor = [now - 15 * DAY_US, "~"]
    users = [_data.user_name((i * 37) % settings.users) for i in range(QUERY_USERS)]
    limit = PAGE_SIZE + 1
    merged = len(ALL_STATUSES)

    def per_user(*rest: Any) -> list[list[Any]]:
        return [_sqlite.page_params(ALL_STATUSES, [u, *rest], limit) for u in users]

    statuses = [s.value for s in _sqlite.FINISHED]
    partial_term = (
        f"(status = ? AND status NOT IN {ACTIVE_SQL} AND coalesce(completed_at, created_at) < ?)"
    )
    partial_where = " OR ".join([partial_term] * len(statuses))

    def cutoff(at: int, tail: Sequence[Any] = ()) -> list[list[Any]]:
        params: list[Any] = []
        for status in statuses:
            params += [status, at]
        return [params + list(tail)]

    dry = _sqlite.count_expired_sql().replace(_sqlite.cleanup_where(len(statuses)), partial_where)
    return [
        Alternative(
            "sync_jobs_user_created",
            "rewritten: merged over every status, as for several statuses",
            (),
            {
                "user's newest page": (_sqlite.select_sql(user=True, statuses=merged), per_user()),
                "user, last 14 days, any status": (
                    _sqlite.select_sql(
                        user=True, created_after=True, created_before=True, statuses=merged
                    ),
                    per_user(two_weeks, now),
                ),
                "user's page by cursor (mid-history)": (
                    _sqlite.select_sql(user=True, keyset=True, statuses=merged),
                    per_user(*cursor),
                ),
            },
        ),
        Alternative(
            FINISHED_INDEX,
            "changed: partial, finished jobs only; each cleanup term also says status NOT IN "
            "the active ones",
            (PARTIAL_FINISHED,),
            {
                "cleanup batch (1,000 of the oldest day)": (
                    f"SELECT rowid FROM sync_jobs WHERE {partial_where} LIMIT ?",
                    cutoff(now - 29 * DAY_US, [1000]),
                ),
                "cleanup batch, nothing expired": (
                    f"SELECT rowid FROM sync_jobs WHERE {partial_where} LIMIT ?",
                    cutoff(now - 60 * DAY_US, [1000]),
                ),
                "cleanup dry run (count)": (dry, cutoff(now - 29 * DAY_US)),
            },
        ),
    ]


def _size_of(settings: Settings) -> int:
    return settings.index_db_size or max(settings.sizes)


def _uses(plan: Sequence[str], index: str) -> bool:
    pattern = re.compile(rf"\bINDEX {re.escape(index)}\b")
    return any(pattern.search(line) for line in plan)


def summarize(plan: Sequence[str]) -> str:
    """A query plan in one short line: its table and index accesses and its sorts.

    ``SCAN sync_jobs`` alone is a full table scan; ``TEMP B-TREE FOR ORDER BY`` a sort of
    every matching row (``... RIGHT PART OF ORDER BY`` sorts only rows that tie on the
    index's keys, here the rare equal ``created_at``)."""
    steps: dict[str, int] = {}
    for line in plan:
        text = line.strip()
        if text.startswith(("SCAN (", "SCAN subquery")):
            continue
        if text.startswith(("SEARCH", "SCAN")):
            text = re.sub(r"^(SEARCH|SCAN) (\w+) USING ", r"\1 ", text)
            text = text.replace("COVERING INDEX ", "covering ").replace("INDEX ", "")
        elif "TEMP B-TREE" in text:
            text = text.replace("USE ", "")
        else:
            continue
        steps[text] = steps.get(text, 0) + 1
    return "; ".join(text if n == 1 else f"{text} (x{n})" for text, n in steps.items())


def _time_pair(
    settings: Settings,
    with_call: Callable[[int], Call],
    without_call: Callable[[int], Call],
    rotation: int,
) -> dict[str, Samples]:
    """Both contenders timed, interleaved, as many calls as ``index_budget`` allows.

    One call of each comes first (after an untimed one with the index, the fast one). If
    the pair takes more than twice the budget, those are the figures (a plan that slow
    differs by orders of magnitude, not by noise); otherwise every parameter set of the
    rotation is run once untimed (so that no timed call is the first to read its pages)
    and the calls are timed in interleaved rounds.
    """
    with_call(0)()
    first = Samples(times_ns=[time_once(with_call(0))])
    second = Samples(times_ns=[time_once(without_call(0))])
    each = (first.times_ns[0] + second.times_ns[0]) / 1e9
    if each >= 2 * settings.index_budget:
        return {"with": first, "without": second}
    for i in range(1, rotation):
        with_call(i)()
        without_call(i)()
    reps = int(settings.index_budget / each) if each > 0 else settings.index_max_reps
    reps = max(settings.index_min_reps, min(settings.index_max_reps, reps))
    return interleave(
        {
            "with": [with_call(i) for i in range(reps)],
            "without": [without_call(i) for i in range(reps)],
        },
        min(settings.rounds, reps),
    )


def reads(settings: Settings, report: Report, indexes: dict[str, str]) -> None:
    """For each index, every query shape that uses it, with and without the index."""
    size = _size_of(settings)
    source = _sqlite.query_db(settings.cache_dir, size, settings.users, settings.log)
    settings.log(f"index read benefits on {size:,} jobs ...")
    with_path = _sqlite.copy_db(source, settings.work_dir / "indexes-with.db")
    without_path = _sqlite.copy_db(source, settings.work_dir / "indexes-without.db")
    found = {shape.name: shape for shape in shapes(settings)}
    others = [alt for alt in alternatives(settings) if alt.index in indexes]
    section = report.section(
        "indexes-reads",
        f"Indexes, read side: each query shape that uses an index, on {size:,} jobs with "
        "every index and without that one (raw sqlite3, median per call)",
        READ_HEADERS,
    )
    with_conn = _sqlite.raw_connect(with_path)
    try:
        plans = {name: _sqlite.explain(with_conn, s.sql, s.params[0]) for name, s in found.items()}
        for k, index in enumerate(indexes):
            settings.log(f"  without {index} ...")
            recreate = _alter(without_path, drop=[index])[0]
            measure = _Measure(settings, section, index, plans, with_conn, without_path)
            for shape in found.values():
                if _uses(plans[shape.name], index):
                    measure.row(shape, None, shape.sql, shape.params)
            for alt in others:
                if alt.index != index:
                    continue
                added = _alter(without_path, create=alt.replacement)
                measure = _Measure(settings, section, index, plans, with_conn, without_path)
                for name, (sql, params) in alt.rewrites.items():
                    measure.row(found[name], alt.label, sql, params)
                _alter(without_path, drop=added)
            if k < len(indexes) - 1:
                _alter(without_path, create=[recreate])
    finally:
        with_conn.close()
        _sqlite.remove_db(with_path)
        _sqlite.remove_db(without_path)
    unused = [name for name in found if not any(_uses(plans[name], i) for i in indexes)]
    section.notes.append(
        f"{size:,} jobs of about {settings.users:,} users over 30 days (3% of them active: "
        "pending, queued or running). with: a copy with every index; without: a copy with "
        "that index dropped (put back before the next). Both run the same SQL on raw "
        "sqlite3 with the backend's pragmas and fetch every row: the backend's own "
        "statements, except the stats rows: SQL for the CLI's statistics, which are not "
        "written yet (the oldest active job two ways). A lease statement names its index "
        "(INDEXED BY) and fails without it; its without figure is the statement with INDEXED BY removed. rewritten / "
        "changed: the shape written another way, or the index changed, so that the shape "
        "does without the index; its x compares it with the backend's SQL with every "
        f"index. Calls per row: as many as {settings.index_budget:g} s allows "
        f"({settings.index_min_reps} to {settings.index_max_reps}, interleaved), or one "
        "each when one call of the pair takes more than twice that. x: without / with."
    )
    if unused:
        section.notes.append(
            "Shapes no secondary index serves (no removal changes them): "
            + "; ".join(f"{name} ({summarize(plans[name])})" for name in unused)
            + "."
        )


def _alter(path: Path, *, drop: Sequence[str] = (), create: Sequence[str] = ()) -> list[str]:
    """Drop and create indexes in the database at ``path`` (committed); returns the
    CREATE statements of the dropped ones, or the names of the created ones."""
    conn = _sqlite.raw_connect(path)
    try:
        dropped = [_sqlite.drop_index(conn, name) for name in drop]
        names = []
        for statement in create:
            conn.execute(statement)
            names.append(_index_name(statement))
    finally:
        conn.close()
    return dropped if drop else names


def _index_name(statement: str) -> str:
    words = statement.split()
    return words[words.index("ON") - 1]


class _Measure:
    """The read rows of one index, against a fresh connection to the altered copy (no
    statement prepared against its old schema)."""

    def __init__(
        self,
        settings: Settings,
        section: _report.Section,
        index: str,
        plans: dict[str, list[str]],
        with_conn: sqlite3.Connection,
        without_path: Path,
    ) -> None:
        self.settings = settings
        self.section = section
        self.index = index
        self.plans = plans
        self.with_conn = with_conn
        self.without_path = without_path

    def row(self, shape: Shape, how: str | None, sql: str, params: list[list[Any]]) -> None:
        index = self.index
        label = shape.name if how is None else f"{shape.name}, {how}"
        note = None
        if how is None and f"INDEXED BY {index}" in sql:
            sql = sql.replace(f"INDEXED BY {index} ", "")
            note = "INDEXED BY removed: with it, the statement fails (no such index)"
            label = f"{shape.name} (INDEXED BY removed)"
        conn = _sqlite.raw_connect(self.without_path)
        try:
            self._row(shape, label, note, how, sql, params, conn)
        finally:
            conn.close()

    def _row(
        self,
        shape: Shape,
        label: str,
        note: str | None,
        how: str | None,
        sql: str,
        params: list[list[Any]],
        conn: sqlite3.Connection,
    ) -> None:
        with_conn = self.with_conn
        plan_with = self.plans[shape.name]
        plan_without = _sqlite.explain(conn, sql, params[0])
        expected = with_conn.execute(shape.sql, shape.params[0]).fetchall()
        got = conn.execute(sql, params[0]).fetchall()
        if not shape.ordered:
            same = len(expected) == len(got)
        elif "ORDER BY" in shape.sql:
            same = expected == got
        else:  # GROUP BY without ORDER BY: the same rows, maybe in another order
            same = sorted(map(repr, expected)) == sorted(map(repr, got))

        def on(
            target: sqlite3.Connection, text: str, rotation: list[list[Any]]
        ) -> Callable[[int], Call]:
            return lambda i: lambda: target.execute(text, rotation[i % len(rotation)]).fetchall()

        samples = _time_pair(
            self.settings,
            on(with_conn, shape.sql, shape.params),
            on(conn, sql, params),
            max(len(shape.params), len(params)),
        )
        with_us = samples["with"].median_us()
        without_us = samples["without"].median_us()
        self.section.add(
            [
                self.index,
                label,
                summarize(plan_with),
                summarize(plan_without),
                _report.us(with_us),
                _report.us(without_us),
                _report.ratio(without_us / with_us),
            ],
            index=self.index,
            shape=shape.name,
            alternative=how,
            note=note,
            sql_with=shape.sql,
            sql_without=sql,
            plan_with=plan_with,
            plan_without=plan_without,
            with_median_us=with_us,
            with_p99_us=samples["with"].p99_us(),
            without_median_us=without_us,
            without_p99_us=samples["without"].p99_us(),
            ratio=without_us / with_us,
            calls=samples["with"].n,
            rows=len(expected),
            same_rows=same,
        )
        if not same:
            self.section.notes.append(f"- {label} without {self.index}: a different result!")
