"""The SQLite backend passes the whole contract suite, through the public route."""

from __future__ import annotations

import pytest

from cidx_jobs_contract import JobStoreContract


class TestSqliteContract(JobStoreContract):
    """The contract suite on the ``sqlite`` backend, with the capabilities and the scratch
    factory (a fresh folder per test) that its plugin registers."""

    @pytest.fixture
    def base_config(self) -> str:
        return "sqlite://"
