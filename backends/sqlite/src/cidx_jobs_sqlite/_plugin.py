"""Registers the ``sqlite`` backend through the ``cidx_jobs`` entry point, as any plugin would."""

from __future__ import annotations

from cidx_jobs import BackendConfig, JobPersistence, hookimpl
from cidx_jobs.hookspecs import RegisterBackend


def _factory(config: BackendConfig) -> JobPersistence:
    from ._store import SqliteJobStore

    return SqliteJobStore.from_config(config)


@hookimpl
def cidx_jobs_register_backends(register: RegisterBackend) -> None:
    register("sqlite", _factory)
