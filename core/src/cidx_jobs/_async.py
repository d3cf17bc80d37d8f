"""AsyncJobPersistence: the job store for ``async def`` code, over the sync facade.

One code path: every method runs the sync :class:`~cidx_jobs.JobPersistence`'s method of the
same name on a bounded thread pool of the store's own, so validation, status rules, policies,
events and errors are the sync API's, for every backend, third parties' included, with no
change to them. Why a thread pool and not a native async driver: the two backends that do I/O
(``sqlite3``, and psycopg's sync pool) block, and a native path would be a second copy of the
facade's logic to keep equal to the first. What a hop costs is measured in docs/performance.md.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import functools
import inspect
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Generator, Iterable, Mapping
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

from ._config import StoreSettings
from ._models import (
    Checkpoint,
    CleanupReport,
    JobFilter,
    JobPage,
    JobStatus,
    Lease,
    RecoveryReport,
    SyncJob,
)
from ._persistence import JobPersistence
from ._plugins import Hooks
from .backend import Storage, StoreConfig
from .errors import LeaseLostError, StorageUnavailableError, ValidationError

T = TypeVar("T")

logger = logging.getLogger("cidx_jobs")

#: The methods that only read; they run on their own threads (see AsyncJobPersistence).
_READS = frozenset(
    {
        "load_job",
        "query_jobs",
        "query_page",
        "count_jobs",
        "load_checkpoint",
        "list_checkpoints",
        "resume_point",
    }
)
#: Threads for a storage that does not say how many calls it serves at once.
DEFAULT_WORKERS = 4
#: The most threads a store starts, whatever the storage says: each one is a thread that
#: waits on the database, and asyncio's own default executor has min(32, CPUs + 4).
MAX_WORKERS = 64


def _worker_count(storage: Storage, max_workers: int | None) -> int:
    if max_workers is None:
        hint = storage.max_concurrency()
        return DEFAULT_WORKERS if hint is None else max(1, min(hint, MAX_WORKERS))
    if isinstance(max_workers, bool) or not isinstance(max_workers, int):
        raise ValidationError(
            f"max_workers must be an int, got {type(max_workers).__name__}", field="max_workers"
        )
    if not 1 <= max_workers <= MAX_WORKERS:
        raise ValidationError(
            f"max_workers must be in 1..{MAX_WORKERS}, got {max_workers}", field="max_workers"
        )
    return max_workers


class AsyncJobPersistence:
    """The job store for ``async def`` code: :class:`~cidx_jobs.JobPersistence`'s methods as
    awaitables, with the same validation, errors, events and policies.

    Each call runs the sync facade's method on a thread pool that belongs to
    this store, sized to the storage's pool
    (:meth:`~cidx_jobs.backend.Storage.max_concurrency`, else 4 threads), so the event
    loop never waits on a lock, an fsync or a round trip, and a burst of
    requests queues for the store's threads instead of asyncio's shared default
    executor. Reads (``load_*``, ``query_*``, ``count_jobs``, ``list_checkpoints``,
    ``resume_point``) run on their own quarter of the threads, so writes queued
    behind a lock (SQLite's one writer) never keep a status poll waiting. Open
    one with :func:`open_async_persistence`::

        async with open_async_persistence("sqlite:///var/lib/cidx/jobs.db") as store:
            await store.save_job(job)

    or wrap a sync store that is already open: ``AsyncJobPersistence(store)``.

    **Transactions** are bound to a thread, so there is no ``async with
    store.transaction()``: :meth:`run_in_transaction` runs a whole block, as a
    plain function of the sync store, on one thread.

    **Cancellation.** A task cancelled while it awaits a call (a client
    disconnect, a timeout) stops waiting at once. The call itself either had
    not started, and then never runs, or runs to its end on its thread: each
    call is atomic, as on the sync API, so nothing is left half-written, and
    the thread and its connection go back to the pool. Whether a cancelled
    write was stored is unknown to the cancelled task; read the job to know.
    A cancelled :meth:`claim_job` whose claim was stored releases the job
    (:meth:`JobPersistence.release_job`), since no one holds its lease.

    **Closing** (:meth:`aclose`, or leaving ``async with``) refuses new calls
    with :class:`~cidx_jobs.errors.StorageUnavailableError`, waits for every
    call already made (running or queued) to finish and deliver its result, and
    then closes the storage.

    :param store: the sync store to run on; :meth:`aclose` closes it.
    :param max_workers: how many calls run at once (1..64); by default the
        storage's pool size.
    :raises ValidationError: ``store`` is not a JobPersistence, or
        ``max_workers`` is out of range.
    """

    def __init__(self, store: JobPersistence, *, max_workers: int | None = None) -> None:
        if not isinstance(store, JobPersistence):
            raise ValidationError(
                f"AsyncJobPersistence() takes a JobPersistence, got {type(store).__name__}",
                field="store",
            )
        self._sync: JobPersistence | None = store
        self._opener: Callable[[], JobPersistence] | None = None
        self._max_workers = max_workers
        self._writers: _Lane | None = None
        self._readers: _Lane | None = None
        self._workers = 0
        self._closed = False
        self._lock = threading.Lock()
        self._opening: asyncio.Task[None] | None = None
        self._closing: concurrent.futures.Future[None] | None = None
        self._start(store)

    @classmethod
    def _unopened(
        cls, opener: Callable[[], JobPersistence], max_workers: int | None
    ) -> AsyncJobPersistence:
        self = cls.__new__(cls)
        self._sync = None
        self._opener = opener
        self._max_workers = max_workers
        self._writers = None
        self._readers = None
        self._workers = 0
        self._closed = False
        self._lock = threading.Lock()
        self._opening = None
        self._closing = None
        return self

    def _start(self, store: JobPersistence) -> None:
        self._workers = _worker_count(store.storage, self._max_workers)
        # Two lanes over the storage's connections: writes may queue behind a lock (SQLite
        # has one writer), and a burst of them holding every thread would keep each read
        # (a status poll) waiting for as long. Reads keep a quarter of the threads (at least
        # one), writes the rest, so a server backend still runs most writes at once.
        readers = max(1, self._workers // 4)
        self._writers = _Lane(max(1, self._workers - readers), "cidx-jobs")
        self._readers = _Lane(readers, "cidx-jobs-read") if self._workers > 1 else self._writers
        self._sync = store

    # -- opening and closing -----------------------------------------------------------

    async def open(self) -> AsyncJobPersistence:
        """Open the storage (on a thread: opening may migrate a schema); returns the store.

        Idempotent. ``await open_async_persistence(...)`` and ``async with`` call it.

        :raises StorageUnavailableError: the store was closed.
        :raises ConfigError: as :func:`~cidx_jobs.open_persistence` raises it.
        :raises BackendNotFoundError: as :func:`~cidx_jobs.open_persistence` raises it.
        :raises PluginError: as :func:`~cidx_jobs.open_persistence` raises it.
        :raises StorageError: as :func:`~cidx_jobs.open_persistence` raises it.
        """
        if self._closed:
            raise StorageUnavailableError("the async job store is closed; open a new one")
        if self._sync is None and self._opener is not None:
            # One opening, however many open() calls wait for it; shielded, so that a
            # cancelled open() leaves the storage to this store (its aclose() closes it).
            if self._opening is None:
                self._opening = asyncio.ensure_future(self._open_storage(self._opener))
            await asyncio.shield(self._opening)
        return self

    async def _open_storage(self, opener: Callable[[], JobPersistence]) -> None:
        store = await asyncio.to_thread(opener)
        with self._lock:
            if not self._closed:
                self._start(store)
                return
        await asyncio.to_thread(store.close)  # aclose() came first
        raise StorageUnavailableError("the async job store was closed while it opened")

    def __await__(self) -> Generator[Any, None, AsyncJobPersistence]:
        return self.open().__await__()

    async def aclose(self) -> None:
        """Close the store: refuse new calls, let the calls already made finish, then close
        the storage. Idempotent: every call waits for the one closing. A cancelled
        ``aclose()`` stops waiting, and the closing goes on to its end.

        :raises StorageError: closing the storage failed (it is closed anyway).
        """
        with self._lock:
            if self._closing is None:
                self._closed = True
                self._closing = concurrent.futures.Future()
                # On a thread of its own, not the store's (they are what it waits for), nor
                # a task of this loop: a cancelled aclose() must not stop the closing half-way.
                threading.Thread(
                    target=_close,
                    args=(self._closing, (self._writers, self._readers), self._sync),
                    name="cidx-jobs-close",
                    daemon=True,
                ).start()
            closing, opening = self._closing, self._opening
        await asyncio.shield(asyncio.wrap_future(closing))
        if opening is not None and not opening.done():
            # An opening in flight closes what it opened when it sees the store closed.
            await asyncio.gather(asyncio.shield(opening), return_exceptions=True)

    async def __aenter__(self) -> AsyncJobPersistence:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- what the sync store offers as is ------------------------------------------------

    @property
    def sync(self) -> JobPersistence:
        """The sync store the calls run on (for code that runs on a thread already).

        :raises StorageUnavailableError: the store is not open yet.
        """
        if self._sync is None:
            raise StorageUnavailableError(
                "the async job store is not open: use `async with` or `await store.open()`"
            )
        return self._sync

    @property
    def storage(self) -> Storage:
        """The backend's storage (see :attr:`JobPersistence.storage`)."""
        return self.sync.storage

    @property
    def hooks(self) -> Hooks:
        """The hooks this store calls."""
        return self.sync.hooks

    @property
    def settings(self) -> StoreSettings:
        """The common settings in force."""
        return self.sync.settings

    @property
    def owner_id(self) -> str:
        """This store's owner id, for job leases (see :attr:`JobPersistence.owner_id`)."""
        return self.sync.owner_id

    def now(self) -> datetime:
        """:meth:`JobPersistence.now`: the current time as this store writes it (no I/O, so
        not a coroutine).

        :raises StorageUnavailableError: the store is not open yet.
        """
        return self.sync.now()

    @property
    def uses_server_clock(self) -> bool:
        """Whether the store writes the database server's time (see
        :attr:`JobPersistence.uses_server_clock`)."""
        return self.sync.uses_server_clock

    @property
    def max_workers(self) -> int:
        """How many calls run at once (the size of the store's thread pool); 0 before open."""
        return self._workers

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open" if self._sync is not None else "unopened"
        inner = "" if self._sync is None else f" {self._sync.storage!r}"
        return f"<AsyncJobPersistence {state}{inner}>"

    # -- the one path every call takes ----------------------------------------------------

    async def _call(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        # By name, so that a subclass's override of the sync method is the one that runs.
        name = method.__name__
        return await self._submit(
            getattr(self.sync, name), args, kwargs, lane=self._readers if name in _READS else None
        )

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await self._submit(fn, args, kwargs)

    def _submit(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        lane: _Lane | None = None,
        receipt: _Receipt | None = None,
    ) -> asyncio.Future[T]:
        lane = lane if lane is not None else self._writers
        if self._closed or lane is None:
            raise StorageUnavailableError(
                "the async job store is closed; open a new one"
                if self._closed
                else "the async job store is not open: use `async with` or `await store.open()`"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        # The caller's context variables (a request id in the log records) follow the call.
        run = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
        lane.submit(loop, future, run, receipt)
        return future

    async def run_in_transaction(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn(store, *args, **kwargs)`` in one transaction, on one thread; return its
        result.

        ``fn`` is a plain (not ``async``) function that receives the sync
        :class:`~cidx_jobs.JobPersistence` and makes its calls on it: they
        commit together when it returns, and none of them is stored when it
        raises (the exception propagates). Events of the block fire after the
        commit. The block holds a connection (on SQLite, the write lock) until
        it returns, so keep it short and never wait in it for the event loop.
        A task cancelled while it waits for the block does not interrupt it: the
        block runs to its commit or rollback on its thread, and what the block
        returns is dropped (a lease it claimed too: claim with :meth:`claim_job`,
        which releases a lease no task took).

        :raises ValidationError: ``fn`` is not callable, is a coroutine function,
            or returned an awaitable (the block is rolled back).
        :raises StorageError: the commit failed; nothing of the block was stored.
        """
        if not callable(fn):
            raise ValidationError(
                f"run_in_transaction() takes a function, got {type(fn).__name__}", field="fn"
            )
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - a callable object's method
        ):
            raise ValidationError(
                "run_in_transaction() runs a plain function on a thread of the store; "
                "an async function cannot run there. Make the block a def that calls the "
                "sync store it receives",
                field="fn",
            )
        return await self._run(_in_transaction, self.sync, fn, args, kwargs)

    # -- JobPersistence's methods, awaited ------------------------------------------------
    # Each is one _call of the sync method of the same name; test_async.py checks that the
    # two classes offer the same methods with the same parameters.

    async def save_job(self, job: SyncJob) -> bool:
        """:meth:`JobPersistence.save_job`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.save_job, job)

    async def load_job(self, job_id: str) -> SyncJob | None:
        """:meth:`JobPersistence.load_job`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.load_job, job_id)

    async def update_job_status(
        self,
        job_id: str,
        status: JobStatus | str,
        *,
        error_message: str | None = None,
        expected: JobStatus | str | Iterable[JobStatus | str] | None = None,
        lease: Lease | None = None,
    ) -> bool:
        """:meth:`JobPersistence.update_job_status`, awaited; it raises what that raises."""
        return await self._call(
            JobPersistence.update_job_status,
            job_id,
            status,
            error_message=error_message,
            expected=expected,
            lease=lease,
        )

    async def update_job_progress(
        self, job_id: str, progress: int, phase: str | None = None, *, lease: Lease | None = None
    ) -> bool:
        """:meth:`JobPersistence.update_job_progress`, awaited; it raises what that raises."""
        return await self._call(
            JobPersistence.update_job_progress, job_id, progress, phase, lease=lease
        )

    async def claim_job(
        self,
        job_id: str,
        *,
        expected: JobStatus | str | Iterable[JobStatus | str] | None = None,
    ) -> Lease | None:
        """:meth:`JobPersistence.claim_job`, awaited; it raises what that raises.

        A task cancelled while the claim runs on its thread never gets the lease,
        so no one would work the job: when such a claim succeeds, the store
        gives the job up at once with :meth:`JobPersistence.release_job`, and
        the next recovery (of any store) resumes it.
        """
        sync = self.sync
        receipt = _Receipt(functools.partial(_release_orphan, sync))
        future = self._submit(sync.claim_job, (job_id,), {"expected": expected}, receipt=receipt)
        try:
            lease = await future
        except BaseException:
            if future.done() and not future.cancelled():
                # The outcome came, and this task will not take it (cancelled just then).
                receipt.refused(future.result() if future.exception() is None else None)
            else:
                # The lane (never ran) or the loop (when the outcome comes) settles it.
                future.cancel()
            raise
        receipt.taken()
        return lease

    async def query_jobs(self, filter: JobFilter | None = None) -> list[SyncJob]:
        """:meth:`JobPersistence.query_jobs`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.query_jobs, filter)

    async def query_page(self, filter: JobFilter | None = None) -> JobPage:
        """:meth:`JobPersistence.query_page`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.query_page, filter)

    async def count_jobs(self, filter: JobFilter | None = None) -> int:
        """:meth:`JobPersistence.count_jobs`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.count_jobs, filter)

    async def delete_expired_jobs(self, older_than: datetime) -> int:
        """:meth:`JobPersistence.delete_expired_jobs`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.delete_expired_jobs, older_than)

    async def run_cleanup(
        self,
        now: datetime | None = None,
        *,
        retention: timedelta | None = None,
        dry_run: bool = False,
    ) -> CleanupReport:
        """:meth:`JobPersistence.run_cleanup`, awaited; it raises what that raises."""
        return await self._call(
            JobPersistence.run_cleanup, now, retention=retention, dry_run=dry_run
        )

    async def save_checkpoint(
        self, job_id: str, phase: str, data: Mapping[str, Any], *, lease: Lease | None = None
    ) -> bool:
        """:meth:`JobPersistence.save_checkpoint`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.save_checkpoint, job_id, phase, data, lease=lease)

    async def load_checkpoint(self, job_id: str, phase: str) -> dict[str, Any] | None:
        """:meth:`JobPersistence.load_checkpoint`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.load_checkpoint, job_id, phase)

    async def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """:meth:`JobPersistence.list_checkpoints`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.list_checkpoints, job_id)

    async def resume_point(self, job_id: str) -> Checkpoint | None:
        """:meth:`JobPersistence.resume_point`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.resume_point, job_id)

    async def heartbeat(self) -> int:
        """:meth:`JobPersistence.heartbeat`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.heartbeat)

    async def recover_interrupted_jobs(
        self, lease_timeout: timedelta | None = None
    ) -> RecoveryReport:
        """:meth:`JobPersistence.recover_interrupted_jobs`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.recover_interrupted_jobs, lease_timeout)

    async def release_job(self, lease: Lease) -> None:
        """:meth:`JobPersistence.release_job`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.release_job, lease)

    async def hand_over_jobs(self) -> int:
        """:meth:`JobPersistence.hand_over_jobs`, awaited; it raises what that raises."""
        return await self._call(JobPersistence.hand_over_jobs)


