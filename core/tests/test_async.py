"""The async store: one code path with the sync facade, a bounded pool of its own, a loop that
never blocks, atomic blocks, and defined cancellation and closing."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import gc
import inspect
import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path

import attrs
import pytest

from cidx_jobs import (
    AsyncCleanupScheduler,
    AsyncJobPersistence,
    CleanupScheduler,
    Hooks,
    JobPersistence,
    JobStatus,
    SyncJob,
    get_plugin_manager,
    hookimpl,
    open_async_persistence,
    open_persistence,
    serialization,
    utcnow,
)
from cidx_jobs.errors import DuplicateJobError, StorageUnavailableError, ValidationError
from cidx_jobs_memory import MemoryStorage

#: What the sync facade has that the async one deliberately offers differently.
NOT_MIRRORED = {"transaction", "close", "storage", "hooks", "settings", "now"}


def job(job_id: str = "j1", **fields: object) -> SyncJob:
    return SyncJob.create(id=job_id, user_id="u", project_id="p", **fields)  # type: ignore[arg-type]


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


async def wait_for_status(store: AsyncJobPersistence, job_id: str, status: JobStatus) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        stored = await store.load_job(job_id)
        assert stored is not None
        if stored.status is status:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"job {job_id} is {stored.status.value}, not {status.value}")


def test_every_sync_method_has_an_async_twin_with_the_same_parameters() -> None:
    public = {
        name: member
        for name, member in vars(JobPersistence).items()
        if not name.startswith("_") and callable(member) and name not in NOT_MIRRORED
    }
    assert {"save_job", "claim_job", "hand_over_jobs", "recover_interrupted_jobs"} <= set(public)
    for name, method in public.items():
        twin = getattr(AsyncJobPersistence, name, None)
        assert twin is not None, f"AsyncJobPersistence lacks {name}"
        assert inspect.iscoroutinefunction(twin), name
        sync_params = list(inspect.signature(method).parameters.values())
        async_params = list(inspect.signature(twin).parameters.values())
        assert [(p.name, p.kind, p.default) for p in async_params] == [
            (p.name, p.kind, p.default) for p in sync_params
        ], name
        assert f"JobPersistence.{name}" in (twin.__doc__ or ""), name


def test_calls_validate_raise_and_store_as_the_sync_api_does(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_async_persistence(sqlite_url(tmp_path)) as store:
            assert await store.save_job(job())
            with pytest.raises(DuplicateJobError):
                await store.save_job(job())
            with pytest.raises(ValidationError):
                await store.load_job("")
            lease = await store.claim_job("j1")
            assert lease is not None
            assert await store.save_checkpoint("j1", "clone", {"n": 1}, lease=lease)
            assert await store.update_job_progress("j1", 40, "clone", lease=lease)
            assert await store.load_checkpoint("j1", "clone") == {"n": 1}
            loaded = await store.load_job("j1")
            assert loaded is not None
            assert loaded.progress == 40
            assert loaded.status is JobStatus.RUNNING
            assert loaded.owner_id == store.owner_id
            assert await store.count_jobs() == 1
            assert [j.id for j in await store.query_jobs()] == ["j1"]
            assert await store.heartbeat() == 1

    asyncio.run(scenario())
    with open_persistence(sqlite_url(tmp_path)) as reopened:
        assert reopened.load_checkpoint("j1", "clone") == {"n": 1}


def test_the_pool_is_the_storages_size_and_bounded(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with open_async_persistence(sqlite_url(tmp_path) + "?pool_size=6") as store:
            assert store.max_workers == 6
        async with open_async_persistence("memory://") as store:
            assert store.max_workers == 4  # the memory storage does not say
        active = 0
        most = 0
        lock = threading.Lock()

        class SlowPolicy:
            # Runs on the store's thread inside each save_checkpoint, before any storage lock.
            @hookimpl
            def cidx_jobs_checkpoint_policy(self, last_written_at, now):  # type: ignore[no-untyped-def]
                nonlocal active, most
                with lock:
                    active += 1
                    most = max(most, active)
                time.sleep(0.05)
                with lock:
                    active -= 1
                return True

        pm = get_plugin_manager()
        pm.register(SlowPolicy(), name="slow-policy")
        async with open_async_persistence("memory://", hooks=Hooks(pm), max_workers=4) as store:
            for i in range(8):
                await store.save_job(job(f"j{i}"))
            await asyncio.gather(
                *(store.save_checkpoint(f"j{i}", "clone", {"n": i}) for i in range(8))
            )
        assert most == 3  # writes get three of the four threads (reads keep one), never more

    asyncio.run(scenario())


@pytest.mark.parametrize("bad", [0, 65, -1, 1.5, True, "4"])
def test_a_bad_pool_size_is_refused_before_anything_is_opened(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValidationError) as caught:
        open_async_persistence(sqlite_url(tmp_path), max_workers=bad)  # type: ignore[arg-type]
    assert caught.value.field == "max_workers"
    assert not (tmp_path / "jobs.db").exists()


def test_the_loop_runs_while_a_call_waits_for_the_write_lock(tmp_path: Path) -> None:
    """Another process's transaction holds the SQLite write lock; the awaited save waits for
    it on a thread while a 1 ms ticker keeps ticking (a sync call would stop it dead)."""
    url = sqlite_url(tmp_path)
    open_persistence(url).close()  # create the schema

    async def scenario() -> tuple[int, int]:
        async with open_async_persistence(url) as store:
            blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            ticks = 0
            stop = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not stop.is_set():
                    await asyncio.sleep(0.001)
                    ticks += 1

            ticking = asyncio.create_task(ticker())
            saving = asyncio.create_task(store.save_job(job()))
            await asyncio.sleep(0.3)
            during = ticks
            assert not saving.done()  # still waiting for the lock
            blocker.execute("COMMIT")
            blocker.close()
            assert await saving
            stop.set()
            await ticking
            return during, ticks

    during, total = asyncio.run(scenario())
    assert during >= 20, during  # ~300 at 1 ms; zero if the call had blocked the loop
    assert total >= during


def test_a_transaction_block_is_atomic_and_its_events_wait_for_the_commit(tmp_path: Path) -> None:
    seen: list[str] = []

    class Observer:
        @hookimpl
        def cidx_jobs_job_saved(self, job: SyncJob) -> None:
            seen.append(job.id)

    pm = get_plugin_manager()
    pm.register(Observer(), name="observer")

    def two_then_fail(sync: JobPersistence) -> None:
        sync.save_job(job("a"))
        sync.save_job(job("b"))
        raise RuntimeError("the block fails after two writes")

    def two(sync: JobPersistence, suffix: str) -> str:
        sync.save_job(job("c" + suffix))
        sync.save_job(job("d" + suffix))
        return "done"

    async def scenario() -> None:
        async with open_async_persistence(sqlite_url(tmp_path), hooks=Hooks(pm)) as store:
            with pytest.raises(RuntimeError, match="two writes"):
                await store.run_in_transaction(two_then_fail)
            assert await store.load_job("a") is None
            assert await store.load_job("b") is None
            assert seen == []
            assert await store.run_in_transaction(two, "1") == "done"
            assert seen == ["c1", "d1"]

    asyncio.run(scenario())


@pytest.mark.parametrize("url", ["memory://", "sqlite"])
def test_concurrent_transaction_blocks_lose_no_update(tmp_path: Path, url: str) -> None:
    """50 tasks each read a counter and write it back plus one, in a block: serializable
    blocks end at exactly 50 (per-call thread hops would lose updates)."""
    config = sqlite_url(tmp_path) if url == "sqlite" else url

    def increment(sync: JobPersistence) -> None:
        data = sync.load_checkpoint("counter", "count") or {"n": 0}
        time.sleep(0.001)  # widen the window a lost update needs
        sync.save_checkpoint("counter", "count", {"n": data["n"] + 1})

    async def scenario() -> int:
        async with open_async_persistence(config) as store:
            await store.save_job(job("counter"))
            await asyncio.gather(*(store.run_in_transaction(increment) for _ in range(50)))
            data = await store.load_checkpoint("counter", "count")
            assert data is not None
            return int(data["n"])

    assert asyncio.run(scenario()) == 50


def test_a_block_must_be_a_plain_function() -> None:
    async def async_block(sync: JobPersistence) -> None:
        sync.save_job(job("never"))

    def returns_a_coroutine(sync: JobPersistence) -> object:
        sync.save_job(job("rolled-back"))
        return async_block(sync)

    async def scenario() -> None:
        async with open_async_persistence("memory://") as store:
            with pytest.raises(ValidationError, match="plain function"):
                await store.run_in_transaction(async_block)
            with pytest.raises(ValidationError, match="returned an awaitable"):
                await store.run_in_transaction(returns_a_coroutine)
            assert await store.load_job("rolled-back") is None
            with pytest.raises(ValidationError):
                await store.run_in_transaction("not callable")  # type: ignore[arg-type]

    asyncio.run(scenario())


def test_a_cancelled_call_either_never_runs_or_runs_to_its_end(tmp_path: Path) -> None:
    baseline = threading.active_count()
    gate = threading.Event()
    entered = threading.Event()

    def hold(sync: JobPersistence) -> None:
        sync.save_job(job("held"))
        entered.set()
        gate.wait(10)

    async def scenario() -> None:
        async with open_async_persistence(sqlite_url(tmp_path), max_workers=1) as store:
            running = asyncio.create_task(store.run_in_transaction(hold))
            while not entered.is_set():
                await asyncio.sleep(0.001)
            queued = asyncio.create_task(store.save_job(job("queued")))
            await asyncio.sleep(0.01)
            running.cancel()
            queued.cancel()
            for task in (running, queued):
                with pytest.raises(asyncio.CancelledError):
                    await task
            gate.set()
            # The one thread finishes the block it had started, commits it, and is free.
            assert await store.load_job("held") is not None
            assert await store.load_job("queued") is None  # cancelled before it started
            assert await store.save_job(job("after"))

    asyncio.run(scenario())
    deadline = time.monotonic() + 5
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= baseline
    with open_persistence(sqlite_url(tmp_path)) as reopened:
        assert {j.id for j in reopened.query_jobs()} == {"held", "after"}


def test_reads_are_served_while_every_write_thread_waits_for_the_lock(tmp_path: Path) -> None:
    """Another connection holds the SQLite write lock; more saves than the store has threads
    wait for it, and a status poll (a read) is still answered at once, not after them."""
    url = sqlite_url(tmp_path)
    with open_persistence(url) as setup:
        setup.save_job(job("polled"))

    async def scenario() -> None:
        async with open_async_persistence(url, max_workers=4) as store:
            blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            try:
                saves = [asyncio.create_task(store.save_job(job(f"w{n}"))) for n in range(6)]
                await asyncio.sleep(0.1)
                polled = await asyncio.wait_for(store.load_job("polled"), timeout=2)
                assert polled is not None
                assert not any(save.done() for save in saves), "the lock is still held"
            finally:
                blocker.execute("COMMIT")
                blocker.close()
            assert all(await asyncio.gather(*saves))

    asyncio.run(scenario())


def test_a_claim_cancelled_after_it_was_stored_releases_its_job(tmp_path: Path) -> None:
    """The claim waits on its thread for the write lock another connection holds; its task is
    cancelled (a client went away), then the claim goes through. No one has the lease, so the
    store gives the job up: a sibling's next recovery resumes it, with a long lease timeout."""
    url = sqlite_url(tmp_path)
    with open_persistence(url) as setup:
        setup.save_job(job())

    async def scenario() -> None:
        async with open_async_persistence(url) as store:
            blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
            blocker.execute("BEGIN IMMEDIATE")
            claiming = asyncio.create_task(store.claim_job("j1"))
            await asyncio.sleep(0.2)
            assert not claiming.done()  # on its thread, waiting for the lock
            claiming.cancel()
            with pytest.raises(asyncio.CancelledError):
                await claiming
            blocker.execute("COMMIT")
            blocker.close()
            await wait_for_status(store, "j1", JobStatus.INTERRUPTED)
            stored = await store.load_job("j1")
            assert stored is not None
            assert stored.owner_id == f"{store.owner_id}:released"
            assert await store.heartbeat() == 0, "the store no longer keeps it"

    asyncio.run(scenario())
    with open_persistence(url) as sibling:
        report = sibling.recover_interrupted_jobs(lease_timeout=timedelta(hours=1))
        assert [point.job.id for point in report.interrupted] == ["j1"]


