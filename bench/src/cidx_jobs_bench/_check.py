"""Proof that the floor runs the backend's SQL: each operation once on traced connections.

SQLite's trace callback reports each statement with its values expanded, so equal
traces mean the same statement text and the same bound values.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from cidx_jobs import JobFilter, JobStatus
from cidx_jobs_sqlite import _codec

from . import _data, _sqlite
from ._report import Report
from ._settings import Settings


def run(settings: Settings, report: Report) -> None:
    """Trace every measured operation through the backend and through the floor."""
    settings.log("checking that the floor runs the backend's SQL ...")
    store_path = settings.work_dir / "check-store.db"
    floor_path = settings.work_dir / "check-floor.db"
    for path in (store_path, floor_path):
        _sqlite.remove_db(path)
        _sqlite.create_empty(path)
    store = _sqlite.open_traced(store_path, lambda: _data.NOW)
    raw = _sqlite.raw_connect(floor_path)
    section = report.section(
        "check",
        "Same SQL check (each operation traced once through the backend and the floor)",
        ["operation", "same SQL", "statements (backend)", "statements (floor)"],
    )
    try:
        for name, ours, floor in _cases(store, raw):
            got = _sqlite.traced(ours)
            want = _sqlite.traced(floor, raw)
            same = got == want
            section.add(
                [name, "yes" if same else "**NO**", str(len(got)), str(len(want))],
                operation=name,
                same=same,
                backend=got,
                floor=want,
            )
            if not same:
                section.notes.append(
                    f"- {name}: the backend ran {got!r}; the floor ran {want!r}. The floor is "
                    "out of date with the backend: its ratios are not like for like."
                )
    finally:
        store.close()
        raw.close()
        _sqlite.remove_db(store_path)
        _sqlite.remove_db(floor_path)


def _cases(store: Any, raw: Any) -> list[tuple[str, Any, Any]]:
    job = _data.new_jobs(seed=3, count=1, users=10)[0]
    meta = json.dumps(job.metadata, ensure_ascii=False, separators=(",", ":"))
    data = {"files_done": 3}
    data_json = json.dumps(data, separators=(",", ":"))
    now = _data.NOW_US
    week = _data.NOW - timedelta(days=7)
    one = JobFilter(
        user_id=job.user_id,
        statuses={JobStatus.COMPLETED},
        created_after=week,
        created_before=_data.NOW,
        limit=100,
    )
    deep = JobFilter(limit=100, offset=49_900)
    cursor = JobFilter(limit=100).cursor_after(job)
    keyset = JobFilter(limit=100, cursor=cursor)
    cutoff = _data.NOW - timedelta(days=60)
    cutoff_us = _codec.encode_time(cutoff)
    return [
        (
            "save_job",
            lambda: store.save_job(job),  # the store stamps its owner and "now"
            lambda: raw.execute(
                _sqlite.INSERT_JOB, _sqlite.insert_params(job, meta, store.owner_id, _data.NOW)
            ),
        ),
        (
            "load_job",
            lambda: store.load_job(job.id),
            lambda: raw.execute(_sqlite.SELECT_JOB, (job.id,)).fetchone(),
        ),
        (
            "update_job_status",
            lambda: store.update_job_status(job.id, JobStatus.RUNNING),
            lambda: raw.execute(
                _sqlite.status_sql(JobStatus.RUNNING),
                _sqlite.status_params(JobStatus.RUNNING, now, job.id, _sqlite.owner_of(store)),
            ),
        ),
        (
            "update_job_progress",
            lambda: store.update_job_progress(job.id, 40, "indexing"),
            lambda: raw.execute(_sqlite.SET_PROGRESS_PHASE, (40, "indexing", job.id)),
        ),
        (
            "save_checkpoint",
            lambda: store.save_checkpoint(job.id, "indexing", data),
            lambda: raw.execute(_sqlite.INSERT_CHECKPOINT, (job.id, "indexing", data_json, now)),
        ),
        (
            "load_checkpoint",
            lambda: store.load_checkpoint(job.id, "indexing"),
            lambda: raw.execute(_sqlite.SELECT_CHECKPOINT, (job.id, "indexing")).fetchone(),
        ),
        (
            "query 100 (user, status, dates)",
            lambda: store.query_page(one),
            lambda: raw.execute(
                _sqlite.select_sql(user=True, created_after=True, created_before=True, statuses=1),
                ["completed", job.user_id, _codec.encode_time(week), now, 101, 0],
            ).fetchall(),
        ),
        (
            "page 500 by offset",
            lambda: store.query_page(deep),
            lambda: raw.execute(_sqlite.select_sql(), [101, 49_900]).fetchall(),
        ),
        (
            "page by cursor",
            lambda: store.query_page(keyset),
            lambda: raw.execute(
                _sqlite.select_sql(keyset=True),
                [_codec.encode_time(job.created_at), job.id, 101, 0],
            ).fetchall(),
        ),
        (
            "delete_expired_jobs",
            lambda: store.delete_expired_jobs(cutoff),
            lambda: raw.execute(
                _sqlite.delete_batch_sql(),
                [*_sqlite.delete_params(cutoff_us), _sqlite.FIRST_CLEANUP_BATCH],
            ),
        ),
    ]
