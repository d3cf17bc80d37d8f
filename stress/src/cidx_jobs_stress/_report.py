"""What a scenario found, and the summary table the command prints."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter

from ._known import match

__all__ = ["ScenarioResult", "format_table"]

#: Failures kept verbatim per scenario; the rest are only counted.
MAX_KEPT_FAILURES = 25


@dataclasses.dataclass
class ScenarioResult:
    """The counts of one scenario run.

    :ivar name: the scenario's name (``crash``, ``faults``, ...).
    :ivar trials: independent attempts (a child run, a fault trial, a data set, an example).
    :ivar kills: child processes killed with SIGKILL.
    :ivar faults: faults injected (disk full hits, files removed, pages damaged, ...).
    :ivar checked: operations whose outcome was checked against a model or a rule.
    :ivar failures: how many checks failed, known defects aside; the first ones are in
        :attr:`messages`.
    :ivar messages: what the first failures were.
    :ivar known: failures explained by a known defect (see :mod:`cidx_jobs_stress._known`),
        by defect name, with an example message each in :attr:`known_examples`.
    :ivar outcomes: how many times each named outcome was seen (for the report).
    :ivar skipped: parts that could not run here, each with the reason.
    """

    name: str
    trials: int = 0
    kills: int = 0
    faults: int = 0
    checked: int = 0
    failures: int = 0
    messages: list[str] = dataclasses.field(default_factory=list)
    outcomes: Counter[str] = dataclasses.field(default_factory=Counter)
    skipped: list[str] = dataclasses.field(default_factory=list)
    known: Counter[str] = dataclasses.field(default_factory=Counter)
    known_examples: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return self.failures == 0

    def fail(self, message: str, *, keep: bool = True) -> None:
        """Count one failed check and, with ``keep``, its message (up to a limit); a failure
        that a known defect explains is counted in :attr:`known` instead."""
        defect = match(message)
        if defect is not None:
            self.known[defect.name] += 1
            self.known_examples.setdefault(defect.name, message)
            return
        self.failures += 1
        if keep and len(self.messages) < MAX_KEPT_FAILURES:
            self.messages.append(message)

    def count_known_as_failures(self) -> None:
        """Turn the known defects into failures (the ``--strict`` option)."""
        self.failures += sum(self.known.values())
        self.messages.extend(self.known_examples.values())
        self.known.clear()
        self.known_examples.clear()

    def check(self, condition: bool, message: str) -> bool:
        """Count one check; a false ``condition`` is a failure described by ``message``."""
        self.checked += 1
        if not condition:
            self.fail(message)
        return condition

    def to_json(self) -> dict[str, object]:
        """The result as a JSON-ready dict (a child process reports it this way)."""
        data = dataclasses.asdict(self)
        data["outcomes"] = dict(self.outcomes)
        data["known"] = dict(self.known)
        return data

    @classmethod
    def from_json(cls, text: str) -> ScenarioResult:
        """The result that :meth:`to_json` described, from its JSON text."""
        data = json.loads(text)
        data["outcomes"] = Counter(data["outcomes"])
        data["known"] = Counter(data["known"])
        return cls(**data)

    def merge(self, other: ScenarioResult) -> None:
        """Add the counts of ``other`` (a part of this scenario) to this one."""
        self.trials += other.trials
        self.kills += other.kills
        self.faults += other.faults
        self.checked += other.checked
        self.failures += other.failures
        room = MAX_KEPT_FAILURES - len(self.messages)
        self.messages.extend(other.messages[: max(room, 0)])
        self.outcomes.update(other.outcomes)
        self.skipped.extend(other.skipped)
        self.known.update(other.known)
        for name, example in other.known_examples.items():
            self.known_examples.setdefault(name, example)


_COLUMNS = (
    "scenario",
    "trials",
    "kills",
    "faults injected",
    "operations checked",
    "failures",
    "known defects",
)


def format_table(results: list[ScenarioResult]) -> str:
    """The summary table (Markdown, so that it can be pasted into the docs as it is)."""
    rows = [
        (
            r.name,
            str(r.trials),
            str(r.kills),
            str(r.faults),
            str(r.checked),
            str(r.failures),
            str(sum(r.known.values())),
        )
        for r in results
    ]
    total = (
        "total",
        str(sum(r.trials for r in results)),
        str(sum(r.kills for r in results)),
        str(sum(r.faults for r in results)),
        str(sum(r.checked for r in results)),
        str(sum(r.failures for r in results)),
        str(sum(sum(r.known.values()) for r in results)),
    )
    rows.append(total)
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(_COLUMNS)]

    def line(cells: tuple[str, ...]) -> str:
        padded = [
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = (
        "| "
        + " | ".join("-" * w if i == 0 else "-" * (w - 1) + ":" for i, w in enumerate(widths))
        + " |"
    )
    return "\n".join([line(_COLUMNS), rule, *(line(row) for row in rows)])
