"""Bad input: every public method and model, fed hostile values by Hypothesis, on both backends.

Each example is one call with arguments that are either all valid, or have at least one
invalid value: wrong types, NaN and infinities in metadata, huge and deeply nested (even
self-referencing) metadata, NUL bytes and lone surrogates in strings, naive, out-of-range
and far-future datetimes, SQL-injection strings in every id and filter field, negative and
huge limits and offsets, unknown statuses, forged cursors, hostile configurations and
serialized models. The rules:

* invalid input raises :class:`~cidx_jobs.errors.ValidationError` (or the error the method
  documents: ``DuplicateJobError``, ``JobNotFoundError``, ``ConfigError``); nothing else
  (no ``TypeError``, ``OverflowError``, ``RecursionError``, no ``sqlite3`` exception);
* after every call that raised, the store holds exactly what it held before (for SQLite,
  compared row by row through a separate read-only connection);
* valid input is accepted, and what it stored reads back exactly (a saved job loads equal
  to itself; a query returns only jobs matching its filter, and all of them; a cleanup's
  count is the number of jobs that went).

Failures are counted, not raised, so that Hypothesis keeps exploring; each distinct failure
(method, exception type and place) is reported once with an example.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import shutil
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from cidx_jobs import (
    Checkpoint,
    JobFilter,
    JobPersistence,
    JobStatus,
    SyncJob,
    open_persistence,
    serialization,
)
from cidx_jobs.errors import (
    BackendNotFoundError,
    CidxJobsError,
    ConfigError,
    DuplicateJobError,
    JobNotFoundError,
    StorageError,
    ValidationError,
)

from ._common import Outcome, call, open_memory, open_sqlite, remove_database, sqlite_url
from ._config import StressConfig
from ._model import State, all_jobs, dump
from ._report import ScenarioResult

__all__ = ["NAUGHTY", "run"]

UTC = timezone.utc
T0 = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)

#: Strings that break SQL built by concatenation, LIKE patterns, or careless text handling.
NAUGHTY = (
    "' OR '1'='1",
    "alice' --",
    "'; DROP TABLE sync_jobs; --",
    '" OR ""="',
    "x') UNION SELECT id, user_id FROM sync_jobs --",
    "Robert'); DROP TABLE job_checkpoints;--",
    "%",
    "_",
    "a%",
    "\\",
    "*",
    "NULL",
    " alice",
    "ALICE",
    "\u202eecila",
    "e\u0301",
    "\u00e9",
    "\U0001d51e\U0001d529\U0001d526\U0001d520\U0001d522",  # "alice" in Fraktur letters
    "\t\n",
)
SEED_USERS = ("alice", "bob", "o'brien", "' OR '1'='1", "\u00e9", "e\u0301", "%")

#: The Unicode category of lone surrogates (typed loosely: Hypothesis wants literals).
_SURROGATES: Any = ("Cs",)

# -- value strategies ------------------------------------------------------------------------

_chars = st.characters(blacklist_categories=_SURROGATES, blacklist_characters="\x00")
good_text = st.text(_chars, min_size=1, max_size=30)
good_id = st.one_of(st.sampled_from(NAUGHTY + SEED_USERS), good_text, st.just("x" * 256))
_not_str = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.builds(object),
)
bad_text = st.one_of(
    good_text.map(lambda s: s + "\x00"),
    good_text.map(lambda s: "\ud800" + s),
    good_text.map(lambda s: s[:1] + "\udfff"),
)
bad_id = st.one_of(
    st.just(""),
    st.text(_chars, min_size=257, max_size=300),
    bad_text,
    _not_str,
    good_text.map(type("IdSubclass", (str,), {})),
)
_offsets = st.sampled_from(
    [timezone.utc, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-11))]
)
good_time = st.one_of(
    st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=_offsets),
    st.sampled_from([datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC)]),
)
bad_time = st.one_of(
    st.datetimes(),  # naive
    st.sampled_from(
        [
            datetime.max.replace(tzinfo=timezone(timedelta(hours=-5))),
            datetime.min.replace(tzinfo=timezone(timedelta(hours=5))),
        ]
    ),
    st.dates(),
    st.text(max_size=30),
    st.just("2025-03-01T09:30:00+00:00"),
    st.integers(),
    st.floats(),
)
good_status = st.one_of(
    st.sampled_from(list(JobStatus)), st.sampled_from([s.value for s in JobStatus])
)
bad_status = st.one_of(
    st.sampled_from(["PENDING", "Running", "", " pending", "done", "complete", "null"]),
    st.text(max_size=10).filter(lambda s: s not in {x.value for x in JobStatus}),
    st.integers(),
    st.none(),
    st.floats(),
)

_json_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(st.characters(blacklist_categories=_SURROGATES), max_size=20),  # NUL is fine in JSON
)
_json_key = st.text(st.characters(blacklist_categories=_SURROGATES), max_size=10)
good_json = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_json_key, inner, max_size=4),
    max_leaves=25,
)
good_meta = st.dictionaries(_json_key, good_json, max_size=5)


def _nest(depth: int, leaf: Any, use_list: bool) -> dict[str, Any]:
    value = leaf
    for _ in range(depth):
        value = [value] if use_list else {"d": value}
    return {"deep": value}


def _self_referencing() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["me"] = loop
    return loop


_poison = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.just((1, 2)),
    st.just(frozenset({1})),
    st.just(b"bytes"),
    st.builds(object),
    st.just(T0),
    st.just("lone \ud800 surrogate"),
    st.just(10**5000),
)
bad_meta = st.one_of(
    st.tuples(good_meta, _json_key, _poison).map(lambda t: {**t[0], t[1]: t[2]}),
    st.tuples(good_meta, _poison).map(lambda t: {**t[0], "nested": [{"x": [t[1]]}]}),
    st.sampled_from([{1: "int key"}, {None: 1}, {"\udcff": 1}, {("a",): 1}]),
    st.tuples(st.integers(65, 400), good_json, st.booleans()).map(lambda t: _nest(*t)),
    st.builds(_self_referencing),
    st.one_of(st.lists(st.integers(), max_size=2), st.text(max_size=5), st.integers()),
)
#: Valid as a model, refused by a store with the default 1 MiB limit.
too_big_meta = st.integers(1, 3).map(lambda n: {"blob": "é" * (n * 600_000)})

good_limit = st.integers(1, 1000)
bad_limit = st.one_of(
    st.integers(max_value=0),
    st.integers(min_value=1001),
    st.just(10**30),
    st.floats(),
    st.booleans(),
    st.just("10"),
    st.none(),
)
good_offset = st.one_of(st.integers(0, 50), st.just(2**53))
bad_offset = st.one_of(
    st.integers(max_value=-1),
    st.just(2**53 + 1),
    st.just(10**30),
    st.just(1.0),
    st.none(),
    st.just("0"),
)


def _encode_cursor(payload: str) -> str:
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def _forged_cursors(filter: JobFilter) -> list[str]:
    fingerprint = filter.fingerprint()
    return [
        _encode_cursor("[" * 50_000 + "]" * 50_000),
        _encode_cursor(json.dumps([1, "0001-01-01T00:00:00+05:00", "x", fingerprint])),
        _encode_cursor(json.dumps([1, "9999-12-31T23:59:59-05:00", "x", fingerprint])),
        _encode_cursor(json.dumps([1, "2025-01-01T00:00:00", "x", fingerprint])),
        _encode_cursor(json.dumps([2, "2025-01-01T00:00:00+00:00", "x", fingerprint])),
        _encode_cursor(json.dumps([1, "2025-01-01T00:00:00+00:00", "x", "0" * 16])),
        _encode_cursor(json.dumps({"a": 1})),
        _encode_cursor("null"),
        _encode_cursor("\xff"),
        "not base64 at all !!!",
        "é",
        "\ud800",
        "",
        "=" * 8,
    ]


# -- checking calls -------------------------------------------------------------------------


class _Harness:
    def __init__(self, backend: str, folder: Path, result: ScenarioResult) -> None:
        self.backend = backend
        self.folder = folder
        self.result = result
        self.db = folder / "bad-input.db"
        self.seen: set[tuple[str, ...]] = set()
        self.store = self._open()

    def _open(self) -> JobPersistence:
        if self.backend == "memory":
            store = open_memory()
        else:
            remove_database(self.db)
            store = open_sqlite(self.db)
        for n, user in enumerate(SEED_USERS * 2):
            store.save_job(
                SyncJob(
                    id=f"seed-{n}",
                    user_id=user,
                    project_id=NAUGHTY[n % len(NAUGHTY)],
                    status=list(JobStatus)[n % len(JobStatus)],
                    created_at=T0 - timedelta(hours=n % 5),
                    completed_at=T0 if n % 3 == 0 else None,
                    metadata={"n": n},
                )
            )
            store.save_checkpoint(f"seed-{n}", "indexing", {"n": n})
        return store

    def close(self) -> None:
        self.store.close()
        if self.backend == "sqlite":
            remove_database(self.db)

    def reset_if_big(self) -> None:
        if self.store.count_jobs() > 120:
            self.close()
            self.store = self._open()

    def snapshot(self) -> Any:
        """The store's contents: rows read by a separate connection for SQLite."""
        if self.backend == "memory":
            return dump(self.store)
        uri = self.db.absolute().as_uri() + "?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as conn:
            return (
                conn.execute("SELECT * FROM sync_jobs ORDER BY id").fetchall(),
                conn.execute("SELECT * FROM job_checkpoints ORDER BY job_id, phase").fetchall(),
            )

    def state(self) -> State:
        return dump(self.store)

    def fail_once(self, key: tuple[str, ...], message: str) -> None:
        """Count a failure; keep its message only the first time for ``key``."""
        self.result.fail(message, keep=key not in self.seen)
        self.seen.add(key)

    def attempt(
        self,
        name: str,
        function: Callable[..., Any],
        *args: Any,
        valid: bool,
        documented: tuple[type[CidxJobsError], ...] = (),
        verify: Callable[[Any], str | None] | None = None,
        example: str = "",
    ) -> Outcome:
        """One call: its outcome must follow the rules; see the module's docstring."""
        result = self.result
        before = self.snapshot()
        outcome = call(function, *args)
        result.checked += 1
        label = f"[{self.backend}] {name}"
        if outcome.raw is not None:
            frame = outcome.describe().rsplit(" at ", 1)[-1]
            self.fail_once(
                (name, type(outcome.raw).__name__, frame),
                f"{label}: {outcome.describe()} (example: {example:.200})",
            )
        elif outcome.error is not None:
            allowed: tuple[type[BaseException], ...] = (
                (ValidationError, *documented) if not valid else documented
            )
            if not isinstance(outcome.error, allowed):
                what = "valid input refused" if valid else "wrong error type"
                self.fail_once(
                    (name, type(outcome.error).__name__, what),
                    f"{label}: {what}: {outcome.describe()} (example: {example:.200})",
                )
            result.outcomes[f"rejected with {type(outcome.error).__name__}"] += 1
        elif not valid:
            self.fail_once(
                (name, "accepted"), f"{label}: accepted invalid input (example: {example:.200})"
            )
        else:
            result.outcomes["valid input accepted"] += 1
            problem = verify(outcome.value) if verify is not None else None
            if problem is not None:
                self.fail_once(
                    (name, "verify", problem[:40]), f"{label}: {problem} (example: {example:.200})"
                )
        if not outcome.ok:
            after = self.snapshot()
            if after != before:
                self.fail_once(
                    (name, "changed"),
                    f"{label}: a call that raised changed the store ({outcome.describe()}; example: {example:.200})",
                )
        return outcome


