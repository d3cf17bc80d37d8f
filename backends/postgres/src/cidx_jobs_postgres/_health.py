"""The PostgreSQL backend's self-check (``Storage.check_health``, ``cidx-jobs doctor``).

Every check only reads: the catalog, the statistics views and the store's own tables, one
cheap statement each through the storage's runner (so every failure is a typed
:class:`~cidx_jobs.errors.StorageError`). ``thorough`` adds the ones that read whole tables
and indexes: exact row counts and amcheck's ``bt_index_check``.

The findings, in the order ``cidx-jobs doctor`` shows them: ``tables`` (the stored schema
version, the tables and indexes and their validity; ``doctor``'s own ``schema`` check reads
the version once at open), ``server``, ``connections``, ``transactions``, ``locks``,
``vacuum``, ``settings``, and with ``thorough`` ``rows`` and ``amcheck``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import attrs

from cidx_jobs.backend import Health, HealthCheck
from cidx_jobs.errors import StorageBusyError, StorageCorruptError, StoragePermissionError

from ._runner import ALL, NONE, ONE
from ._schema import MIGRATIONS, SCHEMA_VERSION, VERSION_TABLE

if TYPE_CHECKING:
    from ._storage import PostgresStorage

__all__ = ["check_health", "expected_objects"]

#: A transaction open this long (idle in it, or running a statement) is worth a warning: it
#: holds its locks and keeps vacuum from removing the rows deleted since it began.
LONG_TRANSACTION_SECONDS = 60.0
#: A wait for a lock on the schema's tables this long is worth a warning (shorter waits are
#: the normal queueing of writers).
LOCK_WAIT_SECONDS = 1.0
#: Sessions in use, as a share of the slots open to ordinary roles, from which connections
#: are a warning, and a problem (new connections are about to be refused).
CONNECTIONS_WARNING = 0.8
CONNECTIONS_PROBLEM = 0.95
#: Dead rows of a table, as a share of its rows, from which vacuum is worth a warning, and
#: the fewest dead rows that matter at all.
DEAD_SHARE_WARNING = 0.2
DEAD_ROWS_WARNING = 10_000
#: The most sessions a finding names in its summary (``data`` lists up to SESSIONS_LISTED).
SESSIONS_SHOWN = 3
SESSIONS_LISTED = 20

_CREATE_TABLE = re.compile(r"CREATE TABLE (?:IF NOT EXISTS )?\{schema\}\.(\w+)")
_CREATE_INDEX = re.compile(r"CREATE (?:UNIQUE )?INDEX (\w+) ON")
_DROP_INDEX = re.compile(r"DROP INDEX (?:IF EXISTS )?\{schema\}\.(\w+)")
_INDEX_TABLE = re.compile(r" ON \{schema\}\.(\w+)")
#: A table's reloptions that turn autovacuum off for it (stored as written).
_AUTOVACUUM_OFF = frozenset(
    f"autovacuum_enabled={value}" for value in ("false", "off", "no", "0", "f", "n")
)


def expected_objects(version: int = SCHEMA_VERSION) -> tuple[list[str], dict[str, str | None]]:
    """The tables, and the indexes with the statement that builds each (``None`` for a
    primary key's), that the migrations up to ``version`` leave in a schema."""
    tables = [VERSION_TABLE]
    indexes: dict[str, str | None] = {f"{VERSION_TABLE}_pkey": None}
    for migration in MIGRATIONS:
        if migration.version > version:
            break
        for statement in migration.statements:
            if table := _CREATE_TABLE.match(statement):
                tables.append(table[1])
                if "PRIMARY KEY" in statement:
                    indexes[f"{table[1]}_pkey"] = None
            elif index := _CREATE_INDEX.match(statement):
                indexes[index[1]] = statement
            elif dropped := _DROP_INDEX.match(statement):
                indexes.pop(dropped[1], None)
    return tables, indexes


def check_health(storage: PostgresStorage, *, thorough: bool) -> list[HealthCheck]:
    """Every check of this backend, in the order ``cidx-jobs doctor`` shows them.

    :raises StorageError: a statement failed (a check that a failure answers, such as an
        index amcheck finds damaged, reports it as a finding instead).
    """
    server = _server(storage)
    version = int(str(server.data["server_version_num"]))
    checks = [
        _tables(storage),
        server,
        _connections(storage),
        _transactions(storage),
        _locks(storage, version),
        _vacuum(storage),
        _settings(storage),
    ]
    if thorough:
        checks.append(_rows(storage))
        checks.append(_amcheck(storage))
    return checks


def _quoted(storage: PostgresStorage) -> str:
    return f'"{storage.schema}"'


def _sessions(rows: list[dict[str, Any]]) -> str:
    shown = ", ".join(
        f"pid {row['pid']} ({row['application_name'] or 'no application_name'}, "
        f"{row['age_seconds']:.0f} s)"
        for row in rows[:SESSIONS_SHOWN]
    )
    more = f" and {len(rows) - SESSIONS_SHOWN} more" if len(rows) > SESSIONS_SHOWN else ""
    return shown + more


# -- tables -------------------------------------------------------------------------------


def _tables(storage: PostgresStorage) -> HealthCheck:
    schema = storage.schema
    rows = storage._run(
        ALL,
        "SELECT c.relname::text, c.relkind::text, i.indisvalid, i.indisready "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'i', 'I')",
        (schema,),
        "reading the schema's tables and indexes",
    )
    found_tables = {str(name) for name, kind, _, _ in rows if kind in ("r", "p")}
    found_indexes = {str(name): bool(valid and ready) for name, kind, valid, ready in rows}
    for name in found_tables:
        found_indexes.pop(name, None)
    version = 0
    if VERSION_TABLE in found_tables:
        row = storage._run(
            ONE,
            f"SELECT version FROM {_quoted(storage)}.{VERSION_TABLE}",
            (),
            "reading the schema version",
        )
        version = 0 if row is None else int(row[0])
    tables, indexes = expected_objects(min(version, SCHEMA_VERSION))
    missing_tables = [name for name in tables if name not in found_tables]
    missing_indexes = [name for name in indexes if name not in found_indexes]
    invalid = sorted(name for name, valid in found_indexes.items() if not valid)
    data: dict[str, object] = {
        "schema": schema,
        "schema_version": version,
        "latest_schema_version": SCHEMA_VERSION,
        "tables": sorted(found_tables),
        "indexes": sorted(found_indexes),
        "missing_tables": missing_tables,
        "missing_indexes": missing_indexes,
        "invalid_indexes": invalid,
        "extra_indexes": sorted(set(found_indexes) - set(indexes)),
    }
    if version == 0 and not found_tables:
        return HealthCheck(
            name="tables",
            health=Health.PROBLEM,
            summary=f"the schema {schema} holds no cidx-jobs tables",
            advice="check the URL's schema= option, or create the tables with cidx-jobs migrate",
            data=data,
        )
    problems: list[str] = []
    advice: list[str] = []
    if version > SCHEMA_VERSION:
        problems.append(
            f"the stored schema version is {version}, written by a newer release (this one "
            f"writes {SCHEMA_VERSION})"
        )
        advice.append("upgrade cidx-jobs-postgres here to the release the servers run")
    elif version < SCHEMA_VERSION:
        problems.append(
            f"the stored schema version is {version}; this release writes {SCHEMA_VERSION}"
        )
        advice.append("upgrade every server to this release, then run cidx-jobs migrate")
    if missing_tables:
        problems.append(f"table(s) missing: {', '.join(missing_tables)}")
        advice.append(
            f"restore the schema from a backup (pg_restore -n {schema}), or copy the jobs "
            "that are left to a fresh schema (cidx-jobs copy)"
        )
    if missing_indexes:
        problems.append(f"index(es) missing: {', '.join(missing_indexes)}")
        rebuild = [
            statement.format(schema=_quoted(storage)).replace(
                "CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1
            )
            for name in missing_indexes
            if (statement := indexes[name]) is not None
            and (table := _INDEX_TABLE.search(statement)) is not None
            and table[1] not in missing_tables
        ]
        data["rebuild"] = rebuild
        if rebuild:
            advice.append(f"recreate them: {'; '.join(rebuild)}")
        if any(indexes[name] is None for name in missing_indexes):
            advice.append(
                "a primary key was dropped: restore the schema from a backup, or copy the "
                "jobs to a fresh schema (cidx-jobs copy)"
            )
    if invalid:
        problems.append(
            f"index(es) left invalid, e.g. by a failed CREATE INDEX CONCURRENTLY or REINDEX: "
            f"{', '.join(invalid)}"
        )
        ours = [name for name in invalid if name in indexes]
        others = [name for name in invalid if name not in indexes]
        if ours:
            advice.append(
                "rebuild them: "
                + "; ".join(f"REINDEX INDEX CONCURRENTLY {_quoted(storage)}.{n}" for n in ours)
            )
        if others:
            advice.append(
                "drop the ones cidx-jobs did not make, or build them again once the cause of "
                "the failure is fixed: "
                + "; ".join(f"DROP INDEX CONCURRENTLY {_quoted(storage)}.{n}" for n in others)
            )
    if problems:
        return HealthCheck(
            name="tables",
            health=Health.PROBLEM,
            summary="; ".join(problems),
            advice="; ".join(advice),
            data=data,
        )
    return HealthCheck(
        name="tables",
        health=Health.OK,
        summary=(
            f"schema {schema} at version {version}: {len(tables)} tables and {len(indexes)} "
            "indexes, all valid"
        ),
        data=data,
    )


