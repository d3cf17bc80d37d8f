"""LeaseRunner: a worker's lifecycle around the store, as an asyncio task.

What it has to get right was measured on a FastAPI app under ``uvicorn --workers 4``: a
worker restarted 3.4 s after a SIGKILL runs its start-up recovery while the dead worker's lease
is still fresh, so recovering only at start-up leaves that worker's jobs ``running`` until the
next restart. Recovery has to look again, periodically, and the lease has to be short enough for
a sibling to take the jobs soon; and a worker that stops gracefully has to give its jobs up
instead of leaving them to expire.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
from collections.abc import Awaitable, Callable
from datetime import timedelta
from types import TracebackType
from typing import Any

from ._async import AsyncJobPersistence
from ._models import RecoveryReport
from ._persistence import JobPersistence
from ._scheduler import _seconds
from .errors import ValidationError

logger = logging.getLogger("cidx_jobs")

#: The defaults: a killed worker's jobs reach a live sibling within about
#: LEASE_TIMEOUT + SWEEP_INTERVAL (25 s) of its last heartbeat.
HEARTBEAT_INTERVAL = 5.0
LEASE_TIMEOUT = 20.0
SWEEP_INTERVAL = 5.0
#: Seconds before a failed heartbeat is tried again.
_HEARTBEAT_RETRY = 0.5

OnRecovered = Callable[[RecoveryReport], "Awaitable[None] | None"]


class LeaseRunner:
    """Keeps this worker's job leases alive, takes over dead workers' jobs, and hands this
    worker's jobs over when it stops: one per store, in the FastAPI lifespan.

    While it runs, it

    * renews the leases of the store's jobs every ``heartbeat_interval``
      (:meth:`~cidx_jobs.JobPersistence.heartbeat`);
    * recovers at once when it starts, and again every ``sweep_interval``
      (:meth:`~cidx_jobs.JobPersistence.recover_interrupted_jobs` with
      ``lease_timeout``), and passes each report that found a job to
      ``on_recovered`` (a function or a coroutine function), whose work is to
      resume ``report.interrupted`` and re-queue ``report.requeue``;

    and when it stops (leaving ``async with``, as a lifespan does on SIGTERM)
    it stops heartbeating and calls
    :meth:`~cidx_jobs.JobPersistence.hand_over_jobs`: the store's running jobs
    become interrupted, its workers' fenced writes start failing, and the next
    sweep of a sibling takes every job of this store. It logs what it handed over.

    With the defaults, a SIGKILLed worker's jobs reach a live sibling within
    ``lease_timeout + sweep_interval`` (25 s) of its last heartbeat, and a
    gracefully stopped worker's within one ``sweep_interval`` (5 s); the
    figures measured are in docs/lifecycle.md. A worker stalled for longer than
    ``lease_timeout`` loses its jobs; its fenced writes then raise
    :class:`~cidx_jobs.errors.LeaseLostError`. A failing heartbeat is logged on the ``cidx_jobs`` logger and tried again
    0.5 s later, a failing sweep at the next interval, and a report whose
    ``on_recovered`` raised is passed to it again at the next sweep (the jobs
    are this store's by then, and no sweep finds them again): the runner never
    dies of it.

    ::

        async with open_async_persistence() as store, LeaseRunner(store, on_recovered=resume):
            yield

    :param store: the store (async, or sync: then its calls run on threads).
    :param on_recovered: called with each recovery report that holds a job.
    :param heartbeat_interval: seconds or a timedelta between heartbeats.
    :param lease_timeout: how long another worker's lease lasts without a heartbeat;
        at least twice ``heartbeat_interval``.
    :param sweep_interval: seconds or a timedelta between recovery sweeps.
    :param hand_over: whether stopping hands the store's jobs over (default ``True``).
    :raises ValidationError: an interval is not positive, or ``lease_timeout`` is
        shorter than two heartbeat intervals.
    """

    def __init__(
        self,
        store: AsyncJobPersistence | JobPersistence,
        *,
        on_recovered: OnRecovered | None = None,
        heartbeat_interval: timedelta | float = HEARTBEAT_INTERVAL,
        lease_timeout: timedelta | float = LEASE_TIMEOUT,
        sweep_interval: timedelta | float = SWEEP_INTERVAL,
        hand_over: bool = True,
    ) -> None:
        if not isinstance(store, (AsyncJobPersistence, JobPersistence)):
            raise ValidationError(
                f"LeaseRunner() takes a job store, got {type(store).__name__}", field="store"
            )
        if on_recovered is not None and not callable(on_recovered):
            raise ValidationError("on_recovered must be callable", field="on_recovered")
        if not isinstance(hand_over, bool):
            raise ValidationError("hand_over must be a bool", field="hand_over")
        self.store = store
        self.on_recovered = on_recovered
        self.heartbeat_interval = _seconds(heartbeat_interval, "heartbeat_interval")
        self.lease_timeout = timedelta(seconds=_seconds(lease_timeout, "lease_timeout"))
        self.sweep_interval = _seconds(sweep_interval, "sweep_interval")
        if self.lease_timeout.total_seconds() < 2 * self.heartbeat_interval:
            raise ValidationError(
                f"lease_timeout ({self.lease_timeout.total_seconds():g} s) must be at least "
                f"twice heartbeat_interval ({self.heartbeat_interval:g} s): a lease must "
                "survive one late heartbeat",
                field="lease_timeout",
            )
        self.hand_over = hand_over
        #: How many sweeps and heartbeats ran, and how many of them failed.
        self.sweeps = 0
        self.heartbeats = 0
        self.failures = 0
        #: The last report that found a job, or ``None``.
        self.last_report: RecoveryReport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        #: Reports whose on_recovered failed: passed on again at the next sweep (the jobs are
        #: this store's now, and its own sweeps never find them again).
        self._unhandled: list[RecoveryReport] = []
        #: The store calls in flight: stop() waits for them before it hands the jobs over.
        self._in_flight: set[asyncio.Future[Any]] = set()
        self._starting = False

    @property
    def running(self) -> bool:
        """Whether the runner's tasks are alive."""
        return any(not task.done() for task in self._tasks)

    async def _store_call(self, name: str, *args: Any) -> Any:
        method = getattr(self.store, name)
        if isinstance(self.store, AsyncJobPersistence):
            call: asyncio.Future[Any] = asyncio.ensure_future(method(*args))
        else:
            call = asyncio.ensure_future(asyncio.to_thread(method, *args))
        self._in_flight.add(call)
        call.add_done_callback(self._in_flight.discard)
        # Shielded: a task of the runner cancelled by stop() stops waiting, while the call
        # runs to its end, and stop() waits for it before handing the jobs over.
        return await asyncio.shield(call)

    async def sweep(self) -> RecoveryReport | None:
        """Run one recovery sweep now, and pass a report that found a job to
        ``on_recovered``; returns the report, or ``None`` when the sweep failed (logged)."""
        try:
            report: RecoveryReport = await self._store_call(
                "recover_interrupted_jobs", self.lease_timeout
            )
        except Exception:
            self.failures += 1
            logger.exception("recovery sweep failed; retrying in %.0f s", self.sweep_interval)
            return None
        finally:
            self.sweeps += 1
        if report.interrupted or report.requeue:
            self.last_report = report
            self._unhandled.append(report)
        callback = self.on_recovered
        if callback is None:
            self._unhandled.clear()
        while callback is not None and self._unhandled:
            pending = self._unhandled[0]
            try:
                outcome = callback(pending)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                self.failures += 1
                logger.exception(
                    "on_recovered failed for %d interrupted and %d re-queued job(s); "
                    "the report is passed on again at the next sweep (in %.0f s)",
                    len(pending.interrupted),
                    len(pending.requeue),
                    self.sweep_interval,
                )
                break
            self._unhandled.pop(0)
        return report

    async def _heartbeats(self) -> None:
        delay = self.heartbeat_interval
        while True:
            await asyncio.sleep(delay)
            try:
                await self._store_call("heartbeat")
                delay = self.heartbeat_interval
            except Exception:
                self.failures += 1
                # Soon, not a whole interval later: two heartbeats lost to a busy store must
                # not cost the lease (on SQLite one may wait busy_timeout_ms, 5 s, and fail).
                delay = min(_HEARTBEAT_RETRY, self.heartbeat_interval)
                logger.exception("heartbeat failed; retrying in %.1f s", delay)
            finally:
                self.heartbeats += 1

    async def _sweeps(self) -> None:
        while True:
            # A little jitter keeps the workers that started together from sweeping together.
            await asyncio.sleep(self.sweep_interval * random.uniform(0.9, 1.1))
            await self.sweep()

    async def start(self) -> None:
        """Recover once (and pass the report on), then start the heartbeat and sweep tasks.
        A second call while running does nothing."""
        if self.running or self._starting:
            return
        self._starting = True
        try:
            await self.sweep()
            loop = asyncio.get_running_loop()
            self._tasks = [
                loop.create_task(self._heartbeats(), name="cidx-jobs-heartbeat"),
                loop.create_task(self._sweeps(), name="cidx-jobs-recovery"),
            ]
        finally:
            self._starting = False

    async def stop(self) -> int:
        """Stop the tasks and, with ``hand_over``, hand the store's jobs over; returns how
        many jobs were handed over (0 without ``hand_over``, or when it failed: logged).

        Call it before closing the store. A call of the runner's in flight (a sweep,
        a heartbeat) runs to its end first, so that none lands after the hand-over.
        """
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._in_flight, return_exceptions=True)
        if not self.hand_over:
            return 0
        try:
            handed: int = await self._store_call("hand_over_jobs")
        except Exception:
            logger.exception(
                "handing the jobs over failed: the other workers take them once their "
                "lease expires (%.0f s)",
                self.lease_timeout.total_seconds(),
            )
            return 0
        return handed

    async def __aenter__(self) -> LeaseRunner:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
