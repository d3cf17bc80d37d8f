"""The registration: the capabilities the backend declares, and its scratch factory."""

from __future__ import annotations

from pathlib import Path

import pytest

from cidx_jobs import Hooks, JobPersistence, open_persistence
from cidx_jobs.backend import Capability, ScratchFactory, StoreConfig
from cidx_jobs_sqlite import SqliteStorage

from .conftest import make_job, storage_of


@pytest.fixture
def backend_scratch() -> ScratchFactory:
    backend = Hooks().backends()["sqlite"]
    assert backend.scratch is not None
    return backend.scratch


def test_the_plugin_declares_what_the_backend_does() -> None:
    backend = Hooks().backends()["sqlite"]
    assert backend.capabilities == {
        Capability.PERSISTENT,
        Capability.CONCURRENT_THREADS,
        Capability.MULTI_PROCESS,
        Capability.FAULT_INJECTION,
    }
    assert backend.plugin == "sqlite"


def test_open_persistence_builds_the_facade_over_an_sqlite_storage(tmp_path: Path) -> None:
    with open_persistence(f"sqlite:///{tmp_path}/jobs.db") as store:
        assert isinstance(store, JobPersistence)
        assert isinstance(store.storage, SqliteStorage)
        assert repr(store) == f"<JobPersistence <SqliteStorage {tmp_path}/jobs.db>>"
    assert repr(store.storage).endswith(" closed>")


def _use(config: StoreConfig) -> Path:
    """Open the scratch storage, write to it, and return its file."""
    with open_persistence(config) as store:
        store.save_job(make_job("j1"))
        path = storage_of(store).path
    assert path.is_file()
    return path


@pytest.mark.parametrize(
    "base",
    [
        None,
        "sqlite://",
        "sqlite:///{tmp}/other.db",
        "sqlite:///somewhere/else/jobs.db?pool_size=6",
        {"backend": "sqlite", "path": "/nonexistent/jobs.db", "pool_size": 6},
    ],
)
def test_a_scratch_storage_is_fresh_private_and_leaves_nothing(
    backend_scratch: ScratchFactory, tmp_path: Path, base: StoreConfig | None
) -> None:
    workdir = tmp_path / "work"
    workdir.mkdir()
    scratch = backend_scratch
    with scratch(base, workdir) as first, scratch(base, workdir) as second:
        one, two = _use(first), _use(second)
        assert one.parent.parent == workdir
        assert two.parent.parent == workdir
        assert one.parent != two.parent  # each its own folder
        with open_persistence(second) as store:
            assert store.count_jobs() == 1  # its own job only, nothing of the other
    assert list(workdir.iterdir()) == []
    assert not (tmp_path / "somewhere").exists()


def test_a_scratch_url_keeps_its_options(backend_scratch: ScratchFactory, tmp_path: Path) -> None:
    for base in (
        "sqlite:///{tmp}/jobs.db?pool_size=6&synchronous=full",
        "sqlite:///elsewhere.db?pool_size=6&synchronous=full",
        {"backend": "sqlite", "path": "elsewhere.db", "pool_size": 6, "synchronous": "full"},
    ):
        with backend_scratch(base, tmp_path) as config:
            with open_persistence(config) as store:
                options = storage_of(store).options
                assert (options.pool_size, options.synchronous) == (6, "full")
                assert options.path.parent.parent == tmp_path
    assert list(tmp_path.iterdir()) == []


def test_a_scratch_folder_is_removed_even_if_a_test_locked_it(
    backend_scratch: ScratchFactory, tmp_path: Path
) -> None:
    with backend_scratch(None, tmp_path) as config:
        path = _use(config)
        (path.parent / "sub").mkdir()
        (path.parent / "sub" / "file").write_text("x")
        (path.parent / "sub").chmod(0o500)
        path.parent.chmod(0o500)
    assert list(tmp_path.iterdir()) == []