# -- server -------------------------------------------------------------------------------


def _server(storage: PostgresStorage) -> HealthCheck:
    row = storage._run(
        ONE,
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int, "
        "pg_is_in_recovery(), current_setting('default_transaction_read_only'), "
        "current_setting('transaction_read_only'), current_database()::text, "
        "current_user::text, extract(epoch FROM now() - pg_postmaster_start_time())::float8",
        (),
        "reading the server's state",
    )
    version, version_num, recovery, default_ro, read_only, database, user, uptime = row
    data: dict[str, object] = {
        "server_version": version,
        "server_version_num": version_num,
        "in_recovery": bool(recovery),
        "default_transaction_read_only": default_ro,
        "transaction_read_only": read_only,
        "database": database,
        "user": user,
        "uptime_seconds": uptime,
    }
    summary = f"PostgreSQL {version}, database {database} as {user}, up {_age(uptime)}"
    if recovery:
        return HealthCheck(
            name="server",
            health=Health.PROBLEM,
            summary=f"{summary}: the server is a standby (in recovery), so every write fails",
            advice=(
                "point the URL at the primary (or list every host: "
                "host=a,b&target_session_attrs=read-write)"
            ),
            data=data,
        )
    if "on" in (default_ro, read_only):
        return HealthCheck(
            name="server",
            health=Health.PROBLEM,
            summary=(
                f"{summary}: sessions are read-only (default_transaction_read_only=on), so "
                "every write fails"
            ),
            advice=(
                "point the URL at the primary; if it is the primary, reset the setting "
                "(ALTER DATABASE/ROLE ... RESET default_transaction_read_only, or "
                "postgresql.conf)"
            ),
            data=data,
        )
    return HealthCheck(name="server", health=Health.OK, summary=summary, data=data)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86_400:.0f} days"