# -- the examples ---------------------------------------------------------------------------------

_JOB_FIELDS: dict[str, tuple[Any, Any]] = {
    "id": (good_id, bad_id),
    "user_id": (good_id, bad_id),
    "project_id": (good_id, bad_id),
    "status": (good_status, bad_status),
    "progress": (
        st.integers(0, 100),
        st.one_of(
            st.integers(max_value=-1),
            st.integers(min_value=101),
            st.floats(),
            st.booleans(),
            st.just("50"),
            st.none(),
        ),
    ),
    "phase": (
        st.one_of(st.none(), good_text),
        st.one_of(bad_text, st.integers(), st.binary(max_size=3)),
    ),
    "created_at": (good_time, bad_time),
    "started_at": (st.one_of(st.none(), good_time), bad_time),
    "completed_at": (st.one_of(st.none(), good_time), bad_time),
    "error_message": (
        st.one_of(st.none(), good_text, st.text(_chars, min_size=5000, max_size=6000)),
        st.one_of(bad_text, st.integers()),
    ),
    "metadata": (good_meta, bad_meta),
}


def _fields(
    data: st.DataObject, spec: dict[str, tuple[Any, Any]]
) -> tuple[dict[str, Any], list[str]]:
    """Values for every field; some fields (maybe none) drawn from their bad strategy."""
    bad = data.draw(st.sets(st.sampled_from(sorted(spec)), max_size=2), label="bad fields")
    values = {
        name: data.draw(spec[name][1] if name in bad else spec[name][0], label=name)
        for name in spec
    }
    return values, sorted(bad)


