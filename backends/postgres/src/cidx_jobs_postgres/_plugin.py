"""Registers the ``postgresql`` and ``postgres`` backends through the ``cidx_jobs`` entry
point, as any plugin would, with a scratch factory (a fresh schema per test) and an
inventory (the scratch schemas this process made and has not dropped)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from cidx_jobs import hookimpl, parse_config
from cidx_jobs.backend import BackendConfig, Capability, RegisterBackend, Storage, StoreConfig
from cidx_jobs.errors import ConfigError

#: The URL schemes this backend answers to.
SCHEMES = ("postgresql", "postgres")
#: The scratch configuration when the test run names none.
DEFAULT_TEST_URL = "postgresql://postgres@127.0.0.1:5432/test"
#: The variable that names the test server (read when the run names no configuration).
TEST_URL_ENV = "CIDX_JOBS_POSTGRES_URL"
SCRATCH_PREFIX = "cidx_test_"
#: Options of core that may sit in a base URL and that the scratch connection ignores.
_COMMON = (
    "max_metadata_bytes",
    "retention_days",
    "checkpoint_max_age_hours",
    "lease_timeout_seconds",
    "owner_id",
)
_run_token: tuple[int, str] | None = None


def _factory(config: BackendConfig) -> Storage:
    from ._storage import PostgresStorage

    return PostgresStorage.from_config(config)


def _token() -> str:
    """This process's part of its scratch schemas' names: concurrent test runs (and forked
    children) on one database each see only their own schemas in the inventory."""
    global _run_token
    if _run_token is None or _run_token[0] != os.getpid():
        _run_token = (os.getpid(), secrets.token_hex(3))
    return _run_token[1]


def _base(base: StoreConfig | None) -> StoreConfig:
    if base is None:
        return os.environ.get(TEST_URL_ENV) or DEFAULT_TEST_URL
    return base


def _with_schema(base: StoreConfig, schema: str) -> StoreConfig:
    if isinstance(base, str):
        parts = urlsplit(base)
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "schema"]
        query.append(("schema", schema))
        return urlunsplit(parts._replace(query=urlencode(query)))
    config = dict(base)
    config["schema"] = schema
    return config


def _connect(base: StoreConfig) -> Any:
    """A plain autocommit connection to the database ``base`` names.

    :raises ConfigError: ``base`` is not a configuration of this backend.
    :raises StorageError: the server cannot be reached.
    """
    import psycopg

    from ._errors import translate
    from ._options import PostgresOptions

    backend, _, options = parse_config(base)
    if backend not in SCHEMES:
        raise ConfigError(
            f"the postgresql scratch factory needs a postgresql:// configuration, got {backend!r}",
            option="backend",
        )
    location = {
        key: options.pop(key, None) for key in ("path", "host", "port", "username", "password")
    }
    for name in _COMMON:
        options.pop(name, None)
    parsed = PostgresOptions.parse(
        options,
        host=_text(location["host"]),
        port=int(str(location["port"])) if location["port"] is not None else None,
        user=_text(location["username"]),
        password=_text(location["password"]),
        database=_text(location["path"]),
    )
    kwargs = parsed.connect_kwargs("cidx-jobs scratch")
    try:
        return psycopg.connect(**kwargs, autocommit=True)
    except psycopg.Error as error:
        raise translate(error, parsed.location, "preparing a scratch schema") from error


def _text(value: object) -> str | None:
    return None if value is None else str(value)


@contextmanager
def postgres_scratch(base: StoreConfig | None, workdir: Path) -> Iterator[StoreConfig]:
    """A fresh schema ``cidx_test_<run>_<random>`` in the database ``base`` names (by
    default ``$CIDX_JOBS_POSTGRES_URL``, else the local test database), dropped with
    everything in it afterwards, also when the test failed. ``workdir`` stays unused.

    :raises ConfigError: ``base`` is not a postgresql configuration.
    :raises StorageError: the server cannot be reached.
    """
    base = _base(base)
    schema = f"{SCRATCH_PREFIX}{_token()}_{secrets.token_hex(4)}"
    # The store creates the schema when it opens; this only drops it.
    try:
        yield _with_schema(base, schema)
    finally:
        drop_schema(base, schema)


def drop_schema(base: StoreConfig, schema: str) -> None:
    """Drop ``schema`` and everything in it, if it exists.

    :raises ConfigError: ``schema`` is not a schema name this backend accepts (a
        lower-case identifier, not ``pg_...``); nothing was connected.
    :raises StorageError: the server cannot be reached.
    """
    from ._options import SCHEMA_NAME

    if (
        not isinstance(schema, str)
        or not SCHEMA_NAME.fullmatch(schema)
        or schema.startswith("pg_")
        or schema in ("public", "information_schema")
    ):
        # The name is quoted into DROP SCHEMA ... CASCADE: never anything but a schema of ours.
        raise ConfigError(
            f"drop_schema() takes a schema name of this backend (a lower-case letter or _ "
            f"followed by up to 62 lower-case letters, digits or _, not pg_..., public or "
            f"information_schema), got {schema!r}",
            option="schema",
        )
    with _connect(base) as conn:
        # A store a test left open may hold a lock on a table: wait a while, not for ever.
        conn.execute("SET lock_timeout = '30s'")
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def postgres_inventory(base: StoreConfig | None) -> Collection[str]:
    """The scratch schemas of this process's test run that exist in the database ``base``
    names: what :func:`postgres_scratch` makes, so that the suite can check each is gone.

    :raises StorageError: the server cannot be reached.
    """
    base = _base(base)
    prefix = f"{SCRATCH_PREFIX}{_token()}_"
    with _connect(base) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s) ORDER BY 1",
            (prefix,),
        ).fetchall()
    return [str(row[0]) for row in rows]


@hookimpl
def cidx_jobs_register_backends(register: RegisterBackend) -> None:
    for scheme in SCHEMES:
        register(
            scheme,
            _factory,
            capabilities=[
                Capability.PERSISTENT,
                Capability.CONCURRENT_THREADS,
                Capability.MULTI_PROCESS,
                Capability.FAULT_INJECTION,
            ],
            scratch=postgres_scratch,
            inventory=postgres_inventory,
        )


__all__ = ["postgres_inventory", "postgres_scratch"]
