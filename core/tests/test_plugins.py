"""The plugin manager, the backend registry and the hook facade."""

from __future__ import annotations

import importlib.metadata
import logging
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pluggy
import pytest

from cidx_jobs import (
    Checkpoint,
    CleanupPolicy,
    CleanupReport,
    Hooks,
    JobPersistence,
    JobStatus,
    SyncJob,
    _defaults,
    find_backend,
    get_plugin_manager,
    hookimpl,
    open_persistence,
)
from cidx_jobs._plugins import _DEBUG_ONLY_DEFAULTS, check_plugins
from cidx_jobs.backend import BackendConfig, Capability
from cidx_jobs.errors import PluginError
from cidx_jobs.hookspecs import hookspec

NOW = datetime(2026, 3, 1, tzinfo=timezone.utc)


@pytest.fixture
def pm() -> pluggy.PluginManager:
    return get_plugin_manager(load_entrypoints=False)


def backend_plugin(name: str) -> SimpleNamespace:
    class Plugin:
        @hookimpl
        def cidx_jobs_register_backends(self, register):  # type: ignore[no-untyped-def]
            register(name, lambda config: config)

    return Plugin()  # type: ignore[return-value]


def test_backends_are_collected_through_register(pm: pluggy.PluginManager) -> None:
    pm.register(backend_plugin("alpha"), name="plugin-a")
    pm.register(backend_plugin("beta"), name="plugin-b")
    assert sorted(Hooks(pm).backends()) == ["alpha", "beta"]


def test_same_backend_name_twice_names_both_plugins(pm: pluggy.PluginManager) -> None:
    pm.register(backend_plugin("dup"), name="first-plugin")
    pm.register(backend_plugin("dup"), name="second-plugin")
    with pytest.raises(PluginError) as caught:
        Hooks(pm).backends()
    assert "first-plugin" in str(caught.value)
    assert "second-plugin" in str(caught.value)


def test_malformed_registration_is_a_plugin_error(pm: pluggy.PluginManager) -> None:
    class Bad:
        @hookimpl
        def cidx_jobs_register_backends(self, register):  # type: ignore[no-untyped-def]
            register("", "not callable")

    pm.register(Bad(), name="bad")
    with pytest.raises(PluginError, match="bad"):
        Hooks(pm).backends()


def test_misspelled_hook_is_reported() -> None:
    class Typo:
        @hookimpl
        def cidx_jobs_job_svaed(self, job):  # type: ignore[no-untyped-def]
            pass

    pm = get_plugin_manager(load_entrypoints=False)
    pm.register(Typo(), name="typo")
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()


def test_entry_point_plugins_are_loaded_and_can_be_blocked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("cidx_jobs_memory")
    assert "memory" in Hooks(get_plugin_manager()).backends()
    monkeypatch.setenv("CIDX_JOBS_BLOCK_PLUGINS", "memory, other")
    pm = get_plugin_manager()
    assert pm.is_blocked("memory")
    assert "memory" not in Hooks(pm).backends()


def test_factory_receives_the_backend_config(pm: pluggy.PluginManager) -> None:
    pm.register(backend_plugin("echo"), name="echo")
    url = "echo://me:s%40cret@db.example:7/some/where.db?extra=1&retention_days=2"
    backend, config, settings = find_backend(url, hooks=Hooks(pm))
    assert backend.name == "echo"
    assert backend.plugin == "echo"
    assert isinstance(config, BackendConfig)
    assert config.path == "some/where.db"
    assert (config.host, config.port, config.username, config.password) == (
        "db.example",
        7,
        "me",
        "s@cret",
    )
    assert "s@cret" not in repr(config)
    # the common options are core's: they never reach the backend
    assert config.options == {"extra": "1"}
    assert settings.retention == timedelta(days=2)
    assert config.url == url


def test_a_factory_must_return_a_storage(pm: pluggy.PluginManager) -> None:
    pm.register(backend_plugin("echo"), name="echo")  # its factory returns the config
    with pytest.raises(PluginError, match=r"'echo'.*not a cidx_jobs\.backend\.Storage"):
        open_persistence("echo://", hooks=Hooks(pm))


def test_registration_records_capabilities_and_scratch(pm: pluggy.PluginManager) -> None:
    def scratch(base, workdir):  # type: ignore[no-untyped-def]
        raise AssertionError("not called")

    class Plugin:
        @hookimpl
        def cidx_jobs_register_backends(self, register):  # type: ignore[no-untyped-def]
            register("caps", lambda config: config, capabilities=["persistent"], scratch=scratch)

    pm.register(Plugin(), name="caps-plugin")
    backend = Hooks(pm).backends()["caps"]
    assert backend.capabilities == frozenset({Capability.PERSISTENT})
    assert backend.scratch is scratch