# -- connections --------------------------------------------------------------------------


def _connections(storage: PostgresStorage) -> HealthCheck:
    row = storage._run(
        ONE,
        "SELECT current_setting('max_connections')::int, "
        "current_setting('superuser_reserved_connections')::int, "
        "coalesce(current_setting('reserved_connections', true), '0')::int, "
        "count(*), count(*) FILTER (WHERE datname = current_database()), "
        "count(*) FILTER (WHERE application_name = current_setting('application_name')) "
        "FROM pg_catalog.pg_stat_activity WHERE backend_type = 'client backend'",
        (),
        "counting the server's sessions",
    )
    max_connections, superuser_reserved, reserved, used, here, mine = (int(v) for v in row)
    slots = max(max_connections - superuser_reserved - reserved, 1)
    pool_max = storage.options.pool_max
    share = used / slots
    data: dict[str, object] = {
        "sessions": used,
        "sessions_of_database": here,
        "sessions_of_application_name": mine,
        "max_connections": max_connections,
        "reserved_connections": superuser_reserved + reserved,
        "available_slots": slots,
        "pool_max": pool_max,
    }
    summary = (
        f"{used} of {slots} connection slots in use ({share:.0%}; max_connections="
        f"{max_connections}, {superuser_reserved + reserved} reserved), {here} on this "
        f"database; this store's pool_max={pool_max}"
    )
    if share < CONNECTIONS_WARNING:
        return HealthCheck(name="connections", health=Health.OK, summary=summary, data=data)
    return HealthCheck(
        name="connections",
        health=Health.PROBLEM if share >= CONNECTIONS_PROBLEM else Health.WARNING,
        summary=f"{summary}: new connections are refused once the slots are full",
        advice=(
            f"instances x workers x pool_max (here {pool_max}) of every store on this server, "
            f"plus the administrators' sessions, must stay below {slots}: lower pool_max, "
            "raise max_connections (a server restart), or put PgBouncer in front "
            "(transaction mode, with prepare_threshold=none before PgBouncer 1.21)"
        ),
        data=data,
    )


