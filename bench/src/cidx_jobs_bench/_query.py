"""Queries: a user's 100 newest jobs of one status in a date range, and page 500.

On databases of each size in ``--sizes`` (jobs over 30 days and about 1,000 users):

* ``query 100``: ``JobFilter(user_id, statuses={completed}, created_after=now-14d,
  created_before=now, limit=100)``, rotating over 20 users; the backend asks for 101 rows
  (one more tells whether a next page exists), and so does the floor.
* ``page 500 by offset``: every job, newest first, 100 per page, page 500 (``offset=49,900``).
* ``page 500 by cursor``: the same page reached with the cursor of page 499.

Floors: ``floor`` fetches tuples; ``floor decoded`` also builds a dict per row and parses
its metadata JSON, what a hand-written app needs to use the rows.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from cidx_jobs import JobFilter, JobPersistence, JobStatus
from cidx_jobs_sqlite import _codec

from . import _data, _memory, _report, _sqlite
from ._report import Report
from ._settings import Settings
from ._timing import Call, interleave

SQLITE, MEMORY, FLOOR, DECODED = "sqlite", "memory", "floor", "floor decoded"
HEADERS = [
    "query",
    "jobs",
    "contender",
    "median µs",
    "p99 µs",
    "x floor",
    "x decoded floor",
    "rows",
]
PAGE, PAGE_SIZE = 500, 100
WINDOW = timedelta(days=14)
QUERY_USERS = 20


def _decode(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    columns = _sqlite.JOB_COLUMNS
    out = []
    for row in rows:
        item = dict(zip(columns, row, strict=True))
        item["metadata"] = json.loads(item["metadata"])
        out.append(item)
    return out


def run(settings: Settings, report: Report) -> None:
    """Measure the queries on every database size."""
    section = report.section(
        "query",
        "Queries (µs per call; rows = rows returned)",
        HEADERS,
    )
    for size in settings.sizes:
        _run_size(settings, section, size)
    section.notes.append(
        "query 100: one user's newest 100 completed jobs of the last 14 days (the backend "
        "and the floor fetch 101 rows to know whether a next page exists). page 500: "
        "every job newest first, 100 per page, page 500 (offset 49,900, or the cursor of "
        "page 499). x floor: median / raw sqlite3 fetching tuples; x decoded floor: "
        "median / raw sqlite3 also building a dict per row with its metadata parsed. "
        "Target: query 100 under 5 ms on 1,000,000 jobs."
    )


def _run_size(settings: Settings, section: _report.Section, size: int) -> None:
    path = _sqlite.query_db(settings.cache_dir, size, settings.users, settings.log)
    settings.log(f"queries on {size:,} jobs ...")
    t0 = time.perf_counter()
    store = _sqlite.open_store(path)
    open_seconds = time.perf_counter() - t0
    raw = _sqlite.raw_connect(path)
    memory: JobPersistence | None = None
    if size <= settings.memory_max_jobs:
        memory = _memory.from_db(path)
    try:
        _measure(settings, section, size, store, memory, raw, open_seconds)
    finally:
        store.close()
        raw.close()
        if memory is not None:
            memory.close()


def _contenders(
    store: JobPersistence,
    memory: JobPersistence | None,
    raw: Any,
    filters: list[JobFilter],
    sql: str,
    params: list[list[Any]],
    reps: int,
) -> dict[str, list[Call]]:
    def ours(target: JobPersistence, f: JobFilter) -> Call:
        return lambda: target.query_page(f).jobs

    def floor(p: list[Any]) -> Call:
        return lambda: raw.execute(sql, p).fetchall()

    def decoded(p: list[Any]) -> Call:
        return lambda: _decode(raw.execute(sql, p).fetchall())

    k = len(filters)
    result = {SQLITE: [ours(store, filters[i % k]) for i in range(reps)]}
    if memory is not None:
        result[MEMORY] = [ours(memory, filters[i % k]) for i in range(reps)]
    result[FLOOR] = [floor(params[i % k]) for i in range(reps)]
    result[DECODED] = [decoded(params[i % k]) for i in range(reps)]
    return result


def _rows_returned(calls: dict[str, list[Call]]) -> dict[str, int]:
    counts = {}
    for name, call_list in calls.items():
        result = call_list[0]()
        counts[name] = len(result) if isinstance(result, list) else -1
    return counts


def _add(
    section: _report.Section,
    name: str,
    size: int,
    calls: dict[str, list[Call]],
    rounds: int,
    **extra: Any,
) -> None:
    rows = _rows_returned(calls)  # also warms the caches of every contender alike
    for _ in range(3):
        for call_list in calls.values():
            call_list[0]()
    samples = interleave(calls, rounds)
    floor = samples[FLOOR].median_us()
    decoded = samples[DECODED].median_us()
    for contender, sample in samples.items():
        median = sample.median_us()
        section.add(
            [
                name,
                f"{size:,}",
                contender,
                _report.us(median),
                _report.us(sample.p99_us()),
                _report.ratio(median / floor),
                _report.ratio(median / decoded),
                _report.count(rows[contender]),
            ],
            query=name,
            jobs=size,
            contender=contender,
            median_us=median,
            p99_us=sample.p99_us(),
            max_us=sample.max_us(),
            ratio_to_floor=median / floor,
            ratio_to_decoded_floor=median / decoded,
            round_spread=sample.spread(),
            calls=sample.n,
            rows=rows[contender],
            **extra,
        )


def _measure(
    settings: Settings,
    section: _report.Section,
    size: int,
    store: JobPersistence,
    memory: JobPersistence | None,
    raw: Any,
    open_seconds: float,
) -> None:
    now = _data.NOW
    after = now - WINDOW
    users = [_data.user_name((i * 37) % settings.users) for i in range(QUERY_USERS)]
    filters = [
        JobFilter(
            user_id=user,
            statuses={JobStatus.COMPLETED},
            created_after=after,
            created_before=now,
            limit=100,
        )
        for user in users
    ]
    sql = _sqlite.select_sql(user=True, created_after=True, created_before=True, statuses=1)
    after_us, now_us = _codec.encode_time(after), _data.NOW_US
    params = [["completed", user, after_us, now_us, 101, 0] for user in users]
    _add(
        section,
        "query 100",
        size,
        _contenders(store, memory, raw, filters, sql, params, settings.query_reps),
        min(settings.rounds, settings.query_reps),
        plan=_sqlite.explain(raw, sql, params[0]),
        open_seconds=round(open_seconds, 3),
    )

    offset = (PAGE - 1) * PAGE_SIZE
    if size <= offset:
        section.add(
            ["page 500 (offset, cursor)", f"{size:,}", "all", *[_report.NA] * 5],
            query="page 500",
            jobs=size,
            note=f"fewer than {offset + 1:,} jobs: there is no page {PAGE}",
        )
        return
    by_offset = JobFilter(limit=PAGE_SIZE, offset=offset)
    offset_sql = _sqlite.select_sql()
    offset_params = [PAGE_SIZE + 1, offset]
    _add(
        section,
        "page 500 by offset",
        size,
        _contenders(
            store, memory, raw, [by_offset], offset_sql, [offset_params], settings.offset_reps
        ),
        min(settings.rounds, settings.offset_reps),
        plan=_sqlite.explain(raw, offset_sql, offset_params),
    )

    # The cursor of page 499 is the one after its last job, the job at position offset - 1.
    last = raw.execute(
        f"SELECT {_codec.JOB_COLUMNS_SQL} FROM sync_jobs ORDER BY created_at DESC, id DESC "
        "LIMIT 1 OFFSET ?",
        (offset - 1,),
    ).fetchone()
    last_job = _codec.decode_job(last)
    by_cursor = JobFilter(limit=PAGE_SIZE, cursor=JobFilter(limit=PAGE_SIZE).cursor_after(last_job))
    cursor_sql = _sqlite.select_sql(keyset=True)
    cursor_params = [last[_data.CREATED_AT], last[_data.ID], PAGE_SIZE + 1, 0]
    same = [job.id for job in store.query_page(by_cursor).jobs] == [
        job.id for job in store.query_page(by_offset).jobs
    ]
    if not same:
        section.notes.append(f"- {size:,} jobs: page {PAGE} by cursor differs from by offset!")
    _add(
        section,
        "page 500 by cursor",
        size,
        _contenders(
            store, memory, raw, [by_cursor], cursor_sql, [cursor_params], settings.query_reps
        ),
        min(settings.rounds, settings.query_reps),
        plan=_sqlite.explain(raw, cursor_sql, cursor_params),
        same_page_as_offset=same,
    )