def _example(values: Any) -> str:
    try:
        return repr(values)
    except Exception:  # a self-referencing dict's repr is fine, but be safe
        return "<unprintable>"


def _check_models_and_writes(h: _Harness, data: st.DataObject) -> None:
    fields, bad = _fields(data, _JOB_FIELDS)
    example = f"SyncJob(bad={bad}) {_example(fields)[:300]}"
    built = h.attempt("SyncJob(...)", lambda: SyncJob(**fields), valid=not bad, example=example)
    if not built.ok:
        return
    job: SyncJob = built.value
    too_big = data.draw(st.booleans(), label="too big") and data.draw(st.booleans())
    if too_big:
        job = attrs.evolve(job, metadata=data.draw(too_big_meta))

    def reads_back(_: Any) -> str | None:
        stored = h.store.load_job(job.id)
        return None if stored == job else f"saved job reads back as {stored!r:.200}"

    h.attempt(
        "save_job",
        lambda: h.store.save_job(job),
        valid=not too_big,
        documented=(DuplicateJobError,),
        verify=reads_back,
        example=f"{example} too_big={too_big}",
    )


def _check_updates(h: _Harness, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["status", "progress", "checkpoint", "save_non_job"]))
    if kind == "save_non_job":
        thing: Any = data.draw(
            st.one_of(
                _not_str, st.builds(lambda: {"id": "x"}), st.just(Checkpoint(job_id="a", phase="b"))
            )
        )
        h.attempt(
            "save_job(non-job)", lambda: h.store.save_job(thing), valid=False, example=repr(thing)
        )
        return
    spec: dict[str, tuple[Any, Any]]
    if kind == "status":
        spec = {
            "job_id": (
                st.one_of(st.sampled_from([f"seed-{n}" for n in range(14)]), good_id),
                bad_id,
            ),
            "status": (good_status, bad_status),
            "error_message": (st.one_of(st.none(), good_text), st.one_of(bad_text, st.integers())),
            "expected": (
                st.one_of(
                    st.none(),
                    good_status,
                    st.sets(good_status, min_size=1, max_size=3),
                    st.lists(good_status, min_size=1, max_size=3),
                ),
                st.one_of(
                    st.just([]),
                    st.just(set()),
                    bad_status.filter(lambda v: v is not None),
                    st.lists(bad_status, min_size=1, max_size=2),
                    st.just(b"pending"),
                    st.just(iter(())),
                ),
            ),
        }
        values, bad = _fields(data, spec)
        h.attempt(
            "update_job_status",
            lambda: h.store.update_job_status(
                values["job_id"],
                values["status"],
                error_message=values["error_message"],
                expected=values["expected"],
            ),
            valid=not bad,
            verify=lambda r: None if isinstance(r, bool) else f"returned {r!r}",
            example=f"bad={bad} {values!r:.300}",
        )
    elif kind == "progress":
        spec = {
            "job_id": (
                st.one_of(st.sampled_from([f"seed-{n}" for n in range(14)]), good_id),
                bad_id,
            ),
            "progress": _JOB_FIELDS["progress"],
            "phase": _JOB_FIELDS["phase"],
        }
        values, bad = _fields(data, spec)
        h.attempt(
            "update_job_progress",
            lambda: h.store.update_job_progress(
                values["job_id"], values["progress"], values["phase"]
            ),
            valid=not bad,
            example=f"bad={bad} {values!r:.300}",
        )
    else:
        spec = {
            "job_id": (
                st.one_of(st.sampled_from([f"seed-{n}" for n in range(14)]), good_id),
                bad_id,
            ),
            "phase": (good_id, bad_id),
            "data": (good_meta, st.one_of(bad_meta, st.none())),
        }
        values, bad = _fields(data, spec)
        too_big = not bad and data.draw(st.integers(0, 9)) == 0
        if too_big:
            values["data"] = data.draw(too_big_meta)

        def checkpoint_reads_back(saved: Any) -> str | None:
            if saved is not True:
                return None
            stored = h.store.load_checkpoint(values["job_id"], values["phase"])
            return None if stored == values["data"] else f"checkpoint reads back as {stored!r:.100}"

        h.attempt(
            "save_checkpoint",
            lambda: h.store.save_checkpoint(values["job_id"], values["phase"], values["data"]),
            valid=not bad and not too_big,
            verify=checkpoint_reads_back,
            example=f"bad={bad} too_big={too_big} {_example(values)[:300]}",
        )


