"""The options: each is checked before any I/O, and each reaches the server's session."""

from __future__ import annotations

import os
from typing import Any

import pytest

from cidx_jobs import Hooks, JobPersistence, open_persistence
from cidx_jobs.errors import ConfigError
from cidx_jobs_postgres import SCHEMA_VERSION, PostgresOptions, PostgresStorage
from cidx_jobs_postgres._runner import ONE

#: A port nothing listens on: a check that needed the server would fail differently.
NOWHERE = "postgresql://postgres@127.0.0.1:1/test"


@pytest.mark.parametrize(
    ("query", "option"),
    [
        ("pool_max=0", "pool_max"),
        ("pool_max=101", "pool_max"),
        ("pool_min=5&pool_max=2", "pool_min"),
        ("pool_min=-1", "pool_min"),
        ("connect_timeout=0", "connect_timeout"),
        ("connect_timeout=1.5", "connect_timeout"),
        ("statement_timeout_ms=-1", "statement_timeout_ms"),
        ("lock_timeout_ms=soon", "lock_timeout_ms"),
        ("idle_in_transaction_timeout_ms=2147483648", "idle_in_transaction_timeout_ms"),
        ("schema=Jobs", "schema"),
        ("schema=pg_jobs", "schema"),
        ("schema=a-b", "schema"),
        ("schema=" + "s" * 64, "schema"),
        ("application_name=" + "a" * 64, "application_name"),
        ("application_name=caf%C3%A9", "application_name"),
        ("prepare_threshold=sometimes", "prepare_threshold"),
        ("migrate=maybe", "migrate"),
        ("check_connections=sometimes", "check_connections"),
        ("keepalives=perhaps", "keepalives"),
        ("keepalives_idle=0", "keepalives_idle"),
        ("keepalives_interval=0", "keepalives_interval"),
        ("keepalives_count=0", "keepalives_count"),
        ("keepalives_count=101", "keepalives_count"),
        ("tcp_user_timeout_ms=-1", "tcp_user_timeout_ms"),
        ("pool_size=5", "pool_size"),
    ],
)
def test_a_bad_option_is_refused_before_any_io(query: str, option: str) -> None:
    with pytest.raises(ConfigError) as raised:
        open_persistence(f"{NOWHERE}?{query}")
    assert raised.value.option == option
    assert option in str(raised.value)


def test_a_missing_database_name_is_refused_before_any_io() -> None:
    with pytest.raises(ConfigError) as raised:
        open_persistence("postgresql://postgres@127.0.0.1:1")
    assert raised.value.option == "path"
    assert "postgresql://user@host:5432/DATABASE" in str(raised.value)


def test_the_defaults() -> None:
    options = PostgresOptions.parse({}, database="cidx")
    assert (options.schema, options.pool_min, options.pool_max) == ("cidx_jobs", 1, 10)
    assert options.prepare_threshold == 5
    assert (options.statement_timeout_ms, options.lock_timeout_ms) == (30_000, 5_000)
    assert options.migrate is True
    assert options.check_connections is True
    assert (options.keepalives, options.keepalives_idle) == (True, 10)
    assert (options.keepalives_interval, options.keepalives_count) == (5, 3)
    assert options.tcp_user_timeout_ms == 30_000
    assert "secret" not in repr(PostgresOptions.parse({}, database="db", password="secret"))


@pytest.mark.parametrize("value", ["none", "None", "off"])
def test_prepare_threshold_none_never_prepares(value: str) -> None:
    assert (
        PostgresOptions.parse({"prepare_threshold": value}, database="db").prepare_threshold is None
    )
    assert (
        PostgresOptions.parse({"prepare_threshold": None}, database="db").prepare_threshold is None
    )


def test_both_schemes_are_registered_by_the_entry_point() -> None:
    backends = Hooks().backends()
    for scheme in ("postgresql", "postgres"):
        backend = backends[scheme]
        assert backend.plugin == "postgresql"
        assert {cap.value for cap in backend.capabilities} >= {
            "persistent",
            "concurrent_threads",
            "multi_process",
            "fault_injection",
        }
        assert backend.scratch is not None
        assert backend.inventory is not None


def _session(store: JobPersistence, sql: str) -> Any:
    storage = store.storage
    assert isinstance(storage, PostgresStorage)
    return storage._runner.run(ONE, sql, (), "reading a setting")[0]


def test_the_options_reach_the_session(schema_url: str) -> None:
    url = (
        f"{schema_url}&statement_timeout_ms=1234&lock_timeout_ms=567"
        "&idle_in_transaction_timeout_ms=8900&application_name=cidx-test-app"
        "&prepare_threshold=none&pool_min=0&pool_max=2"
    )
    with open_persistence(url.replace("postgresql://", "postgres://")) as store:
        assert _session(store, "SHOW statement_timeout") == "1234ms"
        assert _session(store, "SHOW lock_timeout") == "567ms"
        assert _session(store, "SHOW idle_in_transaction_session_timeout") == "8900ms"
        assert _session(store, "SHOW application_name") == "cidx-test-app"
        assert _session(store, "SHOW TimeZone") == "UTC"


