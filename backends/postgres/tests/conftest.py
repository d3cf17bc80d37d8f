"""Where the PostgreSQL tests find their server, and the fixtures they share.

The server is named by ``CIDX_JOBS_POSTGRES_URL``. When it is unset, the local test
database (``postgresql://postgres@127.0.0.1:5432/test``) is used if a server answers
there; otherwise every test here is skipped, with a reason that says how to enable them.
In CI (``CI=true``) they never skip: a missing server fails them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest

from cidx_jobs_postgres._plugin import DEFAULT_TEST_URL, TEST_URL_ENV, drop_schema

ENABLE = (
    f"set {TEST_URL_ENV}=postgresql://USER@HOST:PORT/DATABASE to run them (each test uses a "
    "throwaway schema there and drops it)"
)


def _answers(url: str) -> str | None:
    """``None`` if a server answers at ``url``, else why not."""
    try:
        with psycopg.connect(url, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as error:
        return " ".join(str(error).split())
    return None


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The URL of the database the tests use (a server that answers)."""
    url = os.environ.get(TEST_URL_ENV)
    in_ci = os.environ.get("CI", "").lower() == "true"
    problem = _answers(url or DEFAULT_TEST_URL)
    if problem is None:
        return url or DEFAULT_TEST_URL
    if url:
        pytest.fail(f"{TEST_URL_ENV}={url!r} names no server that answers: {problem}")
    if in_ci:
        pytest.fail(
            f"CI=true, so the PostgreSQL tests must run, but no server answers at "
            f"{DEFAULT_TEST_URL} ({problem}): start it (.ci/run does) or {ENABLE}"
        )
    pytest.skip(f"no PostgreSQL server answers at {DEFAULT_TEST_URL} ({problem}); {ENABLE}")


@pytest.fixture
def schema_url(postgres_url: str) -> Iterator[str]:
    """The URL of a fresh schema of the test database, dropped after the test."""
    schema = f"cidx_t_{secrets.token_hex(5)}"
    separator = "&" if "?" in postgres_url else "?"
    try:
        yield f"{postgres_url}{separator}schema={schema}"
    finally:
        drop_schema(postgres_url, schema)


@pytest.fixture
def admin(postgres_url: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A plain autocommit connection to the test database, for what tests do behind the
    store's back (terminating its sessions, reading the catalog)."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        yield conn