_FILTER_FIELDS: dict[str, tuple[Any, Any]] = {
    "user_id": (st.one_of(st.none(), good_id), bad_id.filter(lambda v: v is not None)),
    "project_id": (st.one_of(st.none(), good_id), bad_id.filter(lambda v: v is not None)),
    "statuses": (
        st.one_of(st.none(), st.sets(good_status, max_size=4), good_status),
        st.one_of(
            st.lists(bad_status.filter(lambda v: v is not None), min_size=1, max_size=2),
            st.integers(),
            st.just(b"x"),
        ),
    ),
    "created_after": (st.one_of(st.none(), good_time), bad_time.filter(lambda v: v is not None)),
    "created_before": (st.one_of(st.none(), good_time), bad_time.filter(lambda v: v is not None)),
    "limit": (good_limit, bad_limit),
    "offset": (good_offset, bad_offset),
}


def _check_queries(h: _Harness, data: st.DataObject) -> None:
    values, bad = _fields(data, _FILTER_FIELDS)
    example = f"JobFilter(bad={bad}) {values!r:.300}"
    built = h.attempt("JobFilter(...)", lambda: JobFilter(**values), valid=not bad, example=example)
    if not built.ok:
        if data.draw(st.booleans()):
            thing = data.draw(st.one_of(_not_str.filter(lambda v: v is not None), st.just(values)))
            method = data.draw(st.sampled_from(["query_jobs", "query_page", "count_jobs"]))
            h.attempt(
                f"{method}(non-filter)",
                lambda: getattr(h.store, method)(thing),
                valid=False,
                example=repr(thing)[:200],
            )
        return
    filter: JobFilter = built.value
    state = h.state()
    matching = sorted(
        (job for job in state.jobs.values() if filter.matches(job)),
        key=lambda job: (job.created_at, job.id),
        reverse=True,
    )

    def same_page(jobs: Any) -> str | None:
        want = [job.id for job in matching[filter.offset : filter.offset + filter.limit]]
        got = [job.id for job in jobs]
        return (
            None if got == want else f"query returned {got[:5]}, the matching jobs are {want[:5]}"
        )

    h.attempt(
        "query_jobs",
        lambda: h.store.query_jobs(filter),
        valid=True,
        verify=same_page,
        example=example,
    )
    h.attempt(
        "count_jobs",
        lambda: h.store.count_jobs(filter),
        valid=True,
        verify=lambda n: None if n == len(matching) else f"count {n}, {len(matching)} match",
        example=example,
    )
    if filter.offset == 0:
        h.attempt(
            "walk over the pages",
            lambda: [job.id for job in all_jobs(h.store, filter)],
            valid=True,
            verify=lambda ids: (
                None if ids == [job.id for job in matching] else f"walk gave {ids[:5]}"
            ),
            example=example,
        )
    forged = data.draw(st.sampled_from(_forged_cursors(attrs.evolve(filter, offset=0))))
    h.attempt(
        "JobFilter(cursor=forged)",
        lambda: h.store.query_page(attrs.evolve(filter, offset=0, cursor=forged)),
        valid=False,
        example=f"cursor={forged[:80]!r} {example}",
    )


