"""The fixtures every contract test uses, and the helpers the tests share."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import pytest

from cidx_jobs import Checkpoint, JobFilter, JobPersistence, JobStatus, SyncJob, open_persistence

from ._capabilities import Capabilities, required_by, skip_reason

UTC = timezone.utc
#: An instant with microseconds, far from any real clock, where test data starts.
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)

StoreConfig = str | Mapping[str, Any] | None
Reopen = Callable[[], JobPersistence]


class ManualClock:
    """A clock that stands still until told to move; the suite installs it in a store.

    Call it for the current time. Thread-safe.
    """

    def __init__(self, start: datetime = T0 + timedelta(days=30)) -> None:
        self._lock = threading.Lock()
        self._now = start

    def __call__(self) -> datetime:
        with self._lock:
            return self._now

    @property
    def now(self) -> datetime:
        """The time the clock shows."""
        return self()

    def advance(self, delta: timedelta = timedelta(seconds=1)) -> datetime:
        """Move the clock forward by ``delta`` and return the new time."""
        with self._lock:
            self._now += delta
            return self._now

    def set(self, when: datetime) -> None:
        """Show ``when`` from now on (an aware datetime)."""
        with self._lock:
            self._now = when.astimezone(UTC)


def install_clock(store: JobPersistence, clock: Callable[[], datetime]) -> None:
    """Make ``store`` take the current time from ``clock``.

    A store reads the time only through its settings' ``clock`` (which is what
    lets tests replace it); the suite swaps it in place of the one the store
    was opened with.
    """
    try:
        store.settings = attrs.evolve(store.settings, clock=clock)
    except AttributeError as error:  # pragma: no cover - a backend that hides its settings
        raise TypeError(
            f"cannot install a test clock in {store!r}: its `settings` attribute is read-only; "
            "the contract needs JobPersistence.settings to be assignable"
        ) from error


class StoreFixtures:
    """The fixtures of the contract suite; every contract mixin derives from this class.

    A backend's test class overrides ``store`` (required) and, where they
    apply, ``capabilities``, ``store_config`` and ``reopen``.
    """

    @pytest.fixture
    def store(self) -> Iterator[JobPersistence]:
        """A fresh, empty store for one test; closed afterwards. Override this fixture."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the `store` fixture: define "
            "`@pytest.fixture def store(self): ...` that yields a fresh, empty JobPersistence "
            "of your backend and closes it afterwards (see the cidx_jobs_contract docs)"
        )

    @pytest.fixture
    def capabilities(self) -> Capabilities:
        """The optional behaviour the backend has; override to declare more."""
        return Capabilities()

    @pytest.fixture
    def store_config(self) -> StoreConfig:
        """The URL or mapping that opens the storage ``store`` uses, or ``None``.

        Override it when the backend's storage can be opened again by
        configuration: the default ``reopen`` and the multi-process tests use it.
        """
        return None

    @pytest.fixture
    def reopen(self, store_config: StoreConfig) -> Iterator[Reopen]:
        """A callable that opens a new store on the storage of ``store``.

        The default opens ``store_config`` with :func:`cidx_jobs.open_persistence`
        and closes what it opened at teardown. Tests call it after closing
        ``store`` (persistence) or while it is open (several handles).
        """
        opened: list[JobPersistence] = []

        def open_again() -> JobPersistence:
            if store_config is None:
                raise NotImplementedError(
                    "this backend declares a capability that needs to reopen its storage: "
                    "override the `store_config` fixture (the URL or mapping of the storage "
                    "that `store` uses) or the `reopen` fixture"
                )
            reopened = open_persistence(store_config)
            opened.append(reopened)
            return reopened

        yield open_again
        for reopened in opened:
            reopened.close()

    @pytest.fixture
    def clock(self, store: JobPersistence) -> ManualClock:
        """A :class:`ManualClock` installed in ``store``, for exact timestamps."""
        clock = ManualClock()
        install_clock(store, clock)
        return clock

    @pytest.fixture(autouse=True)
    def _cidx_contract_requirements(
        self, request: pytest.FixtureRequest, capabilities: Capabilities
    ) -> None:
        if not isinstance(capabilities, Capabilities):
            raise TypeError(
                f"the `capabilities` fixture returned {capabilities!r}; "
                "return a cidx_jobs_contract.Capabilities"
            )
        missing = capabilities.missing(required_by(request.function))
        if missing:
            pytest.skip(skip_reason(missing))


# -- helpers shared by the contract modules ------------------------------------------------


def at(minutes: float = 0, *, days: float = 0) -> datetime:
    """``T0`` moved by ``minutes`` and ``days``."""
    return T0 + timedelta(minutes=minutes, days=days)


def new_job(
    job_id: str,
    *,
    user: str = "alice",
    project: str = "repo",
    status: JobStatus = JobStatus.PENDING,
    created_at: datetime = T0,
    **fields: Any,
) -> SyncJob:
    """A job with sensible defaults; ``fields`` sets any other SyncJob field."""
    return SyncJob(
        id=job_id,
        user_id=user,
        project_id=project,
        status=status,
        created_at=created_at,
        **fields,
    )


def save_all(store: JobPersistence, jobs: list[SyncJob]) -> list[SyncJob]:
    """Save every job of ``jobs`` and return them."""
    for job in jobs:
        assert store.save_job(job) is True
    return jobs


def newest_first(jobs: list[SyncJob]) -> list[SyncJob]:
    """``jobs`` in the order every query returns: created_at, then id, descending."""
    return sorted(jobs, key=lambda job: (job.created_at, job.id), reverse=True)


def ids(jobs: list[SyncJob]) -> list[str]:
    """The ids of ``jobs``, in order."""
    return [job.id for job in jobs]


def all_jobs(store: JobPersistence, filter: JobFilter | None = None) -> list[SyncJob]:
    """Every job matching ``filter``, read page by page with the keyset cursor."""
    page_filter = attrs.evolve(filter or JobFilter(), limit=1000, offset=0, cursor=None)
    jobs: list[SyncJob] = []
    while True:
        page = store.query_page(page_filter)
        jobs.extend(page.jobs)
        if page.next_cursor is None:
            return jobs
        page_filter = page_filter.next_page(page)


@attrs.frozen
class Snapshot:
    """Everything a store holds: its jobs newest first, and each job's checkpoints."""

    jobs: list[SyncJob]
    checkpoints: dict[str, list[Checkpoint]]


def snapshot(store: JobPersistence) -> Snapshot:
    """Read everything ``store`` holds."""
    jobs = all_jobs(store)
    return Snapshot(jobs, {job.id: store.list_checkpoints(job.id) for job in jobs})


def same_json(left: object, right: object) -> bool:
    """JSON equality that also tells ``True`` from ``1`` and ``1.0`` from ``1``."""
    if type(left) is not type(right):
        return False
    if isinstance(left, dict):
        assert isinstance(right, dict)
        return left.keys() == right.keys() and all(same_json(left[k], right[k]) for k in left)
    if isinstance(left, list):
        assert isinstance(right, list)
        return len(left) == len(right) and all(map(same_json, left, right))
    return left == right


def is_utc(value: datetime | None) -> bool:
    """Whether ``value`` is an aware datetime in UTC."""
    return value is not None and value.tzinfo is not None and value.utcoffset() == timedelta(0)
