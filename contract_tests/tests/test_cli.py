"""``python -m cidx_jobs_contract URL``: the suite against any installed backend."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import Phase

import cidx_jobs_contract._cli as cli
from cidx_jobs import BLOCK_ENV_VAR
from cidx_jobs_contract import main
from cidx_jobs_contract._hypothesis import NO_SHRINK_ENV_VAR, contract_settings

#: Every test runs the whole suite, or part of it, in a process of its own.
pytestmark = pytest.mark.slow

REPOSITORY = Path(__file__).resolve().parents[2]
SQLITE_URLS = ["sqlite:///{tmp}/jobs.db", "sqlite://"]
#: The tests of the durability and multi-process capabilities (5 in all).
PERSISTENCE_TESTS = (
    "survives or reopened or rolled_back_block_is_not or second_handle or processes_share"
)

sqlite_required = pytest.mark.skipif(
    "sqlite" in os.environ.get(BLOCK_ENV_VAR, "").split(","),
    reason=f"the sqlite plugin is blocked ({BLOCK_ENV_VAR})",
)


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


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout + result.stderr


def test_the_whole_suite_passes_on_memory_from_the_repository_root() -> None:
    # The suite's file is inside the repository, whose pytest configuration pytest would
    # find; the command uses its own configuration instead.
    result = _run("memory://", cwd=REPOSITORY)
    assert result.returncode == 0, _output(result)
    assert "configfile: _pytest.ini" in result.stdout
    assert " passed" in result.stdout
    assert " failed" not in result.stdout
    # skips are visible and say which capability is missing
    assert "needs capability 'persistent'" in result.stdout


def test_memory_runs_with_its_declared_capabilities_and_no_flags(tmp_path: Path) -> None:
    result = _run("memory://", "-q", "-k", "threads or compare_and_set_has", cwd=tmp_path)
    assert result.returncode == 0, _output(result)
    assert "backend 'memory' (memory); capabilities: concurrent_threads" in result.stdout
    assert " passed" in result.stdout
    assert "skipped" not in result.stdout, "the declared capability's tests all run"


@sqlite_required
@pytest.mark.parametrize("url", SQLITE_URLS)
def test_sqlite_runs_the_durability_and_multi_process_tests_with_no_flags(
    tmp_path: Path, url: str
) -> None:
    result = _run(url, "-q", "-k", PERSISTENCE_TESTS, cwd=tmp_path)
    assert result.returncode == 0, _output(result)
    assert "persistent, concurrent_threads, multi_process" in result.stdout
    assert "5 passed" in result.stdout, result.stdout
    assert "skipped" not in result.stdout
    assert "needs capability" not in result.stdout


def test_without_narrows_the_declared_capabilities(tmp_path: Path) -> None:
    result = _run(
        "--without",
        "concurrent_threads",
        "memory://",
        "-q",
        "-k",
        "compare_and_set_has or save_then_load_returns",
        cwd=tmp_path,
    )
    assert result.returncode == 0, _output(result)
    assert "capabilities: none" in result.stdout
    assert "1 passed, 1 skipped" in result.stdout
    assert "needs capability 'concurrent_threads'" in result.stdout


@sqlite_required
def test_without_persistent_skips_the_durability_tests_of_sqlite(tmp_path: Path) -> None:
    result = _run(
        "--without",
        "persistent",
        "sqlite:///{tmp}/jobs.db",
        "-q",
        "-k",
        PERSISTENCE_TESTS,
        cwd=tmp_path,
    )
    assert result.returncode == 0, _output(result)
    # test_processes_share_the_storage needs multi_process only
    assert "1 passed, 4 skipped" in result.stdout, result.stdout
    assert "needs capability 'persistent'" in result.stdout


@pytest.mark.parametrize("url", ["memory://", pytest.param(SQLITE_URLS[0], marks=sqlite_required)])
def test_a_run_leaves_nothing_behind(tmp_path: Path, url: str) -> None:
    temporary = tmp_path / "tmp"
    folder = tmp_path / "cwd"
    temporary.mkdir()
    folder.mkdir()
    result = _run(
        url,
        "-q",
        "-k",
        f"save_then_load_returns or checkpoints_belong or {PERSISTENCE_TESTS}",
        cwd=folder,
        env={"TMPDIR": str(temporary), "TEMP": str(temporary), "TMP": str(temporary)},
    )
    assert result.returncode == 0, _output(result)
    assert " passed" in result.stdout
    assert sorted(path.name for path in temporary.iterdir()) == []
    assert sorted(path.name for path in folder.iterdir()) == []


def test_no_shrink_sets_the_switch_for_the_run_only(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []

    def fake_pytest_main(arguments: list[str]) -> int:
        seen.append((os.environ.get(NO_SHRINK_ENV_VAR), arguments))
        return 0

    monkeypatch.delenv(NO_SHRINK_ENV_VAR, raising=False)
    monkeypatch.setattr(cli.pytest, "main", fake_pytest_main)
    assert main(["--no-shrink", "memory://", "-k", "stateful"]) == 0
    assert main(["memory://"]) == 0
    (shrink_off, arguments), (default, _) = seen
    assert (shrink_off, default) == ("1", None)
    assert arguments[-2:] == ["-k", "stateful"]
    assert NO_SHRINK_ENV_VAR not in os.environ, "the switch is set for the run only"
    # and the switch turns shrinking off in the suite's Hypothesis settings
    assert Phase.shrink in contract_settings().phases
    monkeypatch.setenv(NO_SHRINK_ENV_VAR, "1")
    assert Phase.shrink not in contract_settings().phases


def test_the_configuration_of_the_current_folder_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --no-such-option\n")
    (tmp_path / "conftest.py").write_text("raise RuntimeError('this conftest must not load')\n")
    (tmp_path / "tox.ini").write_text("[pytest]\naddopts = --no-such-option\n")
    result = _run(
        "memory://", "-q", "-k", "save_then_load_returns or cursor_from_another", cwd=tmp_path
    )
    assert result.returncode == 0, _output(result)
    assert "2 passed" in result.stdout


def test_an_unknown_backend_exits_non_zero(tmp_path: Path) -> None:
    result = _run("bogus://", cwd=tmp_path)
    assert result.returncode == 2
    assert "bogus" in result.stderr
    assert "memory" in result.stderr, "the message lists the installed backends"


def test_a_failing_test_exits_non_zero(tmp_path: Path) -> None:
    # memory:// does not survive a reopen; declaring that it does must fail the run.
    result = _run("--with", "persistent", "memory://", "-q", "-k", "survives_close", cwd=tmp_path)
    assert result.returncode == 1, _output(result)
    assert "1 failed" in result.stdout


_FOLDER_PLUGIN = '''
"""Test backends: `folder` gives each test a fresh folder from its scratch factory."""
import shutil
from contextlib import contextmanager
from pathlib import Path

from cidx_jobs import hookimpl
from cidx_jobs.errors import ConfigError
from cidx_jobs_memory import MemoryStorage


def _factory(config):
    folder = Path(config.path).parent
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder")
    marker = folder / "opened"
    if marker.exists():
        raise ConfigError(f"{folder} was used by another test")
    marker.touch()
    config.reader().finish()
    return MemoryStorage()


@contextmanager
def _scratch(base, workdir):
    folder = workdir / "store"
    folder.mkdir()
    try:
        yield base.replace("{tmp}", folder.as_posix())
    finally:
        shutil.rmtree(folder)


@contextmanager
def _broken_scratch(base, workdir):
    raise OSError(28, "No space left on device")
    yield base


@hookimpl
def cidx_jobs_register_backends(register):
    register("folder", _factory, scratch=_scratch)
    register("noscratch", _factory)
    register("brokenscratch", _factory, scratch=_broken_scratch)
'''


def _install_folder_plugin(tmp_path: Path) -> dict[str, str]:
    """A third-party backend, installed the way any distribution is: an entry point."""
    site = tmp_path / "site"
    dist_info = site / "cidx_jobs_folder_test-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: cidx-jobs-folder-test\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text("[cidx_jobs]\nfolder = cidx_jobs_folder_test\n")
    (site / "cidx_jobs_folder_test.py").write_text(textwrap.dedent(_FOLDER_PLUGIN))
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_a_third_party_scratch_factory_gives_each_test_a_fresh_storage(tmp_path: Path) -> None:
    env = _install_folder_plugin(tmp_path)
    result = _run(
        "folder:///{tmp}/jobs",
        "-q",
        "-k",
        "save_then_load_returns or duplicate_id or default_filter",
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, _output(result)
    assert "capabilities: none" in result.stdout
    assert "3 passed" in result.stdout


def test_a_backend_without_a_scratch_factory_exits_2(tmp_path: Path) -> None:
    env = _install_folder_plugin(tmp_path)
    result = _run("noscratch:///{tmp}/jobs", cwd=tmp_path, env=env)
    assert result.returncode == 2, _output(result)
    assert "registered no scratch factory" in result.stderr


def test_a_scratch_factory_that_raises_exits_2_without_a_traceback(tmp_path: Path) -> None:
    env = _install_folder_plugin(tmp_path)
    result = _run("brokenscratch:///{tmp}/jobs", cwd=tmp_path, env=env)
    assert result.returncode == 2, _output(result)
    assert "the backend's scratch factory failed: OSError" in result.stderr
    assert "No space left on device" in result.stderr
    assert "Traceback" not in _output(result)


def test_a_capability_both_with_and_without_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--with", "persistent", "--without", "persistent", "memory://"])
    assert exit.value.code == 2
    assert "--with and --without both name persistent" in capsys.readouterr().err


def test_help_lists_every_capability_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    for flag in ("persistent", "concurrent_threads", "multi_process", "fault_injection"):
        assert flag in out
    assert "--no-shrink" in out
    assert NO_SHRINK_ENV_VAR in out


def test_an_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["--with", "flying", "memory://"])
    assert exit.value.code == 2
    assert "flying" in capsys.readouterr().err
