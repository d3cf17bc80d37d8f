"""URLs, mappings and options: every problem is a ConfigError naming the option."""

from __future__ import annotations

from datetime import timedelta

import pytest

from cidx_jobs import StoreSettings, SyncJob, open_persistence, parse_config
from cidx_jobs._config import mask_password
from cidx_jobs.backend import BackendConfig, Options
from cidx_jobs.errors import BackendNotFoundError, ConfigError


@pytest.mark.parametrize(
    ("url", "backend", "options"),
    [
        ("memory://", "memory", {}),
        ("sqlite:///jobs.db", "sqlite", {"path": "jobs.db"}),
        ("sqlite:///var/lib/cidx/jobs.db", "sqlite", {"path": "var/lib/cidx/jobs.db"}),
        ("sqlite:////var/lib/cidx/jobs.db", "sqlite", {"path": "/var/lib/cidx/jobs.db"}),
        (
            "SQLite:///j.db?pool_size=8&busy_timeout=2.5",
            "sqlite",
            {"path": "j.db", "pool_size": "8", "busy_timeout": "2.5"},
        ),
        (
            "postgresql://user@db.example/jobs",
            "postgresql",
            {"username": "user", "host": "db.example", "path": "jobs"},
        ),
        (
            "postgresql://us%40er:p%3Aw%2Fd@[::1]:6543/my%20db?sslmode=require",
            "postgresql",
            {
                "username": "us@er",
                "password": "p:w/d",
                "host": "::1",
                "port": 6543,
                "path": "my db",
                "sslmode": "require",
            },
        ),
    ],
)
def test_parse_url(url: str, backend: str, options: dict[str, object]) -> None:
    assert parse_config(url) == (backend, url, options)


def test_parse_mapping() -> None:
    assert parse_config({"backend": "SQLite", "path": "x.db", "pool_size": 6}) == (
        "sqlite",
        None,
        {"path": "x.db", "pool_size": 6},
    )


