"""Registers the ``memory`` backend, exactly as a third-party plugin would."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cidx_jobs import hookimpl
from cidx_jobs.backend import BackendConfig, Capability, RegisterBackend, Storage, StoreConfig


def _factory(config: BackendConfig) -> Storage:
    from ._store import MemoryStorage

    return MemoryStorage.from_config(config)


@contextmanager
def _scratch(base: StoreConfig | None, workdir: Path) -> Iterator[StoreConfig]:
    # Every memory:// store is a storage of its own, gone when it closes.
    yield base if base is not None else "memory://"


@hookimpl
def cidx_jobs_register_backends(register: RegisterBackend) -> None:
    # Thread-safe, but nothing survives the process and no other process can see it.
    register("memory", _factory, capabilities=[Capability.CONCURRENT_THREADS], scratch=_scratch)
