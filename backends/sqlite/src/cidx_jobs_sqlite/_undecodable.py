"""Rows whose stored text is not valid UTF-8, and naming them.

SQLite stores whatever bytes it is given as TEXT (``UPDATE sync_jobs SET phase =
CAST(x'ff' AS TEXT)``), and sqlite3 then refuses the whole result with one message that
names a column but no row. This backend never writes such text (core refuses lone
surrogates), so a row that holds it was changed outside cidx-jobs or is damaged.

A load names the job it asked for; a listing fails too, naming every such job of the
page (rather than skipping them: a page that silently lacks a job breaks the cursor's
look-ahead and disagrees with ``count_jobs()``); ``check_on_open=full`` finds every such
row at open and treats it as damage. Reading the rows again with bytes for text costs
time only on these failure paths.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cidx_jobs.errors import StorageError

from ._errors import UnreadableTextError
from ._runner import Runner

#: The text columns of each table, and the columns that name a row in messages.
TEXT_COLUMNS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sync_jobs": (
        ("id",),
        (
            "id",
            "user_id",
            "project_id",
            "status",
            "phase",
            "error_message",
            "metadata",
            "owner_id",
        ),
    ),
    "job_checkpoints": (("job_id", "phase"), ("job_id", "phase", "data")),
}
#: The most rows a message names.
NAMED = 20


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _bad_columns(names: Sequence[str], values: Sequence[Any]) -> list[str]:
    bad = []
    for name, value in zip(names, values, strict=True):
        if isinstance(value, bytes) and not value.isascii():
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(name)
    return bad


def _named(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(job_id) for job_id in ids[:NAMED])
    return shown + (f" and {len(ids) - NAMED} more" if len(ids) > NAMED else "")


def find_undecodable(conn: sqlite3.Connection) -> str | None:
    """Describe the rows of the job tables that hold text that is not valid UTF-8, or
    ``None`` if there are none (for ``check_on_open=full``; it reads every row).

    :raises sqlite3.Error: SQLite failed.
    """
    tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    found: list[str] = []
    count = 0
    previous = conn.text_factory
    conn.text_factory = bytes
    try:
        for table, (key, columns) in TEXT_COLUMNS.items():
            if table not in tables:
                continue
            names = [*key, *columns]
            for row in conn.execute(f"SELECT {', '.join(names)} FROM {table}"):
                bad = _bad_columns(columns, row[len(key) :])
                if bad:
                    count += 1
                    if len(found) < NAMED:
                        what = "job" if table == "sync_jobs" else "checkpoint"
                        name = "/".join(repr(_text(part)) for part in row[: len(key)])
                        found.append(f"{what} {name} ({', '.join(bad)})")
    finally:
        conn.text_factory = previous
    if not count:
        return None
    more = f" and {count - len(found)} more" if count > len(found) else ""
    return (
        f"{count} {'rows hold' if count > 1 else 'row holds'} text that is not valid UTF-8: "
        f"{'; '.join(found)}{more}; a row can also be rewritten or deleted in the sqlite3 shell"
    )


def row_error(
    path: Path, job_ids: Sequence[str], cause: UnreadableTextError
) -> UnreadableTextError:
    """The error for jobs ``job_ids`` of ``path``, whose text sqlite3 refused (``cause``)."""
    if job_ids:
        which = f"job {_named(job_ids)}" if len(job_ids) == 1 else f"jobs {_named(job_ids)}"
    else:
        which = "a job (its id could not be found again)"
    return UnreadableTextError(
        f"{path} holds {which} whose {cause.column!r} is not valid UTF-8, so it cannot be "
        "read: it was changed outside cidx-jobs, or the file is damaged. Rewrite that column "
        "with valid text (or delete the row) in the sqlite3 shell, or restore the file from "
        "a backup; opening with check_on_open=full finds every such row",
        cause.column,
        tuple(job_ids),
    )


def listing_error(
    runner: Runner,
    path: Path,
    statement: str,
    params: Sequence[Any],
    cause: UnreadableTextError,
) -> UnreadableTextError:
    """The error for a listing (``statement``, whose first column is the job id) that
    sqlite3 refused (``cause``), naming the jobs of its result that hold such text."""
    ids: list[str] = []
    try:
        with runner.connection("finding the rows that are not valid UTF-8") as conn:
            conn.text_factory = bytes
            try:
                for row in conn.execute(statement, params):
                    if _bad_columns(["?"] * len(row), row):
                        ids.append(_text(row[0]))
            finally:
                conn.text_factory = str
    except (StorageError, sqlite3.Error):
        pass  # the error still says what is wrong, without the ids
    return row_error(path, ids, cause)
