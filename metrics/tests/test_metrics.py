"""The metrics plugin counts what the events say, and the instrumented store times each call."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from cidx_jobs import Hooks, JobStatus, SyncJob, get_plugin_manager, hookimpl, open_persistence
from cidx_jobs.backend import Fault
from cidx_jobs.errors import StorageFullError
from cidx_jobs_metrics import InstrumentedStorage, JobMetrics, instrument, plugin


class Throttle:
    """Writes the first checkpoint of a phase and skips the rest."""

    @hookimpl
    def cidx_jobs_checkpoint_policy(self, last_written_at):  # type: ignore[no-untyped-def]
        return last_written_at is None


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> JobMetrics:
    return JobMetrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_the_entry_point_registers_the_default_plugin() -> None:
    pm = get_plugin_manager()
    assert pm.get_plugin("prometheus") is plugin
    assert get_plugin_manager(blocked=("prometheus",)).get_plugin("prometheus") is None


def test_events_are_counted(
    tmp_path: Path, registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    pm = get_plugin_manager(blocked=("prometheus",))
    pm.register(metrics, name="test-metrics")
    pm.register(Throttle(), name="throttle")
    with open_persistence(f"sqlite:///{tmp_path / 'jobs.db'}", hooks=Hooks(pm)) as store:
        for i in range(3):
            store.save_job(SyncJob.create(id=f"j{i}", user_id="u", project_id="p"))
        store.update_job_status("j0", JobStatus.RUNNING)
        store.update_job_status("j0", JobStatus.COMPLETED)
        store.update_job_status("j1", JobStatus.FAILED, error_message="x")
        assert not store.update_job_status("j0", JobStatus.RUNNING)  # refused: not counted
        store.save_checkpoint("j2", "indexing", {"n": 1})
        store.save_checkpoint("j2", "indexing", {"n": 2})
        store.save_checkpoint("j2", "indexing", {"n": 3})
        store.save_job(
            SyncJob(
                id="dead",
                user_id="u",
                project_id="p",
                status=JobStatus.RUNNING,
                owner_id="gone:1:x",
                heartbeat_at=store.settings.clock() - timedelta(hours=1),
            )
        )
        store.recover_interrupted_jobs()
        store.run_cleanup(retention=timedelta(0), dry_run=True)  # dry runs are not counted
        store.run_cleanup(retention=timedelta(0))
    assert value(registry, "cidx_jobs_jobs_saved_total") == 4
    assert value(registry, "cidx_jobs_status_changes_total", status="running") == 1
    assert value(registry, "cidx_jobs_status_changes_total", status="completed") == 1
    assert value(registry, "cidx_jobs_status_changes_total", status="failed") == 1
    assert value(registry, "cidx_jobs_status_changes_total", status="interrupted") == 1
    assert value(registry, "cidx_jobs_checkpoints_written_total") == 1
    assert value(registry, "cidx_jobs_checkpoints_skipped_total") == 2
    assert value(registry, "cidx_jobs_recovery_runs_total") == 1
    assert value(registry, "cidx_jobs_jobs_recovered_total", outcome="interrupted") == 1
    assert value(registry, "cidx_jobs_cleanup_runs_total") == 1
    assert value(registry, "cidx_jobs_cleanup_deleted_jobs_total") == 3  # j0, j1, dead
    # Without instrument(), there is no time to report.
    assert value(registry, "cidx_jobs_cleanup_duration_seconds_count") == 0
    assert (
        value(registry, "cidx_jobs_storage_call_duration_seconds_count", operation="get_job") == 0
    )


def test_an_instrumented_store_times_every_call(
    tmp_path: Path, registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    pm = get_plugin_manager(blocked=("prometheus",))
    store = instrument(
        open_persistence(f"sqlite:///{tmp_path / 'jobs.db'}", hooks=Hooks(pm)), metrics
    )
    with store:
        assert isinstance(store.storage, InstrumentedStorage)
        assert store.storage.path == tmp_path / "jobs.db"  # the backend's extras read through
        store.save_job(SyncJob.create(id="a", user_id="u", project_id="p"))
        for _ in range(5):
            store.load_job("a")
        store.update_job_status("a", JobStatus.COMPLETED)
        store.query_jobs()
        report = store.run_cleanup(retention=timedelta(0))
        assert report.jobs_deleted == 1
    calls = "cidx_jobs_storage_call_duration_seconds_count"
    assert value(registry, calls, operation="insert_job") == 1
    assert value(registry, calls, operation="get_job") == 5
    assert value(registry, calls, operation="set_status") == 1
    # query_jobs, and the cleanup's look for jobs created after its clock (a clock step)
    assert value(registry, calls, operation="select_jobs") == 2
    assert value(registry, calls, operation="delete_expired") == 2  # one batch, then an empty one
    total = value(registry, "cidx_jobs_storage_call_duration_seconds_sum", operation="get_job")
    assert 0 < total < 1
    # instrument() registered the metrics on the store's plugin manager: events count too.
    assert value(registry, "cidx_jobs_jobs_saved_total") == 1
    assert value(registry, "cidx_jobs_cleanup_duration_seconds_count") == 1
    duration = value(registry, "cidx_jobs_cleanup_duration_seconds_sum")
    batches = value(
        registry, "cidx_jobs_storage_call_duration_seconds_sum", operation="delete_expired"
    )
    assert duration == pytest.approx(batches)


def test_storage_failures_are_counted_by_operation_and_error(
    tmp_path: Path, registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    pm = get_plugin_manager(blocked=("prometheus",))
    with instrument(
        open_persistence(f"sqlite:///{tmp_path / 'jobs.db'}", hooks=Hooks(pm)), metrics
    ) as store:
        injector = store.storage.fault_injector()
        assert injector is not None
        injector.fail_next(Fault.DISK_FULL)  # the backend's real seam, real error translation
        with pytest.raises(StorageFullError):
            store.save_job(SyncJob.create(id="a", user_id="u", project_id="p"))
    errors = "cidx_jobs_storage_errors_total"
    assert value(registry, errors, operation="insert_job", error="StorageFullError") == 1
    assert value(registry, "cidx_jobs_jobs_saved_total") == 0


def test_instrument_refuses_what_is_not_a_store() -> None:
    with pytest.raises(ValueError, match="JobPersistence"):
        instrument(object())  # type: ignore[arg-type]


class SmallBatches:
    """Every finished job expires at once, deleted two at a time."""

    @hookimpl
    def cidx_jobs_cleanup_policy(self, retention):  # type: ignore[no-untyped-def]
        from cidx_jobs import CleanupPolicy

        return CleanupPolicy.uniform(timedelta(0), batch_size=2)


def test_a_failed_cleanup_counts_what_it_deleted_and_leaks_no_time(
    tmp_path: Path, registry: CollectorRegistry, metrics: JobMetrics
) -> None:
    from cidx_jobs.errors import StorageError

    pm = get_plugin_manager(blocked=("prometheus",))
    pm.register(SmallBatches())
    store = instrument(
        open_persistence(f"sqlite:///{tmp_path / 'jobs.db'}", hooks=Hooks(pm)), metrics
    )
    with store:
        for i in range(6):
            store.save_job(SyncJob.create(id=f"j{i}", user_id="u", project_id="p"))
            store.update_job_status(f"j{i}", JobStatus.COMPLETED)
        injector = store.storage.fault_injector()
        assert injector is not None
        # The clock-step look and the first batch succeed; a statement of a later batch
        # loses the connection.
        injector.fail_next(Fault.CONNECTION_LOST, after=5)
        with pytest.raises(StorageError):
            store.run_cleanup()
        deleted = 6 - store.count_jobs()
        assert deleted >= 2
        assert value(registry, "cidx_jobs_cleanup_deleted_jobs_total") == deleted
        assert value(registry, "cidx_jobs_cleanup_runs_total") == 0
        assert metrics.cleanup_clock.seconds is None
        before = value(
            registry, "cidx_jobs_storage_call_duration_seconds_sum", operation="delete_expired"
        )
        report = store.run_cleanup()
        assert report.jobs_deleted == 6 - deleted
    assert value(registry, "cidx_jobs_cleanup_deleted_jobs_total") == 6
    assert value(registry, "cidx_jobs_cleanup_runs_total") == 1
    after = value(
        registry, "cidx_jobs_storage_call_duration_seconds_sum", operation="delete_expired"
    )
    # The second cleanup's duration is its own batches' time, none of the failed one's.
    duration = value(registry, "cidx_jobs_cleanup_duration_seconds_sum")
    assert duration == pytest.approx(after - before)
