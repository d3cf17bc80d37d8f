"""The test module ``python -m cidx_jobs_contract`` runs: the whole suite on a URL's backend.

The URL and the capabilities come from environment variables the command sets.
"""

from __future__ import annotations

import json
import os

import pytest

import cidx_jobs_contract

# The command imported the package before pytest started, when marking the suite's
# modules for assertion rewriting had no effect; mark them again before importing them.
pytest.register_assert_rewrite(*cidx_jobs_contract.ASSERTING_MODULES)

from cidx_jobs_contract import Capabilities, JobStoreContract  # noqa: E402
from cidx_jobs_contract._cli import CAPABILITIES_ENV_VAR, URL_ENV_VAR  # noqa: E402


class TestContract(JobStoreContract):
    """Every contract test, on the backend the command's URL names."""

    @pytest.fixture
    def base_config(self) -> str:
        url = os.environ.get(URL_ENV_VAR)
        if not url:
            raise RuntimeError(
                f"run this module with `python -m cidx_jobs_contract URL` (or set {URL_ENV_VAR})"
            )
        return url

    @pytest.fixture
    def capabilities(self) -> Capabilities:
        return Capabilities(**json.loads(os.environ[CAPABILITIES_ENV_VAR]))
