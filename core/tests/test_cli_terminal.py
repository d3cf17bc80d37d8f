"""``cidx-jobs`` on a real terminal (a pseudo-terminal from the stdlib ``pty`` module): the
operator sees coloured tables and a progress bar; with NO_COLOR, or without rich, plain
aligned text and still a summary."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .cli_helpers import cli_env, make_database

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="pseudo-terminals are POSIX"),
    pytest.mark.skipif(
        __import__("importlib").util.find_spec("rich") is None,
        reason="colour and progress bars need rich (cidx-jobs-core[cli])",
    ),
]

ESCAPE = "\x1b["
#: An escape code that sets a colour or a style (SGR).
COLOUR = re.compile(r"\x1b\[[0-9;]*m")
#: What rich's progress bar is drawn with.
BAR = "━"


def in_terminal(*args: str, env: dict[str, str], prelude: str = "") -> tuple[int, str]:
    """Run ``cidx-jobs ARGS`` with stdin, stdout and stderr on a pseudo-terminal of 120
    columns; returns its exit status and everything it wrote to the terminal."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    code = f"{prelude}\nimport sys\nfrom cidx_jobs._cli import main\nsys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # the child closed the terminal (EIO on Linux)
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        status = process.wait(timeout=10)
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
    return status, b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    url = make_database(tmp_path / "jobs.db")
    return cli_env(CIDX_JOBS_URL=url, TERM="xterm-256color", COLUMNS="120")


def test_a_terminal_gets_coloured_tables(env: dict[str, str]) -> None:
    status, screen = in_terminal("list", env=env)
    assert status == 0, screen
    assert ESCAPE in screen
    assert "\x1b[1;31mfailed" in screen  # a failed job's status in bold red
    assert "\x1b[36mrunning" in screen  # a running one in cyan
    assert "STATUS" in screen
    assert "sync-11" in screen
    status, screen = in_terminal("doctor", env=env)
    assert status == 1
    assert "\x1b[1;31mproblem" in screen  # the abandoned job, in red


def test_a_terminal_gets_a_progress_bar_then_a_summary(env: dict[str, str]) -> None:
    status, screen = in_terminal("cleanup", "--retention-days", "0", env=env)
    assert status == 0, screen
    assert "deleting expired jobs" in screen
    assert BAR in screen
    assert "5/5" in screen  # the bar counts the jobs deleted
    assert "deleted 5 job(s) and 0 checkpoint(s)" in screen
    assert screen.index("deleted 5 job(s)") > screen.rindex(BAR)  # the summary ends it


def test_list_all_shows_its_progress(env: dict[str, str]) -> None:
    status, screen = in_terminal("list", "--all", env=env)
    assert status == 0, screen
    assert "reading jobs" in screen
    assert BAR in screen
    assert "16/16" in screen


def test_no_color_means_plain_text_on_a_terminal(env: dict[str, str]) -> None:
    status, screen = in_terminal("list", env={**env, "NO_COLOR": "1"})
    assert status == 0, screen
    assert ESCAPE not in screen
    assert "STATUS" in screen
    assert "sync-11" in screen
    status, screen = in_terminal("cleanup", "--retention-days", "0", env={**env, "NO_COLOR": "1"})
    assert status == 0, screen
    assert not COLOUR.search(screen)  # the bar moves, in no colour
    assert "deleted 5 job(s)" in screen


def test_without_rich_the_terminal_gets_plain_aligned_text(env: dict[str, str]) -> None:
    # As if cidx-jobs-core were installed without its [cli] extra.
    hide_rich = "import sys\nsys.modules['rich'] = None"
    status, screen = in_terminal("list", env=env, prelude=hide_rich)
    assert status == 0, screen
    assert ESCAPE not in screen
    lines = [line for line in screen.splitlines() if line.strip()]
    assert lines[0].split()[:4] == ["ID", "USER", "PROJECT", "STATUS"]
    status, screen = in_terminal("cleanup", "--retention-days", "0", env=env, prelude=hide_rich)
    assert status == 0, screen
    assert BAR not in screen
    assert "deleted 5 job(s)" in screen


def test_an_80_column_terminal_keeps_ids_statuses_and_times_whole(tmp_path: Path) -> None:
    from cidx_jobs import JobStatus, SyncJob, open_persistence

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    ids = [f"sync-2026-12-02-000{i}" for i in range(3)]
    with open_persistence(url) as store:
        for job_id in ids:
            store.save_job(
                SyncJob.create(id=job_id, user_id="alice.smith", project_id="backend-service")
            )
        store.update_job_status(ids[1], JobStatus.RUNNING)
        store.update_job_status(
            ids[1], JobStatus.FAILED, error_message="git pull failed: could not resolve host"
        )
        store.update_job_status(ids[2], JobStatus.RUNNING)
        store.update_job_status(ids[2], JobStatus.INTERRUPTED)
    env = cli_env(CIDX_JOBS_URL=url, TERM="xterm-256color", COLUMNS="80")
    status, screen = in_terminal("list", env=env)
    assert status == 0, screen
    lines = [COLOUR.sub("", line) for line in screen.splitlines()]
    table = [line for line in lines if not line.startswith("job ")]  # the events' log lines
    assert all(len(line) <= 80 for line in table), "\n".join(table)
    for job_id in ids:
        assert any(job_id in line for line in table), "\n".join(table)
    assert any("interrupted" in line for line in table)
    assert sum(bool(re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", line)) for line in table) == 3
