"""Defects the stress suite found that are not fixed yet.

Each has a regression test in ``stress/tests/test_regressions.py`` marked
``xfail(strict=True)``: when the defect is fixed, that test passes, xfail's strictness
fails the run, and the fixer removes the mark and the entry here. Until then a failure
matching an entry is reported as a *known defect* (its own column in the summary), not as a
new failure; ``--strict`` counts it as a failure all the same.
"""

from __future__ import annotations

import dataclasses
import re

__all__ = ["KNOWN_DEFECTS", "KnownDefect", "match"]


@dataclasses.dataclass(frozen=True)
class KnownDefect:
    """A defect with a failing regression test.

    :ivar name: a short name, shown in the report.
    :ivar pattern: a regular expression matching the failure messages it causes.
    :ivar test: the regression test that fails until it is fixed.
    """

    name: str
    pattern: str
    test: str


KNOWN_DEFECTS: tuple[KnownDefect, ...] = ()


def match(message: str) -> KnownDefect | None:
    """The known defect whose pattern matches a failure ``message``, if any."""
    for defect in KNOWN_DEFECTS:
        if re.search(defect.pattern, message, re.DOTALL):
            return defect
    return None