# -- transactions -------------------------------------------------------------------------


def _transactions(storage: PostgresStorage) -> HealthCheck:
    rows = storage._run(
        ALL,
        "SELECT a.pid, a.application_name::text, a.usename::text, a.state::text, "
        "extract(epoch FROM now() - a.xact_start)::float8, "
        "EXISTS (SELECT 1 FROM pg_catalog.pg_locks l JOIN pg_catalog.pg_class c "
        "ON c.oid = l.relation JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE l.pid = a.pid AND n.nspname = %s) "
        "FROM pg_catalog.pg_stat_activity a "
        "WHERE a.datname = current_database() AND a.backend_type = 'client backend' "
        "AND a.pid <> pg_backend_pid() "
        "AND a.xact_start < now() - make_interval(secs => %s) "
        "ORDER BY a.xact_start LIMIT %s",
        (storage.schema, LONG_TRANSACTION_SECONDS, SESSIONS_LISTED),
        "finding long transactions",
    )
    prepared = storage._run(
        ALL,
        "SELECT gid, owner::text, extract(epoch FROM now() - prepared)::float8 "
        "FROM pg_catalog.pg_prepared_xacts WHERE database = current_database() "
        "AND prepared < now() - make_interval(secs => %s) ORDER BY prepared LIMIT %s",
        (LONG_TRANSACTION_SECONDS, SESSIONS_LISTED),
        "finding prepared transactions",
    )
    sessions = [
        {
            "pid": int(pid),
            "application_name": name,
            "user": user,
            "state": state,
            "age_seconds": age,
            "locks_this_schema": bool(ours),
        }
        for pid, name, user, state, age, ours in rows
    ]
    data: dict[str, object] = {
        "threshold_seconds": LONG_TRANSACTION_SECONDS,
        "sessions": sessions,
        "prepared": [
            {"gid": gid, "owner": owner, "age_seconds": age} for gid, owner, age in prepared
        ],
        "all_sessions_visible": _sees_all_sessions(storage),
    }
    unseen = (
        ""
        if data["all_sessions_visible"]
        else " (only this role's sessions are visible: grant it pg_read_all_stats to see all)"
    )
    if not sessions and not prepared:
        return HealthCheck(
            name="transactions",
            health=Health.OK,
            summary=(
                f"no transaction of this database open for over "
                f"{LONG_TRANSACTION_SECONDS:g} s{unseen}"
            ),
            data=data,
        )
    found: list[str] = []
    if sessions:
        idle = sum(1 for s in sessions if str(s["state"]).startswith("idle in transaction"))
        found.append(
            f"{len(sessions)}{'+' if len(sessions) >= SESSIONS_LISTED else ''} session(s) of "
            f"this database with a transaction open for over {LONG_TRANSACTION_SECONDS:g} s "
            f"({idle} idle in it): {_sessions(sessions)}"
        )
    if prepared:
        found.append(
            f"{len(prepared)} prepared transaction(s) older than {LONG_TRANSACTION_SECONDS:g} s "
            f"(pg_prepared_xacts): {', '.join(repr(gid) for gid, _, _ in prepared[:3])}"
        )
    return HealthCheck(
        name="transactions",
        health=Health.WARNING,
        summary="; ".join(found) + unseen,
        advice=(
            "they hold their locks and keep vacuum from removing dead rows: find the program "
            "behind each pid (application_name is a cidx-jobs worker's owner id) and make it "
            "commit; end one with SELECT pg_terminate_backend(pid); idle_in_transaction_"
            "timeout_ms makes the server end idle ones"
            + ("; COMMIT PREPARED or ROLLBACK PREPARED the prepared ones" if prepared else "")
        ),
        data=data,
    )


