"""The memory backend passes the whole contract suite, through the public route."""

from __future__ import annotations

import pytest

from cidx_jobs_contract import JobStoreContract


class TestMemoryContract(JobStoreContract):
    """The contract suite on ``memory://``, with the capabilities its plugin declares."""

    @pytest.fixture
    def base_config(self) -> str:
        return "memory://"
