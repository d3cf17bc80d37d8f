"""How the command line writes: aligned tables, colour, progress bars and JSON.

On a terminal, with rich installed (``pip install 'cidx-jobs-core[cli]'``), tables are
drawn by rich, in colour, and slow work shows a progress bar on stderr. Piped, with
``NO_COLOR`` set, with ``TERM=dumb``, or without rich, tables are plain text aligned with
spaces, with no escape codes and no progress bar: what scripts and ``grep`` want. ``--json``
writes JSON instead, one object per line.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import IO, Any

import attrs

#: What to install for colour and progress bars.
RICH_HINT = "pip install 'cidx-jobs-core[cli]'"

#: The colour of each job status and each health, as rich style names.
STATUS_STYLES = {
    "pending": "blue",
    "queued": "blue",
    "running": "cyan",
    "interrupted": "magenta",
    "completed": "green",
    "failed": "bold red",
    "cancelled": "yellow",
}
HEALTH_STYLES = {"ok": "green", "warning": "yellow", "problem": "bold red"}


@attrs.frozen
class Cell:
    """A table cell: its text and, on a colour terminal, its style."""

    text: str
    style: str | None = None


#: The narrowest a column of free text gets on a narrow terminal before it folds.
FOLD_MIN_WIDTH = 8


@attrs.frozen
class Column:
    """A table column: its heading, whether its cells align right (numbers), and whether
    they are free text that may wrap onto more lines (``fold``) when the terminal is narrow.
    Ids, statuses, counts and times never wrap: a folded id cannot be copied, nor a folded
    time read. On a terminal too narrow for every column, the ``drop`` columns are hidden
    (``--json`` has them all)."""

    name: str
    right: bool = False
    fold: bool = False
    #: Columns a terminal too narrow for the table hides, highest first (0: always shown).
    drop: int = 0


def status_cell(status: str) -> Cell:
    return Cell(status, STATUS_STYLES.get(status))


def health_cell(health: str) -> Cell:
    return Cell(health, HEALTH_STYLES.get(health))


def _rich_installed() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def format_time(when: datetime | None) -> str:
    """``2025-06-01 12:00:05Z``, or ``-``."""
    if when is None:
        return "-"
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def format_age(delta: timedelta) -> str:
    """A duration for people: ``45s``, ``12m 5s``, ``3h 12m``, ``2d 4h``."""
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{sign}{days}d {hours}h"
    if hours:
        return f"{sign}{hours}h {minutes}m"
    if minutes:
        return f"{sign}{minutes}m {seconds}s"
    return f"{sign}{seconds}s"


def format_bytes(size: int | None) -> str:
    if size is None:
        return "unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _json_default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, (set, frozenset, tuple)):
        return sorted(value, key=str)
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)


class Output:
    """Where a command writes, and how: chosen once, from the streams and the environment.

    :param stdout: results (tables, JSON).
    :param stderr: errors, warnings and progress bars.
    """

    def __init__(
        self,
        stdout: IO[str] | None = None,
        stderr: IO[str] | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.out = stdout if stdout is not None else sys.stdout
        self.err = stderr if stderr is not None else sys.stderr
        env = os.environ if environ is None else environ
        dumb = env.get("TERM", "") == "dumb"
        #: https://no-color.org: set and not empty.
        self.no_color = bool(env.get("NO_COLOR"))
        self.rich = _rich_installed()
        #: Tables in colour, drawn by rich.
        self.colour = self.rich and not dumb and not self.no_color and _isatty(self.out)
        #: Progress bars on stderr.
        self.progress_bars = self.rich and not dumb and _isatty(self.err)
        self._console: Any = None

    # -- text --------------------------------------------------------------------------------

    def _rich_console(self) -> Any:
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.out, highlight=False, force_terminal=True)
        return self._console

    def _text(self, cell: Cell | str) -> Any:
        from rich.text import Text

        if isinstance(cell, Cell):
            return Text(cell.text, style=cell.style or "")
        return Text(cell)

    def line(self, text: str = "", style: str | None = None) -> None:
        """One line of results."""
        if self.colour and style:
            self._rich_console().print(self._text(Cell(text, style)))
        else:
            print(text, file=self.out)

    def heading(self, text: str) -> None:
        self.line(text, "bold")

    def fields(self, pairs: Sequence[tuple[str, Cell | str]], indent: int = 2) -> None:
        """``name  value`` lines, the values aligned."""
        if not pairs:
            return
        width = max(len(name) for name, _ in pairs)
        pad = " " * indent
        for name, value in pairs:
            cell = value if isinstance(value, Cell) else Cell(value)
            if self.colour:
                from rich.text import Text

                text = Text(pad)
                text.append(f"{name:<{width}}  ", style="dim")
                text.append(cell.text, style=cell.style or "")
                self._rich_console().print(text)
            else:
                print(f"{pad}{name:<{width}}  {cell.text}", file=self.out)

    def table(
        self, columns: Sequence[Column], rows: Sequence[Sequence[Cell | str]], indent: int = 0
    ) -> None:
        """An aligned table: rich's in colour on a terminal, else plain columns of text."""
        cells = [[c if isinstance(c, Cell) else Cell(c) for c in row] for row in rows]
        if self.colour:
            self._rich_table(columns, cells, indent)
            return
        headings = [column.name.upper() for column in columns]
        widths = [
            max([len(headings[i]), *(len(row[i].text) for row in cells)])
            for i in range(len(columns))
        ]
        pad = " " * indent
        for row in [[Cell(h) for h in headings], *cells]:
            parts = []
            for i, (column, cell) in enumerate(zip(columns, row, strict=True)):
                last = i == len(columns) - 1
                if column.right:
                    parts.append(cell.text.rjust(widths[i]))
                else:
                    parts.append(cell.text if last else cell.text.ljust(widths[i]))
            print(pad + "  ".join(parts).rstrip(), file=self.out)

    def _rich_table(self, columns: Sequence[Column], rows: list[list[Cell]], indent: int) -> None:
        from rich import box
        from rich.padding import Padding
        from rich.table import Table

        columns, rows = self._fitting(columns, rows, indent)
        table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, header_style="bold")
        for i, column in enumerate(columns):
            natural = max([len(column.name), *(len(row[i].text) for row in rows)])
            # Fold rather than cut: an id or a path shown with "…" cannot be copied. Only free
            # text wraps, so that the narrow columns give way first.
            table.add_column(
                column.name.upper(),
                justify="right" if column.right else "left",
                overflow="fold",
                no_wrap=not column.fold,
                min_width=FOLD_MIN_WIDTH if column.fold else natural,
            )
        for row in rows:
            table.add_row(*(self._text(cell) for cell in row))
        self._rich_console().print(
            Padding(table, (0, 0, 0, indent), expand=False) if indent else table
        )

    def _fitting(
        self, columns: Sequence[Column], rows: list[list[Cell]], indent: int
    ) -> tuple[list[Column], list[list[Cell]]]:
        """The columns (and their cells) that fit the terminal, hiding ``drop`` ones."""
        width = self._rich_console().width - indent
        keep = list(range(len(columns)))

        def needed() -> int:
            total = 3 * (len(keep) - 1)  # a space of padding each side, and the rule
            for i in keep:
                natural = max([len(columns[i].name), *(len(row[i].text) for row in rows)])
                total += min(natural, FOLD_MIN_WIDTH) if columns[i].fold else natural
            return total

        while needed() > width:
            droppable = [i for i in keep if columns[i].drop]
            if not droppable:
                break
            keep.remove(max(droppable, key=lambda i: columns[i].drop))
        return [columns[i] for i in keep], [[row[i] for i in keep] for row in rows]

    def json(self, value: object) -> None:
        """One JSON value on one line."""
        print(
            json.dumps(value, ensure_ascii=False, default=_json_default, separators=(", ", ": ")),
            file=self.out,
        )

    # -- stderr --------------------------------------------------------------------------------

    def _err_styled(self, text: str, style: str) -> None:
        if self.rich and not self.no_color and _isatty(self.err):
            from rich.console import Console
            from rich.text import Text

            Console(file=self.err, highlight=False, force_terminal=True).print(
                Text(text, style=style)
            )
        else:
            print(text, file=self.err)

    def error(self, message: str) -> None:
        """One line on stderr: ``cidx-jobs: message``."""
        self._err_styled("cidx-jobs: " + " ".join(message.split()), "bold red")

    def warn(self, message: str) -> None:
        self._err_styled("cidx-jobs: warning: " + " ".join(message.split()), "yellow")

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A progress bar on stderr while the block runs; yields ``advance(n)``.

        Without a terminal (or without rich) the block runs with no bar.
        """
        if not self.progress_bars:
            yield lambda _n: None
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        console = Console(file=self.err, force_terminal=True, no_color=self.no_color)
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as bar:
            task = bar.add_task(description, total=total)

            def advance(n: int) -> None:
                bar.advance(task, n)

            yield advance
            if total is not None:
                bar.update(task, completed=max(total, bar.tasks[0].completed))

    @contextlib.contextmanager
    def activity(self, description: str) -> Iterator[None]:
        """A spinner on stderr while work of unknown length runs (a backup, a check)."""
        if not self.progress_bars:
            yield
            return
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        console = Console(file=self.err, force_terminal=True, no_color=self.no_color)
        with Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        ) as spinner:
            spinner.add_task(description, total=None)
            yield
