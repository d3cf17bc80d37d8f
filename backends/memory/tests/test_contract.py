"""The memory backend passes the whole contract suite, through the public route."""

from __future__ import annotations

import pytest

from cidx_jobs_contract import AsyncApiFixtures, JobStoreContract


class TestMemoryContract(JobStoreContract):
    """The contract suite on ``memory://``, with the capabilities its plugin declares."""

    @pytest.fixture
    def base_config(self) -> str:
        return "memory://"


# The same suite through the async facade (AsyncJobPersistence), so that the two APIs cannot
# drift. Slow-marked, so it runs on Python 3.11 only: what the facade does differently on each
# Python (asyncio, threads, cancellation) is tested by core/tests/test_async.py on every one.
@pytest.mark.slow
class TestMemoryAsyncContract(AsyncApiFixtures, JobStoreContract):
    """The contract suite on ``memory://``, every call an awaited call of the async store."""

    @pytest.fixture
    def base_config(self) -> str:
        return "memory://"