def test_the_tables_live_in_the_schema_option(schema_url: str, admin: Any) -> None:
    schema = schema_url.rsplit("schema=", 1)[1]
    with open_persistence(schema_url) as store:
        assert store.count_jobs() == 0
    tables = admin.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = %s ORDER BY 1",
        (schema,),
    ).fetchall()
    assert [name for (name,) in tables] == ["cidx_schema_version", "job_checkpoints", "sync_jobs"]
    types = dict(
        admin.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = 'sync_jobs'",
            (schema,),
        ).fetchall()
    )
    assert types["created_at"] == types["heartbeat_at"] == "timestamp with time zone"
    assert types["metadata"] == "text"  # core's exact JSON, not jsonb


def test_migrate_false_creates_nothing(schema_url: str, admin: Any) -> None:
    schema = schema_url.rsplit("schema=", 1)[1]
    store = open_persistence(f"{schema_url}&migrate=false")
    try:
        assert store.storage.describe().pending_migrations
        found = admin.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,)).fetchall()
        assert found == []
        assert store.storage.migrate() == (0, SCHEMA_VERSION)
        assert store.count_jobs() == 0
    finally:
        store.close()


@pytest.mark.parametrize(("query", "size"), [("", 10), ("&pool_max=3", 3)])
def test_max_concurrency_is_the_pools_max_size(schema_url: str, query: str, size: int) -> None:
    # AsyncJobPersistence sizes its threads by it: the most connections this process's pool
    # opens, so the most calls the storage serves at once.
    with open_persistence(f"{schema_url}{query}") as store:
        storage = store.storage
        assert isinstance(storage, PostgresStorage)
        assert storage.max_concurrency() == size
        assert storage._runner._get_pool().max_size == size


def _application_names(admin: Any, store: JobPersistence) -> set[str]:
    storage = store.storage
    assert isinstance(storage, PostgresStorage)
    pid = storage._runner.run(ONE, "SELECT pg_backend_pid()", (), "reading the pid")[0]
    rows = admin.execute(
        "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchall()
    return {name for (name,) in rows}


def test_the_application_name_is_the_owner_id_by_default(schema_url: str, admin: Any) -> None:
    with open_persistence(f"{schema_url}&owner_id=worker-7") as store:
        assert store.owner_id.startswith("worker-7:")
        assert _application_names(admin, store) == {store.owner_id}
    # An owner id longer than PostgreSQL keeps is cut to its 63 bytes, not refused.
    with open_persistence(f"{schema_url}&owner_id={'h' * 70}") as store:
        assert _application_names(admin, store) == {store.owner_id[:63]}
    # The option wins over the owner id.
    with open_persistence(f"{schema_url}&owner_id=worker-7&application_name=cidx-app") as store:
        assert _application_names(admin, store) == {"cidx-app"}


def test_without_an_owner_id_the_application_name_names_host_and_process() -> None:
    options = PostgresOptions.parse({}, database="db")
    assert options.connect_kwargs("cidx-jobs here:1")["application_name"] == "cidx-jobs here:1"
    owned = PostgresOptions.parse({}, database="db", owner_id="h\u00e9:" + "x" * 70)
    name = owned.connect_kwargs("unused")["application_name"]
    assert len(name.encode()) <= 63
    assert name.startswith("h\u00e9:x")


def test_tcp_keepalives_and_user_timeout_reach_the_socket(schema_url: str) -> None:
    import socket
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("reads the socket options of Linux")
    for query, expected in (
        ("", (1, 10, 5, 3, 30_000)),
        (
            "&keepalives_idle=7&keepalives_interval=2&keepalives_count=4&tcp_user_timeout_ms=9000",
            (1, 7, 2, 4, 9_000),
        ),
    ):
        with open_persistence(f"{schema_url}&pool_max=1{query}") as store:
            storage = store.storage
            assert isinstance(storage, PostgresStorage)
            pool, conn = storage._runner._acquire("testing")
            try:
                # What the kernel applies to this connection's socket, not what was asked.
                probe = socket.socket(fileno=os.dup(conn.pgconn.socket))
                try:
                    found = (
                        probe.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                        probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                        probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                        probe.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                    )
                finally:
                    probe.close()  # the duplicate only: the connection stays open
            finally:
                pool.putconn(conn)
        assert found == expected, query


def test_keepalives_off_leaves_the_socket_alone() -> None:
    options = PostgresOptions.parse(
        {"keepalives": "false", "tcp_user_timeout_ms": 0}, database="db"
    )
    kwargs = options.connect_kwargs("x")
    assert kwargs["keepalives"] == 0
    assert "keepalives_idle" not in kwargs
    assert "tcp_user_timeout" not in kwargs
