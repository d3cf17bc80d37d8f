"""The suite has teeth: it fails on storages that each break one rule of the contract."""

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

from broken_backends import MEMORY_CAPABILITIES, {name}
from cidx_jobs import JobPersistence
from cidx_jobs_contract import Capabilities, JobStoreContract

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
    def base_config(self):
        return "memory://"

    @pytest.fixture
    def capabilities(self):
        declared = getattr({name}, "CAPABILITIES", MEMORY_CAPABILITIES)
        return Capabilities(**dict.fromkeys(declared, True))

    @pytest.fixture
    def store(self, store_settings):
        with JobPersistence({name}(), settings=store_settings) as store:
            yield store
"""

#: For each broken storage, the contract tests that must catch it (among those selected).
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
        "test_cleanup_deletes_every_batch_not_only_the_first",
        "test_matches_the_reference_model",
    },
    "KeepsOldCheckpoint": {
        "test_saving_a_phase_again_replaces_its_checkpoint",
        "test_matches_the_reference_model",
    },
    "KeysetOffByOne": {
        "test_keyset_pages_have_no_duplicates_and_no_gaps",
        "test_keyset_pages_through_identical_created_at",
        "test_edge_times_order_newest_first_and_page_with_cursors",
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
        "test_uncommitted_writes_are_invisible_to_other_threads",
        "test_matches_the_reference_model",
    },
    "SharesMetadata": {
        "test_mutating_a_returned_job_changes_nothing",
        "test_mutating_the_saved_jobs_metadata_afterwards_changes_nothing",
    },
    "ClosedRaisesStorageError": {
        "test_every_call_after_close_raises_storage_unavailable",
        "test_close_is_idempotent_and_later_calls_raise",
    },
    "StopsAfterFirstBatch": {
        "test_cleanup_deletes_every_batch_not_only_the_first",
        "test_cleanup_batches_never_exceed_the_policys_batch_size",
    },
    "IgnoresBatchLimit": {
        "test_cleanup_batches_never_exceed_the_policys_batch_size",
    },
    "ReadsUncommitted": {
        "test_uncommitted_writes_are_invisible_to_other_threads",
    },
    "LosesUpdates": {
        "test_read_modify_write_blocks_lose_no_update",
    },
    "IgnoresHeartbeatInTakeOver": {
        "test_a_take_over_never_takes_a_job_whose_owner_heartbeated_after_the_lookup",
    },
    "TakeOverKeepsCompletedAt": {
        "test_a_recovered_job_of_any_age_is_kept_until_the_retention_passes_after_recovery",
    },
    # The behaviour before interrupted jobs held a lease: each new lease test fails on it.
    "LeasesOnlyActiveJobs": {
        "test_heartbeat_renews_only_own_leased_jobs",
        "test_heartbeat_renews_an_interrupted_job_of_its_owner_but_not_a_finished_one",
        "test_recovery_takes_an_interrupted_job_of_a_dead_owner_once_with_its_checkpoint",
        "test_an_interrupted_job_is_taken_only_once_its_owners_lease_expired",
        "test_after_a_hand_over_a_siblings_recovery_takes_the_jobs_at_once",
        "test_concurrent_recoveries_of_several_stores_take_each_interrupted_job_once",
    },
    "TakesLiveInterruptedJobs": {
        "test_recovery_leaves_live_and_own_and_finished_jobs",
        "test_heartbeat_renews_an_interrupted_job_of_its_owner_but_not_a_finished_one",
        "test_recovery_takes_an_interrupted_job_of_a_dead_owner_once_with_its_checkpoint",
        "test_an_interrupted_job_is_taken_only_once_its_owners_lease_expired",
    },
    "TakeOverKeepsInterruptedStamp": {
        "test_recovery_takes_an_interrupted_job_of_a_dead_owner_once_with_its_checkpoint",
    },
    # The stateful model test catches it too on some Pythons, not on others (its examples
    # differ by version): these three catch it on every one.
    "InterruptKeepsCompletedAt": {
        "test_an_interrupted_job_is_kept_for_the_retention_after_its_interruption",
        "test_completed_at_is_set_on_interruption_and_kept_while_the_job_stays_stopped",
        "test_interrupted_job_may_resume_without_expected",
    },
    "ClampsTimes": {
        "test_times_across_the_whole_range_round_trip_exactly",
        "test_the_clock_at_the_edges_of_the_range",
        "test_edge_times_order_newest_first_and_page_with_cursors",
        "test_date_range_filters_at_the_edges",
        "test_cleanup_cutoffs_at_the_edges",
    },
    "LeaksDriverErrors": {
        "test_an_injected_fault_raises_its_typed_error_and_writes_nothing",
        "test_a_fault_at_any_statement_of_a_call_fails_it_cleanly",
        "test_a_storage_failure_inside_a_block_dooms_the_block",
    },
    # Only a fault at a later statement of a call reaches these: not the first one.
    "LeaksOnCommit": {
        "test_a_fault_at_any_statement_of_a_call_fails_it_cleanly",
    },
    "LeaksInTakeOver": {
        "test_a_fault_at_any_statement_of_a_call_fails_it_cleanly",
    },
    "CommitsAfterFault": {
        "test_a_storage_failure_inside_a_block_dooms_the_block",
    },
}

#: A test every broken storage must still pass: each is broken in one way only.
CONTROL = "test_save_then_load_returns_an_equal_job"

#: The tests of storage failures, which the correct fake-driver storage must pass.
FAULT_TESTS = {
    "test_an_injected_fault_raises_its_typed_error_and_writes_nothing",
    "test_a_fault_at_any_statement_of_a_call_fails_it_cleanly",
    "test_a_storage_failure_inside_a_block_dooms_the_block",
    "test_every_call_after_close_raises_storage_unavailable",
}


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str, selected: set[str]
) -> pytest.RunResult:
    pytester.syspathinsert(HERE)
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "teeth")
    pytester.makepyfile(test_broken=_MODULE.format(name=name))
    # Only the tests expected to catch it, to keep this quick.
    return pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-q", "-k", " or ".join(sorted(selected))
    )


def _names(reports: list[pytest.TestReport]) -> set[str]:
    return {report.nodeid.rsplit("::", 1)[-1].split("[")[0] for report in reports}


@pytest.mark.parametrize("name", sorted(CAUGHT_BY))
def test_the_suite_catches_a_broken_backend(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    result = _run(pytester, monkeypatch, name, {*CAUGHT_BY[name], CONTROL})
    passed, skipped, failed = result.reprec.listoutcomes()  # type: ignore[attr-defined]
    assert _names(failed) == CAUGHT_BY[name], result.stdout.str()
    assert not skipped, result.stdout.str()
    # the backend is broken in one way only: the rest of what it does still passes
    assert CONTROL in _names(passed)


def test_a_storage_that_translates_its_driver_errors_passes_the_fault_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The control of LeaksDriverErrors and CommitsAfterFault: the same fake driver, used right.
    result = _run(pytester, monkeypatch, "TranslatesDriverErrors", {*FAULT_TESTS, CONTROL})
    passed, skipped, failed = result.reprec.listoutcomes()  # type: ignore[attr-defined]
    assert not failed, result.stdout.str()
    assert not skipped, result.stdout.str()
    assert _names(passed) == {*FAULT_TESTS, CONTROL}


def test_every_broken_backend_is_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))
    import broken_backends

    assert set(CAUGHT_BY) == set(broken_backends.BROKEN)