def _sees_all_sessions(storage: PostgresStorage) -> bool:
    row = storage._run(
        ONE,
        "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')",
        (),
        "reading the role's privileges",
    )
    return bool(row[0])


# -- locks --------------------------------------------------------------------------------


def _locks(storage: PostgresStorage, server_version: int) -> HealthCheck:
    # A session waiting for a row holds a lock on the table (granted) and waits for the
    # holder's transaction id; one waiting for the table (LOCK TABLE, DDL) waits for the
    # table's lock itself: both show as a lock row of the waiting pid on one of our tables.
    # Since PostgreSQL 14 the lock says when the wait began; before, the statement's start.
    since = (
        "coalesce((SELECT min(l.waitstart) FROM pg_catalog.pg_locks l "
        "WHERE l.pid = a.pid AND NOT l.granted), a.state_change)"
        if server_version >= 140000
        else "a.state_change"
    )
    rows = storage._run(
        ALL,
        "SELECT pid, application_name, extract(epoch FROM now() - since)::float8, blockers, "
        "tables, query FROM (SELECT a.pid, a.application_name::text, "
        f"{since} AS since, pg_blocking_pids(a.pid) AS blockers, "
        "(SELECT string_agg(DISTINCT c.relname::text, ', ') FROM pg_catalog.pg_locks l "
        "JOIN pg_catalog.pg_class c ON c.oid = l.relation "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE l.pid = a.pid AND n.nspname = %s) AS tables, left(a.query, 200) AS query "
        "FROM pg_catalog.pg_stat_activity a "
        "WHERE a.datname = current_database() AND a.wait_event_type = 'Lock' "
        "AND a.pid <> pg_backend_pid()) AS w "
        "WHERE w.tables IS NOT NULL AND w.since < now() - make_interval(secs => %s) "
        "ORDER BY w.since LIMIT %s",
        (storage.schema, LOCK_WAIT_SECONDS, SESSIONS_LISTED),
        "finding sessions waiting for locks",
    )
    waiting = [
        {
            "pid": int(pid),
            "application_name": name,
            "age_seconds": age,
            "blocked_by": [int(p) for p in blockers or ()],
            "tables": tables,
            "query": query,
        }
        for pid, name, age, blockers, tables, query in rows
    ]
    data: dict[str, object] = {"threshold_seconds": LOCK_WAIT_SECONDS, "waiting": waiting}
    if not waiting:
        return HealthCheck(
            name="locks",
            health=Health.OK,
            summary=(
                f"no session waits for a lock on the schema's tables for over "
                f"{LOCK_WAIT_SECONDS:g} s"
            ),
            data=data,
        )
    shown = "; ".join(
        f"pid {pid} ({name or 'no application_name'}) waits {age:.1f} s on {tables}, "
        f"blocked by pid(s) {', '.join(str(p) for p in blockers or ()) or '(none now)'}"
        for pid, name, age, blockers, tables, _ in rows[:SESSIONS_SHOWN]
    )
    more = f" and {len(waiting) - SESSIONS_SHOWN} more" if len(waiting) > SESSIONS_SHOWN else ""
    return HealthCheck(
        name="locks",
        health=Health.WARNING,
        summary=f"{len(waiting)} session(s) wait for a lock on the schema's tables: {shown}{more}",
        advice=(
            "see what the blocking pid runs (SELECT * FROM pg_stat_activity WHERE pid = ...): "
            "a long transaction, a LOCK TABLE, a migration or DDL; make it finish, or end it "
            "with SELECT pg_terminate_backend(pid). Waiters give up after lock_timeout_ms"
        ),
        data=data,
    )