#: How long closing waits for the claims whose tasks have not yet taken or refused their lease
#: (their loop still has to run them); a claim still open after it keeps its job, running
#: under this store, for hand_over_jobs() or recovery elsewhere.
_CLOSE_WAIT = 10.0


class _Receipt:
    """A claim's lease between the claim's thread and its task: taken by the task, or, on
    evidence that no task will take it (the task was cancelled, or its loop closed),
    released. A lane's closing waits for its open receipts, so a release is never lost to it.
    """

    __slots__ = ("_lane", "_open", "_orphan")

    def __init__(self, orphan: Callable[[Any], None]) -> None:
        self._orphan = orphan
        self._lane: _Lane | None = None
        self._open = True

    def taken(self) -> None:
        """The task received the lease."""
        self._close()

    def refused(self, result: Any) -> None:
        """No task will take ``result``: release it on the lane (from the loop)."""
        lane = self._lane
        if result is None or lane is None:
            self._close()
        elif self._open:
            lane._queue_release(self, functools.partial(self._orphan, result))

    def release_here(self, result: Any) -> None:
        """No task will take ``result``, and this is a lane thread: release it now."""
        try:
            if result is not None and self._open:
                self._orphan(result)
        finally:
            self._close()

    def _close(self) -> None:
        if self._open:
            self._open = False
            if self._lane is not None:
                self._lane._receipt_closed()


