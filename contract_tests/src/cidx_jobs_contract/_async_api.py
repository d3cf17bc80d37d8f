"""The contract suite through the async facade: one contract for both APIs.

:class:`AsyncApiFixtures` replaces the suite's ``store`` and ``reopen`` fixtures with
:class:`AsyncDriven` stores: each is an :class:`~cidx_jobs.AsyncJobPersistence` opened with
:func:`~cidx_jobs.open_async_persistence`, driven from the sync tests through an event loop on
a thread of its own. Every call of a test is then an awaited call of the async store, from the
test's thread or from the many threads of the concurrency tests. A ``with store.transaction():``
block becomes one :meth:`~cidx_jobs.AsyncJobPersistence.run_in_transaction`: the calls the test
makes inside the block are carried, one by one, to the one store thread that runs the block, so
the transaction tests check the async unit of work (its atomicity, isolation and events) and not
per-call thread hops, which would silently break them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar

import pytest

from cidx_jobs import (
    AsyncJobPersistence,
    JobPersistence,
    StoreSettings,
    open_async_persistence,
)
from cidx_jobs.backend import Storage, StoreConfig

T = TypeVar("T")

#: The methods the tests call, each the awaited call of the same name.
_METHODS = tuple(
    name
    for name, member in vars(AsyncJobPersistence).items()
    if not name.startswith("_")
    and asyncio.iscoroutinefunction(member)
    and hasattr(JobPersistence, name)
)

_DONE = object()


class _Rollback(Exception):
    """Carried into a block to make it roll back: the test's block raised."""


class _Block(threading.local):
    calls: queue.Queue[Any] | None = None
    running: concurrent.futures.Future[None] | None = None


class AsyncDriven:
    """A sync-looking store whose every call is an awaited call of an async store.

    It offers what the contract tests use of :class:`~cidx_jobs.JobPersistence`:
    the same methods, ``transaction()``, ``close()``, the context manager, and
    ``storage``, ``hooks``, ``settings`` and ``owner_id``.
    """

    def __init__(self, store: AsyncJobPersistence) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="contract-async-loop", daemon=True
        )
        self._thread.start()
        self._block = _Block()
        self._closed = False
        try:
            self.async_store = self._await(store.open())
        except BaseException:
            self._stop_loop()
            raise

    def _await(self, coroutine: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            # The driver's loop is gone; a loop of the call's own lets the closed async
            # store answer for itself (StorageUnavailableError), as the tests expect.
            return asyncio.run(coroutine)
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    # -- what tests read ---------------------------------------------------------------

    @property
    def storage(self) -> Storage:
        return self.async_store.storage

    @property
    def hooks(self) -> Any:
        return self.async_store.hooks

    @property
    def settings(self) -> StoreSettings:
        return self.async_store.settings

    @property
    def owner_id(self) -> str:
        return self.async_store.owner_id

    def __repr__(self) -> str:
        return f"<AsyncDriven {self.async_store!r}>"

    # -- calls -------------------------------------------------------------------------

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        calls = self._block.calls
        if calls is None:
            return self._await(getattr(self.async_store, name)(*args, **kwargs))
        reply: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=1)
        calls.put((name, args, kwargs, reply))
        running = self._block.running
        while True:
            try:
                ok, value = reply.get(timeout=0.05)
                break
            except queue.Empty:
                # The block may have ended without taking the call: its transaction
                # failed to begin, or its storage failed; that failure is the call's.
                if running is not None and running.done():
                    running.result()
                    raise RuntimeError(
                        "the transaction block ended before it ran the call"
                    ) from None
        if ok:
            return value
        raise value

    @contextmanager
    def transaction(self) -> Iterator[None]:
        if self._block.calls is not None:  # nested: joins the outer block, as on the sync API
            yield
            return
        if self._closed:  # the closed async store refuses the block (StorageUnavailableError)
            self._await(self.async_store.run_in_transaction(lambda sync: None))
        calls: queue.Queue[Any] = queue.Queue()

        def block(sync: JobPersistence) -> None:
            # Runs on the async store's thread, inside its transaction.
            while True:
                item = calls.get()
                if item is _DONE:
                    return
                if isinstance(item, _Rollback):
                    raise item
                name, args, kwargs, reply = item
                try:
                    reply.put((True, getattr(sync, name)(*args, **kwargs)))
                except BaseException as error:  # handed to the test's thread, as raised
                    reply.put((False, error))

        running = asyncio.run_coroutine_threadsafe(
            self.async_store.run_in_transaction(block), self._loop
        )
        self._block.calls = calls
        self._block.running = running
        try:
            yield
        except BaseException:
            self._block.calls = None
            calls.put(_Rollback())
            # Wait for the block to roll back; the test's exception is the one that goes on
            # (when the block itself failed, the test's exception is that failure).
            concurrent.futures.wait([running])
            raise
        self._block.calls = None
        calls.put(_DONE)
        running.result()  # the commit's error, if any

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._await(self.async_store.aclose())
        finally:
            self._closed = True
            self._stop_loop()

    def __enter__(self) -> AsyncDriven:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _forwarder(name: str) -> Callable[..., Any]:
    def forward(self: AsyncDriven, *args: Any, **kwargs: Any) -> Any:
        return self._call(name, *args, **kwargs)

    forward.__name__ = name
    forward.__doc__ = f"Awaits :meth:`AsyncJobPersistence.{name}` on the driver's loop."
    return forward


for _name in _METHODS:
    setattr(AsyncDriven, _name, _forwarder(_name))


class AsyncApiFixtures:
    """Mix in before a contract class to run it through the async facade::

    class TestMyBackendAsync(AsyncApiFixtures, JobStoreContract):
        @pytest.fixture
        def base_config(self):
            return "mybackend://"
    """

    @pytest.fixture
    def store(self, store_config: StoreConfig, store_settings: StoreSettings) -> Iterator[Any]:
        """A fresh store for one test, every call of which goes through the async facade."""
        store = AsyncDriven(open_async_persistence(store_config, settings=store_settings))
        try:
            yield store
        finally:
            store.close()

    @pytest.fixture
    def reopen(self, store_config: StoreConfig, store_settings: StoreSettings) -> Iterator[Any]:
        """Like the suite's ``reopen``, with async-driven stores."""
        opened: list[AsyncDriven] = []

        def open_again() -> AsyncDriven:
            reopened = AsyncDriven(open_async_persistence(store_config, settings=store_settings))
            opened.append(reopened)
            return reopened

        yield open_again
        for reopened in opened:
            reopened.close()
