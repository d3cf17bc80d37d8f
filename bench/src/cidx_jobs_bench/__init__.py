"""cidx-jobs-bench: the benchmark of cidx-jobs against the raw-sqlite3 floor and peer job stores.

Run it with ``python -m cidx_jobs_bench [--quick] [--sizes ...] [--json out.json]``; see
the README for what each figure means. It measures and reports; it never asserts a time.
"""

from __future__ import annotations

from ._cli import main, parser, run, settings_from
from ._report import Report, Section, Target
from ._settings import SECTIONS, Settings, defaults

__all__ = [
    "SECTIONS",
    "Report",
    "Section",
    "Settings",
    "Target",
    "defaults",
    "main",
    "parser",
    "run",
    "settings_from",
]

__version__ = "0.2.0"
