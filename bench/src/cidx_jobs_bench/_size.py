"""Database size: jobs with 1 KB of metadata and 3 checkpoints of 1 KB each, against the
JSON payload they make.

The payload is what :func:`cidx_jobs.serialization.to_json` gives for each job and each
checkpoint, in UTF-8: the documents a JSON store would hold. The file is written through
the public API (``save_job`` and ``save_checkpoint``, in ``transaction()`` blocks of 500
jobs) and measured after the store is closed (which folds the WAL into it).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from cidx_jobs import serialization
from cidx_jobs_sqlite import _codec

from . import _data, _report, _sqlite
from ._report import Report
from ._settings import Settings

METADATA_BYTES = 1024
CHECKPOINT_BYTES = 1024
BLOCK = 500


def _checkpoint_json(job_id: str, phase: str, data: dict[str, Any], created_iso: str) -> str:
    # serialization.to_json(Checkpoint(...)), without building each Checkpoint (checked below).
    return json.dumps(
        {"job_id": job_id, "phase": phase, "data": data, "created_at": created_iso},
        ensure_ascii=False,
    )


def _checkpoint_json_len(job_id: str, phase: str, data_json: str, created_iso: str) -> int:
    """len(_checkpoint_json(...)) from the compact data text, without parsing it: the
    generated data is a flat object of ASCII values free of ``,`` and ``:``, so the default
    separators add one character per key-value colon and per comma."""
    keys = data_json.count('":')
    data_len = len(data_json) + keys + (keys - 1)
    fixed = len('{"job_id": "", "phase": "", "data": , "created_at": ""}')
    return fixed + len(job_id) + len(phase) + data_len + len(created_iso)


def breakdown(path: Path) -> dict[str, Any]:
    """Pages, free pages and bytes per table and index (``dbstat``, where SQLite has it)."""
    conn = sqlite3.connect(str(path))
    try:
        info: dict[str, Any] = {
            "page_size": conn.execute("PRAGMA page_size").fetchone()[0],
            "page_count": conn.execute("PRAGMA page_count").fetchone()[0],
            "freelist_count": conn.execute("PRAGMA freelist_count").fetchone()[0],
        }
        try:
            rows = conn.execute(
                "SELECT name, sum(pgsize), sum(unused), count(*) FROM dbstat GROUP BY name "
                "ORDER BY 2 DESC"
            ).fetchall()
        except sqlite3.Error:
            return info
        info["objects"] = {
            name: {"bytes": size, "unused_bytes": unused, "pages": pages}
            for name, size, unused, pages in rows
        }
        return info
    finally:
        conn.close()


def run(settings: Settings, report: Report) -> None:
    """Measure the file size for each count in ``size_jobs``."""
    section = report.section(
        "size",
        "Database size (1 KB metadata and 3 checkpoints of 1 KB per job)",
        ["jobs", "contender", "file MB", "JSON payload MB", "file / payload", "largest objects"],
    )
    for count in settings.size_jobs:
        settings.log(f"database size of {count:,} jobs ...")
        _measure(settings, section, count)
    section.notes.append(
        "JSON payload: serialization.to_json() of every job and checkpoint, UTF-8. "
        "sqlite: written through save_job and save_checkpoint in transaction() blocks of "
        f"{BLOCK}; floor: the same rows bulk-inserted in the same order through raw sqlite3 "
        "with the backend's statements. Above "
        f"{settings.size_api_max:,} jobs only the bulk file is made (sqlite (bulk)): the "
        "smaller counts show both give the same file. Target: file ≤ 1.3x payload."
    )


def _measure(settings: Settings, section: _report.Section, count: int) -> None:
    rows = list(
        _data.job_rows(f"size{count}", count, settings.users, metadata_bytes=METADATA_BYTES)
    )
    checkpoints = _data.checkpoint_rows(
        count, [row[_data.ID] for row in rows], size=CHECKPOINT_BYTES
    )
    payload = sum(len(serialization.to_json(_codec.decode_job(row)).encode()) for row in rows)
    iso = {created: _codec.decode_time(created).isoformat() for *_, created in checkpoints[:3]}
    for job_id, phase, data, created in checkpoints[:50]:
        exact = len(_checkpoint_json(job_id, phase, json.loads(data), iso[created]).encode())
        if exact != _checkpoint_json_len(job_id, phase, data, iso[created]):
            raise RuntimeError("the checkpoint payload formula is out of date")
    payload += sum(
        _checkpoint_json_len(job_id, phase, data, iso[created])
        for job_id, phase, data, created in checkpoints
    )
    if count <= settings.size_api_max:
        path = settings.work_dir / f"size-{count}.db"
        _sqlite.remove_db(path)
        _write_through_api(path, rows, checkpoints)
        _row(section, count, "sqlite", _sqlite.file_bytes(path), payload, breakdown(path))
        _sqlite.remove_db(path)
        bulk_name = "floor"
    else:
        bulk_name = "sqlite (bulk)"
    floor_path = settings.work_dir / f"size-floor-{count}.db"
    _sqlite.remove_db(floor_path)
    _sqlite.create_empty(floor_path)
    conn = _sqlite.raw_connect(floor_path)
    # Durability does not change the file's layout, only how long filling it takes.
    conn.execute("PRAGMA synchronous = OFF")
    try:
        for start in range(0, count, BLOCK):
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(_sqlite.INSERT_JOB, rows[start : start + BLOCK])
            conn.executemany(
                _sqlite.INSERT_CHECKPOINT, checkpoints[3 * start : 3 * (start + BLOCK)]
            )
            conn.execute("COMMIT")
    finally:
        conn.close()
    _sqlite.checkpoint_wal(floor_path)
    floor = _sqlite.file_bytes(floor_path)
    _row(section, count, bulk_name, floor, payload, breakdown(floor_path))
    _sqlite.remove_db(floor_path)


def _write_through_api(
    path: Path, rows: list[tuple[Any, ...]], checkpoints: list[tuple[str, str, str, int]]
) -> None:
    """Every job and checkpoint through save_job / save_checkpoint, then close."""
    store = _sqlite.open_store(path)
    try:
        for start in range(0, len(rows), BLOCK):
            with store.transaction():
                for i, row in enumerate(rows[start : start + BLOCK], start):
                    store.save_job(_codec.decode_job(row))
                    for job_id, phase, data_json, _ in checkpoints[3 * i : 3 * i + 3]:
                        store.save_checkpoint(job_id, phase, json.loads(data_json))
        # The payload counts checkpoints by the formula: check it against the library once.
        saved = store.list_checkpoints(rows[0][_data.ID])[0]
        expected = serialization.to_json(saved)
        got = _checkpoint_json(saved.job_id, saved.phase, saved.data, saved.created_at.isoformat())
        if got != expected:
            raise RuntimeError("the checkpoint payload formula is out of date")
    finally:
        store.close()


def _row(
    section: _report.Section,
    count: int,
    name: str,
    size: int,
    payload: int,
    info: dict[str, Any],
) -> None:
    objects = info.get("objects", {})
    largest = ", ".join(
        f"{obj} {figures['bytes'] / 1e6:.1f}" for obj, figures in list(objects.items())[:3]
    )
    section.add(
        [
            f"{count:,}",
            name,
            f"{size / 1e6:.1f}",
            f"{payload / 1e6:.1f}",
            _report.ratio(size / payload),
            largest or _report.NA,
        ],
        jobs=count,
        contender=name,
        file_bytes=size,
        payload_bytes=payload,
        ratio=size / payload,
        **info,
    )