def _check_cleanup_and_reads(h: _Harness, data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(["delete", "cleanup", "reads"]))
    if kind == "delete":
        good = data.draw(st.booleans())
        older_than = data.draw(good_time if good else bad_time)
        before = len(h.state().jobs)
        h.attempt(
            "delete_expired_jobs",
            lambda: h.store.delete_expired_jobs(older_than),
            valid=good,
            verify=lambda n: (
                None
                if before - len(h.state().jobs) == n
                else f"deleted {n}, {before - len(h.state().jobs)} went"
            ),
            example=repr(older_than),
        )
    elif kind == "cleanup":
        spec: dict[str, tuple[Any, Any]] = {
            "now": (st.one_of(st.none(), good_time), bad_time.filter(lambda v: v is not None)),
            "retention": (
                st.one_of(st.none(), st.timedeltas(min_value=timedelta(0)), st.just(timedelta.max)),
                st.one_of(
                    st.timedeltas(max_value=timedelta(microseconds=-1)),
                    st.integers(),
                    st.just("7d"),
                ),
            ),
            "dry_run": (st.booleans(), st.one_of(st.just("yes"), st.integers(0, 1), st.none())),
        }
        values, bad = _fields(data, spec)
        if not bad and data.draw(st.integers(0, 4)) != 0:
            values["dry_run"] = True  # keep the seeded jobs most of the time
        h.attempt(
            "run_cleanup",
            lambda: h.store.run_cleanup(**values),
            valid=not bad,
            example=f"bad={bad} {values!r}",
        )
    else:
        method = data.draw(
            st.sampled_from(["load_job", "load_checkpoint", "list_checkpoints", "resume_point"])
        )
        good = data.draw(st.booleans())
        job_id = data.draw(
            st.one_of(st.sampled_from([f"seed-{n}" for n in range(14)]), good_id)
            if good
            else bad_id
        )
        args: list[Any] = [job_id]
        if method == "load_checkpoint":
            phase_good = data.draw(st.booleans())
            args.append(data.draw(good_id if phase_good else bad_id))
            good = good and phase_good
        h.attempt(
            method,
            lambda: getattr(h.store, method)(*args),
            valid=good,
            documented=(JobNotFoundError,) if method == "resume_point" else (),
            example=repr(args)[:200],
        )


