"""Registers the ``memory`` backend, exactly as a third-party plugin would."""

from __future__ import annotations

from cidx_jobs import BackendConfig, JobPersistence, hookimpl
from cidx_jobs.hookspecs import RegisterBackend


def _factory(config: BackendConfig) -> JobPersistence:
    from ._store import MemoryJobStore

    return MemoryJobStore.from_config(config)


@hookimpl
def cidx_jobs_register_backends(register: RegisterBackend) -> None:
    register("memory", _factory)
