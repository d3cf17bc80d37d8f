"""The quick version of every stress scenario, run with the normal tests.

Each test runs one scenario as ``python -m cidx_jobs_stress --quick --only NAME`` would and
requires zero failures, and that the scenario really did its work (kills, faults, calls
checked), so that a scenario that silently stopped testing fails here too. Known defects
(see ``test_regressions.py``) are reported by the scenarios but not counted as failures.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cidx_jobs_stress import ScenarioResult, StressConfig, run_scenarios

pytestmark = pytest.mark.slow


def run_quick(name: str, workdir: Path) -> ScenarioResult:
    (result,) = run_scenarios(StressConfig(quick=True, seed=0, workdir=workdir), [name])
    assert result.failures == 0, "\n".join(result.messages)
    return result


def test_crash_consistency(tmp_path: Path) -> None:
    result = run_quick("crash", tmp_path)
    assert result.kills >= 20
    assert result.outcomes["calls journalled"] > 0
    # Every call whose result the model knows was checked, and after every kill the whole
    # store was compared with the journal (more checks than those calls).
    unmodelled = sum(
        n for key, n in result.outcomes.items() if key.endswith("(result not modelled)")
    )
    assert result.checked > result.outcomes["calls journalled"] - unmodelled + result.trials


def test_faults(tmp_path: Path) -> None:
    result = run_quick("faults", tmp_path)
    assert result.outcomes["disk full (max_size_mb): faults"] > 0
    assert result.outcomes["file removed: faults"] > 0
    assert result.outcomes["damaged pages: faults"] > 0
    parts_run = result.outcomes["read-only file: trials"] + len(
        [s for s in result.skipped if s.startswith("read-only")]
    )
    assert parts_run > 0
    assert result.checked > 500


def test_concurrency(tmp_path: Path) -> None:
    result = run_quick("concurrency", tmp_path)
    assert result.trials == 4
    assert result.outcomes["compare-and-set attempts"] > 0
    assert result.outcomes["last-write-wins writes"] > 0
    assert result.outcomes["'database is locked' reaching a caller"] == 0


def test_bad_input(tmp_path: Path) -> None:
    result = run_quick("badinput", tmp_path)
    assert result.outcomes["rejected with ValidationError"] > 50
    assert result.outcomes["valid input accepted"] > 50


def test_isolation(tmp_path: Path) -> None:
    result = run_quick("isolation", tmp_path)
    assert result.outcomes["cursor reused with another filter"] > 0
    assert result.checked > 500


def test_errors_and_limits(tmp_path: Path) -> None:
    result = run_quick("errors", tmp_path)
    assert result.outcomes["deep paths: refused with ConfigError"] > 0
    assert result.outcomes["invalid UTF-8: listings naming the jobs"] > 0
    assert result.outcomes["oversized text: refused"] > 0
    assert result.outcomes["backup targets: refused"] == 6
    mounted = result.outcomes["full disk at open: StorageFullError"] + len(
        [s for s in result.skipped if s.startswith("full disk")]
    )
    assert mounted > 0


def test_recovery_files(tmp_path: Path) -> None:
    result = run_quick("recovery", tmp_path)
    assert result.outcomes["live wal: recovered"] > 0
    assert result.outcomes["symlink: followed, link kept"] > 0
    assert result.outcomes["live writer: recoveries"] == 1
    assert result.outcomes["wal flip: recovered"] == 2
    assert result.outcomes["live writer: acknowledged saves checked"] > 50
    assert result.outcomes["page kinds: interior page of sync_jobs: jobs kept of 9000"] == 9000
    assert result.faults > 0
    assert result.checked > 50


def test_fencing(tmp_path: Path) -> None:
    result = run_quick("fencing", tmp_path)
    assert result.faults == 2  # a real stall (SIGSTOP) past the lease, and a clock step
    assert result.outcomes["jobs taken over from the stalled worker"] >= 1
    assert result.outcomes["clock step: live workers' jobs taken over"] >= 1
    assert result.outcomes["late writes of a former owner refused"] >= 1
    assert result.outcomes["jobs completed by their workers, checked"] > 0


def test_shm_files(tmp_path: Path) -> None:
    result = run_quick("shm", tmp_path)
    if result.skipped:
        pytest.skip(result.skipped[0])
    assert result.outcomes["shm removed: new process refused"] == 1
    assert result.outcomes["wal and shm removed: new process refused"] == 1
    assert result.outcomes["shm removed: acknowledged saves checked"] >= 40
    assert result.outcomes["shm truncated: acknowledged saves checked"] >= 30


def test_retention(tmp_path: Path) -> None:
    result = run_quick("retention", tmp_path)
    assert result.outcomes["jobs recovered"] == 200
    assert result.outcomes["recovered jobs older than the retention"] > 150
    assert result.outcomes["interrupted jobs deleted exactly at the retention"] == 1