def _check_serialization(h: _Harness, data: st.DataObject) -> None:
    cls = data.draw(st.sampled_from([SyncJob, Checkpoint]))
    text = data.draw(
        st.one_of(
            st.text(max_size=50),
            good_json.map(json.dumps),
            st.builds(
                lambda d: json.dumps(d, allow_nan=True),
                st.fixed_dictionaries(
                    {
                        "id": st.one_of(good_text, st.integers()),
                        "user_id": good_text,
                        "project_id": good_text,
                    },
                    optional={
                        "status": st.text(max_size=8),
                        "progress": st.one_of(st.integers(), st.floats()),
                        "created_at": st.one_of(
                            st.text(max_size=30), st.just("0001-01-01T00:00:00+05:00")
                        ),
                        "metadata": st.one_of(good_json, st.just(float("nan"))),
                        "job_id": good_text,
                        "phase": good_text,
                        "data": good_json,
                    },
                ),
            ),
            st.just("[" * 100_000 + "]" * 100_000),
        )
    )
    _from_json(h, text, cls)


def _from_json(h: _Harness, text: str, cls: type[SyncJob] | type[Checkpoint]) -> None:
    # Some generated texts are valid models; only the kind of failure matters here.
    outcome = call(serialization.from_json, text, cls)
    h.result.checked += 1
    if outcome.raw is not None:
        frame = outcome.describe().rsplit(" at ", 1)[-1]
        h.fail_once(
            ("from_json", type(outcome.raw).__name__, frame),
            f"serialization.from_json(..., {cls.__name__}): {outcome.describe()} (example: {text[:120]!r})",
        )
    elif outcome.error is not None and not isinstance(outcome.error, ValidationError):
        h.fail_once(("from_json", "type"), f"from_json raised {outcome.describe()}")


