"""The hooks of cidx-jobs.

Three kinds of hook, all named ``cidx_jobs_*``:

* **Providers** add backends: :func:`cidx_jobs_register_backends`.
* **Policies** decide, over immutable values and an explicit ``now`` (never a
  database handle, so they work with every backend). They are ``firstresult``
  hooks: the first implementation that returns something other than ``None``
  wins, and the defaults are registered ``trylast`` so any plugin overrides them.
* **Events** observe a change after it happened (after the commit, when inside
  :meth:`~cidx_jobs.JobPersistence.transaction`). Observers run in pluggy's
  order (last registered first; ``tryfirst`` first, ``trylast`` last), each on
  its own: one that raises is logged on the ``cidx_jobs`` logger, the others
  still run, and the write it observes is never lost. Event hooks (and the
  provider hook) cannot be implemented as wrappers: registering one raises
  :class:`~cidx_jobs.errors.PluginError`.

Policy hooks are named ``cidx_jobs_<topic>_policy``; event hooks
``cidx_jobs_<thing>_<past participle>``.

An implementation may accept fewer arguments than the spec names; specs can
grow new arguments without breaking plugins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

import pluggy

if TYPE_CHECKING:
    from ._models import (
        Checkpoint,
        CleanupPolicy,
        CleanupReport,
        JobStatus,
        RecoveryReport,
        SyncJob,
    )
    from .backend import RegisterBackend

#: pluggy's project name for the hooks: every hook is named ``cidx_jobs_*``.
PROJECT_NAME = "cidx_jobs"

#: Marks a function of this module as a hook specification (for cidx-jobs itself).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Marks a plugin's function as an implementation of a ``cidx_jobs_*`` hook:
#: ``@hookimpl``, or ``@hookimpl(tryfirst=True)``, ``trylast``, ``wrapper`` (policy hooks only).
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def cidx_jobs_register_backends(register: RegisterBackend) -> None:
    """Register the backends this plugin provides.

    Call ``register(name, factory, capabilities=..., scratch=...)`` once per
    backend. ``name`` is the URL scheme that selects it (``sqlite`` for
    ``sqlite:///jobs.db``); ``factory(config)`` receives a
    :class:`~cidx_jobs.backend.BackendConfig` and returns a
    :class:`~cidx_jobs.backend.Storage`; ``capabilities`` lists the
    :class:`~cidx_jobs.backend.Capability` flags the backend has; ``scratch``
    makes an isolated storage for one test (see
    :data:`~cidx_jobs.backend.ScratchFactory`). This hook cannot be
    implemented as a wrapper.

    :param register: the registration callback (:class:`~cidx_jobs.backend.RegisterBackend`).
    :raises PluginError: (from ``register``) another plugin registered ``name``
        already, or an argument is malformed.
    """


@hookspec(firstresult=True)
def cidx_jobs_cleanup_policy(retention: timedelta) -> CleanupPolicy | None:
    """Decide which jobs expire.

    Return a :class:`~cidx_jobs.CleanupPolicy`, or ``None`` to leave the
    decision to the next plugin. The default expires every terminal and
    interrupted job ``retention`` after it stopped (its ``completed_at``: when it
    finished, or when it was interrupted) and never an active one.

    :param retention: the retention the store was configured with (the
        ``retention_days`` option, 7 days by default) or that the caller of
        :meth:`~cidx_jobs.JobPersistence.run_cleanup` passed.
    """


@hookspec(firstresult=True)
def cidx_jobs_checkpoint_policy(
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
def cidx_jobs_resume_policy(
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
    """Observe a checkpoint after it was stored (skipped checkpoints are reported to
    :func:`cidx_jobs_checkpoint_skipped` instead).

    :param checkpoint: the checkpoint as stored.
    """


@hookspec
def cidx_jobs_checkpoint_skipped(job_id: str, phase: str, skipped_at: datetime) -> None:
    """Observe a checkpoint that the checkpoint policy skipped (throttling); the previous
    checkpoint of the phase stays. Not called for a job that does not exist.

    :param job_id: the job the checkpoint belongs to.
    :param phase: the phase it would have recorded.
    :param skipped_at: when it was skipped, UTC.
    """


@hookspec
def cidx_jobs_recovery_done(report: RecoveryReport) -> None:
    """Observe the result of a recovery sweep (also one that took no job).

    :param report: the jobs taken over: interrupted ones with their resume point, and the
        pending or queued ones to re-queue.
    """


@hookspec
def cidx_jobs_cleanup_done(report: CleanupReport) -> None:
    """Observe the result of a cleanup (also of a dry run, with ``report.dry_run`` set).

    :param report: what was deleted.
    """


__all__ = [
    "PROJECT_NAME",
    "cidx_jobs_checkpoint_policy",
    "cidx_jobs_checkpoint_saved",
    "cidx_jobs_checkpoint_skipped",
    "cidx_jobs_cleanup_done",
    "cidx_jobs_cleanup_policy",
    "cidx_jobs_job_saved",
    "cidx_jobs_recovery_done",
    "cidx_jobs_register_backends",
    "cidx_jobs_resume_policy",
    "cidx_jobs_status_changed",
    "hookimpl",
    "hookspec",
]