def test_a_claim_cancelled_just_after_its_lease_arrived_releases_its_job(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The task is cancelled in the loop iteration that delivers the lease (a timeout landing
    just then): the future is done, so only the task learns of the cancel, and it must give
    the lease back."""
    from cidx_jobs import _async

    deliver = _async._settle
    claiming: list[asyncio.Task[object]] = []

    def deliver_then_cancel(future, result, error, receipt):  # type: ignore[no-untyped-def]
        deliver(future, result, error, receipt)
        if receipt is not None:
            claiming[0].cancel()  # the future is done: only the task is cancelled

    monkeypatch.setattr(_async, "_settle", deliver_then_cancel)

    async def scenario() -> None:
        sync = JobPersistence(MemoryStorage())
        sync.save_job(job())
        async with AsyncJobPersistence(sync) as store:
            claiming.append(asyncio.create_task(store.claim_job("j1")))
            with pytest.raises(asyncio.CancelledError):
                await claiming[0]
            await wait_for_status(store, "j1", JobStatus.INTERRUPTED)
            stored = await store.load_job("j1")
            assert stored is not None
            assert stored.owner_id == f"{store.owner_id}:released"

    asyncio.run(scenario())


def test_a_claim_never_holds_a_write_thread_while_it_waits_for_its_task() -> None:
    """One write thread: a claim, then a block. The loop does not run until the block has run
    (it waits for it, synchronously): the claim's thread must be free for the block at once,
    not wait for the claim's task to take the lease."""
    ran = threading.Event()

    async def scenario() -> None:
        sync = JobPersistence(MemoryStorage())
        sync.save_job(job())
        async with AsyncJobPersistence(sync, max_workers=1) as store:
            claim = asyncio.create_task(store.claim_job("j1"))
            block = asyncio.create_task(store.run_in_transaction(lambda _store: ran.set()))
            await asyncio.sleep(0)  # both are queued now
            assert ran.wait(5), "the block waited for the claim's task"  # the loop is stopped
            assert await claim is not None
            await block

    asyncio.run(scenario())


def test_closing_at_once_after_a_cancelled_claim_still_releases_its_job(tmp_path: Path) -> None:
    """The documented lifespan cancels its job tasks and then closes the store: the claim
    that was waiting for the lock commits during the closing, and is released before it."""
    url = sqlite_url(tmp_path)
    with open_persistence(url) as setup:
        setup.save_job(job())

    async def scenario() -> None:
        store = await open_async_persistence(url)
        blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        claiming = asyncio.create_task(store.claim_job("j1"))
        await asyncio.sleep(0.2)
        claiming.cancel()
        with pytest.raises(asyncio.CancelledError):
            await claiming
        closing = asyncio.create_task(store.aclose())
        await asyncio.sleep(0.05)
        blocker.execute("COMMIT")
        blocker.close()
        started = time.monotonic()
        await closing
        # No timer decides: the release is queued as soon as the claim's outcome comes.
        assert time.monotonic() - started < 5

    asyncio.run(scenario())
    with open_persistence(url) as sibling:
        report = sibling.recover_interrupted_jobs(lease_timeout=timedelta(hours=1))
        assert [point.job.id for point in report.interrupted] == ["j1"]


def test_a_store_dropped_without_closing_leaves_no_thread_behind() -> None:
    baseline = threading.active_count()

    async def scenario() -> None:
        for n in range(20):
            store = AsyncJobPersistence(JobPersistence(MemoryStorage()), max_workers=4)
            await store.save_job(job())
            await store.load_job("j1")
            with pytest.raises(DuplicateJobError):
                await store.save_job(job())
            claiming = asyncio.create_task(store.claim_job("j1"))
            if n % 2:
                claiming.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await claiming
        del store, claiming

    asyncio.run(scenario())
    gc.collect()
    deadline = time.monotonic() + 5
    while threading.active_count() > baseline and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= baseline


def test_a_block_raising_stopiteration_fails_instead_of_hanging() -> None:
    def first_job(sync: JobPersistence) -> SyncJob:
        return next(iter(sync.query_jobs()))  # an empty store: StopIteration

    async def scenario() -> None:
        async with open_async_persistence("memory://") as store:
            with pytest.raises(RuntimeError, match="StopIteration"):
                await asyncio.wait_for(store.run_in_transaction(first_job), timeout=10)

    asyncio.run(scenario())


def test_closing_lets_calls_in_flight_finish_and_refuses_new_ones(tmp_path: Path) -> None:
    gate = threading.Event()
    entered = threading.Event()

    def slow(sync: JobPersistence) -> str:
        entered.set()
        gate.wait(10)
        sync.save_job(job("in-flight"))
        return "finished"

    async def scenario() -> None:
        store = await open_async_persistence(sqlite_url(tmp_path), max_workers=2)
        in_flight = asyncio.create_task(store.run_in_transaction(slow))
        queued = asyncio.create_task(store.save_job(job("queued")))
        while not entered.is_set():
            await asyncio.sleep(0.001)
        closing = asyncio.create_task(store.aclose())
        await asyncio.sleep(0.01)
        assert not closing.done()  # it waits for the call in flight
        with pytest.raises(StorageUnavailableError, match="closed"):
            await store.load_job("queued")
        gate.set()
        assert await in_flight == "finished"
        assert await queued
        await closing
        await store.aclose()  # idempotent
        with pytest.raises(StorageUnavailableError):
            store.sync.load_job("in-flight")  # the storage is closed too

    asyncio.run(scenario())
    with open_persistence(sqlite_url(tmp_path)) as reopened:
        assert {j.id for j in reopened.query_jobs()} == {"in-flight", "queued"}


def test_an_unopened_store_says_how_to_open_it() -> None:
    async def scenario() -> None:
        store = open_async_persistence("memory://")
        assert "unopened" in repr(store)
        with pytest.raises(StorageUnavailableError, match="async with"):
            await store.load_job("j1")
        assert await store is store
        assert await store.open() is store  # idempotent
        assert await store.load_job("j1") is None
        await store.aclose()
        with pytest.raises(StorageUnavailableError, match="closed"):
            await store.open()

    asyncio.run(scenario())


def test_wrapping_an_open_sync_store() -> None:
    sync = open_persistence("memory://")
    with pytest.raises(ValidationError):
        AsyncJobPersistence("memory://")  # type: ignore[arg-type]

    async def scenario() -> None:
        store = AsyncJobPersistence(sync, max_workers=3)
        assert store.sync is sync
        assert store.max_workers == 3
        assert store.owner_id == sync.owner_id
        assert store.storage is sync.storage
        await store.save_job(job())
        assert sync.load_job("j1") is not None
        await store.aclose()

    asyncio.run(scenario())
    with pytest.raises(StorageUnavailableError):
        sync.load_job("j1")


def test_the_callers_context_variables_follow_the_call() -> None:
    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id")
    seen: list[str] = []

    class Observer:
        @hookimpl
        def cidx_jobs_job_saved(self, job: SyncJob) -> None:
            seen.append(request_id.get("unset"))

    pm = get_plugin_manager()
    pm.register(Observer(), name="observer")

    async def scenario() -> None:
        async with open_async_persistence("memory://", hooks=Hooks(pm)) as store:
            request_id.set("req-42")
            await store.save_job(job())

    asyncio.run(scenario())
    assert seen == ["req-42"]


def test_a_public_dict_leaves_the_workers_identity_out() -> None:
    with open_persistence("memory://") as store:
        store.save_job(job())
        loaded = store.load_job("j1")
    assert loaded is not None
    assert loaded.owner_id is not None
    public = serialization.to_public_dict(loaded)
    assert "owner_id" not in public
    assert "heartbeat_at" not in public
    assert public == {
        k: v
        for k, v in serialization.to_dict(loaded).items()
        if k not in serialization.INTERNAL_FIELDS
    }
    assert public["id"] == "j1"
    assert public["status"] == "pending"
    with pytest.raises(ValidationError):
        serialization.to_public_dict({"id": "j1"})  # type: ignore[arg-type]


def test_every_field_of_a_job_is_either_public_or_internal() -> None:
    fields = {field.name for field in attrs.fields(SyncJob)}
    assert fields == serialization.PUBLIC_FIELDS | serialization.INTERNAL_FIELDS
    assert not serialization.PUBLIC_FIELDS & serialization.INTERNAL_FIELDS


def test_the_async_cleanup_scheduler_awaits_an_async_stores_cleanup(tmp_path: Path) -> None:
    old = utcnow() - timedelta(days=30)

    async def scenario() -> AsyncCleanupScheduler:
        async with open_async_persistence(sqlite_url(tmp_path)) as store:
            await store.save_job(
                job("done", status=JobStatus.COMPLETED, now=old)  # created (and done) long ago
            )
            scheduler = AsyncCleanupScheduler(store, interval=3600)
            with pytest.raises(ValidationError, match=r"await store\.run_cleanup"):
                scheduler.run_once()
            async with scheduler:
                await asyncio.sleep(0)
            assert await store.load_job("done") is None
            return scheduler

    scheduler = asyncio.run(scenario())
    assert scheduler.runs == 1
    assert scheduler.failures == 0
    assert scheduler.last_report is not None
    assert scheduler.last_report.jobs_deleted == 1


def test_a_cancelled_aclose_still_closes_and_a_second_one_waits_for_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await open_async_persistence(sqlite_url(tmp_path))
        # Another process holds the write lock, so a save is in flight when aclose() starts.
        blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        saving = asyncio.ensure_future(store.save_job(job()))
        await asyncio.sleep(0.1)
        closing = asyncio.ensure_future(store.aclose())
        await asyncio.sleep(0.1)
        closing.cancel()  # while it waits for the save
        asyncio.get_running_loop().call_later(0.2, blocker.execute, "COMMIT")
        await store.aclose()  # waits for the same closing, to its end
        blocker.close()
        assert await saving is True  # the call made before the close delivered its result
        with pytest.raises(StorageUnavailableError):
            store.sync.load_job("j1")  # the storage underneath is closed

    asyncio.run(scenario())


def test_a_cleanup_scheduler_thread_refuses_an_async_store() -> None:
    async def scenario() -> None:
        async with open_async_persistence("memory://") as store:
            with pytest.raises(ValidationError, match="AsyncCleanupScheduler"):
                CleanupScheduler(store)  # type: ignore[arg-type]

    asyncio.run(scenario())
