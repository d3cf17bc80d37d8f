"""The reliability stress suite of cidx-jobs.

Run it with ``python -m cidx_jobs_stress [--quick] [--seconds N] [--seed S]``; see the
README and docs/reliability.md. Each scenario is a module with a ``run(config, workdir)``
function returning a :class:`ScenarioResult`:

* :mod:`cidx_jobs_stress.crash`: a writer killed with SIGKILL at random moments;
* :mod:`cidx_jobs_stress.faults`: disk full, read-only and removed files, damaged pages;
* :mod:`cidx_jobs_stress.concurrency`: 4 processes x 4 threads on one file;
* :mod:`cidx_jobs_stress.badinput`: hostile values for every public method and model;
* :mod:`cidx_jobs_stress.isolation`: user filters and cursors across random data sets.
* :mod:`cidx_jobs_stress.errors_limits` (``errors``): deep paths, full disks at open, read-only
  mounts, rows of invalid UTF-8, a starved writer, oversized text, backup targets.
"""

from __future__ import annotations

from ._config import StressConfig
from ._known import KNOWN_DEFECTS, KnownDefect
from ._report import ScenarioResult, format_table
from ._runner import SCENARIOS, run_scenarios

__all__ = [
    "KNOWN_DEFECTS",
    "SCENARIOS",
    "KnownDefect",
    "ScenarioResult",
    "StressConfig",
    "format_table",
    "run_scenarios",
]

__version__ = "0.2.0"
