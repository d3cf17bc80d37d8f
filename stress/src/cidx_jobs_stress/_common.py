"""Helpers shared by the scenarios and their child processes."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from cidx_jobs import JobPersistence, StoreSettings, open_persistence
from cidx_jobs.errors import CidxJobsError

__all__ = [
    "Clock",
    "Outcome",
    "ThreadClock",
    "call",
    "open_memory",
    "open_sqlite",
    "quiet_logging",
    "reaped",
    "remove_database",
    "spawn_child",
    "sqlite_url",
    "tail",
]

UTC = timezone.utc


class Clock:
    """A store clock the caller sets before each call, so stored times are known exactly."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def set(self, now: datetime) -> None:
        """Make the clock read ``now``."""
        self.now = now

    def __call__(self) -> datetime:
        return self.now


class ThreadClock:
    """Like :class:`Clock`, but each thread of a shared store sets its own reading."""

    def __init__(self, start: datetime) -> None:
        self._start = start
        self._local = threading.local()

    def set(self, now: datetime) -> None:
        """Make the clock read ``now`` in the calling thread."""
        self._local.now = now

    def __call__(self) -> datetime:
        now: datetime = getattr(self._local, "now", self._start)
        return now


def sqlite_url(path: Path, options: Mapping[str, object] | None = None) -> str:
    """The ``sqlite://`` URL of the database at ``path`` (absolute) with ``options``."""
    url = "sqlite:///" + quote(str(path.absolute()))
    if options:
        url += "?" + urlencode({key: str(value) for key, value in options.items()})
    return url


def open_sqlite(
    path: Path, clock: Clock | ThreadClock | None = None, **options: object
) -> JobPersistence:
    """Open the SQLite store at ``path`` through the public entry point.

    :raises CidxJobsError: as :func:`cidx_jobs.open_persistence`.
    """
    settings = StoreSettings() if clock is None else StoreSettings(clock=clock)
    return open_persistence(sqlite_url(path, options), settings=settings)


def open_memory(clock: Clock | None = None) -> JobPersistence:
    """Open an in-memory store through the public entry point."""
    settings = StoreSettings() if clock is None else StoreSettings(clock=clock)
    return open_persistence("memory://", settings=settings)


class Outcome:
    """How one call ended: its value, a typed error, or a raw (untyped) exception."""

    __slots__ = ("error", "raw", "value")

    def __init__(
        self,
        value: Any = None,
        error: CidxJobsError | None = None,
        raw: BaseException | None = None,
    ) -> None:
        self.value = value
        self.error = error
        self.raw = raw

    @property
    def ok(self) -> bool:
        """True when the call returned."""
        return self.error is None and self.raw is None

    def describe(self) -> str:
        """A one-line description, with the raw exception's innermost frame."""
        if self.raw is not None:
            frames = traceback.extract_tb(self.raw.__traceback__)
            where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
            return f"raw {type(self.raw).__module__}.{type(self.raw).__name__}: {self.raw!s:.160}{where}"
        if self.error is not None:
            return f"{type(self.error).__name__}: {self.error!s:.160}"
        return f"returned {self.value!r:.80}"


def call(function: Any, *args: Any, **kwargs: Any) -> Outcome:
    """Call ``function`` and classify how it ended (KeyboardInterrupt still propagates)."""
    try:
        return Outcome(value=function(*args, **kwargs))
    except CidxJobsError as error:
        return Outcome(error=error)
    except Exception as error:
        return Outcome(raw=error)


def remove_database(path: Path) -> None:
    """Delete a database file with its ``-wal``, ``-shm`` and ``-journal`` companions."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path.with_name(path.name + suffix))


def quiet_logging() -> None:
    """Keep the library's log records (routine job events) off the console of a stress run."""
    for name in ("cidx_jobs", "cidx_jobs.sqlite"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def spawn_child(args: list[str], stderr_path: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``python -m cidx_jobs_stress.child ARGS`` with stdout piped, stderr to a file."""
    with stderr_path.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "cidx_jobs_stress.child", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            **kwargs,
        )


@contextlib.contextmanager
def reaped(process: subprocess.Popen[bytes]) -> Iterator[subprocess.Popen[bytes]]:
    """Kill ``process`` if it is still running when the block ends, and close its pipes."""
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def tail(path: Path, size: int = 800) -> str:
    """The end of a text file, for failure messages."""
    try:
        data = path.read_bytes()
    except OSError:
        return ""
    return data[-size:].decode("utf-8", "replace").strip()