def _page_from(store: JobPersistence, cursor: str) -> Any:
    """Alice's page after ``cursor``."""
    return store.query_page(JobFilter(user_id="alice", cursor=cursor))


def _check_edges(h: _Harness) -> None:
    """Every named kind of hostile value once, whatever Hypothesis happens to draw."""
    poisons: dict[str, Any] = {
        "nan": math.nan,
        "inf": math.inf,
        "-inf": -math.inf,
        "tuple": (1,),
        "set": {1},
        "bytes": b"x",
        "object": object(),
        "datetime": T0,
        "lone surrogate": "\ud800",
        "int of 5001 digits": 10**5000,
    }
    for name, poison in poisons.items():

        def build(poison: Any = poison) -> SyncJob:
            return SyncJob(id="edge", user_id="u", project_id="p", metadata={"a": [{"b": poison}]})

        built = call(build)
        if built.ok:
            # Accepted as a model: the store must refuse it with a typed error, or keep it exactly.
            job = built.value
            h.attempt(
                "save_job",
                h.store.save_job,
                job,
                valid=False,
                documented=(DuplicateJobError,),
                example=f"metadata poison {name}",
            )
        else:
            h.attempt("SyncJob(...)", build, valid=False, example=f"metadata poison {name}")
        h.attempt(
            "save_checkpoint",
            h.store.save_checkpoint,
            "seed-0",
            "p",
            {"a": poison},
            valid=False,
            example=f"data poison {name}",
        )
    for depth in (65, 200, 5000):
        h.attempt(
            "save_checkpoint",
            h.store.save_checkpoint,
            "seed-0",
            "p",
            _nest(depth, 1, True),
            valid=False,
            example=f"data nested {depth} deep",
        )
    for cursor in _forged_cursors(JobFilter(user_id="alice")):
        h.attempt(
            "JobFilter(cursor=forged)",
            _page_from,
            h.store,
            cursor,
            valid=False,
            example=f"cursor={cursor[:60]!r}",
        )
    for now, retention in (
        (None, timedelta.max),
        (datetime(1, 1, 2, tzinfo=UTC), None),
        (datetime.min.replace(tzinfo=UTC), timedelta(days=1)),
        (datetime.max.replace(tzinfo=UTC), None),
    ):
        h.attempt(
            "run_cleanup",
            functools.partial(h.store.run_cleanup, now, retention=retention, dry_run=True),
            valid=True,
            example=f"now={now!r} retention={retention!r}",
        )
    for older_than in (
        datetime.min.replace(tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC) - timedelta(days=1),
    ):
        h.attempt(
            "delete_expired_jobs",
            h.store.delete_expired_jobs,
            older_than,
            valid=True,
            example=repr(older_than),
        )
    for criteria in (
        {"limit": 10**30},
        {"offset": 2**53 + 1},
        {"limit": -1},
        {"offset": -1},
        {"statuses": ["bogus"]},
    ):
        h.attempt(
            "JobFilter(...)",
            functools.partial(JobFilter, **criteria),
            valid=False,
            example=repr(criteria),
        )
    _from_json(h, "[" * 100_000 + "]" * 100_000, SyncJob)


# -- configurations ------------------------------------------------------------------------------------


