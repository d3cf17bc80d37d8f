"""The memory backend passes the whole contract suite, through the public route."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cidx_jobs import JobPersistence, open_persistence
from cidx_jobs_contract import Capabilities, JobStoreContract


class TestMemoryContract(JobStoreContract):
    """The contract suite on ``memory://``."""

    @pytest.fixture
    def store(self) -> Iterator[JobPersistence]:
        with open_persistence("memory://") as store:
            yield store

    @pytest.fixture
    def capabilities(self) -> Capabilities:
        # Thread-safe, but nothing survives the process and no other process can see it.
        return Capabilities(concurrent_threads=True, persistent=False, multi_process=False)
