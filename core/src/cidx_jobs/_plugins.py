"""The plugin manager, the backend registry and the typed facade over the hooks."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import pluggy

from . import _defaults, hookspecs
from ._models import Checkpoint, CleanupPolicy, CleanupReport, JobStatus, SyncJob
from .errors import PluginError

if TYPE_CHECKING:
    from ._config import BackendConfig
    from ._persistence import JobPersistence

logger = logging.getLogger("cidx_jobs")

ENTRY_POINT_GROUP = "cidx_jobs"
#: Comma-separated plugin names (entry-point names) that are not loaded.
BLOCK_ENV_VAR = "CIDX_JOBS_BLOCK_PLUGINS"

BackendFactory = Callable[["BackendConfig"], "JobPersistence"]


def get_plugin_manager(
    *, load_entrypoints: bool = True, blocked: tuple[str, ...] | None = None
) -> pluggy.PluginManager:
    """Build a plugin manager with the hookspecs, the defaults and the installed plugins.

    Plugins come from the ``cidx_jobs`` entry-point group; each is registered
    under its entry-point name. Names in ``blocked`` (by default, those in the
    ``CIDX_JOBS_BLOCK_PLUGINS`` environment variable, comma-separated) are not
    loaded; blocking ``cidx_jobs.defaults`` removes the default policies, so
    another plugin must provide them.

    :raises PluginError: a plugin fails to import, or implements a hook that
        does not exist (usually a misspelled ``cidx_jobs_*`` name).
    """
    if blocked is None:
        blocked = tuple(
            n.strip() for n in os.environ.get(BLOCK_ENV_VAR, "").split(",") if n.strip()
        )
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    pm.register(_defaults, name=_defaults.DEFAULTS_PLUGIN_NAME)
    if load_entrypoints:
        _load_entrypoints(pm)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as error:
        raise PluginError(f"a cidx_jobs plugin is invalid: {error}") from error
    return pm


def _load_entrypoints(pm: pluggy.PluginManager) -> None:
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
        except (pluggy.PluginValidationError, ValueError) as error:
            raise PluginError(
                f"the cidx_jobs plugin {name!r} ({entry_point.value}) is invalid: {error}; "
                f"fix or uninstall it, or block it with {BLOCK_ENV_VAR}={name}"
            ) from error


#: The arguments of each event hook in the order of its specification: the facade passes
#: them positionally to an observer that takes all of them, by name to one that takes some.
EVENT_ARGS: dict[str, tuple[str, ...]] = {
    "cidx_jobs_job_saved": ("job",),
    "cidx_jobs_status_changed": ("job_id", "status", "error_message", "changed_at"),
    "cidx_jobs_checkpoint_saved": ("checkpoint",),
    "cidx_jobs_cleanup_done": ("report",),
}


class Hooks:
    """The typed facade through which the library calls its hooks.

    Core code calls these methods rather than ``pm.hook.*`` so that every call
    site is typed and observer failures are handled in one place.
    """

    def __init__(self, pm: pluggy.PluginManager | None = None) -> None:
        self.pm = pm if pm is not None else get_plugin_manager()

    # -- providers -----------------------------------------------------------------

    def backends(self) -> dict[str, BackendFactory]:
        """Every registered backend by name.

        :raises PluginError: two plugins registered the same name, or a
            registration is malformed.
        """
        found: dict[str, tuple[str, BackendFactory]] = {}
        caller = self.pm.hook.cidx_jobs_register_backends
        # Call each plugin on its own so that a clash can name both plugins,
        # whatever order they were loaded in.
        for impl in caller.get_hookimpls():
            plugin_name = impl.plugin_name

            def register(name: str, factory: BackendFactory, _plugin: str = plugin_name) -> None:
                if not isinstance(name, str) or not name or not callable(factory):
                    raise PluginError(
                        f"plugin {_plugin!r} called register({name!r}, {factory!r}); "
                        "expected a non-empty name and a callable factory"
                    )
                if name in found:
                    raise PluginError(
                        f"backend {name!r} is registered by both plugin {found[name][0]!r} "
                        f"and plugin {_plugin!r}; uninstall or block one of them "
                        f"(set {BLOCK_ENV_VAR}={_plugin})"
                    )
                found[name] = (_plugin, factory)

            impl.function(register)
        return {name: factory for name, (_, factory) in found.items()}

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

    def checkpoint_should_write(
        self,
        job_id: str,
        phase: str,
        data: Mapping[str, Any],
        last_written_at: datetime | None,
        now: datetime,
    ) -> bool:
        """Whether the checkpoint policy wants this checkpoint written (default: yes)."""
        answer = self.pm.hook.cidx_jobs_checkpoint_should_write(
            job_id=job_id, phase=phase, data=data, last_written_at=last_written_at, now=now
        )
        return answer is not False

    def checkpoint_policy_is_default(self) -> bool:
        """Whether the default policy, which writes every checkpoint, is the only checkpoint
        policy (then :meth:`checkpoint_should_write` is always ``True``).

        Checked on every call, so a policy registered later takes effect at once.
        """
        impls = self.pm.hook.cidx_jobs_checkpoint_should_write.get_hookimpls()
        return len(impls) == 1 and impls[0].function is _defaults.cidx_jobs_checkpoint_should_write

    def resume_checkpoint(
        self, job: SyncJob, checkpoints: Sequence[Checkpoint], now: datetime, max_age: timedelta
    ) -> Checkpoint | None:
        """The checkpoint ``job`` resumes from, or ``None`` to start over.

        :raises PluginError: a plugin returned something that is not one of ``checkpoints``.
        """
        choice = self.pm.hook.cidx_jobs_resume_checkpoint(
            job=job, checkpoints=checkpoints, now=now, max_age=max_age
        )
        if choice is None or choice is False:
            return None
        if not isinstance(choice, Checkpoint) or choice not in checkpoints:
            raise PluginError(
                f"cidx_jobs_resume_checkpoint returned {choice!r}; expected one of the "
                "job's checkpoints, False or None"
            )
        return choice

    # -- events --------------------------------------------------------------------

    def job_saved(self, job: SyncJob) -> None:
        self._notify("cidx_jobs_job_saved", (job,))

    def status_changed(
        self, job_id: str, status: JobStatus, error_message: str | None, changed_at: datetime
    ) -> None:
        self._notify("cidx_jobs_status_changed", (job_id, status, error_message, changed_at))

    def checkpoint_saved(self, checkpoint: Checkpoint) -> None:
        self._notify("cidx_jobs_checkpoint_saved", (checkpoint,))

    def cleanup_done(self, report: CleanupReport) -> None:
        self._notify("cidx_jobs_cleanup_done", (report,))

    def _notify(self, hook_name: str, args: tuple[Any, ...]) -> None:
        # Each observer is called on its own: one that raises is logged and the
        # others still run; the write they observe has already happened.
        names = EVENT_ARGS[hook_name]
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                if impl.argnames == names:
                    impl.function(*args)
                else:  # the observer takes some of the arguments
                    impl.function(*(args[names.index(name)] for name in impl.argnames))
            except Exception:
                logger.error(
                    "observer %s of %s raised; the change itself was stored",
                    impl.plugin_name,
                    hook_name,
                    exc_info=sys.exc_info(),
                )
