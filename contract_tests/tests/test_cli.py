"""``python -m cidx_jobs_contract URL``: the suite against any installed backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cidx_jobs_contract import main
from cidx_jobs_contract._cli import url_for

REPOSITORY = Path(__file__).resolve().parents[2]


def _run(
    *arguments: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cidx_jobs_contract", *arguments],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_the_whole_suite_passes_on_memory_from_the_repository_root() -> None:
    # The suite's file is inside the repository, whose pytest configuration pytest would
    # find; the command uses its own configuration instead.
    result = _run("memory://", cwd=REPOSITORY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "configfile: _pytest.ini" in result.stdout
    assert " passed" in result.stdout
    assert " failed" not in result.stdout
    # skips are visible and say which capability is missing
    assert "needs capability 'persistent'" in result.stdout


def test_the_configuration_of_the_current_folder_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --no-such-option\n")
    (tmp_path / "conftest.py").write_text("raise RuntimeError('this conftest must not load')\n")
    (tmp_path / "tox.ini").write_text("[pytest]\naddopts = --no-such-option\n")
    result = _run(
        "memory://", "-q", "-k", "save_then_load_returns or cursor_from_another", cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_an_unknown_backend_exits_non_zero(tmp_path: Path) -> None:
    result = _run("bogus://", cwd=tmp_path)
    assert result.returncode != 0
    assert "bogus" in result.stderr
    assert "memory" in result.stderr, "the message lists the installed backends"


def test_a_failing_test_exits_non_zero(tmp_path: Path) -> None:
    # memory:// does not survive a reopen; declaring that it does must fail the run.
    result = _run("--with", "persistent", "memory://", "-q", "-k", "survives_close", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed" in result.stdout


_FOLDER_PLUGIN = '''
"""A test backend that proves each test gets a fresh folder from {tmp}."""
from pathlib import Path

from cidx_jobs import hookimpl
from cidx_jobs.errors import ConfigError
from cidx_jobs_memory import MemoryJobStore


def _factory(config):
    folder = Path(config.path).parent
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder")
    marker = folder / "opened"
    if marker.exists():
        raise ConfigError(f"{folder} was used by another test")
    marker.touch()
    config.reader().finish()
    return MemoryJobStore(hooks=config.hooks, settings=config.settings)


@hookimpl
def cidx_jobs_register_backends(register):
    register("folder", _factory)
'''


def test_tmp_in_the_url_is_a_fresh_folder_for_each_test(tmp_path: Path) -> None:
    # A third-party backend, installed the way any distribution is: an entry point.
    site = tmp_path / "site"
    dist_info = site / "cidx_jobs_folder_test-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: cidx-jobs-folder-test\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text("[cidx_jobs]\nfolder = cidx_jobs_folder_test\n")
    (site / "cidx_jobs_folder_test.py").write_text(textwrap.dedent(_FOLDER_PLUGIN))
    pythonpath = os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])
    result = _run(
        "folder:///{tmp}/jobs",
        "-q",
        "-k",
        "save_then_load_returns or duplicate_id or default_filter",
        cwd=tmp_path,
        env={"PYTHONPATH": pythonpath},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_help_lists_every_capability_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for flag in ("persistent", "concurrent_threads", "multi_process", "{tmp}"):
        assert flag in out


def test_an_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--with", "flying", "memory://"])
    assert exit.value.code == 2
    assert "flying" in capsys.readouterr().err


def test_url_for_replaces_every_placeholder(tmp_path: Path) -> None:
    assert (
        url_for("sqlite:///{tmp}/jobs.db", tmp_path) == f"sqlite:///{tmp_path.as_posix()}/jobs.db"
    )
    assert url_for("x:///{tmp}/a?copy={tmp}/b", tmp_path).count(tmp_path.as_posix()) == 2
    assert url_for("memory://", tmp_path) == "memory://"
