"""The suite has teeth: it fails on backends that each break one rule of the contract."""

from __future__ import annotations

from pathlib import Path

import pytest

# Imported here, before pytester's snapshot of sys.modules, so that each inner run
# reuses them instead of importing (and assertion-rewriting) them again.
import cidx_jobs_memory  # noqa: F401
from cidx_jobs_contract import JobStoreContract  # noqa: F401

pytest_plugins = ["pytester"]

HERE = Path(__file__).resolve().parent

_MODULE = """
import pytest
from hypothesis import Phase, settings

from broken_backends import {name}
from cidx_jobs_contract import JobStoreContract

# Fail fast: a broken backend needs no shrinking to be proven broken.
settings.register_profile(
    "teeth",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=40,
    stateful_step_count=30,
    phases=[Phase.explicit, Phase.generate],
)


class TestBroken(JobStoreContract):
    @pytest.fixture
    def store(self):
        with {name}() as store:
            yield store
"""

#: For each broken backend, contract tests that must catch it (the stateful test catches all).
CAUGHT_BY = {
    "IgnoresUserFilter": {
        "test_filter_by_user",
        "test_a_users_query_never_returns_another_users_job",
        "test_isolation_holds_for_every_page_and_filter",
        "test_matches_the_reference_model",
    },
    "DeletesActiveJobs": {
        "test_delete_expired_never_deletes_an_active_job",
        "test_delete_expired_removes_finished_jobs_and_their_checkpoints",
        "test_matches_the_reference_model",
    },
    "KeepsOldCheckpoint": {
        "test_saving_a_phase_again_replaces_its_checkpoint",
        "test_matches_the_reference_model",
    },
    "KeysetOffByOne": {
        "test_keyset_pages_have_no_duplicates_and_no_gaps",
        "test_keyset_pages_through_identical_created_at",
        "test_matches_the_reference_model",
    },
    "OffsetOffByOne": {
        "test_offset_pages_have_no_duplicates_and_no_gaps",
        "test_matches_the_reference_model",
    },
    "NoTerminalGuard": {
        "test_terminal_job_never_goes_back_to_active_without_expected",
        "test_matches_the_reference_model",
    },
    "NoRollback": {
        "test_an_exception_rolls_back_every_call_and_propagates",
        "test_matches_the_reference_model",
    },
    "SharesMetadata": {
        "test_mutating_a_returned_job_changes_nothing",
        "test_mutating_the_saved_jobs_metadata_afterwards_changes_nothing",
    },
}


@pytest.mark.parametrize("name", sorted(CAUGHT_BY))
def test_the_suite_catches_a_broken_backend(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    pytester.syspathinsert(HERE)
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "teeth")
    pytester.makepyfile(test_broken=_MODULE.format(name=name))
    # Only the tests expected to catch it, plus one that must pass, to keep this quick.
    selected = " or ".join(sorted({*CAUGHT_BY[name], "test_save_then_load_returns_an_equal_job"}))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-q", "-k", selected)
    passed, _, failed = result.reprec.listoutcomes()  # type: ignore[attr-defined]
    failed_names = {report.nodeid.rsplit("::", 1)[-1].split("[")[0] for report in failed}
    assert failed_names == CAUGHT_BY[name], result.stdout.str()
    # the backend is broken in one way only: the rest of what it does still passes
    assert "test_save_then_load_returns_an_equal_job" in {
        report.nodeid.rsplit("::", 1)[-1] for report in passed
    }
