"""The plugin manager, the backend registry and the typed facade over the hooks."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import pluggy

from . import _defaults, hookspecs
from ._models import (
    Checkpoint,
    CleanupPolicy,
    CleanupReport,
    JobStatus,
    RecoveryReport,
    SyncJob,
)
from .backend import Backend, BackendFactory, Capability, InventoryFactory, ScratchFactory
from .errors import PluginError

logger = logging.getLogger("cidx_jobs")

#: The entry-point group plugins register under, e.g. ``[project.entry-points.cidx_jobs]``.
ENTRY_POINT_GROUP = "cidx_jobs"
#: Comma-separated plugin names (entry-point names) that are not loaded.
BLOCK_ENV_VAR = "CIDX_JOBS_BLOCK_PLUGINS"

#: Hooks the facade calls one implementation at a time (so that one observer's failure
#: cannot stop the others, and a clash can name both plugins). pluggy's wrappers cannot
#: wrap such calls, so implementing one of these as a wrapper is refused.
DIRECT_HOOKS = (
    "cidx_jobs_register_backends",
    "cidx_jobs_job_saved",
    "cidx_jobs_status_changed",
    "cidx_jobs_checkpoint_saved",
    "cidx_jobs_checkpoint_skipped",
    "cidx_jobs_cleanup_done",
    "cidx_jobs_recovery_done",
)
#: Hooks renamed in 0.2, for the message that a plugin implements one of the old names.
RENAMED_HOOKS = {
    "cidx_jobs_checkpoint_should_write": "cidx_jobs_checkpoint_policy",
    "cidx_jobs_resume_checkpoint": "cidx_jobs_resume_policy",
}


class PluginManager(pluggy.PluginManager):
    """pluggy's manager for the ``cidx_jobs`` hooks, as :func:`get_plugin_manager` builds it.

    It refuses a wrapper implementation of a hook the facade calls itself (the
    event hooks and ``cidx_jobs_register_backends``), records the distribution of each plugin loaded from
    an entry point, and counts changes, so that :class:`Hooks` recomputes what it
    derives from the registered plugins only after a register or unregister.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT_NAME)
        #: Bumped on every register and unregister.
        self.generation = 0
        #: The distribution of each plugin loaded from an entry point, by plugin name.
        self.distributions: dict[str, importlib.metadata.Distribution] = {}

    def register(self, plugin: object, name: str | None = None) -> str | None:
        """Register ``plugin`` (pluggy's ``register``).

        :raises PluginError: it implements an event hook or
            ``cidx_jobs_register_backends`` as a wrapper; it is not registered.
        :raises ValueError: pluggy refused it (e.g. the name is taken).
        """
        registered = super().register(plugin, name)
        self.generation += 1
        if registered is not None:
            for hook_name in DIRECT_HOOKS:
                caller = getattr(self.hook, hook_name, None)
                if caller is None:
                    continue
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and (impl.wrapper or impl.hookwrapper):
                        self.unregister(plugin)
                        raise PluginError(
                            f"plugin {registered!r} implements {hook_name} as a wrapper; "
                            "cidx-jobs calls this hook's implementations one at a time, "
                            "so it cannot be wrapped: implement it as a plain hook"
                        )
        return registered

    def unregister(self, plugin: object | None = None, name: str | None = None) -> Any | None:
        """Unregister a plugin (pluggy's ``unregister``)."""
        if name is None and plugin is not None:
            name = self.get_name(plugin)
        removed = super().unregister(plugin, name)
        self.generation += 1
        if name is not None:
            self.distributions.pop(name, None)
        return removed

    def add_hookspecs(self, module_or_class: types.ModuleType | type) -> None:
        """Add hook specifications (pluggy's ``add_hookspecs``)."""
        super().add_hookspecs(module_or_class)
        self.generation += 1

    def version_of(self, name: str) -> str | None:
        """``"distribution version"`` of the plugin ``name``, if it came from an entry point."""
        dist = self.distributions.get(name)
        if dist is None:
            return None
        return f"{dist.metadata['Name']} {dist.version}"


