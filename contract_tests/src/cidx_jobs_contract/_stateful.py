"""The stateful property-based test: a backend and the reference model, step by step."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cidx_jobs import (
    FINISHED_STATUSES,
    JobFilter,
    JobPage,
    JobPersistence,
    JobStatus,
    SyncJob,
)
from cidx_jobs.errors import DuplicateJobError, ValidationError

from ._base import T0, UTC, ManualClock, StoreFixtures, SuiteClock, all_jobs
from ._hypothesis import contract_settings
from ._model import ReferenceModel

# Small pools, so that ids collide, timestamps tie and filters hit.
IDS = ("job-0", "job-1", "job-2", "job-3", "job-4", "job-5", "Job-1", "job-10")
USERS = ("alice", "bob", "Alice")
PROJECTS = ("repo-a", "repo-b")
PHASES = ("git_pull", "indexing", "validation")
#: Creation times (ties are likely) and the finish times saved jobs may carry.
CREATED = (T0, T0 + timedelta(microseconds=1), T0 + timedelta(minutes=1), T0 + timedelta(hours=1))
TIMES = (*CREATED, T0 + timedelta(days=30), T0 + timedelta(days=30, minutes=30))
#: Cut-off instants for cleanup, around both the creation times and the clock.
CUTOFFS = (
    T0 - timedelta(days=1),
    T0 + timedelta(seconds=30),
    T0 + timedelta(hours=1),
    T0 + timedelta(days=30),
    T0 + timedelta(days=30, hours=1),
    T0 + timedelta(days=90),
)
FAR_FUTURE = datetime(9000, 1, 1, tzinfo=UTC)
_ZONES = (UTC, UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)))


def _instants(pool: tuple[datetime, ...]) -> st.SearchStrategy[datetime]:
    """Instants of ``pool``, sometimes expressed in another timezone."""
    return st.builds(
        lambda moment, zone: moment.astimezone(zone), st.sampled_from(pool), st.sampled_from(_ZONES)
    )


# Values drawn from fixed pools: much faster than free text and recursive JSON, and
# still full of what storage gets wrong (non-ASCII, 4-byte UTF-8, NUL, quotes,
# backslashes, big ints, floats, booleans next to ints, nesting).
_TEXTS = ("", "a", "Z", "é", "漢字", "🚀", "a\x00b", 'quote"', "back\\slash", "line\nbreak")
_LEAVES = (None, True, False, 0, 1, -1, 2**53 + 1, -(2**63), 1.0, 0.1, -2.5, 1e300, *_TEXTS)
_text = st.sampled_from(_TEXTS)
_safe_text = st.sampled_from([text for text in _TEXTS if "\x00" not in text])
_leaf = st.sampled_from(_LEAVES)
_json = st.one_of(
    _leaf,
    st.lists(_leaf, max_size=3),
    st.dictionaries(_text, st.lists(_leaf, max_size=2) | _leaf, max_size=2),
)
_json_objects = st.dictionaries(_text, _json, max_size=3)
_statuses = st.sampled_from(list(JobStatus))

jobs = st.builds(
    SyncJob,
    id=st.sampled_from(IDS),
    user_id=st.sampled_from(USERS),
    project_id=st.sampled_from(PROJECTS),
    status=_statuses,
    progress=st.integers(0, 100),
    phase=st.none() | st.sampled_from(PHASES),
    created_at=_instants(CREATED),
    started_at=st.none() | _instants(TIMES),
    completed_at=st.none() | _instants(TIMES),
    error_message=st.none() | _safe_text,
    metadata=_json_objects,
)


def _often_none(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``None`` two times in three: filters that combine many criteria rarely match."""
    return st.one_of(st.none(), st.none(), strategy)


filters = st.builds(
    JobFilter,
    user_id=_often_none(st.sampled_from((*USERS, "nobody"))),
    project_id=_often_none(st.sampled_from(PROJECTS)),
    statuses=_often_none(st.frozensets(_statuses)),
    created_after=_often_none(_instants(TIMES)),
    created_before=_often_none(_instants(TIMES)),
    limit=st.integers(1, 6),
    offset=st.just(0) | st.integers(0, 4),
)


# -- operations: each runs on a store and on the model, with comparable answers ----------


def _expected_set(expected: JobStatus | frozenset[JobStatus] | None) -> frozenset[JobStatus] | None:
    if expected is None:
        return None
    return frozenset({expected}) if isinstance(expected, JobStatus) else expected


