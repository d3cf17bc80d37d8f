"""Options: the URL and mapping forms, each option's validation, and its effect."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cidx_jobs import JobPersistence, open_persistence
from cidx_jobs.errors import ConfigError, StorageBusyError
from cidx_jobs_sqlite import SqliteOptions, SqliteStorage

from .conftest import OpenStore, storage_of


def test_a_relative_url_path_is_relative_to_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_persistence("sqlite:///data/rel.db") as store:
        assert storage_of(store).path == tmp_path / "data" / "rel.db"
    assert (tmp_path / "data" / "rel.db").is_file()


def test_an_absolute_url_path_and_missing_folders_are_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c" / "jobs.db"
    with open_persistence(f"sqlite:///{target}") as store:  # sqlite:////tmp/... (four slashes)
        assert storage_of(store).path == target
    assert target.is_file()


def test_options_come_from_the_query_string(tmp_path: Path) -> None:
    url = (
        f"sqlite:///{tmp_path}/jobs.db?pool_size=8&busy_timeout_ms=1500&synchronous=full"
        "&recover_corrupt=false&check_on_open=off&max_size_mb=64&max_metadata_bytes=4096"
    )
    with open_persistence(url) as store:
        assert storage_of(store).options == SqliteOptions(
            path=tmp_path / "jobs.db",
            pool_size=8,
            busy_timeout_ms=1500,
            synchronous="full",
            recover_corrupt=False,
            check_on_open="off",
            max_size_mb=64,
        )
        assert store.settings.max_metadata_bytes == 4096


def test_options_come_from_a_mapping(tmp_path: Path) -> None:
    config = {"backend": "sqlite", "path": str(tmp_path / "jobs.db"), "pool_size": 6}
    with open_persistence(config) as store:
        assert isinstance(store.storage, SqliteStorage)
        assert store.storage.options.pool_size == 6
        assert store.storage.options.busy_timeout_ms == 5000


@pytest.mark.parametrize(("options", "size"), [({}, 10), ({"pool_size": 5}, 5)])
def test_max_concurrency_is_the_pool_size(
    open_store: OpenStore, options: dict[str, object], size: int
) -> None:
    # AsyncJobPersistence sizes its threads by it: as many calls as it says hold a
    # connection at once, and one more would wait for one.
    storage = storage_of(open_store(**options))
    assert storage.max_concurrency() == size
    pool = storage._pool
    held = [pool.acquire() for _ in range(size)]
    try:
        with pytest.raises(StorageBusyError):
            pool.acquire(deadline=time.monotonic())
    finally:
        for conn in held:
            pool.release(conn)


def test_defaults() -> None:
    options = SqliteOptions.parse("jobs.db")
    assert options.path == Path(os.getcwd()) / "jobs.db"
    assert (options.pool_size, options.busy_timeout_ms, options.synchronous) == (10, 5000, "normal")
    assert options.recover_corrupt is True
    assert options.check_on_open == "quick"
    assert options.max_size_mb == 0


@pytest.mark.parametrize(
    ("query", "option"),
    [
        ("pool_size=4", "pool_size"),
        ("pool_size=11", "pool_size"),
        ("pool_size=many", "pool_size"),
        ("busy_timeout_ms=-1", "busy_timeout_ms"),
        ("busy_timeout_ms=1.5", "busy_timeout_ms"),
        ("synchronous=sometimes", "synchronous"),
        ("recover_corrupt=maybe", "recover_corrupt"),
        ("check_on_open=thorough", "check_on_open"),
        ("max_size_mb=-5", "max_size_mb"),
        ("pool_sise=5", "pool_sise"),
    ],
)
def test_a_bad_option_is_a_config_error_naming_it(tmp_path: Path, query: str, option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_persistence(f"sqlite:///{tmp_path}/jobs.db?{query}")
    assert caught.value.option == option
    assert option in str(caught.value)
    assert not (tmp_path / "jobs.db").exists()


@pytest.mark.parametrize(
    ("config", "option"),
    [
        ("sqlite://", "path"),
        ("sqlite://host/jobs.db", "host"),
        ("sqlite://localhost:5/jobs.db", "host"),
        ({"backend": "sqlite", "path": "jobs.db", "port": 5}, "port"),
        ("sqlite://alice@/jobs.db", "username"),
        ({"backend": "sqlite", "path": "jobs.db", "password": "secret"}, "password"),
        ("sqlite:///:memory:", "path"),
        ({"backend": "sqlite"}, "path"),
        ({"backend": "sqlite", "path": 5}, "path"),
    ],
)
def test_a_missing_or_unusable_path_is_a_config_error(config: object, option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_persistence(config)  # type: ignore[arg-type]
    assert caught.value.option == option


def test_a_host_is_refused_with_the_way_to_write_a_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        open_persistence("sqlite://db.example.com/jobs.db")
    assert caught.value.option == "host"
    assert "sqlite:////absolute/path.db" in str(caught.value)


def test_a_path_in_the_url_and_in_the_query_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        open_persistence(f"sqlite:///{tmp_path}/a.db?path={tmp_path}/b.db")
    assert caught.value.option == "path"
    assert not (tmp_path / "a.db").exists()
    assert not (tmp_path / "b.db").exists()


def test_integer_options_take_ascii_digits_only(tmp_path: Path) -> None:
    for value in ("1_000", "\uff18", "\u0668"):  # an underscore, a full-width and an Arabic-Indic 8
        with pytest.raises(ConfigError) as caught:
            open_persistence(f"sqlite:///{tmp_path}/jobs.db?pool_size={value}")
        assert caught.value.option == "pool_size"


def test_a_folder_is_not_a_database_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        SqliteOptions.parse(str(tmp_path))
    assert caught.value.option == "path"
    assert "folder" in str(caught.value)


def test_the_pragmas_read_back(open_store: OpenStore) -> None:
    store = storage_of(open_store(synchronous="full", busy_timeout_ms=1234, max_size_mb=2))
    conn = store._pool.acquire()
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        assert conn.execute("PRAGMA max_page_count").fetchone()[0] == 2 * 1024 * 1024 // page_size
        assert conn.execute("PRAGMA secure_delete").fetchone()[0] == 2  # FAST
    finally:
        store._pool.release(conn)


def test_normal_synchronous_is_the_default(store: JobPersistence) -> None:
    pool = storage_of(store)._pool
    conn = pool.acquire()
    try:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    finally:
        pool.release(conn)
