"""The PostgreSQL backend passes the whole contract suite, through the public route."""

from __future__ import annotations

import pytest

from cidx_jobs_contract import AsyncApiFixtures, JobStoreContract


class TestPostgresContract(JobStoreContract):
    """The contract suite on the ``postgresql`` backend, with the capabilities, the scratch
    factory (a fresh schema per test) and the inventory that its plugin registers."""

    @pytest.fixture
    def base_config(self, postgres_url: str) -> str:
        return postgres_url


# The same suite through the async facade (AsyncJobPersistence), so that the two APIs cannot
# drift. Slow-marked, so it runs on Python 3.11 only: what the facade does differently on each
# Python (asyncio, threads, cancellation) is tested by core/tests/test_async.py on every one.
@pytest.mark.slow
class TestPostgresAsyncContract(AsyncApiFixtures, JobStoreContract):
    """The contract suite on ``postgresql://``, every call an awaited call of the async store."""

    @pytest.fixture
    def base_config(self, postgres_url: str) -> str:
        return postgres_url
