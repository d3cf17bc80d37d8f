"""The worked example of docs/writing-a-backend.md passes the contract suite, as the page says.

The example's code (the blocks of "A complete example" that define the backend) is
installed as a third-party plugin would be, a module with a ``cidx_jobs`` entry point, and
the suite's command line runs against it in a subprocess, as its author would run it.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs" / "writing-a-backend.md"
#: The example's section, and the text that ends the part defining the backend.
SECTION = "## A complete example"
END = "Before packaging it"
#: The contract tests left out to keep this quick: the stateful model test alone takes a
#: quarter of the run, and every other mixin's tests run.
LEFT_OUT = "not test_matches_the_reference_model"

pytestmark = pytest.mark.skipif(
    not DOCS.is_file(), reason=f"the docs live at the repository root ({DOCS}), which is absent"
)


def example_code() -> str:
    """The code of the blocks that define the example backend, in the page's order."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index(SECTION)
    section = text[start : text.index(END, start)]
    blocks = re.findall(r"^```python\n(.*?)^```[ \t]*$", section, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 3, f"expected the 3 blocks of the example, found {len(blocks)}"
    return "\n\n".join(blocks)


def _install(site: Path) -> None:
    """The example as an installed distribution whose entry point names its plugin."""
    dist_info = site / "cidx_jobs_sharedsql_example-0.1.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: cidx-jobs-sharedsql-example\nVersion: 0.1\n"
    )
    (dist_info / "entry_points.txt").write_text(
        "[cidx_jobs]\nsharedsql = cidx_jobs_sharedsql_example:plugin\n"
    )
    (site / "cidx_jobs_sharedsql_example.py").write_text(example_code(), encoding="utf-8")


def _tables(database: Path) -> list[str]:
    with closing(sqlite3.connect(database)) as connection:
        return sorted(name for (name,) in connection.execute("SELECT name FROM sqlite_master"))


def test_the_example_code_is_found() -> None:
    code = example_code()
    for name in ("class SharedSqlStorage", "def shared_sql_scratch", "inventory="):
        assert name in code


@pytest.mark.slow
def test_the_worked_example_passes_the_contract_suite(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install(site)
    database = tmp_path / "server" / "server.db"
    database.parent.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cidx_jobs_contract",
            f"sharedsql:///{database.as_posix()}",
            "-q",
            "-k",
            LEFT_OUT,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "capabilities: persistent, concurrent_threads, fault_injection" in result.stdout
    passed = re.search(r"(\d+) passed", result.stdout)
    assert passed is not None, output
    assert int(passed.group(1)) > 150, output
    assert " failed" not in result.stdout
    # Each test's namespace was dropped: the "server" holds no table.
    assert _tables(database) == []
