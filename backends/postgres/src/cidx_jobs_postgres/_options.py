"""The options of the PostgreSQL backend, read from a URL or a mapping and checked before any I/O."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

from cidx_jobs.backend import BackendConfig, Options
from cidx_jobs.errors import ConfigError

__all__ = ["PostgresOptions"]

#: A schema name this backend accepts: a lower-case SQL identifier that needs no quoting
#: (so the name in the URL is the name in the catalog, and ``psql`` users type it as is).
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
DEFAULT_SCHEMA = "cidx_jobs"
DEFAULT_POOL_MIN = 1
DEFAULT_POOL_MAX = 10
#: PostgreSQL's default max_connections is 100: one store should not take them all.
MAX_POOL = 100
DEFAULT_CONNECT_TIMEOUT = 5
DEFAULT_STATEMENT_TIMEOUT_MS = 30_000
DEFAULT_LOCK_TIMEOUT_MS = 5_000
DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
#: PostgreSQL stores these timeouts as int4 milliseconds.
MAX_TIMEOUT_MS = 2_147_483_647
#: PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes.
MAX_APPLICATION_NAME = 63
DEFAULT_PREPARE_THRESHOLD = 5
#: TCP keepalives on every connection: an idle or waiting connection whose peer vanished
#: silently (a partition, a host powered off) is found dead after about idle + interval x
#: count seconds instead of the kernel's two hours.
DEFAULT_KEEPALIVES_IDLE = 10
DEFAULT_KEEPALIVES_INTERVAL = 5
DEFAULT_KEEPALIVES_COUNT = 3
#: How long data sent may stay unacknowledged before the kernel drops the connection
#: (TCP_USER_TIMEOUT, Linux): the client-side limit of a call through a silent partition.
DEFAULT_TCP_USER_TIMEOUT_MS = 30_000


def owner_application_name(owner_id: str) -> str:
    """``owner_id`` as an application_name: cut to PostgreSQL's 63 bytes (NAMEDATALEN - 1),
    never inside a UTF-8 character."""
    return owner_id.encode("utf-8")[:MAX_APPLICATION_NAME].decode("utf-8", "ignore")


@attrs.frozen(kw_only=True)
class PostgresOptions:
    """How to reach and use one PostgreSQL database. Build it with :meth:`from_config` or
    :meth:`parse`, which check every value before any I/O.

    :ivar host: the server's host name or address (default ``localhost``), or a Unix
        socket folder (a value starting with ``/``).
    :ivar port: the server's port (default 5432).
    :ivar user: the role to log in as (default: libpq's, the operating-system user).
    :ivar password: the role's password, or ``None`` (then libpq's ``PGPASSWORD`` or
        ``~/.pgpass`` apply).
    :ivar database: the database (the URL's path), required.
    :ivar schema: the PostgreSQL schema that holds the tables (default ``cidx_jobs``);
        created at open when missing.
    :ivar pool_min: connections the pool keeps open (0..``pool_max``, default 1).
    :ivar pool_max: the most connections the pool opens (1..100, default 10); every
        instances x workers x ``pool_max`` must stay within the server's max_connections.
    :ivar connect_timeout: seconds to wait for a new connection, and for a free one from
        the pool (1..600, default 5).
    :ivar statement_timeout_ms: the longest one statement may run (0 = no limit, default
        30000); a statement cut off raises StorageBusyError.
    :ivar lock_timeout_ms: the longest a statement waits for a row or table lock (0 = no
        limit, default 5000); then StorageBusyError.
    :ivar idle_in_transaction_timeout_ms: the server ends a session that stays idle inside
        a transaction this long (0 = never, default 60000), so a stalled worker cannot hold
        locks for ever.
    :ivar application_name: shown in ``pg_stat_activity`` (default: the owner id of the
        store, cut to 63 bytes; ``cidx-jobs HOST:PID`` for a storage built outside
        :func:`~cidx_jobs.open_persistence`).
    :ivar prepare_threshold: executions of a statement before psycopg prepares it on the
        server (default 5); ``none`` never prepares, which PgBouncer in transaction mode
        (before 1.21) needs.
    :ivar migrate: create or upgrade the schema at open (default true); ``false`` opens
        without changing anything.
    :ivar check_connections: test a pooled connection before each call uses it (default
        true): a session the server closed (killed, restarted) is replaced before a
        statement is sent on it, instead of failing the call.
    :ivar keepalives: TCP keepalives on each connection (default true).
    :ivar keepalives_idle: seconds of silence before the first keepalive probe (default 10).
    :ivar keepalives_interval: seconds between unanswered probes (default 5).
    :ivar keepalives_count: unanswered probes before the connection is dropped (default 3).
    :ivar tcp_user_timeout_ms: the longest sent data may stay unacknowledged before the
        kernel drops the connection (default 30000; 0 = the kernel's default). With the
        keepalives, the client-side limit of a call through a silent network partition.
    :ivar owner_id: the owner id of the store that wraps the storage (from
        :class:`~cidx_jobs.backend.BackendConfig`), not an option.
    """

    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    database: str
    schema: str = DEFAULT_SCHEMA
    pool_min: int = DEFAULT_POOL_MIN
    pool_max: int = DEFAULT_POOL_MAX
    connect_timeout: int = DEFAULT_CONNECT_TIMEOUT
    statement_timeout_ms: int = DEFAULT_STATEMENT_TIMEOUT_MS
    lock_timeout_ms: int = DEFAULT_LOCK_TIMEOUT_MS
    idle_in_transaction_timeout_ms: int = DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS
    application_name: str | None = None
    prepare_threshold: int | None = DEFAULT_PREPARE_THRESHOLD
    migrate: bool = True
    check_connections: bool = True
    keepalives: bool = True
    keepalives_idle: int = DEFAULT_KEEPALIVES_IDLE
    keepalives_interval: int = DEFAULT_KEEPALIVES_INTERVAL
    keepalives_count: int = DEFAULT_KEEPALIVES_COUNT
    tcp_user_timeout_ms: int = DEFAULT_TCP_USER_TIMEOUT_MS
    owner_id: str | None = None

    @classmethod
    def from_config(cls, config: BackendConfig) -> PostgresOptions:
        """The options of a ``postgresql://`` (or ``postgres://``) URL or a mapping.

        :raises ConfigError: the database is missing, or an option is unknown or invalid;
            the error's ``option`` names it.
        """
        return cls.parse(
            config.reader(),
            host=config.host,
            port=config.port,
            user=config.username,
            password=config.password,
            database=config.path,
            owner_id=config.owner_id,
        )

    @classmethod
    def parse(
        cls,
        options: Options | Mapping[str, object] | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        user: str | None = None,
        password: str | None = None,
        database: str | None = None,
        owner_id: str | None = None,
    ) -> PostgresOptions:
        """Check the location and every option; an unknown option is refused.

        :param owner_id: the owner id of the store, the default ``application_name``.

        :raises ConfigError: as :meth:`from_config`.
        """
        reader = options if isinstance(options, Options) else Options("postgresql", options or {})
        pool_max = reader.get_int("pool_max", DEFAULT_POOL_MAX, minimum=1, maximum=MAX_POOL)
        pool_min = reader.get_int(
            "pool_min", min(DEFAULT_POOL_MIN, pool_max), minimum=0, maximum=MAX_POOL
        )
        if pool_min > pool_max:
            raise ConfigError(
                f"option 'pool_min' ({pool_min}) must not exceed pool_max ({pool_max}): "
                "lower pool_min or raise pool_max",
                option="pool_min",
            )
        connect_timeout = reader.get_int(
            "connect_timeout", DEFAULT_CONNECT_TIMEOUT, minimum=1, maximum=600
        )
        timeouts = {
            name: reader.get_int(name, default, minimum=0, maximum=MAX_TIMEOUT_MS)
            for name, default in (
                ("statement_timeout_ms", DEFAULT_STATEMENT_TIMEOUT_MS),
                ("lock_timeout_ms", DEFAULT_LOCK_TIMEOUT_MS),
                ("idle_in_transaction_timeout_ms", DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT_MS),
            )
        }
        schema = reader.get_str("schema", DEFAULT_SCHEMA)
        assert schema is not None
        if not SCHEMA_NAME.fullmatch(schema) or schema.startswith("pg_"):
            raise ConfigError(
                f"option 'schema' must be a lower-case letter or _ followed by up to 62 "
                f"lower-case letters, digits or _ (and not start with pg_), got {schema!r}",
                option="schema",
            )
        application_name = reader.get_str("application_name")
        if application_name is not None and (
            not application_name.isprintable()
            or not application_name.isascii()
            or len(application_name) > MAX_APPLICATION_NAME
        ):
            raise ConfigError(
                f"option 'application_name' must be printable ASCII of at most "
                f"{MAX_APPLICATION_NAME} characters (PostgreSQL truncates longer names), "
                f"got {application_name!r}",
                option="application_name",
            )
        prepare_threshold = _prepare_threshold(reader)
        migrate = reader.get_bool("migrate", True)
        check_connections = reader.get_bool("check_connections", True)
        keepalives = reader.get_bool("keepalives", True)
        keepalives_idle = reader.get_int(
            "keepalives_idle", DEFAULT_KEEPALIVES_IDLE, minimum=1, maximum=86_400
        )
        keepalives_interval = reader.get_int(
            "keepalives_interval", DEFAULT_KEEPALIVES_INTERVAL, minimum=1, maximum=3_600
        )
        keepalives_count = reader.get_int(
            "keepalives_count", DEFAULT_KEEPALIVES_COUNT, minimum=1, maximum=100
        )
        tcp_user_timeout_ms = reader.get_int(
            "tcp_user_timeout_ms", DEFAULT_TCP_USER_TIMEOUT_MS, minimum=0, maximum=MAX_TIMEOUT_MS
        )
        for name, value in (("host", host), ("username", user), ("password", password)):
            if value is not None and not isinstance(value, str):
                # Never the password's value: messages end up in logs.
                raise ConfigError(
                    f"option {name!r} must be a string, got "
                    f"{type(value).__name__ if name == 'password' else repr(value)}",
                    option=name,
                )
        # A mapping gives its location as options; a URL's arrive as fields.
        host = host if host is not None else reader.get_str("host")
        user = user if user is not None else reader.get_str("username")
        password = password if password is not None else reader.get_str("password")
        if port is None:
            raw_port = reader.remaining().get("port")
            if raw_port is not None:
                port = reader.get_int("port", 5432, minimum=1, maximum=65535)
        elif not 1 <= port <= 65535:
            raise ConfigError(f"the port must be 1..65535, got {port}", option="port")
        reader.finish()
        if database is not None and not isinstance(database, str):
            raise ConfigError(f"option 'path' must be a string, got {database!r}", option="path")
        if not database:
            raise ConfigError(
                "the postgresql backend needs a database name: "
                "postgresql://user@host:5432/DATABASE (or the mapping entry 'path')",
                option="path",
            )
        if "/" in database or "\x00" in database:
            raise ConfigError(
                f"the database name {database!r} must not contain '/' or NUL: the URL's path "
                "is one database name, e.g. postgresql://host/cidx",
                option="path",
            )
        for name, value in (("host", host), ("username", user), ("password", password)):
            if value is not None and "\x00" in value:
                raise ConfigError(f"option {name!r} must not contain NUL", option=name)
        return cls(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database,
            schema=schema,
            pool_min=pool_min,
            pool_max=pool_max,
            connect_timeout=connect_timeout,
            statement_timeout_ms=timeouts["statement_timeout_ms"],
            lock_timeout_ms=timeouts["lock_timeout_ms"],
            idle_in_transaction_timeout_ms=timeouts["idle_in_transaction_timeout_ms"],
            application_name=application_name,
            prepare_threshold=prepare_threshold,
            migrate=migrate,
            check_connections=check_connections,
            keepalives=keepalives,
            keepalives_idle=keepalives_idle,
            keepalives_interval=keepalives_interval,
            keepalives_count=keepalives_count,
            tcp_user_timeout_ms=tcp_user_timeout_ms,
            owner_id=owner_id if isinstance(owner_id, str) and owner_id else None,
        )

    @property
    def location(self) -> str:
        """The server, database and schema, for messages (never the password)."""
        host = self.host or "localhost"
        port = self.port or 5432
        who = f"{self.user}@" if self.user else ""
        return f"postgresql://{who}{host}:{port}/{self.database} (schema {self.schema})"

    def connect_kwargs(self, application_name: str) -> dict[str, Any]:
        """The keyword arguments of ``psycopg.connect`` for this database.

        :param application_name: the name when neither the option nor an owner id gives one.
        """
        if self.application_name:
            name = self.application_name
        elif self.owner_id:
            name = owner_application_name(self.owner_id)
        else:
            name = application_name
        kwargs: dict[str, Any] = {
            "dbname": self.database,
            "connect_timeout": self.connect_timeout,
            "application_name": name,
            # libpq applies these to TCP connections and ignores them on a Unix socket.
            "keepalives": 1 if self.keepalives else 0,
        }
        if self.keepalives:
            kwargs["keepalives_idle"] = self.keepalives_idle
            kwargs["keepalives_interval"] = self.keepalives_interval
            kwargs["keepalives_count"] = self.keepalives_count
        if self.tcp_user_timeout_ms:
            kwargs["tcp_user_timeout"] = self.tcp_user_timeout_ms
        for key, value in (
            ("host", self.host),
            ("port", self.port),
            ("user", self.user),
            ("password", self.password),
        ):
            if value is not None:
                kwargs[key] = value
        return kwargs


def _prepare_threshold(reader: Options) -> int | None:
    raw = reader.remaining().get("prepare_threshold")
    if isinstance(raw, str) and raw.strip().lower() in ("none", "off", "never"):
        reader.get_str("prepare_threshold")
        return None
    if raw is None and "prepare_threshold" in reader.remaining():
        reader.get_str("prepare_threshold")  # a mapping's explicit None: never prepare
        return None
    return reader.get_int(
        "prepare_threshold", DEFAULT_PREPARE_THRESHOLD, minimum=0, maximum=1_000_000
    )
