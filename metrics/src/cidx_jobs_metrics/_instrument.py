"""InstrumentedStorage: a storage that times every call of the one it wraps."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from time import perf_counter
from typing import Any

import attrs

from cidx_jobs import JobPersistence, JobStatus
from cidx_jobs.backend import FaultInjector, Storage
from cidx_jobs.errors import StorageError

from ._metrics import JobMetrics

#: The storage methods whose calls are timed (``transaction`` and ``close`` are not: a
#: block's time is the caller's code).
TIMED = (
    "oldest_active",
    "insert_job",
    "get_job",
    "set_status",
    "set_progress",
    "select_jobs",
    "count_jobs",
    "upsert_checkpoint",
    "get_checkpoint",
    "get_checkpoint_data",
    "get_checkpoints",
    "renew_leases",
    "find_stale",
    "take_over",
    "describe",
    "check_health",
    "server_time",
    "top_users",
    "backup",
    "migrate",
    "delete_expired",
    "count_expired",
)


def _timed(name: str) -> Callable[..., Any]:
    def call(self: InstrumentedStorage, *args: Any, **kwargs: Any) -> Any:
        observe = self._observe[name]
        start = perf_counter()
        try:
            return getattr(self.inner, name)(*args, **kwargs)
        except StorageError as error:
            self._failed(name, error)
            raise
        finally:
            observe(perf_counter() - start)

    call.__name__ = name
    call.__doc__ = f"``inner.{name}()``, timed."
    return call


class InstrumentedStorage(Storage):
    """``inner``, with every storage call timed into ``metrics`` by operation.

    Each call adds two clock reads and one histogram observation (2 to 4 µs measured here);
    a failed call also counts its error. The time of a cleanup's batches is added up and
    observed as the cleanup's duration when its ``cidx_jobs_cleanup_done`` event reaches
    ``metrics``. Attributes the storage has beyond the interface (SQLite's ``path``,
    ``recovery``, ``options``) are read through from ``inner``.

    :param inner: the storage to time; closing this one closes it.
    :param metrics: where to count.
    """

    def __init__(self, inner: Storage, metrics: JobMetrics) -> None:
        #: The storage this one times.
        self.inner = inner
        self._metrics = metrics
        self._observe = {name: metrics.storage_calls.labels(name).observe for name in TIMED}

    def _failed(self, name: str, error: StorageError) -> None:
        self._metrics.storage_errors.labels(name, type(error).__name__).inc()

    def __getattr__(self, name: str) -> Any:
        # Only reached for names the class lacks: the backend's own extras.
        return getattr(self.__dict__["inner"], name)

    def __repr__(self) -> str:
        return f"<InstrumentedStorage {self.inner!r}>"

    insert_job = _timed("insert_job")
    get_job = _timed("get_job")
    set_status = _timed("set_status")
    set_progress = _timed("set_progress")
    select_jobs = _timed("select_jobs")
    count_jobs = _timed("count_jobs")
    upsert_checkpoint = _timed("upsert_checkpoint")
    get_checkpoint = _timed("get_checkpoint")
    get_checkpoint_data = _timed("get_checkpoint_data")
    get_checkpoints = _timed("get_checkpoints")
    renew_leases = _timed("renew_leases")
    find_stale = _timed("find_stale")
    take_over = _timed("take_over")
    describe = _timed("describe")
    check_health = _timed("check_health")
    server_time = _timed("server_time")
    top_users = _timed("top_users")
    oldest_active = _timed("oldest_active")
    migrate = _timed("migrate")

    def backup(self, target: str | os.PathLike[str]) -> None:
        """``inner.backup()``, timed."""
        _timed("backup")(self, target)

    def delete_expired(self, cutoffs: Mapping[JobStatus, datetime], limit: int) -> tuple[int, int]:
        """``inner.delete_expired()``, timed, and added to the cleanup's duration; what it
        deleted is counted at once, so the batches of a cleanup that fails later still count.

        A failure ends the cleanup (the core does not retry a batch), so it also drops the
        cleanup's time: the next cleanup's duration starts from zero.
        """
        clock = self._metrics.cleanup_clock
        try:
            jobs, checkpoints = self._cleanup_step("delete_expired", cutoffs, limit)
        except BaseException:
            clock.reset()
            raise
        if jobs > 0:
            self._metrics.cleanup_deleted_jobs.inc(jobs)
            clock.jobs += jobs
        if checkpoints > 0:
            self._metrics.cleanup_deleted_checkpoints.inc(checkpoints)
            clock.checkpoints += checkpoints
        if jobs > limit:  # the core refuses the batch and ends the cleanup with an error
            clock.reset()
        return jobs, checkpoints

    def count_expired(self, cutoffs: Mapping[JobStatus, datetime]) -> tuple[int, int]:
        """``inner.count_expired()``, timed, and added to the (dry-run) cleanup's duration."""
        return self._cleanup_step("count_expired", cutoffs)  # type: ignore[no-any-return]

    def _cleanup_step(self, name: str, *args: Any) -> Any:
        clock = self._metrics.cleanup_clock
        start = perf_counter()
        try:
            return getattr(self.inner, name)(*args)
        except StorageError as error:
            self._failed(name, error)
            raise
        finally:
            elapsed = perf_counter() - start
            self._observe[name](elapsed)
            clock.seconds = (clock.seconds or 0.0) + elapsed

    def transaction(self) -> AbstractContextManager[None]:
        """``inner.transaction()`` (not timed)."""
        return self.inner.transaction()

    def close(self) -> None:
        """Close ``inner``."""
        self.inner.close()

    def fault_injector(self) -> FaultInjector | None:
        """``inner``'s fault injector."""
        return self.inner.fault_injector()


def instrument(store: JobPersistence, metrics: JobMetrics | None = None) -> JobPersistence:
    """A store over ``store``'s storage, wrapped to time every storage call into ``metrics``.

    Use it in place of ``store`` (same storage, hooks, settings and owner id; do not use
    both, and close only the new one): ``store = instrument(open_persistence())``. Without
    it, the plugin counts events only. ``metrics`` (by default the plugin the entry point
    registered) is registered on the store's plugin manager if it is not yet, so its events
    count too.

    :raises ValueError: ``store`` is not a JobPersistence.
    """
    if not isinstance(store, JobPersistence):
        raise ValueError(f"instrument() takes a JobPersistence, got {type(store).__name__}")
    if metrics is None:
        from ._plugin import plugin

        metrics = plugin
    pm = store.hooks.pm
    if not pm.is_registered(metrics):
        pm.register(metrics, name=f"cidx-jobs-metrics-{id(metrics):x}")
    settings = attrs.evolve(store.settings, owner_id=store.owner_id)
    return JobPersistence(
        InstrumentedStorage(store.storage, metrics), hooks=store.hooks, settings=settings
    )
