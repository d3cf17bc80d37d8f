"""Combine the test run's coverage data, report it, and enforce the threshold on a full run.

tox.ini's test envs run this after ``coverage run -m pytest``, passing it the same ``{posargs}``
as pytest got: ``python tools/coverage_report.py [PYTEST_ARGS...]``.

* Without arguments (the full default run) ``coverage report`` applies ``fail_under`` from the
  root pyproject.toml's ``[tool.coverage.report]`` and exits non-zero under it.
* With arguments (``tox -e py311 -- core/tests -k cursor``: a partial run) the figure is
  reported but not enforced.

After the table it prints one line for each distribution, an entry of ``[tool.coverage.paths]``.
A full run also fails if a distribution was not measured at all (its package never imported, so
coverage.py would leave it out of the total instead of counting it as 0%).
"""

from __future__ import annotations

import json
import subprocess
import sys

import coverage


def run_coverage(*arguments: str, capture: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coverage", *arguments],
        capture_output=capture,
        text=True,
        check=False,
    )


def distributions() -> dict[str, str]:
    """Each measured distribution's source folder (as the report names it) by its name."""
    paths = coverage.Coverage().get_option("paths")
    assert isinstance(paths, dict)
    return {patterns[0].rstrip("/") + "/": name for name, patterns in paths.items()}


def by_distribution() -> list[str]:
    """Print each distribution's figure; return the names of those not measured."""
    done = run_coverage("json", "--quiet", "--fail-under=0", "-o", "-", capture=True)
    if done.returncode:
        sys.stderr.write(done.stderr)
        return []
    folders = distributions()
    sums = {name: [0, 0] for name in folders.values()}
    for path, data in json.loads(done.stdout)["files"].items():
        name = next((n for folder, n in folders.items() if path.startswith(folder)), None)
        if name is not None:
            summary = data["summary"]
            sums[name][0] += summary["covered_lines"] + summary.get("covered_branches", 0)
            sums[name][1] += summary["num_statements"] + summary.get("num_branches", 0)
    print("by distribution (lines and branches):")
    for name, (covered, total) in sums.items():
        print(f"  {name:20} " + (f"{100 * covered / total:5.1f}%" if total else "not imported"))
    return [name for name, (_, total) in sums.items() if not total]


def main(pytest_arguments: list[str]) -> int:
    combined = run_coverage("combine", "--quiet")
    if combined.returncode:
        return combined.returncode
    report = ["report"]
    if pytest_arguments:
        print(
            "a partial run (pytest was given arguments): the threshold is not enforced", flush=True
        )
        report.append("--fail-under=0")
    result = run_coverage(*report).returncode
    missing = by_distribution()
    if missing and not pytest_arguments:
        print(f"not measured at all: {', '.join(missing)}", file=sys.stderr)
        return result or 1
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