@pytest.mark.parametrize(
    ("config", "option"),
    [
        ("jobs.db", "url"),
        ("sqlite:///x.db?a=1&a=2", "a"),
        ("sqlite:///x.db?novalue", "url"),
        ({"path": "x.db"}, "backend"),
        ({"backend": ""}, "backend"),
        ({"backend": "memory", 3: "x"}, "3"),
        ("sqlite:///x.db?path=y.db", "path"),
        ("postgresql://db:99999/jobs", "port"),
        ("postgresql://db/jobs?host=other", "host"),
        (42, "url"),
    ],
)
def test_bad_configs(config: object, option: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(config)  # type: ignore[arg-type]
    assert caught.value.option == option


def test_environment_variable_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIDX_JOBS_URL", "memory://?x=1")
    assert parse_config(None) == ("memory", "memory://?x=1", {"x": "1"})
    monkeypatch.delenv("CIDX_JOBS_URL")
    with pytest.raises(ConfigError, match="CIDX_JOBS_URL"):
        parse_config(None)


class TestOptions:
    def test_typed_reads(self) -> None:
        opts = Options("b", {"n": "7", "f": "0.5", "flag": "yes", "mode": "FULL", "s": "x"})
        assert opts.get_int("n", 1, minimum=0, maximum=10) == 7
        assert opts.get_float("f", 1.0, minimum=0, maximum=1) == 0.5
        assert opts.get_bool("flag", False) is True
        assert opts.get_choice("mode", "normal", ("normal", "full")) == "full"
        assert opts.get_str("s") == "x"
        assert opts.get_int("absent", 3, minimum=0, maximum=5) == 3
        opts.finish()

    @pytest.mark.parametrize(
        ("values", "read"),
        [
            ({"n": "seven"}, lambda o: o.get_int("n", 1, minimum=0, maximum=10)),
            ({"n": "11"}, lambda o: o.get_int("n", 1, minimum=0, maximum=10)),
            ({"n": 2.0}, lambda o: o.get_int("n", 1, minimum=0, maximum=10)),
            ({"n": True}, lambda o: o.get_int("n", 1, minimum=0, maximum=10)),
            ({"n": "nan"}, lambda o: o.get_float("n", 1, minimum=0, maximum=10)),
            ({"n": "maybe"}, lambda o: o.get_bool("n", True)),
            ({"n": "other"}, lambda o: o.get_choice("n", "a", ("a", "b"))),
            ({"n": 5}, lambda o: o.get_str("n")),
            ({"n": "1_000"}, lambda o: o.get_int("n", 1, minimum=0, maximum=10**6)),
            ({"n": "\uff15"}, lambda o: o.get_int("n", 1, minimum=0, maximum=10)),  # full-width 5
        ],
    )
    def test_bad_values_name_the_option(self, values: dict[str, object], read: object) -> None:
        with pytest.raises(ConfigError) as caught:
            read(Options("b", values))  # type: ignore[operator]
        assert caught.value.option == "n"
        assert "'n'" in str(caught.value)

    def test_unknown_option_is_reported_with_the_known_ones(self) -> None:
        opts = Options("sqlite", {"pool_sise": "5"})
        opts.get_int("pool_size", 5, minimum=5, maximum=10)
        with pytest.raises(ConfigError, match=r"pool_sise.*known options: pool_size") as caught:
            opts.finish()
        assert caught.value.option == "pool_sise"


def test_unknown_backend_lists_installed_ones() -> None:
    pytest.importorskip("cidx_jobs_memory")
    with pytest.raises(BackendNotFoundError) as caught:
        open_persistence("nosuch://")
    assert "memory" in caught.value.available
    assert "memory" in str(caught.value)
    assert isinstance(caught.value, LookupError)


def test_common_options_are_applied() -> None:
    pytest.importorskip("cidx_jobs_memory")
    with open_persistence("memory://?max_metadata_bytes=100&retention_days=2.5") as store:
        assert store.settings.max_metadata_bytes == 100
        assert store.settings.retention == timedelta(days=2.5)


def test_settings_are_a_base_that_options_override() -> None:
    pytest.importorskip("cidx_jobs_memory")
    base = StoreSettings(max_metadata_bytes=10, retention=timedelta(days=1))
    with open_persistence({"backend": "memory", "retention_days": 3}, settings=base) as store:
        assert store.settings.max_metadata_bytes == 10
        assert store.settings.retention == timedelta(days=3)


@pytest.mark.parametrize("url", ["memory://?retention_days=-1", "memory://?max_metadata_bytes=x"])
def test_bad_common_option(url: str) -> None:
    pytest.importorskip("cidx_jobs_memory")
    with pytest.raises(ConfigError):
        open_persistence(url)


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("sqlite:///a.db", "sqlite:///a.db"),
        ("pg://u@h/db", "pg://u@h/db"),
        ("pg://u:p@w@h:5/d?x=1", "pg://u:***@h:5/d?x=1"),
        ("pg://h/db?password=s3cret&x=1", "pg://h/db?password=***&x=1"),
        ("pg://u:pw@host?application_name=a@b", "pg://u:***@host?application_name=a@b"),
    ],
)
def test_mask_password(url: str, masked: str) -> None:
    assert mask_password(url) == masked


def test_a_backend_configs_repr_shows_no_password() -> None:
    config = BackendConfig(
        backend="pg",
        url="pg://u:s3cret@h/db?password=s3cret",
        path="db",
        options={},
        password="s3cret",
    )
    assert "s3cret" not in repr(config)


def test_a_url_fragment_is_refused_not_dropped() -> None:
    with pytest.raises(ConfigError, match="%23") as caught:
        parse_config("sqlite:///tmp/jobs#1.db")
    assert caught.value.option == "url"


@pytest.mark.parametrize("value", ["1_0", "\uff11", "1e", "inf", "0x10"])
def test_float_options_take_plain_ascii_numbers(value: str) -> None:
    with pytest.raises(ConfigError):
        Options("b", {"n": value}).get_float("n", 1, minimum=0, maximum=100)
    assert Options("b", {"n": " 2.5e1 "}).get_float("n", 1, minimum=0, maximum=100) == 25.0


def test_an_owner_id_setting_leaves_room_for_the_random_part_and_the_release_marker() -> None:
    from cidx_jobs._validate import MAX_ID_LENGTH, MAX_OWNER_SETTING_LENGTH

    longest = "w" * MAX_OWNER_SETTING_LENGTH
    with open_persistence({"backend": "memory", "owner_id": longest}) as store:
        assert store.owner_id.startswith(longest)
        store.save_job(SyncJob.create(id="j1", user_id="u", project_id="p"))
        lease = store.claim_job("j1")
        assert lease is not None
        store.release_job(lease)
        released = store.load_job("j1")
        assert released is not None
        assert released.owner_id is not None
        assert len(released.owner_id) == MAX_ID_LENGTH
    with pytest.raises(ConfigError, match="the limit is") as caught:
        open_persistence({"backend": "memory", "owner_id": longest + "w"})
    assert caught.value.option == "owner_id"