def get_plugin_manager(
    *, load_entrypoints: bool = True, blocked: tuple[str, ...] | None = None
) -> PluginManager:
    """Build a plugin manager with the hookspecs, the defaults and the installed plugins.

    Plugins come from the ``cidx_jobs`` entry-point group; each is registered
    under its entry-point name. Names in ``blocked`` (by default, those in the
    ``CIDX_JOBS_BLOCK_PLUGINS`` environment variable, comma-separated) are not
    loaded; blocking ``cidx_jobs.defaults`` removes the default policies, so
    another plugin must provide them.

    :raises PluginError: a plugin fails to import, implements a hook that does
        not exist (usually a misspelled or renamed ``cidx_jobs_*`` name), or
        wraps a hook that cannot be wrapped.
    """
    if blocked is None:
        blocked = tuple(
            n.strip() for n in os.environ.get(BLOCK_ENV_VAR, "").split(",") if n.strip()
        )
    pm = PluginManager()
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    pm.register(_defaults, name=_defaults.DEFAULTS_PLUGIN_NAME)
    if load_entrypoints:
        _load_entrypoints(pm)
    check_plugins(pm)
    return pm


def check_plugins(pm: pluggy.PluginManager) -> None:
    """Refuse implementations of hooks that do not exist.

    :raises PluginError: one exists; the message names it, and the new name of
        a renamed hook.
    """
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        hint = "".join(
            f"; {old} was renamed {new}" for old, new in RENAMED_HOOKS.items() if old in str(error)
        )
        raise PluginError(f"a cidx_jobs plugin is invalid: {error}{hint}") from error


def _load_entrypoints(pm: PluginManager) -> None:
    # pluggy's own loader lets an import error escape without saying which
    # plugin broke; an operator needs the name to uninstall or block it.
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        name = entry_point.name
        if pm.is_blocked(name) or pm.has_plugin(name):
            continue
        try:
            plugin = entry_point.load()
        except Exception as error:
            raise PluginError(
                f"the cidx_jobs plugin {name!r} ({entry_point.value}) failed to load: {error}; "
                f"reinstall it, or block it with {BLOCK_ENV_VAR}={name}"
            ) from error
        try:
            pm.register(plugin, name=name)
        except (pluggy.PluginValidationError, ValueError, PluginError) as error:
            raise PluginError(
                f"the cidx_jobs plugin {name!r} ({entry_point.value}) is invalid: {error}; "
                f"fix or uninstall it, or block it with {BLOCK_ENV_VAR}={name}"
            ) from error
        dist = getattr(entry_point, "dist", None)
        if dist is not None:
            pm.distributions[name] = dist


_SPEC_NAMES = tuple(name for name in hookspecs.__all__ if name.startswith("cidx_jobs_"))

# One observer, ready to call: its function, how to pick its positional arguments from
# the spec's (None: it takes all of them, in order), the keyword arguments (a parameter
# with a default, by name and index, passed where pluggy passes them), and its plugin's
# name for the log.
_Observer = tuple[Callable[..., object], tuple[int, ...] | None, tuple[tuple[str, int], ...], str]


def _probe_defaulted_arguments() -> bool:
    # pluggy 1.7 started passing arguments to an implementation's parameters that have
    # defaults; earlier releases never do. Ask the installed pluggy rather than its version.
    marker, spec = (
        pluggy.HookimplMarker("cidx_jobs_probe"),
        pluggy.HookspecMarker("cidx_jobs_probe"),
    )
    seen: list[object] = []

    class Spec:
        @spec
        def probe(self, a: object, b: object) -> None:
            """A hook with two arguments."""

    class Impl:
        @marker
        def probe(self, a: object, b: object = None) -> None:
            seen.append(b)

    pm = pluggy.PluginManager("cidx_jobs_probe")
    pm.add_hookspecs(Spec)
    pm.register(Impl())
    pm.hook.probe(a=1, b=2)
    return seen == [2]


_PASSES_DEFAULTED: bool | None = None

#: Event hooks whose default observer logs only at DEBUG (test_plugins checks this), so
#: that with no other observer a call can be skipped while DEBUG is off.
_DEBUG_ONLY_DEFAULTS = ("cidx_jobs_job_saved", "cidx_jobs_checkpoint_saved")