# -- vacuum -------------------------------------------------------------------------------


def _vacuum(storage: PostgresStorage) -> HealthCheck:
    rows = storage._run(
        ALL,
        "SELECT s.relname::text, s.n_live_tup, s.n_dead_tup, "
        "greatest(s.last_vacuum, s.last_autovacuum)::text, "
        "greatest(s.last_analyze, s.last_autoanalyze)::text, "
        "coalesce(c.reloptions, '{}')::text[] "
        "FROM pg_catalog.pg_stat_user_tables s JOIN pg_catalog.pg_class c ON c.oid = s.relid "
        "WHERE s.schemaname = %s ORDER BY s.relname",
        (storage.schema,),
        "reading the tables' statistics",
    )
    autovacuum, track_counts = storage._run(
        ONE,
        "SELECT current_setting('autovacuum'), current_setting('track_counts')",
        (),
        "reading the vacuum settings",
    )
    tables: dict[str, dict[str, object]] = {}
    disabled: list[str] = []
    bloated: list[str] = []
    piles: list[str] = []
    live_total = dead_total = 0
    for name, live, dead, vacuumed, analyzed, reloptions in rows:
        live, dead = int(live), int(dead)
        live_total, dead_total = live_total + live, dead_total + dead
        share = dead / (live + dead) if live + dead else 0.0
        tables[name] = {
            "live_rows": live,
            "dead_rows": dead,
            "dead_share": round(share, 4),
            "last_vacuum": vacuumed,
            "last_analyze": analyzed,
        }
        if _AUTOVACUUM_OFF & {str(option).lower() for option in reloptions}:
            disabled.append(name)
        if dead >= DEAD_ROWS_WARNING and share > DEAD_SHARE_WARNING:
            bloated.append(name)
            piles.append(f"{name} {dead} dead of {live + dead} rows ({share:.0%})")
    data: dict[str, object] = {
        "autovacuum": autovacuum,
        "track_counts": track_counts,
        "autovacuum_disabled_tables": disabled,
        "tables": tables,
    }
    problems: list[str] = []
    advice: list[str] = []
    if bloated:
        problems.append(f"dead rows pile up: {'; '.join(piles)}")
        advice.append(
            "run VACUUM (ANALYZE) on "
            + ", ".join(f"{_quoted(storage)}.{name}" for name in bloated)
            + " (it takes no lock that writers wait on)"
        )
    if autovacuum != "on" or disabled:
        where = "on this server" if autovacuum != "on" else f"for {', '.join(disabled)}"
        problems.append(
            f"autovacuum is off {where}: the rows cleanup deletes and the row versions status "
            "changes replace stay behind as dead rows until someone runs VACUUM"
        )
        turn_on = (
            "autovacuum = on in postgresql.conf (a reload)"
            if autovacuum != "on"
            else "ALTER TABLE ... RESET (autovacuum_enabled)"
        )
        advice.append(
            f"turn autovacuum on ({turn_on}), or run VACUUM (ANALYZE) on the schema's tables "
            "after each cidx-jobs cleanup"
        )
    if track_counts != "on":
        problems.append("track_counts is off: the dead-row counts are not kept")
        advice.append("set track_counts = on (autovacuum needs it too)")
    counts = f"{dead_total} dead row(s) beside {live_total} live"
    if problems:
        return HealthCheck(
            name="vacuum",
            health=Health.WARNING,
            summary=f"{'; '.join(problems)} (now {counts})",
            advice="; ".join(advice),
            data=data,
        )
    return HealthCheck(
        name="vacuum",
        health=Health.OK,
        summary=f"autovacuum on; {counts}",
        data=data,
    )


