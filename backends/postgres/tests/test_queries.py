"""The query shapes use their indexes: proven by EXPLAIN on a real server, with real data."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest

from cidx_jobs import JobFilter, JobStatus, open_persistence
from cidx_jobs_postgres import PostgresStorage

UTC = timezone.utc
USERS = 50
JOBS = 20_000


@pytest.fixture
def loaded(schema_url: str, admin: Any) -> Iterator[tuple[PostgresStorage, str]]:
    """A store with 20,000 jobs of 50 users over five statuses, analyzed."""
    schema = schema_url.rsplit("schema=", 1)[1]
    with open_persistence(schema_url) as store:
        storage = store.storage
        assert isinstance(storage, PostgresStorage)
        admin.execute(
            f'INSERT INTO "{schema}".sync_jobs (id, user_id, project_id, status, created_at) '
            "SELECT 'job-' || lpad(n::text, 6, '0'), 'user-' || (n %% %s), 'repo', "
            "(ARRAY['completed', 'failed', 'running', 'pending', 'cancelled'])[1 + n %% 5], "
            "timestamptz '2025-01-01' + n * interval '1 minute' FROM generate_series(1, %s) n",
            (USERS, JOBS),
        )
        admin.execute(f'ANALYZE "{schema}".sync_jobs')
        yield storage, schema


def _plan(admin: Any, sql: str, params: list[Any]) -> dict[str, Any]:
    row = admin.execute(f"EXPLAIN (FORMAT JSON) {sql}", params).fetchone()
    document = row[0] if not isinstance(row[0], str) else json.loads(row[0])
    plan: dict[str, Any] = document[0]["Plan"]
    return plan


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


@pytest.mark.parametrize(
    "after", [None, (datetime(2025, 1, 5, tzinfo=UTC), "job-005000")], ids=["first", "keyset"]
)
def test_a_users_newest_page_is_an_ordered_index_scan_that_stops_at_the_limit(
    loaded: tuple[PostgresStorage, str], admin: Any, after: tuple[datetime, str] | None
) -> None:
    storage, _ = loaded
    sql, params = storage._sql.select_statement(JobFilter(user_id="user-7"), after, 21)
    plan = _plan(admin, sql, params)
    assert plan["Node Type"] == "Limit"
    scan = plan["Plans"][0]
    assert scan["Node Type"] == "Index Scan", plan
    assert scan["Index Name"] == "sync_jobs_user_created"
    kinds = {node["Node Type"] for node in _nodes(plan)}
    assert not kinds & {"Sort", "Incremental Sort", "Bitmap Heap Scan", "Seq Scan"}, kinds


def test_a_users_page_of_one_status_reads_its_own_index_range(
    loaded: tuple[PostgresStorage, str], admin: Any
) -> None:
    storage, _ = loaded
    page = JobFilter(user_id="user-7", statuses={JobStatus.RUNNING})
    sql, params = storage._sql.select_statement(page, None, 21)
    plan = _plan(admin, sql, params)
    kinds = {node["Node Type"] for node in _nodes(plan)}
    assert "Sort" not in kinds, plan
    assert any(
        node.get("Index Name") == "sync_jobs_user_status_created" for node in _nodes(plan)
    ), plan


def test_every_job_newest_first_walks_the_created_index(
    loaded: tuple[PostgresStorage, str], admin: Any
) -> None:
    storage, _ = loaded
    sql, params = storage._sql.select_statement(JobFilter(), None, 21)
    plan = _plan(admin, sql, params)
    assert plan["Plans"][0].get("Index Name") == "sync_jobs_created", plan


def test_recovery_and_heartbeats_read_the_partial_index_of_active_jobs(
    loaded: tuple[PostgresStorage, str], admin: Any
) -> None:
    storage, _ = loaded
    plan = _plan(admin, storage._sql.renew_leases, [datetime.now(UTC), "host:1:x"])
    assert any(node.get("Index Name") == "sync_jobs_active_owner" for node in _nodes(plan)), plan


def test_a_users_page_of_several_statuses_reads_one_index_range_per_status(
    loaded: tuple[PostgresStorage, str], admin: Any
) -> None:
    storage, _ = loaded
    page = JobFilter(user_id="user-7", statuses={JobStatus.RUNNING, JobStatus.FAILED}, offset=3)
    sql, params = storage._sql.select_statement(page, None, 21)
    plan = _plan(admin, sql, params)
    scans = [node for node in _nodes(plan) if node["Node Type"] == "Index Scan"]
    assert len(scans) == 2, plan
    assert {node["Index Name"] for node in scans} == {"sync_jobs_user_status_created"}
    # Each range stops at offset + limit rows: the sort above them sorts at most 2 x 24.
    limits = [node for node in _nodes(plan) if node["Node Type"] == "Limit"]
    assert len(limits) == 3, plan


def test_the_stale_job_lookup_reads_the_partial_index_not_the_table(
    loaded: tuple[PostgresStorage, str], admin: Any
) -> None:
    # Two in five jobs here are active, the share at which the planner used to read the
    # whole table (a Seq Scan over every finished job) rather than the lease index.
    storage, _ = loaded
    for before in (datetime(2025, 1, 2, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)):
        plan = _plan(admin, storage._sql.find_stale, ["host:1:x", before, 100])
        kinds = {node["Node Type"] for node in _nodes(plan)}
        assert "Seq Scan" not in kinds, plan
        assert "Sort" not in kinds, plan
        assert any(node.get("Index Name") == "sync_jobs_active_owner" for node in _nodes(plan)), (
            plan
        )