@attrs.frozen
class SaveJob:
    job: SyncJob

    def on_store(self, store: JobPersistence, now: datetime) -> object:
        return store.save_job(self.job)

    def on_model(self, model: ReferenceModel, now: datetime) -> object:
        return model.save_job(self.job)


@attrs.frozen
class LoadJob:
    job_id: str

    def on_store(self, store: JobPersistence, now: datetime) -> object:
        return store.load_job(self.job_id)

    def on_model(self, model: ReferenceModel, now: datetime) -> object:
        return model.load_job(self.job_id)


@attrs.frozen
class SetStatus:
    job_id: str
    status: JobStatus
    error_message: str | None
    expected: JobStatus | frozenset[JobStatus] | None

    def on_store(self, store: JobPersistence, now: datetime) -> object:
        return store.update_job_status(
            self.job_id, self.status, error_message=self.error_message, expected=self.expected
        )

    def on_model(self, model: ReferenceModel, now: datetime) -> object:
        return model.update_job_status(
            self.job_id, self.status, self.error_message, _expected_set(self.expected), now
        )


@attrs.frozen
class SetProgress:
    job_id: str
    progress: int
    phase: str | None

    def on_store(self, store: JobPersistence, now: datetime) -> object:
        return store.update_job_progress(self.job_id, self.progress, self.phase)

    def on_model(self, model: ReferenceModel, now: datetime) -> object:
        return model.update_job_progress(self.job_id, self.progress, self.phase)


@attrs.frozen
class SaveCheckpoint:
    job_id: str
    phase: str
    data: dict[str, Any]

    def on_store(self, store: JobPersistence, now: datetime) -> object:
        return store.save_checkpoint(self.job_id, self.phase, self.data)

    def on_model(self, model: ReferenceModel, now: datetime) -> object:
        return model.save_checkpoint(self.job_id, self.phase, self.data, now)


@attrs.frozen
class LoadCheckpoint:
    job_id: str
    phase: str

    def on_store(self, store: JobPersistence, now: datetime) -> object:
        return store.load_checkpoint(self.job_id, self.phase)

    def on_model(self, model: ReferenceModel, now: datetime) -> object:
        return model.load_checkpoint(self.job_id, self.phase)


@attrs.frozen
class ListCheckpoints:
    job_id: str

    def on_store(self, store: JobPersistence, now: datetime) -> object:
        return store.list_checkpoints(self.job_id)

    def on_model(self, model: ReferenceModel, now: datetime) -> object:
        return model.list_checkpoints(self.job_id)


@attrs.frozen
class Query:
    filter: JobFilter

    def on_store(self, store: JobPersistence, now: datetime) -> object:
        page = store.query_page(self.filter)
        return page.jobs, page.next_cursor is not None

    def on_model(self, model: ReferenceModel, now: datetime) -> object:
        more = model.count(self.filter) > self.filter.offset + self.filter.limit
        return model.query(self.filter), more


@attrs.frozen
class Count:
    filter: JobFilter

    def on_store(self, store: JobPersistence, now: datetime) -> object:
        return store.count_jobs(self.filter)

    def on_model(self, model: ReferenceModel, now: datetime) -> object:
        return model.count(self.filter)


@attrs.frozen
class DeleteExpired:
    older_than: datetime

    def on_store(self, store: JobPersistence, now: datetime) -> object:
        return store.delete_expired_jobs(self.older_than)

    def on_model(self, model: ReferenceModel, now: datetime) -> object:
        return model.delete_finished(dict.fromkeys(FINISHED_STATUSES, self.older_than))[0]


@attrs.frozen
class RunCleanup:
    now: datetime | None
    retention: timedelta
    dry_run: bool

    def on_store(self, store: JobPersistence, now: datetime) -> object:
        report = store.run_cleanup(self.now, retention=self.retention, dry_run=self.dry_run)
        return report.jobs_deleted, report.checkpoints_deleted, report.dry_run

    def on_model(self, model: ReferenceModel, now: datetime) -> object:
        cutoff = (self.now if self.now is not None else now) - self.retention
        jobs, checkpoints = model.delete_finished(
            dict.fromkeys(FINISHED_STATUSES, cutoff), dry_run=self.dry_run
        )
        return jobs, checkpoints, self.dry_run


Op = (
    SaveJob
    | LoadJob
    | SetStatus
    | SetProgress
    | SaveCheckpoint
    | LoadCheckpoint
    | ListCheckpoints
    | Query
    | Count
    | DeleteExpired
    | RunCleanup
)

