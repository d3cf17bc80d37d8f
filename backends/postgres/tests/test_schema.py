"""The schema as the catalog shows it: a schema migrated from each older version equals a
fresh one, and migration 2 puts the interrupted jobs into the lease index."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from cidx_jobs import JobStatus, StoreSettings, open_persistence
from cidx_jobs_postgres import MIGRATIONS, SCHEMA_VERSION, PostgresStorage
from cidx_jobs_postgres._plugin import drop_schema
from cidx_jobs_postgres._schema import CREATE_VERSION_TABLE, LEASED_SQL, VERSION_TABLE

UTC = timezone.utc
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
DEAD_OWNER = "dead-host:1:x"


@pytest.fixture
def two_schemas(postgres_url: str) -> Iterator[tuple[str, str]]:
    """The names of two schemas of the test database (not created), dropped after the test."""
    names = (f"cidx_t_{secrets.token_hex(5)}", f"cidx_t_{secrets.token_hex(5)}")
    try:
        yield names
    finally:
        for name in names:
            drop_schema(postgres_url, name)


def _url(postgres_url: str, schema: str) -> str:
    separator = "&" if "?" in postgres_url else "?"
    return f"{postgres_url}{separator}schema={schema}"


def build_old_schema(admin: Any, schema: str, version: int) -> None:
    """A schema at ``version``, built by the migrations up to it as the release that wrote
    that version built it (a released migration is never edited)."""
    quoted = f'"{schema}"'
    admin.execute(f"CREATE SCHEMA {quoted}")
    admin.execute(CREATE_VERSION_TABLE.format(schema=quoted))
    for migration in MIGRATIONS:
        if migration.version <= version:
            for statement in migration.statements:
                admin.execute(statement.format(schema=quoted))
    admin.execute(f"INSERT INTO {quoted}.{VERSION_TABLE} (version) VALUES (%s)", (version,))


def describe(admin: Any, schema: str) -> dict[str, Any]:
    """Everything about a schema that matters, with its name taken out, in a comparable form."""
    columns = admin.execute(
        "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, "
        "column_default, collation_name FROM information_schema.columns "
        "WHERE table_schema = %s ORDER BY table_name, ordinal_position",
        (schema,),
    ).fetchall()
    indexes = admin.execute(
        "SELECT tablename, indexname, replace(indexdef, %s, 'SCHEMA.') FROM pg_indexes "
        "WHERE schemaname = %s ORDER BY indexname",
        (f"{schema}.", schema),
    ).fetchall()
    constraints = admin.execute(
        "SELECT r.relname, c.conname, c.contype, "
        "replace(pg_get_constraintdef(c.oid), %s, 'SCHEMA.') "
        "FROM pg_constraint c JOIN pg_class r ON r.oid = c.conrelid "
        "JOIN pg_namespace n ON n.oid = r.relnamespace WHERE n.nspname = %s ORDER BY 1, 2",
        (f"{schema}.", schema),
    ).fetchall()
    version = admin.execute(f'SELECT version FROM "{schema}".{VERSION_TABLE}').fetchall()
    return {
        "columns": columns,
        "indexes": indexes,
        "constraints": constraints,
        "version": version,
    }


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_a_schema_of_an_older_version_migrates_to_the_fresh_schema(
    postgres_url: str, admin: Any, two_schemas: tuple[str, str], version: int
) -> None:
    old, fresh = two_schemas
    build_old_schema(admin, old, version)
    with open_persistence(_url(postgres_url, old)) as store:
        storage = store.storage
        assert isinstance(storage, PostgresStorage)
        assert storage.describe().schema_version == SCHEMA_VERSION
    open_persistence(_url(postgres_url, fresh)).close()
    migrated, made = describe(admin, old), describe(admin, fresh)
    assert made["version"] == [(SCHEMA_VERSION,)]
    assert made["indexes"], "the fresh schema has its indexes"
    assert migrated == made


def test_the_lease_index_names_the_statuses_the_lease_statements_name(
    schema_url: str, admin: Any
) -> None:
    schema = schema_url.rsplit("schema=", 1)[1]
    with open_persistence(schema_url) as store:
        storage = store.storage
        assert isinstance(storage, PostgresStorage)
        statements = (storage._sql.renew_leases, storage._sql.find_stale)
    (definition,) = admin.execute(
        "SELECT indexdef FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
        (schema, "sync_jobs_active_owner"),
    ).fetchone()
    # PostgreSQL prints the predicate as an array comparison.
    assert definition.endswith(
        "WHERE (status = ANY (ARRAY['interrupted'::text, 'pending'::text, 'queued'::text, "
        "'running'::text]))"
    ), definition
    for statement in statements:
        assert f"status IN {LEASED_SQL}" in statement


def test_the_interrupted_jobs_of_a_version_1_schema_are_recovered_after_migrating(
    postgres_url: str, admin: Any, two_schemas: tuple[str, str]
) -> None:
    schema = two_schemas[0]
    build_old_schema(admin, schema, 1)
    for job_id, status in (
        ("dead-interrupted", "interrupted"),
        ("dead-running", "running"),
        ("dead-done", "completed"),
    ):
        completed = None if status == "running" else LONG_AGO
        admin.execute(
            f'INSERT INTO "{schema}".sync_jobs (id, user_id, project_id, status, created_at, '
            "completed_at, owner_id, heartbeat_at) "
            "VALUES (%s, 'alice', 'repo', %s, %s, %s, %s, %s)",
            (job_id, status, LONG_AGO, completed, DEAD_OWNER, LONG_AGO),
        )
    with open_persistence(
        _url(postgres_url, schema), settings=StoreSettings(owner_id="new-host:2")
    ) as store:
        report = store.recover_interrupted_jobs(lease_timeout=timedelta(hours=1))
        assert sorted(point.job.id for point in report.interrupted) == [
            "dead-interrupted",
            "dead-running",
        ]
        assert report.requeue == []
        for point in report.interrupted:
            assert (point.job.status, point.job.owner_id) == (
                JobStatus.INTERRUPTED,
                store.owner_id,
            )
        done = store.load_job("dead-done")
        assert done is not None
        assert (done.status, done.owner_id) == (JobStatus.COMPLETED, DEAD_OWNER)
        # The new owner's heartbeats now keep the two it has not resumed yet.
        assert store.heartbeat() == 2
