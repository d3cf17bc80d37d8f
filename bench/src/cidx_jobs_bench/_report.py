"""The report: sections of rows rendered as markdown tables, the targets, and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NA = "n/a"


def us(value: float | None) -> str:
    """Microseconds for a table cell."""
    if value is None:
        return NA
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def ms(value: float | None) -> str:
    """Milliseconds for a table cell."""
    if value is None:
        return NA
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}"


def ratio(value: float | None) -> str:
    """A ratio for a table cell."""
    return NA if value is None else f"{value:.2f}x"


def pct(value: float | None) -> str:
    """A fraction as a percentage for a table cell."""
    return NA if value is None else f"{value * 100:.0f}%"


def count(value: int | None) -> str:
    """A count for a table cell."""
    return NA if value is None else f"{value:,}"


@dataclass
class Section:
    """One table of the report: display rows, the raw figures behind them, and notes."""

    key: str
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    data: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, cells: list[str], **figures: Any) -> None:
        """Append a display row and the figures it shows."""
        if len(cells) != len(self.headers):
            raise ValueError(f"{self.key}: {len(cells)} cells for {len(self.headers)} headers")
        self.rows.append(cells)
        self.data.append(figures)

    def markdown(self) -> str:
        """The section as a markdown heading, table and notes."""
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.headers) + " |")
        lines.append(
            "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(self.headers))) + " |"
        )
        lines.extend("| " + " | ".join(row) + " |" for row in self.rows)
        if self.notes:
            lines.append("")
            lines.extend(self.notes)
        return "\n".join(lines)


@dataclass
class Target:
    """One target of issue 5, 11, 12 or 14 and whether this run met it (``None``: not measured)."""

    name: str
    goal: str
    measured: str
    met: bool | None


@dataclass
class Report:
    """Everything one run measured."""

    meta: dict[str, Any]
    sections: list[Section] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def section(self, key: str, title: str, headers: list[str]) -> Section:
        """A new section, appended to the report."""
        found = Section(key, title, headers)
        self.sections.append(found)
        return found

    def find(self, key: str) -> Section | None:
        """The section with this key, if it was measured."""
        for section in self.sections:
            if section.key == key:
                return section
        return None

    def markdown(self) -> str:
        """The whole report as markdown."""
        parts = [section.markdown() for section in self.sections]
        if self.targets:
            lines = [
                "### Targets (issues 5, 11, 12 and 14)",
                "",
                "| target | goal | measured | met |",
            ]
            lines.append("| --- | --- | --- | --- |")
            for target in self.targets:
                met = NA if target.met is None else ("yes" if target.met else "**no**")
                lines.append(f"| {target.name} | {target.goal} | {target.measured} | {met} |")
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + "\n"

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "meta": self.meta,
            "sections": [asdict(section) for section in self.sections],
            "targets": [asdict(target) for target in self.targets],
        }

    def write_json(self, path: Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, default=str) + "\n")