# None half of the time: without expected, the terminal guard is what decides.
_expected = st.one_of(
    st.none(), st.none(), _statuses, st.frozensets(_statuses, min_size=1, max_size=3)
)


def _updates(ids: st.SearchStrategy[str]) -> st.SearchStrategy[Op]:
    """Status and progress changes of a job whose id ``ids`` draws."""
    return st.one_of(
        st.builds(SetStatus, ids, _statuses, st.none() | _safe_text, _expected),
        st.builds(SetProgress, ids, st.integers(0, 100), st.none() | st.sampled_from(PHASES)),
    )


def _checkpoint_ops(ids: st.SearchStrategy[str]) -> st.SearchStrategy[Op]:
    """Checkpoint writes and reads of a job whose id ``ids`` draws."""
    return st.one_of(
        st.builds(SaveCheckpoint, ids, st.sampled_from(PHASES), _json_objects),
        st.builds(LoadCheckpoint, ids, st.sampled_from(PHASES)),
        st.builds(ListCheckpoints, ids),
    )


# Built once per id: building strategies inside a rule is slow.
_UPDATES_BY_ID = {job_id: _updates(st.just(job_id)) for job_id in IDS}
_CHECKPOINT_OPS_BY_ID = {job_id: _checkpoint_ops(st.just(job_id)) for job_id in IDS}
_any_id = st.sampled_from(IDS)
_write_ops: st.SearchStrategy[Op] = st.one_of(
    st.builds(SaveJob, jobs),
    _updates(_any_id),
    st.builds(SaveCheckpoint, _any_id, st.sampled_from(PHASES), _json_objects),
)
_read_ops: st.SearchStrategy[Op] = st.one_of(
    st.builds(LoadJob, _any_id),
    _checkpoint_ops(_any_id),
    st.builds(Query, filters),
    st.builds(Count, filters),
)
_cleanup_ops: st.SearchStrategy[Op] = st.one_of(
    st.builds(DeleteExpired, _instants(CUTOFFS)),
    st.builds(
        RunCleanup,
        st.none() | _instants(CUTOFFS),
        st.sampled_from([timedelta(0), timedelta(hours=1), timedelta(days=7)]),
        st.booleans(),
    ),
)


def _outcome(call: Callable[[], object]) -> tuple[str, object]:
    try:
        return "returned", call()
    except DuplicateJobError as error:
        return "DuplicateJobError", error.job_id
    except ValidationError:
        # only an over-size payload, on a store configured with a small limit
        return "ValidationError", None


class _Rollback(Exception):
    """Raised at the end of a transaction block the machine rolls back."""


