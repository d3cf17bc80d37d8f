"""Scheduled cleanup: a daemon thread, and an asyncio task for a FastAPI lifespan."""

from __future__ import annotations

import asyncio
import logging
import threading
from datetime import timedelta
from types import TracebackType

from ._async import AsyncJobPersistence
from ._models import CleanupReport
from ._persistence import JobPersistence
from .errors import ValidationError

logger = logging.getLogger("cidx_jobs")


def _seconds(interval: timedelta | float, field: str = "interval") -> float:
    seconds = interval.total_seconds() if isinstance(interval, timedelta) else interval
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not seconds > 0:
        raise ValidationError(
            f"{field} must be a positive number of seconds or timedelta, got {interval!r}",
            field=field,
        )
    return float(seconds)


class _Runs:
    """What the schedulers share: the store, the retention, and the outcome of the last run."""

    def __init__(
        self,
        store: AsyncJobPersistence | JobPersistence,
        interval: timedelta | float,
        retention: timedelta | None,
    ) -> None:
        self.store = store
        self.interval = _seconds(interval)
        if retention is not None and (
            not isinstance(retention, timedelta) or retention < timedelta(0)
        ):
            raise ValidationError("retention must be a non-negative timedelta", field="retention")
        self.retention = retention
        self.runs = 0
        self.failures = 0
        self.last_report: CleanupReport | None = None

    def run_once(self) -> CleanupReport | None:
        """Run one cleanup now; an error is logged and counted, never raised.

        :raises ValidationError: the store is an
            :class:`~cidx_jobs.AsyncJobPersistence` (the async scheduler's task
            awaits its cleanups; await its ``run_cleanup()`` to run one now).
        """
        store = self.store
        if isinstance(store, AsyncJobPersistence):
            raise ValidationError(
                "run_once() runs a sync store's cleanup; await store.run_cleanup() instead",
                field="store",
            )
        try:
            report = store.run_cleanup(retention=self.retention)
        except Exception:
            self._failed()
            return None
        finally:
            self.runs += 1
        self.last_report = report
        return report

    def _failed(self) -> None:
        self.failures += 1
        logger.exception("scheduled cleanup failed; retrying in %.0f s", self.interval)


class CleanupScheduler(_Runs):
    """Runs :meth:`~cidx_jobs.JobPersistence.run_cleanup` every ``interval`` on a daemon thread.

    The first run happens at :meth:`start` (so a restarted server cleans up at
    once), then every ``interval``. A failing run is logged on the
    ``cidx_jobs`` logger and retried at the next interval; the thread never
    dies of it. Use as a context manager, or call :meth:`start` and :meth:`stop`.

    :param store: the store to clean (a :class:`~cidx_jobs.JobPersistence`).
    :param interval: seconds or a timedelta between runs.
    :param retention: overrides the store's configured retention.
    :raises ValidationError: ``store`` is an :class:`~cidx_jobs.AsyncJobPersistence`,
        ``interval`` is not positive or ``retention`` is negative.
    """

    def __init__(
        self,
        store: JobPersistence,
        *,
        interval: timedelta | float = timedelta(hours=1),
        retention: timedelta | None = None,
    ) -> None:
        if isinstance(store, AsyncJobPersistence):  # type: ignore[unreachable]
            raise ValidationError(
                "CleanupScheduler runs cleanups on a thread of its own and takes a sync "
                "store; use AsyncCleanupScheduler for an AsyncJobPersistence",
                field="store",
            )
        super().__init__(store, interval, retention)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        """Whether the thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the thread; a second call while running does nothing."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="cidx-jobs-cleanup", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the thread to stop and wait up to ``timeout`` seconds for it; a cleanup in
        progress runs to its end first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while True:
            self.run_once()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> CleanupScheduler:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class AsyncCleanupScheduler(_Runs):
    """The asyncio twin of :class:`CleanupScheduler`, for a FastAPI lifespan.

    ``store`` is an :class:`~cidx_jobs.AsyncJobPersistence` (each run is an
    awaited call on its threads) or a sync store (each run executes in a worker
    thread, ``asyncio.to_thread``), so the event loop never blocks on the
    database::

        @contextlib.asynccontextmanager
        async def lifespan(app):
            async with AsyncCleanupScheduler(store, interval=3600):
                yield

    :raises ValidationError: ``interval`` is not positive or ``retention`` is negative.
    """

    def __init__(
        self,
        store: AsyncJobPersistence | JobPersistence,
        *,
        interval: timedelta | float = timedelta(hours=1),
        retention: timedelta | None = None,
    ) -> None:
        super().__init__(store, interval, retention)
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether the task is alive."""
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the task on the running loop; a second call while running does nothing."""
        if not self.running:
            self._stopping = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name="cidx-jobs-cleanup"
            )

    async def stop(self) -> None:
        """Stop the task, waiting for a cleanup in progress to finish first.

        Waiting matters: the usual next step is closing the store, which would
        fail a cleanup still running in its worker thread.
        """
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping.set()
        await task

    async def _run_once(self) -> None:
        if not isinstance(self.store, AsyncJobPersistence):
            await asyncio.to_thread(self.run_once)
            return
        try:
            report = await self.store.run_cleanup(retention=self.retention)
        except Exception:
            self._failed()
            return
        finally:
            self.runs += 1
        self.last_report = report

    async def _loop(self) -> None:
        while True:
            await self._run_once()
            try:
                await asyncio.wait_for(self._stopping.wait(), self.interval)
                return
            except asyncio.TimeoutError:
                continue

    async def __aenter__(self) -> AsyncCleanupScheduler:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