# -- settings -----------------------------------------------------------------------------

#: The session settings each pooled connection gets (Runner.configure), by option.
_SESSION_SETTINGS = (
    ("statement_timeout", "statement_timeout_ms"),
    ("lock_timeout", "lock_timeout_ms"),
    ("idle_in_transaction_session_timeout", "idle_in_transaction_timeout_ms"),
)


def _settings(storage: PostgresStorage) -> HealthCheck:
    options = storage.options
    rows = storage._run(
        ALL,
        "SELECT name::text, setting::text FROM pg_catalog.pg_settings "
        "WHERE name IN ('statement_timeout', 'lock_timeout', "
        "'idle_in_transaction_session_timeout', 'application_name', 'TimeZone')",
        (),
        "reading the session's settings",
    )
    session = {str(name): str(value) for name, value in rows}
    # Every option but the password, as given (the location too: which server this is).
    settings: dict[str, object] = {
        field.name: getattr(options, field.name)
        for field in attrs.fields(type(options))
        if field.name != "password"
    }
    settings["application_name"] = session.get("application_name")
    drifted = [
        f"{name}={session.get(name)} (asked for {getattr(options, option)})"
        for name, option in _SESSION_SETTINGS
        if session.get(name) != str(getattr(options, option))
    ]
    data: dict[str, object] = {"options": settings, "session": session}
    shown = ", ".join(
        f"{name}={_shown(settings[name])}"
        for name in (
            "schema",
            "pool_min",
            "pool_max",
            "connect_timeout",
            "statement_timeout_ms",
            "lock_timeout_ms",
            "idle_in_transaction_timeout_ms",
            "prepare_threshold",
            "keepalives",
            "tcp_user_timeout_ms",
            "application_name",
        )
    )
    if drifted:
        return HealthCheck(
            name="settings",
            health=Health.WARNING,
            summary=f"the session settings did not stick: {', '.join(drifted)} ({shown})",
            advice=(
                "behind PgBouncer in transaction mode, set them on the role instead (ALTER "
                "ROLE ... SET statement_timeout = ..., and so on)"
            ),
            data=data,
        )
    return HealthCheck(name="settings", health=Health.OK, summary=shown, data=data)


def _shown(value: object) -> str:
    if value is None:
        return "none"
    return str(value).lower() if isinstance(value, bool) else str(value)


# -- thorough: rows and amcheck -----------------------------------------------------------