_Item = tuple[
    "asyncio.AbstractEventLoop | None",
    "asyncio.Future[Any] | None",
    Callable[[], Any],
    "_Receipt | None",
]


class _Lane:
    """Threads that run a store's calls in the order they come, each call's outcome handed to
    the caller's asyncio future with one ``call_soon_threadsafe``.

    Lighter than a ThreadPoolExecutor under ``asyncio.wrap_future``, which has a concurrent
    Future with its condition variable and chained callbacks per call (docs/performance.md,
    "Async API"). The threads hold only the queue, so a lane that is dropped without
    :meth:`shutdown` (a store never closed) is collected and its finalizer stops them.

    A call whose future is cancelled before a thread takes it never runs (as far as a thread
    can tell: the future is the loop's, read here without a lock); one that ran delivers its
    outcome. A claim's lease goes with a :class:`_Receipt`, and the thread never waits for it.
    """

    __slots__ = ("__weakref__", "_changed", "_closed", "_queue", "_receipts", "_threads")

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._changed = threading.Condition()
        self._closed = False
        self._receipts = 0
        # Daemons, as nothing else would stop them at exit for a store never closed; a call
        # cut off there is one whose caller's loop is gone, so no caller was told it was done.
        self._threads = [
            threading.Thread(target=_work, args=(self._queue,), name=f"{name}-{n}", daemon=True)
            for n in range(workers)
        ]
        for thread in self._threads:
            thread.start()
        weakref.finalize(self, _stop, self._queue, workers)

    def submit(
        self,
        loop: asyncio.AbstractEventLoop,
        future: asyncio.Future[Any],
        fn: Callable[[], Any],
        receipt: _Receipt | None = None,
    ) -> None:
        """Queue ``fn``; its outcome goes to ``future``, on ``loop``.

        :raises StorageUnavailableError: the lane was shut down.
        """
        with self._changed:  # so that nothing is queued behind the threads' stop marks
            if self._closed:
                raise StorageUnavailableError("the async job store is closed; open a new one")
            if receipt is not None:
                receipt._lane = self
                self._receipts += 1
            self._queue.put((loop, future, fn, receipt))

    def _queue_release(self, receipt: _Receipt, release: Callable[[], None]) -> None:
        # Still counted as open, so shutdown() has not queued the stop marks yet.
        with self._changed:
            self._queue.put((None, None, release, receipt))

    def _receipt_closed(self) -> None:
        with self._changed:
            self._receipts -= 1
            self._changed.notify_all()

    def shutdown(self) -> None:
        """Run what is queued and the releases of the claims no task took, then stop the
        threads and wait for them."""
        with self._changed:
            if not self._closed:
                self._closed = True
                if not self._changed.wait_for(lambda: self._receipts == 0, _CLOSE_WAIT):
                    logger.warning(
                        "closing the async job store while %d claim(s) wait for their task, "
                        "whose loop does not run; their jobs stay running under this store "
                        "until it hands them over or recovery elsewhere takes them",
                        self._receipts,
                    )
                _stop(self._queue, len(self._threads))
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join()