def test_an_unknown_capability_names_the_plugin(pm: pluggy.PluginManager) -> None:
    class Plugin:
        @hookimpl
        def cidx_jobs_register_backends(self, register):  # type: ignore[no-untyped-def]
            register("caps", lambda config: config, capabilities=["teleport"])

    pm.register(Plugin(), name="caps-plugin")
    with pytest.raises(PluginError, match=r"'caps-plugin'.*teleport.*persistent"):
        Hooks(pm).backends()


def test_default_cleanup_policy(pm: pluggy.PluginManager) -> None:
    policy = Hooks(pm).cleanup_policy(timedelta(days=7))
    assert policy == CleanupPolicy.uniform(timedelta(days=7))
    assert JobStatus.INTERRUPTED in policy.retention
    assert JobStatus.RUNNING not in policy.retention


def test_a_plugin_overrides_the_default_policy(pm: pluggy.PluginManager) -> None:
    only_failed = CleanupPolicy(retention={JobStatus.FAILED: timedelta(days=30)})

    class KeepFailed:
        @hookimpl
        def cidx_jobs_cleanup_policy(self):  # type: ignore[no-untyped-def]
            return only_failed  # takes fewer arguments than the spec: allowed

    pm.register(KeepFailed(), name="keep-failed")
    assert Hooks(pm).cleanup_policy(timedelta(days=7)) is only_failed


def test_blocking_the_defaults_without_a_replacement_is_an_error() -> None:
    pm = get_plugin_manager(load_entrypoints=False, blocked=("cidx_jobs.defaults",))
    with pytest.raises(PluginError, match=r"cidx_jobs\.defaults"):
        Hooks(pm).cleanup_policy(timedelta(days=1))


def test_checkpoint_policy_default_and_abstain(pm: pluggy.PluginManager) -> None:
    hooks = Hooks(pm)
    assert hooks.checkpoint_policy("j", "p", {}, None, NOW) is True

    class Abstain:
        @hookimpl
        def cidx_jobs_checkpoint_policy(self):  # type: ignore[no-untyped-def]
            return None

    pm.register(Abstain(), name="abstain")
    assert hooks.checkpoint_policy("j", "p", {}, NOW, NOW) is True

    class Throttle:
        @hookimpl
        def cidx_jobs_checkpoint_policy(self, last_written_at, now):  # type: ignore[no-untyped-def]
            return last_written_at is None or now - last_written_at > timedelta(seconds=5)

    pm.register(Throttle(), name="throttle")
    assert hooks.checkpoint_policy("j", "p", {}, NOW, NOW) is False
    assert hooks.checkpoint_policy("j", "p", {}, None, NOW) is True


def test_the_checkpoint_policy_is_default_only_while_no_other_is_registered() -> None:
    pm = get_plugin_manager(load_entrypoints=False)
    hooks = Hooks(pm)
    assert hooks.checkpoint_policy_is_default()

    class Throttle:
        @hookimpl
        def cidx_jobs_checkpoint_policy(self, last_written_at):  # type: ignore[no-untyped-def]
            return last_written_at is None

    throttle = Throttle()
    pm.register(throttle, name="throttle")
    assert not hooks.checkpoint_policy_is_default()
    pm.unregister(throttle)
    assert hooks.checkpoint_policy_is_default()
    # A replacement that blocks the defaults is not the default, whatever it answers.
    blocked = get_plugin_manager(load_entrypoints=False, blocked=("cidx_jobs.defaults",))
    blocked.register(Throttle(), name="cidx_jobs.defaults-lookalike")
    assert not Hooks(blocked).checkpoint_policy_is_default()


def test_a_checkpoint_policy_registered_after_opening_takes_effect_at_once() -> None:
    # save_checkpoint skips the policy while only the default is registered; a policy
    # registered later must still be asked, and must see the writes made since.
    hooks = Hooks()  # with the installed plugins: the memory backend among them
    store = open_persistence("memory://", hooks=hooks)
    store.save_job(SyncJob.create(id="j", user_id="u", project_id="p"))
    assert store.save_checkpoint("j", "indexing", {"n": 1})

    class WriteOnce:
        @hookimpl
        def cidx_jobs_checkpoint_policy(self, last_written_at):  # type: ignore[no-untyped-def]
            return last_written_at is None

    hooks.pm.register(WriteOnce(), name="write-once")
    assert store.save_checkpoint("j", "indexing", {"n": 2})  # no write remembered: written
    assert store.save_checkpoint("j", "indexing", {"n": 3})  # skipped, the job exists
    assert store.load_checkpoint("j", "indexing") == {"n": 2}
    store.close()


