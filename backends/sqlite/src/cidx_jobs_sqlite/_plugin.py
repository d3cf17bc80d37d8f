"""Registers the ``sqlite`` backend through the ``cidx_jobs`` entry point, as any plugin would."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

from cidx_jobs import hookimpl
from cidx_jobs.backend import BackendConfig, Capability, RegisterBackend, Storage, StoreConfig

#: The placeholder of a scratch configuration that the fresh folder replaces.
TMP = "{tmp}"
#: The database file of a scratch storage, in its fresh folder.
SCRATCH_FILE = "jobs.db"


def _factory(config: BackendConfig) -> Storage:
    from ._storage import SqliteStorage

    return SqliteStorage.from_config(config)


def scratch_config(base: StoreConfig | None, folder: Path) -> StoreConfig:
    """The configuration of a fresh database in ``folder``, after ``base``.

    ``None`` gives the defaults; a URL with ``{tmp}`` gets ``folder`` in its place; any
    other URL or mapping keeps its options, with the database moved into ``folder``.
    """
    database = folder / SCRATCH_FILE
    if base is None:
        return "sqlite:///" + quote(str(database))
    if isinstance(base, str):
        if TMP in base:
            return base.replace(TMP, quote(str(folder)))
        parts = urlsplit(base)
        query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True)]
        kept = urlencode([(key, value) for key, value in query if key != "path"])
        return f"{parts.scheme}:///{quote(str(database))}{'?' + kept if kept else ''}"
    config = dict(base)
    path = config.get("path")
    if isinstance(path, str) and TMP in path:
        config["path"] = path.replace(TMP, str(folder))
    else:
        config["path"] = str(database)
    return config


@contextmanager
def _scratch(base: StoreConfig | None, workdir: Path) -> Iterator[StoreConfig]:
    # A folder of its own per test: the database and its -wal/-shm go with it.
    folder = Path(tempfile.mkdtemp(prefix="cidx-sqlite-", dir=workdir))
    try:
        yield scratch_config(base, folder)
    finally:
        _remove_tree(folder)


def _remove_tree(folder: Path) -> None:
    """Remove ``folder`` and everything in it, also what a test made read-only."""
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        return
    except OSError:
        for root, dirs, _ in os.walk(folder):
            for name in dirs:
                os.chmod(os.path.join(root, name), stat.S_IRWXU)
        os.chmod(folder, stat.S_IRWXU)
        shutil.rmtree(folder)


@hookimpl
def cidx_jobs_register_backends(register: RegisterBackend) -> None:
    register(
        "sqlite",
        _factory,
        capabilities=[
            Capability.PERSISTENT,
            Capability.CONCURRENT_THREADS,
            Capability.MULTI_PROCESS,
            Capability.FAULT_INJECTION,
        ],
        scratch=_scratch,
    )