def _stop(tasks: queue.SimpleQueue[_Item | None], workers: int) -> None:
    for _ in range(workers):
        tasks.put(None)


def _work(tasks: queue.SimpleQueue[_Item | None]) -> None:
    while (item := tasks.get()) is not None:
        try:
            _run(*item)
        except BaseException:  # a thread of the lane must outlive any one call
            logger.exception("a call of the async job store failed outside its caller")
        del item  # no reference to the last call while the thread waits for the next


def _run(
    loop: asyncio.AbstractEventLoop | None,
    future: asyncio.Future[Any] | None,
    fn: Callable[[], Any],
    receipt: _Receipt | None,
) -> None:
    if future is None or loop is None:  # the release of a claim no task took
        try:
            fn()
        finally:
            if receipt is not None:
                receipt._close()
        return
    if future.cancelled():
        if receipt is not None:
            receipt.refused(None)  # never ran: nothing to release
        return
    result: Any = None
    error: BaseException | None = None
    try:
        result = fn()
    except BaseException as caught:  # handed to the awaiting task, as a thread would
        error = caught
    try:
        loop.call_soon_threadsafe(_settle, future, result, error, receipt)
    except RuntimeError:  # the loop is closed: no task can take the outcome
        if receipt is not None:
            receipt.release_here(result if error is None else None)