def _check_configs(
    result: ScenarioResult, folder: Path, max_examples: int, seed_value: int
) -> None:
    cfg = folder / "configs"
    cfg.mkdir(parents=True, exist_ok=True)
    base = sqlite_url(cfg / "c.db")
    query = st.one_of(
        st.sampled_from(
            [
                "pool_size=abc",
                "pool_size=1000",
                "pool_size=5.5",
                "busy_timeout_ms=-1",
                "synchronous=bogus",
                "max_size_mb=1e3",
                "retention_days=nan",
                "retention_days=inf",
                "retention_days=-1",
                "max_metadata_bytes=1",
                "pool_size=5&pool_size=6",
                "=",
                "&&",
                "unknown=1",
                "check_on_open=everything",
                "recover_corrupt=perhaps",
                "checkpoint_max_age_hours=1e308",
                "path=/etc/passwd",
            ]
        ),
        st.text(max_size=30),
    )
    configs = st.one_of(
        query.map(lambda q: f"{base}?{q}"),
        st.sampled_from(
            [
                "sqlite:///" + str(cfg / ("n" * 300 + ".db")),
                "sqlite:///" + str(cfg / ("d" * 300) / "x.db"),
                "sqlite:///" + str(cfg) + "/",
                "sqlite:///" + str(cfg),
                "sqlite:///" + str(cfg / "x%00.db"),
                "sqlite:///:memory:",
                "sqlite://host/x.db",
                "sqlite://",
                "memory://host",
                "memory:///some/path",
                "memory://?pool_size=5",
                "nosuch://",
                "://",
                "",
                "memory:",
            ]
        ),
        st.text(max_size=20).map(lambda t: "memory://?" + t),
        st.fixed_dictionaries(
            {
                "backend": st.one_of(
                    st.sampled_from(["sqlite", "memory", "SQLITE", "nosuch", ""]), _not_str
                )
            },
            optional={
                "path": st.one_of(
                    st.just(str(cfg / "m.db")), _not_str, st.just(str(cfg / ("p" * 300)))
                ),
                "pool_size": st.one_of(st.integers(), st.floats(), st.text(max_size=4), st.none()),
                "retention_days": st.one_of(st.floats(), st.integers(), st.text(max_size=4)),
                "max_metadata_bytes": st.one_of(st.integers(), st.booleans(), st.floats()),
            },
        ),
        st.dictionaries(
            st.one_of(st.integers(), st.none()), st.integers(), min_size=1, max_size=2
        ).map(lambda d: {"backend": "memory", **d}),
        _not_str.filter(lambda v: v is not None),
    )
    seen: set[tuple[str, ...]] = set()

    @seed(seed_value)
    @settings(
        max_examples=max_examples,
        database=None,
        derandomize=False,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(configs)
    def examples(config: Any) -> None:
        outcome = call(open_persistence, config)
        result.checked += 1
        if outcome.ok:
            outcome.value.close()
            result.outcomes["configuration accepted"] += 1
            return
        if outcome.raw is not None:
            frame = outcome.describe().rsplit(" at ", 1)[-1]
            key = ("open_persistence", type(outcome.raw).__name__, frame)
            result.fail(
                f"open_persistence({config!r:.120}): {outcome.describe()}", keep=key not in seen
            )
            seen.add(key)
            return
        result.outcomes[f"configuration refused with {type(outcome.error).__name__}"] += 1
        result.check(
            isinstance(outcome.error, (ConfigError, BackendNotFoundError, StorageError)),
            f"open_persistence({config!r:.120}) raised {outcome.describe()}",
        )

    examples()
    shutil.rmtree(cfg, ignore_errors=True)


_CHECKS = (
    _check_models_and_writes,
    _check_updates,
    _check_queries,
    _check_cleanup_and_reads,
    _check_serialization,
)


def _explore(harness: _Harness, examples: int, seed_value: int) -> None:
    """Let Hypothesis draw ``examples`` calls, each of a randomly chosen kind."""

    @seed(seed_value)
    @settings(
        max_examples=examples,
        database=None,
        derandomize=False,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.data())
    def example(data: st.DataObject) -> None:
        harness.result.trials += 1
        harness.reset_if_big()
        check = data.draw(st.sampled_from(_CHECKS), label="method")
        check(harness, data)

    example()


def run(config: StressConfig, workdir: Path) -> ScenarioResult:
    """Run the examples on the memory and the SQLite backend, then the configurations."""
    result = ScenarioResult("bad input")
    folder = workdir / "badinput"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    examples = config.scaled(150, 1500)
    for backend in ("memory", "sqlite"):
        harness = _Harness(backend, folder, result)
        try:
            _check_edges(harness)
            _explore(harness, examples, config.seed)
        finally:
            harness.close()
    _check_configs(result, folder, config.scaled(100, 800), config.seed)
    return result
