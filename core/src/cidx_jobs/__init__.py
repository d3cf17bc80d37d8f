"""cidx-jobs: durable job state for the CIDX server.

Open a store with :func:`open_persistence` and use the :class:`JobPersistence`
facade; backends are plugins (``sqlite``, ``memory``, and third parties'), and
what a backend author needs is in :mod:`cidx_jobs.backend`.
"""

from __future__ import annotations

from . import backend, errors, serialization
from ._async import AsyncJobPersistence, open_async_persistence
from ._config import URL_ENV_VAR, StoreSettings, parse_config
from ._lease_runner import LeaseRunner
from ._models import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    LEASED_STATUSES,
    TERMINAL_STATUSES,
    Checkpoint,
    CleanupPolicy,
    CleanupReport,
    JobFilter,
    JobPage,
    JobStatus,
    Lease,
    RecoveryReport,
    ResumePoint,
    SyncJob,
    utcnow,
)
from ._open import find_backend, open_persistence
from ._persistence import JobPersistence
from ._plugins import BLOCK_ENV_VAR, ENTRY_POINT_GROUP, Hooks, PluginManager, get_plugin_manager
from ._scheduler import AsyncCleanupScheduler, CleanupScheduler
from .hookspecs import hookimpl

__all__ = [
    "ACTIVE_STATUSES",
    "BLOCK_ENV_VAR",
    "ENTRY_POINT_GROUP",
    "FINISHED_STATUSES",
    "LEASED_STATUSES",
    "TERMINAL_STATUSES",
    "URL_ENV_VAR",
    "AsyncCleanupScheduler",
    "AsyncJobPersistence",
    "Checkpoint",
    "CleanupPolicy",
    "CleanupReport",
    "CleanupScheduler",
    "Hooks",
    "JobFilter",
    "JobPage",
    "JobPersistence",
    "JobStatus",
    "Lease",
    "LeaseRunner",
    "PluginManager",
    "RecoveryReport",
    "ResumePoint",
    "StoreSettings",
    "SyncJob",
    "backend",
    "errors",
    "find_backend",
    "get_plugin_manager",
    "hookimpl",
    "open_async_persistence",
    "open_persistence",
    "parse_config",
    "serialization",
    "utcnow",
]

__version__ = "0.2.0"
