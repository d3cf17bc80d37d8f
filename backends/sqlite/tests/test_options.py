"""Options: the URL and mapping forms, each option's validation, and its effect."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cidx_jobs import open_persistence
from cidx_jobs.errors import ConfigError
from cidx_jobs_sqlite import SqliteJobStore, SqliteOptions

from .conftest import OpenStore


def test_a_relative_url_path_is_relative_to_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_persistence("sqlite:///data/rel.db") as store:
        assert isinstance(store, SqliteJobStore)
        assert store.path == tmp_path / "data" / "rel.db"
    assert (tmp_path / "data" / "rel.db").is_file()


def test_an_absolute_url_path_and_missing_folders_are_created(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c" / "jobs.db"
    with open_persistence(f"sqlite:///{target}") as store:  # sqlite:////tmp/... (four slashes)
        assert isinstance(store, SqliteJobStore)
        assert store.path == target
    assert target.is_file()


def test_options_come_from_the_query_string(tmp_path: Path) -> None:
    url = (
        f"sqlite:///{tmp_path}/jobs.db?pool_size=8&busy_timeout_ms=1500&synchronous=full"
        "&recover_corrupt=false&check_on_open=off&max_size_mb=64&max_metadata_bytes=4096"
    )
    with open_persistence(url) as store:
        assert isinstance(store, SqliteJobStore)
        assert store.options == SqliteOptions(
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
        assert isinstance(store, SqliteJobStore)
        assert store.options.pool_size == 6
        assert store.options.busy_timeout_ms == 5000


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
        ("sqlite://host/jobs.db", "netloc"),
        ("sqlite:///:memory:", "path"),
        ({"backend": "sqlite"}, "path"),
        ({"backend": "sqlite", "path": 5}, "path"),
    ],
)
def test_a_missing_or_unusable_path_is_a_config_error(config: object, option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_persistence(config)  # type: ignore[arg-type]
    assert caught.value.option == option


def test_a_folder_is_not_a_database_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        SqliteOptions.parse(str(tmp_path))
    assert caught.value.option == "path"
    assert "folder" in str(caught.value)


def test_the_pragmas_read_back(open_store: OpenStore) -> None:
    store = open_store(synchronous="full", busy_timeout_ms=1234, max_size_mb=2)
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


def test_normal_synchronous_is_the_default(store: SqliteJobStore) -> None:
    conn = store._pool.acquire()
    try:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    finally:
        store._pool.release(conn)
