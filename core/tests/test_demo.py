"""The README's main job: `cidx-jobs demo` survives a SIGKILLed worker and redoes nothing."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("cidx_jobs_sqlite", reason="the demo runs on the SQLite backend")
pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="the demo kills its worker with SIGKILL"
)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cidx_jobs", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONWARNINGS": "error"},
        check=False,
    )


def test_demo_recovers_and_resumes_every_job(tmp_path: Path) -> None:
    result = run("demo", "--dir", str(tmp_path / "demo"), "--jobs", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "SIGKILL worker 1" in out
    assert "3 job(s) left 'running'" in out
    assert "OK: 3/3 completed, finished phases redone: none" in out
    for job in ("sync-1", "sync-2", "sync-3"):
        assert f"{job}: completed, 100%, checkpoints ['git_pull', 'indexing', 'validation']" in out
    phases = (tmp_path / "demo" / "phases.log").read_text().splitlines()
    assert len(phases) == 9  # 3 jobs x 3 phases, each finished exactly once
    pids = {line.split()[2] for line in phases}
    assert len(pids) == 2  # the killed worker finished some phases, the second the rest
    assert (tmp_path / "demo" / "jobs.db").exists()


def test_demo_runs_twice_in_the_same_folder(tmp_path: Path) -> None:
    for _ in range(2):
        result = run("demo", "--dir", "again", "--jobs", "1", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr


def test_info_lists_the_installed_backends(tmp_path: Path) -> None:
    result = run("info", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sqlite" in result.stdout
    assert "memory" in result.stdout
    # each entry-point plugin with the distribution and version it came from
    for dist in ("cidx-jobs-sqlite", "cidx-jobs-memory"):
        assert f"{dist} {importlib.metadata.version(dist)}" in result.stdout
    assert "persistent" in result.stdout  # the sqlite backend's declared capabilities


def test_a_configuration_error_is_reported_without_a_traceback(tmp_path: Path) -> None:
    result = run("demo", "--url", "nosuch://", cwd=tmp_path)
    assert result.returncode == 2
    assert "BackendNotFoundError" in result.stderr
    assert "Traceback" not in result.stderr