class Hooks:
    """The typed facade through which the library calls its hooks.

    Core code calls these methods rather than ``pm.hook.*`` so that every call
    site is typed and observer failures are handled in one place. Policies are
    called through pluggy (``firstresult``, wrappers included); observers and
    backend providers one implementation at a time, in pluggy's order (last
    registered first, ``tryfirst`` before and ``trylast`` after the rest), with
    the arguments their hook specification names.

    :raises PluginError: (from the constructor) ``pm`` was not built by
        :func:`get_plugin_manager`.
    """

    def __init__(self, pm: PluginManager | None = None) -> None:
        if pm is None:
            pm = get_plugin_manager()
        elif not isinstance(pm, PluginManager) or not all(
            hasattr(pm.hook, name) for name in _SPEC_NAMES
        ):
            raise PluginError(
                "Hooks() needs the plugin manager of cidx_jobs.get_plugin_manager() "
                f"(with the cidx_jobs hook specifications), got {pm!r}"
            )
        self.pm = pm
        self._generation = -1
        self._observers: dict[str, tuple[_Observer, ...]] = {}
        self._backends: dict[str, Backend] | None = None
        self._checkpoint_default = True
        #: The event hooks whose only observer is the default one, which logs at DEBUG.
        self._debug_only: frozenset[str] = frozenset()

    def _current(self) -> None:
        if self._generation != self.pm.generation:
            self._observers = {}
            self._backends = None
            self._debug_only = frozenset(
                name
                for name in _DEBUG_ONLY_DEFAULTS
                if [impl.plugin_name for impl in getattr(self.pm.hook, name).get_hookimpls()]
                == [_defaults.DEFAULTS_PLUGIN_NAME]
            )
            impls = self.pm.hook.cidx_jobs_checkpoint_policy.get_hookimpls()
            self._checkpoint_default = (
                len(impls) == 1 and impls[0].function is _defaults.cidx_jobs_checkpoint_policy
            )
            self._generation = self.pm.generation

    # -- providers -----------------------------------------------------------------

    def backends(self) -> dict[str, Backend]:
        """Every registered backend by name.

        :raises PluginError: two plugins registered the same name, or a
            registration is malformed.
        """
        self._current()
        if self._backends is None:
            self._backends = self._collect_backends()
        return dict(self._backends)

    def _collect_backends(self) -> dict[str, Backend]:
        found: dict[str, Backend] = {}
        caller = self.pm.hook.cidx_jobs_register_backends
        # Each plugin is called on its own, so that a clash can name both plugins.
        for impl in reversed(caller.get_hookimpls()):
            plugin_name = impl.plugin_name

            def register(
                name: str,
                factory: BackendFactory,
                *,
                capabilities: Iterable[Capability | str] = (),
                scratch: ScratchFactory | None = None,
                inventory: InventoryFactory | None = None,
                _plugin: str = plugin_name,
            ) -> None:
                if not isinstance(name, str) or not name or not callable(factory):
                    raise PluginError(
                        f"plugin {_plugin!r} called register({name!r}, {factory!r}); "
                        "expected a non-empty name and a callable factory"
                    )
                for label, value in (("scratch", scratch), ("inventory", inventory)):
                    if value is not None and not callable(value):
                        raise PluginError(
                            f"plugin {_plugin!r} registered backend {name!r} with {label}="
                            f"{value!r}; expected a callable or None"
                        )
                if isinstance(capabilities, str):
                    capabilities = (capabilities,)
                declared = Capability.parse_all(
                    capabilities, f"plugin {_plugin!r} (backend {name!r})"
                )
                if name in found:
                    raise PluginError(
                        f"backend {name!r} is registered by both plugin {found[name].plugin!r} "
                        f"and plugin {_plugin!r}; uninstall or block one of them "
                        f"(set {BLOCK_ENV_VAR}={_plugin})"
                    )
                found[name] = Backend(
                    name=name,
                    plugin=_plugin,
                    factory=factory,
                    capabilities=declared,
                    scratch=scratch,
                    inventory=inventory,
                )

            impl.function(register)
        return found

    # -- policies ------------------------------------------------------------------

    def cleanup_policy(self, retention: timedelta) -> CleanupPolicy:
        """The cleanup policy in force.

        :raises PluginError: no plugin returned a policy, or one returned something else.
        """
        policy = self.pm.hook.cidx_jobs_cleanup_policy(retention=retention)
        if not isinstance(policy, CleanupPolicy):
            raise PluginError(
                f"cidx_jobs_cleanup_policy returned {policy!r}; expected a CleanupPolicy "
                f"(is the default plugin {_defaults.DEFAULTS_PLUGIN_NAME!r} blocked?)"
            )
        return policy

    def checkpoint_policy(
        self,
        job_id: str,
        phase: str,
        data: Mapping[str, Any],
        last_written_at: datetime | None,
        now: datetime,
    ) -> bool:
        """Whether the checkpoint policy wants this checkpoint written (default: yes)."""
        answer = self.pm.hook.cidx_jobs_checkpoint_policy(
            job_id=job_id, phase=phase, data=data, last_written_at=last_written_at, now=now
        )
        return answer is not False

    def checkpoint_policy_is_default(self) -> bool:
        """Whether the default policy, which writes every checkpoint, is the only checkpoint
        policy (then :meth:`checkpoint_policy` is always ``True``).

        A flag recomputed after each register and unregister, so a policy
        registered later takes effect at once.
        """
        if self._generation != self.pm.generation:
            self._current()
        return self._checkpoint_default

    def resume_policy(
        self, job: SyncJob, checkpoints: Sequence[Checkpoint], now: datetime, max_age: timedelta
    ) -> Checkpoint | None:
        """The checkpoint ``job`` resumes from, or ``None`` to start over.

        :raises PluginError: a plugin returned something that is not one of ``checkpoints``.
        """
        choice = self.pm.hook.cidx_jobs_resume_policy(
            job=job, checkpoints=checkpoints, now=now, max_age=max_age
        )
        if choice is None or choice is False:
            return None
        if not isinstance(choice, Checkpoint) or choice not in checkpoints:
            raise PluginError(
                f"cidx_jobs_resume_policy returned {choice!r}; expected one of the "
                "job's checkpoints, False or None"
            )
        return choice

    # -- events --------------------------------------------------------------------

    def job_saved(self, job: SyncJob) -> None:
        """Tell the ``cidx_jobs_job_saved`` observers."""
        self._notify("cidx_jobs_job_saved", (job,))

    def status_changed(
        self, job_id: str, status: JobStatus, error_message: str | None, changed_at: datetime
    ) -> None:
        """Tell the ``cidx_jobs_status_changed`` observers."""
        self._notify("cidx_jobs_status_changed", (job_id, status, error_message, changed_at))

    def checkpoint_saved(self, checkpoint: Checkpoint) -> None:
        """Tell the ``cidx_jobs_checkpoint_saved`` observers."""
        self._notify("cidx_jobs_checkpoint_saved", (checkpoint,))

    def checkpoint_skipped(self, job_id: str, phase: str, skipped_at: datetime) -> None:
        """Tell the ``cidx_jobs_checkpoint_skipped`` observers."""
        self._notify("cidx_jobs_checkpoint_skipped", (job_id, phase, skipped_at))

    def cleanup_done(self, report: CleanupReport) -> None:
        """Tell the ``cidx_jobs_cleanup_done`` observers."""
        self._notify("cidx_jobs_cleanup_done", (report,))

    def recovery_done(self, report: RecoveryReport) -> None:
        """Tell the ``cidx_jobs_recovery_done`` observers."""
        self._notify("cidx_jobs_recovery_done", (report,))

    def _observers_of(self, hook_name: str) -> tuple[_Observer, ...]:
        # The observers of an event hook in pluggy's call order, ready to call.
        global _PASSES_DEFAULTED
        self._current()
        found = self._observers.get(hook_name)
        if found is None:
            if _PASSES_DEFAULTED is None:
                _PASSES_DEFAULTED = _probe_defaulted_arguments()
            caller = getattr(self.pm.hook, hook_name)
            names = tuple(caller.spec.argnames)
            observers: list[_Observer] = []
            # pluggy runs implementations last-registered first (tryfirst ones first,
            # trylast ones last): get_hookimpls() lists them in the reverse of that.
            for impl in reversed(caller.get_hookimpls()):
                picks = (
                    None
                    if tuple(impl.argnames) == names
                    else tuple(names.index(name) for name in impl.argnames)
                )
                keywords = (
                    tuple((name, names.index(name)) for name in impl.kwargnames if name in names)
                    if _PASSES_DEFAULTED
                    else ()
                )
                observers.append((impl.function, picks, keywords, impl.plugin_name))
            found = self._observers[hook_name] = tuple(observers)
        return found

    def _notify(self, hook_name: str, args: tuple[Any, ...]) -> None:
        # Each observer is called on its own: one that raises is logged and the
        # others still run; the write they observe has already happened.
        observers = self._observers_of(hook_name)
        # Saves and checkpoints are the hot writes, and their default observer only logs
        # at DEBUG: with nothing else observing them, not calling it saves about a
        # microsecond a call (docs/performance.md). The level is read on every call, so
        # turning DEBUG on takes effect at once.
        if hook_name in self._debug_only and not logger.isEnabledFor(logging.DEBUG):
            return
        for function, picks, keywords, plugin_name in observers:
            try:
                positional = args if picks is None else [args[index] for index in picks]
                if keywords:
                    function(*positional, **{name: args[index] for name, index in keywords})
                else:
                    function(*positional)
            except Exception:
                logger.error(
                    "observer %s of %s raised; the change itself was stored",
                    plugin_name,
                    hook_name,
                    exc_info=sys.exc_info(),
                )