def _settle(
    future: asyncio.Future[Any],
    result: Any,
    error: BaseException | None,
    receipt: _Receipt | None,
) -> None:
    if future.cancelled():  # the task stopped waiting before the outcome came
        if receipt is not None:
            receipt.refused(result if error is None else None)
        return
    if error is None:
        future.set_result(result)
        return
    if isinstance(error, StopIteration):
        # A future refuses StopIteration (it would end the awaiting coroutine silently).
        wrapped = RuntimeError(f"the call raised StopIteration: {error!r}")
        wrapped.__cause__ = error
        error = wrapped
    future.set_exception(error)


def _release_orphan(store: JobPersistence, lease: Lease | None) -> None:
    # On a store thread: aclose() waits for the release too.
    if lease is None:
        return
    try:
        store.release_job(lease)
    except LeaseLostError:
        logger.info(
            "no task took the lease of the claim of job %s, and the job was cancelled or "
            "taken over meanwhile: nothing to release",
            lease.job_id,
        )
    except Exception:
        # Not lost: the job stays running under this store until hand_over_jobs() or, once
        # the store is gone, the next recovery elsewhere.
        logger.exception(
            "no task took the lease of the claim of job %s, and giving the job up failed; "
            "it stays running under this store until it hands its jobs over",
            lease.job_id,
        )
    else:
        logger.warning(
            "no task took the lease of the claim of job %s (its task was cancelled, or its "
            "loop closed); the job was released for the next recovery to resume",
            lease.job_id,
        )


