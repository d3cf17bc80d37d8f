"""The PostgreSQL backend passes the whole contract suite, through the public route."""

from __future__ import annotations

import pytest

from cidx_jobs_contract import JobStoreContract


class TestPostgresContract(JobStoreContract):
    """The contract suite on the ``postgresql`` backend, with the capabilities, the scratch
    factory (a fresh schema per test) and the inventory that its plugin registers."""

    @pytest.fixture
    def base_config(self, postgres_url: str) -> str:
        return postgres_url