class JobStoreMachine(RuleBasedStateMachine):
    """Drives one store and a :class:`ReferenceModel` with the same operations.

    The store is emptied at the start and end of every example (every job is
    cancelled, then expired), so one store serves every example.
    """

    def __init__(self, store: JobPersistence, suite_clock: SuiteClock) -> None:
        super().__init__()
        self.store = store
        self.model = ReferenceModel(max_bytes=store.settings.max_metadata_bytes)
        self.clock = ManualClock()
        suite_clock.take_over(self.clock)
        self.paging: tuple[JobFilter, JobPage] | None = None
        self._wipe()
        assert store.count_jobs() == 0, "the store could not be emptied between examples"

    def _wipe(self) -> None:
        for job in all_jobs(self.store):
            self.store.update_job_status(job.id, JobStatus.CANCELLED, expected=set(JobStatus))
        self.store.delete_expired_jobs(FAR_FUTURE)

    @initialize(jobs=st.lists(jobs, min_size=3, max_size=10, unique_by=lambda job: job.id))
    def seed(self, jobs: list[SyncJob]) -> None:
        """Start from a few jobs."""
        for job in jobs:
            self._check(SaveJob(job))

    def teardown(self) -> None:
        """Empty the store for the next example."""
        self._wipe()

    def _check(self, op: Op) -> None:
        now = self.clock.now
        expected = _outcome(lambda: op.on_model(self.model, now))
        actual = _outcome(lambda: op.on_store(self.store, now))
        assert actual == expected, (
            f"{op!r}\n  the store answered  {actual!r}\n  the model answered  {expected!r}"
        )

    @rule(job=jobs)
    def save(self, job: SyncJob) -> None:
        """Save a job (often a duplicate)."""
        self._check(SaveJob(job))

    @precondition(lambda self: bool(self.model.jobs))
    @rule(data=st.data())
    def update_a_stored_job(self, data: st.DataObject) -> None:
        """Change the status or progress of a job that exists."""
        job_id = data.draw(st.sampled_from(sorted(self.model.jobs)))
        self._check(data.draw(_UPDATES_BY_ID[job_id]))

    @precondition(lambda self: bool(self.model.jobs))
    @rule(data=st.data())
    def checkpoint_a_stored_job(self, data: st.DataObject) -> None:
        """Write or read a checkpoint of a job that exists."""
        job_id = data.draw(st.sampled_from(sorted(self.model.jobs)))
        self._check(data.draw(_CHECKPOINT_OPS_BY_ID[job_id]))

    @rule(op=_write_ops)
    def write(self, op: Op) -> None:
        """Any write, of any id (unknown ones included)."""
        self._check(op)

    @rule(op=_read_ops)
    def read(self, op: Op) -> None:
        """Any read, of any id (unknown ones included)."""
        self._check(op)

    @rule(filter=filters)
    def query(self, filter: JobFilter) -> None:
        """One page of a filter, by offset."""
        self._check(Query(filter))

    @rule(op=_cleanup_ops)
    def cleanup(self, op: Op) -> None:
        """delete_expired_jobs or run_cleanup."""
        self._check(op)

    @rule(
        ops=st.lists(_write_ops | _cleanup_ops | _read_ops, min_size=1, max_size=4),
        fail=st.booleans(),
    )
    def transaction(self, ops: list[Op], fail: bool) -> None:
        """Several operations in one block that commits, or raises and rolls back."""
        before = self.model.copy()
        try:
            with self.store.transaction():
                for op in ops:
                    self._check(op)
                if fail:
                    raise _Rollback
        except _Rollback:
            self.model = before

    @rule(seconds=st.integers(0, 7200))
    def tick(self, seconds: int) -> None:
        """Time passes."""
        self.clock.advance(timedelta(seconds=seconds))

    @rule(filter=filters)
    def page_through(self, filter: JobFilter) -> None:
        """Read every page of a filter with cursors; together they are exactly the matches."""
        filter = attrs.evolve(filter, offset=0)
        expected = self.model.matching(filter)
        seen: list[SyncJob] = []
        while True:
            page = self.store.query_page(filter)
            seen.extend(page.jobs)
            assert len(seen) <= len(expected), "pages return more jobs than match"
            if page.next_cursor is None:
                break
            filter = filter.next_page(page)
        assert seen == expected

    @rule(filter=filters, limit=st.integers(1, 2))
    def start_paging(self, filter: JobFilter, limit: int) -> None:
        """Read a first page and keep its cursor; other steps may change the jobs meanwhile."""
        filter = attrs.evolve(filter, offset=0, limit=limit)
        self._compare_page(filter, None)

    @precondition(lambda self: self.paging is not None)
    @rule()
    def continue_paging(self) -> None:
        """The next page holds the matches strictly after the last job of the previous one."""
        assert self.paging is not None
        filter, page = self.paging
        last = page.jobs[-1]
        self._compare_page(filter.next_page(page), (last.created_at, last.id))

    def _compare_page(self, filter: JobFilter, after: tuple[datetime, str] | None) -> None:
        page = self.store.query_page(filter)
        matching = self.model.matching(filter)
        if after is not None:
            matching = [job for job in matching if (job.created_at, job.id) < after]
        assert page.jobs == matching[: filter.limit], f"page of {filter!r} after {after!r}"
        assert (page.next_cursor is not None) == (len(matching) > filter.limit)
        self.paging = (filter, page) if page.next_cursor is not None else None

    @invariant()
    def agrees_with_the_model(self) -> None:
        """After every step: the same jobs, in the same order, with the same checkpoints."""
        assert self.store.count_jobs() == len(self.model.jobs)
        assert all_jobs(self.store) == self.model.matching(JobFilter())
        # every id, not only the stored ones: a deleted job must leave no checkpoint behind
        for job_id in IDS:
            assert self.store.list_checkpoints(job_id) == self.model.list_checkpoints(job_id)


class StatefulContract(StoreFixtures):
    """Random sequences of operations give the same answers as :class:`ReferenceModel`."""

    def test_matches_the_reference_model(
        self, store: JobPersistence, suite_clock: SuiteClock
    ) -> None:
        class OnThisStore(JobStoreMachine):
            def __init__(self) -> None:
                super().__init__(store, suite_clock)

        run_state_machine_as_test(OnThisStore, settings=contract_settings())