def _close(
    done: concurrent.futures.Future[None],
    lanes: tuple[_Lane | None, ...],
    store: JobPersistence | None,
) -> None:
    try:
        for lane in lanes:
            if lane is not None:
                lane.shutdown()
        if store is not None:
            store.close()
    except BaseException as error:  # handed to every aclose() that waits
        done.set_exception(error)
    else:
        done.set_result(None)


def _in_transaction(
    store: JobPersistence,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    with store.transaction():
        result = fn(store, *args, **kwargs)
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited: close it so Python does not warn
            raise ValidationError(
                "the function given to run_in_transaction() returned an awaitable; the block "
                "was rolled back. It must do its work before it returns",
                field="fn",
            )
        return result


def open_async_persistence(
    config: StoreConfig | None = None,
    *,
    hooks: Hooks | None = None,
    settings: StoreSettings | None = None,
    max_workers: int | None = None,
) -> AsyncJobPersistence:
    """The async job store that ``config`` names, opened when awaited or entered.

    ``store = await open_async_persistence(url)`` opens it (close it with
    ``await store.aclose()``); ``async with open_async_persistence(url) as
    store:`` opens it and closes it at the end. Opening runs on a thread, as it
    may create or migrate the schema. Every argument but ``max_workers`` is
    :func:`~cidx_jobs.open_persistence`'s.

    :param max_workers: how many calls run at once (1..64); by default the
        storage's pool size (see :class:`AsyncJobPersistence`).
    :raises ValidationError: ``max_workers`` is not an int in 1..64 (at once,
        before anything is opened).
    :raises ConfigError: when it is opened, as :func:`~cidx_jobs.open_persistence` does.
    :raises BackendNotFoundError: when it is opened, likewise.
    :raises PluginError: when it is opened, likewise.
    :raises StorageError: when it is opened, likewise.
    """
    from ._open import open_persistence

    if max_workers is not None and (
        isinstance(max_workers, bool)
        or not isinstance(max_workers, int)
        or not 1 <= max_workers <= MAX_WORKERS
    ):
        raise ValidationError(
            f"max_workers must be an int in 1..{MAX_WORKERS}, got {max_workers!r}",
            field="max_workers",
        )
    return AsyncJobPersistence._unopened(
        functools.partial(open_persistence, config, hooks=hooks, settings=settings), max_workers
    )


__all__ = ["AsyncJobPersistence", "open_async_persistence"]
