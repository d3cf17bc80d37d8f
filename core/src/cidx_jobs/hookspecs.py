"""The hooks of cidx-jobs.

Three kinds of hook, all named ``cidx_jobs_*``:

* **Providers** add backends: :func:`cidx_jobs_register_backends`.
* **Policies** decide, over immutable values and an explicit ``now`` (never a
  database handle, so they work with every backend). They are ``firstresult``
  hooks: the first implementation that returns something other than ``None``
  wins, and the defaults are registered ``trylast`` so any plugin overrides them.
* **Events** observe a change after it happened (after the commit, when inside
  :meth:`~cidx_jobs.JobPersistence.transaction`). An observer that raises is
  logged on the ``cidx_jobs`` logger; the write it observes is never lost.

An implementation may accept fewer arguments than the spec names; specs can
grow new arguments without breaking plugins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import pluggy

if TYPE_CHECKING:
    from ._config import BackendConfig
    from ._models import Checkpoint, CleanupPolicy, CleanupReport, JobStatus, SyncJob
    from ._persistence import JobPersistence

PROJECT_NAME = "cidx_jobs"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

#: The callable a backend provider is handed: ``register(name, factory)``.
RegisterBackend = Callable[[str, "Callable[[BackendConfig], JobPersistence]"], None]


@hookspec
def cidx_jobs_register_backends(register: RegisterBackend) -> None:
    """Register the backends this plugin provides.

    Call ``register(name, factory)`` once per backend. ``name`` is the URL
    scheme that selects it (``sqlite`` for ``sqlite:///jobs.db``) and
    ``factory(config)`` receives a :class:`~cidx_jobs.BackendConfig` and returns
    a :class:`~cidx_jobs.JobPersistence`.

    :param register: the registration callback.
    :raises PluginError: (from ``register``) another plugin registered ``name`` already.
    """


@hookspec(firstresult=True)
def cidx_jobs_cleanup_policy(retention: timedelta) -> CleanupPolicy | None:
    """Decide which jobs expire.

    Return a :class:`~cidx_jobs.CleanupPolicy`, or ``None`` to leave the
    decision to the next plugin. The default expires every terminal and
    interrupted job ``retention`` after it finished and never an active one.

    :param retention: the retention the store was configured with (the
        ``retention_days`` option, 7 days by default) or that the caller of
        :meth:`~cidx_jobs.JobPersistence.run_cleanup` passed.
    """


@hookspec(firstresult=True)
def cidx_jobs_checkpoint_should_write(
    job_id: str,
    phase: str,
    data: Mapping[str, Any],
    last_written_at: datetime | None,
    now: datetime,
) -> bool | None:
    """Decide whether a checkpoint is written now, or skipped (throttling).

    Return ``True`` to write, ``False`` to skip, ``None`` to abstain. The
    default always writes. A skipped checkpoint leaves the previous one of the
    phase in place and ``save_checkpoint`` returns ``True`` if the job exists.

    :param job_id: the job the checkpoint belongs to.
    :param phase: the phase it records.
    :param data: the checkpoint's data (read-only).
    :param last_written_at: when this store instance last wrote a checkpoint
        for this job and phase, or ``None`` if it has not (since it opened, or since
        a policy other than the default was registered: the default needs no memory).
    :param now: the current time, UTC.
    """


@hookspec(firstresult=True)
def cidx_jobs_resume_checkpoint(
    job: SyncJob, checkpoints: Sequence[Checkpoint], now: datetime, max_age: timedelta
) -> Checkpoint | Literal[False] | None:
    """Choose the checkpoint an interrupted job resumes from.

    Return one of ``checkpoints``, ``False`` to start the job over, or
    ``None`` to leave the decision to the next plugin. The default picks the
    newest checkpoint if it is younger than ``max_age``, else starts over.

    :param job: the job being resumed.
    :param checkpoints: its checkpoints, oldest first (one per phase).
    :param now: the current time, UTC.
    :param max_age: the configured maximum age (option
        ``checkpoint_max_age_hours``, 24 hours by default).
    """


@hookspec
def cidx_jobs_job_saved(job: SyncJob) -> None:
    """Observe a new job after it was stored.

    :param job: the job as stored.
    """


@hookspec
def cidx_jobs_status_changed(
    job_id: str, status: JobStatus, error_message: str | None, changed_at: datetime
) -> None:
    """Observe a status change after it was stored.

    :param job_id: the job whose status changed.
    :param status: the new status.
    :param error_message: the error message passed with the change, if any.
    :param changed_at: when the change was made, UTC.
    """


@hookspec
def cidx_jobs_checkpoint_saved(checkpoint: Checkpoint) -> None:
    """Observe a checkpoint after it was stored (skipped checkpoints are not reported).

    :param checkpoint: the checkpoint as stored.
    """


@hookspec
def cidx_jobs_cleanup_done(report: CleanupReport) -> None:
    """Observe the result of a cleanup (also of a dry run, with ``report.dry_run`` set).

    :param report: what was deleted.
    """


__all__ = [
    "PROJECT_NAME",
    "RegisterBackend",
    "cidx_jobs_checkpoint_saved",
    "cidx_jobs_checkpoint_should_write",
    "cidx_jobs_cleanup_done",
    "cidx_jobs_cleanup_policy",
    "cidx_jobs_job_saved",
    "cidx_jobs_register_backends",
    "cidx_jobs_resume_checkpoint",
    "cidx_jobs_status_changed",
    "hookimpl",
    "hookspec",
]