def test_observers_get_the_arguments_they_name(pm: pluggy.PluginManager) -> None:
    seen: list[tuple[object, ...]] = []

    class Partial:
        @hookimpl
        def cidx_jobs_status_changed(self, changed_at, job_id):  # type: ignore[no-untyped-def]
            seen.append((changed_at, job_id))

    class Full:
        @hookimpl
        def cidx_jobs_status_changed(self, job_id, status, error_message, changed_at):  # type: ignore[no-untyped-def]
            seen.append((job_id, status, error_message, changed_at))

    pm.register(Partial(), name="partial")
    pm.register(Full(), name="full")
    Hooks(pm).status_changed("j1", JobStatus.FAILED, "boom", NOW)
    assert sorted(seen, key=len) == [(NOW, "j1"), ("j1", JobStatus.FAILED, "boom", NOW)]


def test_failing_observer_is_logged_and_others_still_run(
    pm: pluggy.PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    seen: list[int] = []

    class Broken:
        @hookimpl
        def cidx_jobs_cleanup_done(self, report):  # type: ignore[no-untyped-def]
            raise RuntimeError("metrics server down")

    class Counter:
        @hookimpl
        def cidx_jobs_cleanup_done(self, report):  # type: ignore[no-untyped-def]
            seen.append(report.jobs_deleted)

    pm.register(Broken(), name="broken")
    pm.register(Counter(), name="counter")
    report = CleanupReport(jobs_deleted=3, checkpoints_deleted=1, cutoffs={})
    with caplog.at_level(logging.INFO, logger="cidx_jobs"):
        Hooks(pm).cleanup_done(report)
    assert seen == [3]
    assert any("broken" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert any("deleted 3 jobs" in r.getMessage() for r in caplog.records)


def test_default_observers_log_status_changes(
    pm: pluggy.PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    hooks = Hooks(pm)
    with caplog.at_level(logging.INFO, logger="cidx_jobs"):
        hooks.status_changed("j1", JobStatus.FAILED, "boom", NOW)
        hooks.status_changed("j2", JobStatus.COMPLETED, None, NOW)
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    assert levels["job j1 failed: boom"] == logging.WARNING
    assert levels["job j2 is now completed"] == logging.INFO


def test_debug_only_default_observers_log_when_debug_turns_on(
    pm: pluggy.PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    # Hooks skips these observers while DEBUG is off; the level is read on every call.
    hooks = Hooks(pm)
    checkpoint = Checkpoint(job_id="j1", phase="clone", data={}, created_at=NOW)
    job = SyncJob.create(id="j2", user_id="u", project_id="p", now=NOW)
    with caplog.at_level(logging.INFO, logger="cidx_jobs"):
        hooks.checkpoint_saved(checkpoint)
        hooks.job_saved(job)
    assert caplog.records == []
    with caplog.at_level(logging.DEBUG, logger="cidx_jobs"):
        hooks.checkpoint_saved(checkpoint)
        hooks.job_saved(job)
    assert [r.getMessage() for r in caplog.records] == [
        "checkpoint j1/clone saved",
        "job j2 saved for user u (status pending)",
    ]


def test_debug_only_default_observers_are_skipped_only_with_nothing_else_observing(
    pm: pluggy.PluginManager, caplog: pytest.LogCaptureFixture
) -> None:
    # The skip is sound only while each default observer logs at DEBUG alone.
    checkpoint = Checkpoint(job_id="j1", phase="clone", data={}, created_at=NOW)
    job = SyncJob.create(id="j2", user_id="u", project_id="p", now=NOW)
    with caplog.at_level(logging.INFO, logger="cidx_jobs"):
        for name in _DEBUG_ONLY_DEFAULTS:
            getattr(_defaults, name)(checkpoint if "checkpoint" in name else job)
    assert caplog.records == []

    seen: list[str] = []

    class Late:
        @hookimpl
        def cidx_jobs_checkpoint_saved(self, checkpoint):  # type: ignore[no-untyped-def]
            seen.append(checkpoint.phase)

    hooks = Hooks(pm)
    hooks.checkpoint_saved(checkpoint)  # the default alone: skipped
    pm.register(Late(), name="late")  # registered after the first call: seen at once
    hooks.checkpoint_saved(checkpoint)
    assert seen == ["clone"]


def test_job_persistence_is_abstract() -> None:
    with pytest.raises(TypeError):
        JobPersistence()  # type: ignore[abstract]


def test_a_plugin_that_fails_to_import_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    broken = importlib.metadata.EntryPoint(
        name="broken-backend", value="cidx_jobs_no_such_module._plugin", group="cidx_jobs"
    )
    monkeypatch.setattr(
        importlib.metadata, "entry_points", lambda group: [broken] if group == "cidx_jobs" else []
    )
    with pytest.raises(PluginError, match=r"'broken-backend'.*CIDX_JOBS_BLOCK_PLUGINS"):
        get_plugin_manager()
    # Blocking it is the documented way out.
    assert get_plugin_manager(blocked=("broken-backend",)).is_blocked("broken-backend")


class _Recorder:
    """Observers that append (plugin, hook, arguments) to one shared list."""

    def __init__(self, name: str, calls: list[tuple[str, object]]) -> None:
        self.name = name
        self.calls = calls

    @hookimpl
    def cidx_jobs_status_changed(self, job_id, status, error_message, changed_at):  # type: ignore[no-untyped-def]
        self.calls.append((self.name, (job_id, status, error_message, changed_at)))


def test_observers_run_in_pluggys_order(pm: pluggy.PluginManager) -> None:
    calls: list[tuple[str, object]] = []

    class First(_Recorder):
        @hookimpl(tryfirst=True)
        def cidx_jobs_status_changed(self, job_id, status, error_message, changed_at):  # type: ignore[no-untyped-def]
            self.calls.append((self.name, job_id))

    class Last(_Recorder):
        @hookimpl(trylast=True)
        def cidx_jobs_status_changed(self, job_id):  # type: ignore[no-untyped-def]
            self.calls.append((self.name, job_id))

    for plugin in (
        Last("last", calls),
        First("first", calls),
        _Recorder("a", calls),
        _Recorder("b", calls),
    ):
        pm.register(plugin, name=plugin.name)
    # pluggy's own call, for reference: what it calls first, the facade calls first
    pm.hook.cidx_jobs_status_changed(
        job_id="ref", status=JobStatus.RUNNING, error_message=None, changed_at=NOW
    )
    reference = [name for name, _ in calls]
    calls.clear()
    Hooks(pm).status_changed("j", JobStatus.RUNNING, None, NOW)
    assert [name for name, _ in calls] == reference == ["first", "b", "a", "last"]
    # each observer got the arguments its signature names, from the specification
    assert calls[1] == ("b", ("j", JobStatus.RUNNING, None, NOW))
    assert calls[3] == ("last", "j")


def test_the_default_observer_runs_after_the_plugins(pm: pluggy.PluginManager) -> None:
    order: list[str] = []

    class Mine:
        @hookimpl
        def cidx_jobs_job_saved(self, job):  # type: ignore[no-untyped-def]
            order.append("mine")

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            order.append("default log")

    handler = Handler(logging.DEBUG)
    log = logging.getLogger("cidx_jobs")
    log.addHandler(handler)
    previous = log.level
    log.setLevel(logging.DEBUG)
    pm.register(Mine(), name="mine")
    try:
        Hooks(pm).job_saved(SyncJob.create(id="j", user_id="u", project_id="p"))
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)
    # the default logger is registered first but trylast: pluggy runs it last
    assert order == ["mine", "default log"]


def test_an_observer_gets_a_defaulted_argument_as_pluggy_passes_it(
    pm: pluggy.PluginManager,
) -> None:
    calls: list[tuple[str, object]] = []

    class Defaulted:
        @hookimpl
        def cidx_jobs_status_changed(self, job_id, status, error_message=None, changed_at=None):  # type: ignore[no-untyped-def]
            calls.append((job_id, error_message))

    pm.register(Defaulted(), name="defaulted")
    pm.hook.cidx_jobs_status_changed(
        job_id="ref", status=JobStatus.FAILED, error_message="boom", changed_at=NOW
    )
    Hooks(pm).status_changed("j", JobStatus.FAILED, "boom", NOW)
    # whatever the installed pluggy does with a defaulted parameter, the facade does too
    assert calls[1] == ("j", calls[0][1])


def test_unregister_forgets_the_distribution() -> None:
    pytest.importorskip("cidx_jobs_memory")
    pm = get_plugin_manager()
    plugin = pm.get_plugin("memory")
    assert pm.version_of("memory") is not None
    pm.unregister(plugin)
    pm.register(SimpleNamespace(), name="memory")
    assert pm.version_of("memory") is None


def test_adding_hookspecs_refreshes_the_cached_observers(pm: pluggy.PluginManager) -> None:
    class Extra:
        @hookspec
        def cidx_jobs_extra_event(self, value):  # type: ignore[no-untyped-def]
            """An event a plugin adds."""

    seen: list[object] = []

    class Observer:
        @hookimpl
        def cidx_jobs_extra_event(self, value):  # type: ignore[no-untyped-def]
            seen.append(value)

    pm.register(Observer(), name="observer")  # before its spec exists: pluggy keeps it pending
    hooks = Hooks(pm)
    before = pm.generation
    pm.add_hookspecs(Extra)
    assert pm.generation > before
    hooks._notify("cidx_jobs_extra_event", (42,))
    assert seen == [42]


def test_hooks_needs_the_hook_specifications() -> None:
    from cidx_jobs import PluginManager

    with pytest.raises(PluginError, match="hook specifications"):
        Hooks(PluginManager())


@pytest.mark.parametrize("hook", ["cidx_jobs_job_saved", "cidx_jobs_register_backends"])
@pytest.mark.parametrize("kind", ["wrapper", "hookwrapper"])
def test_a_wrapper_of_a_directly_called_hook_is_refused(
    pm: pluggy.PluginManager, hook: str, kind: str
) -> None:
    argnames = {"cidx_jobs_job_saved": "job", "cidx_jobs_register_backends": "register"}[hook]
    namespace: dict[str, object] = {}
    exec(f"def {hook}({argnames}):\n    yield", namespace)  # a generator with the spec's name
    plugin = SimpleNamespace(**{hook: hookimpl(**{kind: True})(namespace[hook])})
    with pytest.raises(PluginError, match=rf"'wrapping'.*{hook}.*wrapper"):
        pm.register(plugin, name="wrapping")
    assert not pm.has_plugin("wrapping")


def test_a_wrapper_of_a_policy_hook_runs(pm: pluggy.PluginManager) -> None:
    seen: list[object] = []

    class Wrapping:
        @hookimpl(wrapper=True)
        def cidx_jobs_cleanup_policy(self, retention):  # type: ignore[no-untyped-def]
            policy = yield
            seen.append(policy)
            return policy

    pm.register(Wrapping(), name="wrapping")
    assert Hooks(pm).cleanup_policy(timedelta(days=2)) == seen[0]


def test_the_checkpoint_fast_path_flag_follows_register_and_unregister(
    pm: pluggy.PluginManager,
) -> None:
    hooks = Hooks(pm)
    assert hooks.checkpoint_policy_is_default()

    class Throttle:
        @hookimpl
        def cidx_jobs_checkpoint_policy(self):  # type: ignore[no-untyped-def]
            return False

    plugin = Throttle()
    pm.register(plugin, name="throttle")
    try:
        assert not hooks.checkpoint_policy_is_default()
        assert hooks.checkpoint_policy("j", "p", {}, None, NOW) is False
    finally:
        pm.unregister(plugin)
    assert hooks.checkpoint_policy_is_default()


def test_a_renamed_hook_is_reported_with_its_new_name(pm: pluggy.PluginManager) -> None:
    class Old:
        @hookimpl
        def cidx_jobs_checkpoint_should_write(self):  # type: ignore[no-untyped-def]
            return True

    pm.register(Old(), name="old")
    with pytest.raises(PluginError, match="renamed cidx_jobs_checkpoint_policy"):
        check_plugins(pm)


def test_hooks_needs_the_cidx_plugin_manager() -> None:
    with pytest.raises(PluginError, match="get_plugin_manager"):
        Hooks(pluggy.PluginManager("cidx_jobs"))  # type: ignore[arg-type]


def test_entry_point_plugins_are_listed_with_their_distribution() -> None:
    pytest.importorskip("cidx_jobs_memory")
    pm = get_plugin_manager()
    assert (
        pm.version_of("memory")
        == f"cidx-jobs-memory {importlib.metadata.version('cidx-jobs-memory')}"
    )
    assert pm.version_of("cidx_jobs.defaults") is None
