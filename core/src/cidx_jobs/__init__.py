"""cidx-jobs: durable job state for the CIDX server.

Open a store with :func:`open_persistence` and use the :class:`JobPersistence`
interface; backends are plugins (``sqlite``, ``memory``, and third parties').
"""

from __future__ import annotations

from . import errors, serialization
from ._config import (
    URL_ENV_VAR,
    BackendConfig,
    Options,
    StoreSettings,
    open_persistence,
    parse_config,
)
from ._models import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    TERMINAL_STATUSES,
    Checkpoint,
    CleanupPolicy,
    CleanupReport,
    JobFilter,
    JobPage,
    JobStatus,
    RecoveryReport,
    ResumePoint,
    SyncJob,
    utcnow,
)
from ._persistence import JobPersistence, StatusChange
from ._plugins import BLOCK_ENV_VAR, ENTRY_POINT_GROUP, BackendFactory, Hooks, get_plugin_manager
from ._scheduler import AsyncCleanupScheduler, CleanupScheduler
from .hookspecs import hookimpl

__all__ = [
    "ACTIVE_STATUSES",
    "BLOCK_ENV_VAR",
    "ENTRY_POINT_GROUP",
    "FINISHED_STATUSES",
    "TERMINAL_STATUSES",
    "URL_ENV_VAR",
    "AsyncCleanupScheduler",
    "BackendConfig",
    "BackendFactory",
    "Checkpoint",
    "CleanupPolicy",
    "CleanupReport",
    "CleanupScheduler",
    "Hooks",
    "JobFilter",
    "JobPage",
    "JobPersistence",
    "JobStatus",
    "Options",
    "RecoveryReport",
    "ResumePoint",
    "StatusChange",
    "StoreSettings",
    "SyncJob",
    "errors",
    "get_plugin_manager",
    "hookimpl",
    "open_persistence",
    "parse_config",
    "serialization",
    "utcnow",
]

__version__ = "0.1.0"