def _rows(storage: PostgresStorage) -> HealthCheck:
    quoted = _quoted(storage)
    try:
        row = storage._run(
            ONE,
            f"SELECT (SELECT count(*) FROM {quoted}.sync_jobs), "
            f"(SELECT count(*) FROM {quoted}.job_checkpoints)",
            (),
            "counting the rows",
        )
    except StorageBusyError as error:
        return HealthCheck(
            name="rows",
            health=Health.WARNING,
            summary=f"counting the rows did not finish: {error}",
            advice="run cidx-jobs doctor --full in a quiet hour, or raise statement_timeout_ms",
        )
    jobs, checkpoints = int(row[0]), int(row[1])
    return HealthCheck(
        name="rows",
        health=Health.OK,
        summary=f"{jobs} job(s), {checkpoints} checkpoint(s) (counted exactly)",
        data={"jobs": jobs, "checkpoints": checkpoints},
    )


def _amcheck(storage: PostgresStorage) -> HealthCheck:
    installed = storage._run(
        ONE,
        "SELECT n.nspname::text, e.extversion FROM pg_catalog.pg_extension e "
        "JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'amcheck'",
        (),
        "looking for amcheck",
    )
    if installed is None:
        available = storage._run(
            ONE,
            "SELECT count(*) FROM pg_catalog.pg_available_extensions WHERE name = 'amcheck'",
            (),
            "looking for amcheck",
        )
        how = (
            "a superuser can install it in this database with CREATE EXTENSION amcheck"
            if int(available[0])
            else "install PostgreSQL's contrib modules on the server (the package "
            "postgresql-contrib, or postgresqlNN-contrib), then CREATE EXTENSION amcheck"
        )
        return HealthCheck(
            name="amcheck",
            health=Health.WARNING,
            summary="the extension amcheck is not installed: the indexes were not verified",
            advice=f"{how}, so that cidx-jobs doctor --full verifies the indexes",
            data={"installed": False, "available": bool(int(available[0]))},
        )
    extension_schema, extension_version = installed
    indexes = storage._run(
        ALL,
        "SELECT c.relname::text FROM pg_catalog.pg_class c "
        "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid "
        "JOIN pg_catalog.pg_am a ON a.oid = c.relam "
        "WHERE n.nspname = %s AND c.relkind = 'i' AND a.amname = 'btree' AND i.indisvalid "
        "ORDER BY c.relname",
        (storage.schema,),
        "listing the indexes",
    )
    checked: list[str] = []
    damaged: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for (name,) in indexes:
        try:
            storage._run(
                NONE,
                f'SELECT "{extension_schema}".bt_index_check(%s::regclass)',
                (f"{_quoted(storage)}.{name}",),
                f"checking the index {name}",
            )
        except StorageCorruptError as error:
            damaged[name] = str(error)
        except (StoragePermissionError, StorageBusyError) as error:
            skipped[name] = str(error)
        else:
            checked.append(name)
    data: dict[str, object] = {
        "installed": True,
        "version": extension_version,
        "checked": checked,
        "damaged": damaged,
        "skipped": skipped,
    }
    if damaged:
        return HealthCheck(
            name="amcheck",
            health=Health.PROBLEM,
            summary=f"bt_index_check found damage in {', '.join(damaged)}",
            advice=(
                "check the server's log and its disk, then rebuild them: "
                + "; ".join(f"REINDEX INDEX CONCURRENTLY {_quoted(storage)}.{n}" for n in damaged)
            ),
            data=data,
        )
    if skipped:
        return HealthCheck(
            name="amcheck",
            health=Health.WARNING,
            summary=(
                f"bt_index_check could not check {', '.join(skipped)} "
                f"({next(iter(skipped.values()))})"
            ),
            advice=(
                "run cidx-jobs doctor --full as a role that may execute bt_index_check (GRANT "
                f'EXECUTE ON FUNCTION "{extension_schema}".bt_index_check(regclass) TO ...), '
                "in a quiet hour"
            ),
            data=data,
        )
    return HealthCheck(
        name="amcheck",
        health=Health.OK,
        summary=f"bt_index_check: {len(checked)} index(es) intact",
        data=data,
    )
