"""The fixtures every contract test uses, and the helpers the tests share."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import attrs
import pytest

from cidx_jobs import (
    Checkpoint,
    Hooks,
    JobFilter,
    JobPersistence,
    JobStatus,
    StoreSettings,
    SyncJob,
    open_persistence,
    parse_config,
    utcnow,
)
from cidx_jobs.backend import Backend, StoreConfig

from ._capabilities import Capabilities, required_by, skip_reason

UTC = timezone.utc
#: An instant with microseconds, far from any real clock, where test data starts.
T0 = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)

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


class SuiteClock:
    """The clock every store of the suite is built with: the wall clock, until a test
    takes control of time through the ``clock`` fixture (a :class:`ManualClock`).

    The suite hands it to the facade when it builds one (``StoreSettings(clock=...)``),
    so a backend, wrapping or not, never needs to know about test clocks.
    """

    def __init__(self) -> None:
        self._manual: ManualClock | None = None

    def __call__(self) -> datetime:
        manual = self._manual
        return utcnow() if manual is None else manual()

    def take_over(self, manual: ManualClock) -> None:
        """Show ``manual``'s time from now on."""
        self._manual = manual


class StoreFixtures:
    """The fixtures of the contract suite; every contract mixin derives from this class.

    A backend's test class overrides ``base_config`` (the configuration that names
    the backend, e.g. ``"sqlite://"``), and the suite does the rest from the
    backend's registration: its declared capabilities, and its scratch factory
    for a fresh, isolated storage per test. A backend without a scratch factory
    overrides ``store_config`` instead.
    """

    @pytest.fixture
    def base_config(self) -> StoreConfig:
        """The configuration that names the backend under test. Override this fixture."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the `base_config` fixture: define "
            "`@pytest.fixture def base_config(self): return 'mybackend://'` (a URL or "
            "mapping naming your backend; see the cidx_jobs_contract docs)"
        )

    @pytest.fixture
    def backend(self, base_config: StoreConfig) -> Backend:
        """The registered backend that ``base_config`` names."""
        name = parse_config(base_config)[0]
        found = Hooks().backends().get(name)
        if found is None:
            raise LookupError(
                f"no backend {name!r} is installed; install the distribution that "
                "registers it through the cidx_jobs entry point"
            )
        return found

    @pytest.fixture
    def capabilities(self, backend: Backend) -> Capabilities:
        """The optional behaviour the backend declared when it registered."""
        return Capabilities.from_declared(backend.capabilities)

    @pytest.fixture
    def store_config(
        self, backend: Backend, base_config: StoreConfig, tmp_path: Path
    ) -> Iterator[StoreConfig]:
        """The configuration of a fresh, empty, isolated storage for this test.

        Made by the backend's scratch factory, which removes the storage afterwards.
        """
        if backend.scratch is None:
            raise NotImplementedError(
                f"backend {backend.name!r} (plugin {backend.plugin!r}) registered no scratch "
                "factory: pass `scratch=` to register() (see docs/writing-a-backend.md), or "
                "override the `store_config` fixture"
            )
        workdir = tmp_path / "scratch"
        workdir.mkdir()
        before = set(backend.inventory(base_config)) if backend.inventory else set()
        with backend.scratch(base_config, workdir) as config:
            yield config
        if backend.inventory is not None:
            remaining = sorted(set(backend.inventory(base_config)) - before)
            if remaining:
                pytest.fail(
                    f"the scratch factory of backend {backend.name!r} left {remaining} behind "
                    "(as its inventory lists them): it must remove every storage it made"
                )
        left = sorted(path.name for path in workdir.iterdir())
        if left:
            pytest.fail(
                f"the scratch factory of backend {backend.name!r} left {left} behind in its "
                "folder: it must remove everything it made"
            )
        workdir.rmdir()

    @pytest.fixture
    def suite_clock(self) -> SuiteClock:
        """The clock of every store this test builds."""
        return SuiteClock()

    @pytest.fixture
    def store_settings(self, suite_clock: SuiteClock) -> StoreSettings:
        """The settings the suite builds its stores with (the suite's clock)."""
        return StoreSettings(clock=suite_clock)

    @pytest.fixture
    def store(
        self, store_config: StoreConfig, store_settings: StoreSettings
    ) -> Iterator[JobPersistence]:
        """A fresh, empty store for one test, built with the suite's settings; closed afterwards."""
        store = open_persistence(store_config, settings=store_settings)
        try:
            yield store
        finally:
            store.close()

    @pytest.fixture
    def reopen(self, store_config: StoreConfig, store_settings: StoreSettings) -> Iterator[Reopen]:
        """A callable that opens a new store on the storage of ``store``.

        Tests call it after closing ``store`` (persistence) or while it is open
        (several handles); what it opened is closed at teardown.
        """
        opened: list[JobPersistence] = []

        def open_again() -> JobPersistence:
            reopened = open_persistence(store_config, settings=store_settings)
            opened.append(reopened)
            return reopened

        yield open_again
        for reopened in opened:
            reopened.close()

    @pytest.fixture
    def clock(self, suite_clock: SuiteClock) -> ManualClock:
        """A :class:`ManualClock` that every store of the test reads, for exact timestamps."""
        clock = ManualClock()
        suite_clock.take_over(clock)
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
