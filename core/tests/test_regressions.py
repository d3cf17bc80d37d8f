"""Regression tests for defects found in review; each failed before its fix."""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
import types
from datetime import timedelta

import pytest

from cidx_jobs import (
    AsyncCleanupScheduler,
    CleanupReport,
    Hooks,
    StoreSettings,
    SyncJob,
    get_plugin_manager,
    hookimpl,
    open_persistence,
    parse_config,
)
from cidx_jobs.errors import ConfigError, PluginError, ValidationError

memory = pytest.importorskip("cidx_jobs_memory")


def test_async_stop_waits_for_the_cleanup_in_progress() -> None:
    release = threading.Event()
    finished: list[bool] = []

    class SlowStore:
        def run_cleanup(self, retention: timedelta | None = None) -> CleanupReport:
            release.wait(5)
            finished.append(True)
            return CleanupReport(jobs_deleted=0, checkpoints_deleted=0, cutoffs={})

    async def main() -> AsyncCleanupScheduler:
        scheduler = AsyncCleanupScheduler(SlowStore(), interval=3600)  # type: ignore[arg-type]
        await scheduler.start()
        await asyncio.sleep(0.05)  # the first run is now blocked in its thread
        asyncio.get_running_loop().call_later(0.1, release.set)
        await scheduler.stop()
        return scheduler

    scheduler = asyncio.run(main())
    assert finished == [True]  # stop() returned only after the run ended
    assert scheduler.failures == 0
    assert scheduler.last_report is not None


class Throttle:
    """Skips a checkpoint written less than an hour after the previous one."""

    @hookimpl
    def cidx_jobs_checkpoint_policy(self, last_written_at, now):  # type: ignore[no-untyped-def]
        return last_written_at is None or now - last_written_at > timedelta(hours=1)


def test_rolled_back_checkpoint_does_not_count_for_throttling() -> None:
    pm = get_plugin_manager()
    pm.register(Throttle(), name="throttle")
    with open_persistence("memory://", hooks=Hooks(pm)) as store:
        store.save_job(SyncJob(id="j", user_id="u", project_id="p"))
        with pytest.raises(RuntimeError), store.transaction():
            store.save_checkpoint("j", "indexing", {"n": 1})
            raise RuntimeError("abort")
        assert store.load_checkpoint("j", "indexing") is None
        assert store.save_checkpoint("j", "indexing", {"n": 2})
        assert store.load_checkpoint("j", "indexing") == {"n": 2}
        # Now throttled: the call is skipped, the first checkpoint stays.
        assert store.save_checkpoint("j", "indexing", {"n": 3})
        assert store.load_checkpoint("j", "indexing") == {"n": 2}


def test_skipped_checkpoint_of_unknown_job_returns_false() -> None:
    pm = get_plugin_manager()

    class SkipAll:
        @hookimpl
        def cidx_jobs_checkpoint_policy(self):  # type: ignore[no-untyped-def]
            return False

    pm.register(SkipAll(), name="skip-all")
    with open_persistence("memory://", hooks=Hooks(pm)) as store:
        assert store.save_checkpoint("ghost", "p", {}) is False
        store.save_job(SyncJob(id="j", user_id="u", project_id="p"))
        assert store.save_checkpoint("j", "p", {}) is True
        assert store.load_checkpoint("j", "p") is None


def test_nested_non_dict_mapping_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        SyncJob(
            id="j",
            user_id="u",
            project_id="p",
            metadata={"inner": types.MappingProxyType({"a": 1})},
        )
    with open_persistence("memory://") as store:
        store.save_job(SyncJob(id="j", user_id="u", project_id="p"))
        with pytest.raises(ValidationError):
            store.save_checkpoint("j", "p", {"inner": types.MappingProxyType({"a": 1})})


def test_plugin_with_a_bad_hook_signature_is_a_plugin_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = types.ModuleType("cidx_jobs_bad_signature_plugin")

    @hookimpl
    def cidx_jobs_job_saved(job, not_in_the_spec):  # type: ignore[no-untyped-def]
        pass

    module.cidx_jobs_job_saved = cidx_jobs_job_saved  # type: ignore[attr-defined]
    entry_point = importlib.metadata.EntryPoint(
        name="bad-signature", value="cidx_jobs_bad_signature_plugin", group="cidx_jobs"
    )
    monkeypatch.setitem(__import__("sys").modules, module.__name__, module)
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda group: [entry_point] if group == "cidx_jobs" else [],
    )
    with pytest.raises(PluginError, match="bad-signature"):
        get_plugin_manager()


def test_unknown_option_lists_the_common_options_too() -> None:
    with pytest.raises(ConfigError, match="retention_days") as caught:
        open_persistence("memory://?retension_days=3")
    assert caught.value.option == "retension_days"


def test_url_paths_are_percent_decoded() -> None:
    assert parse_config("sqlite:///my%20jobs.db")[2]["path"] == "my jobs.db"


@pytest.mark.parametrize(
    "changes",
    [
        {"max_metadata_bytes": 0},
        {"max_metadata_bytes": "big"},
        {"retention": timedelta(days=-1)},
        {"checkpoint_max_age": 5},
        {"clock": "now"},
    ],
)
def test_store_settings_are_validated(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        StoreSettings(**changes)  # type: ignore[arg-type]
