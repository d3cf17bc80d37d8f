"""The SQLite backend passes the whole contract suite, through the public route."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cidx_jobs import JobPersistence, open_persistence
from cidx_jobs_contract import Capabilities, JobStoreContract


class TestSqliteContract(JobStoreContract):
    """The contract suite on ``sqlite:///{tmp}/jobs.db``."""

    @pytest.fixture
    def store_config(self, tmp_path: Path) -> str:
        return f"sqlite:///{tmp_path}/jobs.db"

    @pytest.fixture
    def store(self, store_config: str) -> Iterator[JobPersistence]:
        with open_persistence(store_config) as store:
            yield store

    @pytest.fixture
    def capabilities(self) -> Capabilities:
        return Capabilities(persistent=True, concurrent_threads=True, multi_process=True)
