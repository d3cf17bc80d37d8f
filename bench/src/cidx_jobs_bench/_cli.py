"""``python -m cidx_jobs_bench``: run the benchmark, print markdown, write JSON."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib.metadata
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import _settings, _targets
from ._report import Report
from ._settings import SECTIONS, Settings


def _size(text: str) -> int:
    """``10000``, ``10k``, ``10_000`` or ``1M`` as an int."""
    cleaned = text.strip().lower().replace("_", "").replace(",", "")
    factor = 1
    if cleaned.endswith("k"):
        factor, cleaned = 1000, cleaned[:-1]
    elif cleaned.endswith("m"):
        factor, cleaned = 1_000_000, cleaned[:-1]
    try:
        value = int(float(cleaned) * factor)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 10000, 100k, 1M)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _sizes(text: str) -> list[int]:
    return [_size(part) for part in text.split(",") if part.strip()]


def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m cidx_jobs_bench``."""
    p = argparse.ArgumentParser(
        prog="python -m cidx_jobs_bench",
        description=(
            "Benchmark cidx-jobs: the SQLite and memory backends against raw sqlite3 running "
            "the same SQL (the floor), the PostgreSQL backend against raw psycopg running "
            "its SQL, and against peer job stores. Prints markdown tables "
            "on stdout (progress on stderr) and never asserts a time."
        ),
    )
    p.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions (<1 min)")
    p.add_argument(
        "--sizes",
        type=_sizes,
        nargs="+",
        metavar="N",
        help="jobs in the query databases (e.g. --sizes 10k 100k 1M); default 10k 100k 1M, "
        "quick 10k 100k",
    )
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        metavar="SECTION",
        help=f"run only these sections ({', '.join(SECTIONS)})",
    )
    p.add_argument("--skip", nargs="+", choices=SECTIONS, metavar="SECTION", default=[])
    p.add_argument("--no-peers", action="store_true", help="skip the peer job stores")
    p.add_argument("--ops", type=_size, help="timed calls per single-row operation")
    p.add_argument(
        "--index-ops", type=_size, help="timed calls per write and schema (indexes section)"
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds")
    p.add_argument("--users", type=_size, help="users in the query databases (default 1000)")
    p.add_argument("--large-cleanup", type=_size, help="expired jobs in the racing cleanup")
    p.add_argument("--size-jobs", type=_sizes, nargs="+", help="job counts for the file size")
    p.add_argument("--threads", type=int, help="threads in the concurrency run (default 8)")
    p.add_argument("--processes", type=int, help="processes in the concurrency run (default 4)")
    p.add_argument("--duration", type=float, help="seconds per concurrency run")
    p.add_argument(
        "--pool-size",
        type=int,
        help="the SQLite store's pool_size in the threads run (default: the backend's default)",
    )
    p.add_argument(
        "--async-ops",
        type=_size,
        help="timed calls per operation and API in the async section on SQLite (default 2000, "
        "quick 300; PostgreSQL: half)",
    )
    p.add_argument(
        "--clients",
        type=_size,
        dest="async_clients",
        help="concurrent HTTP connections in the async section's lag runs (default 200)",
    )
    p.add_argument(
        "--rate",
        type=float,
        dest="async_rate",
        help="requests per second, all clients together, of the async section's paced lag runs "
        "(default 500)",
    )
    p.add_argument(
        "--lag-duration",
        type=float,
        help="seconds per loaded lag run in the async section (default 3, quick 1.5)",
    )
    p.add_argument(
        "--postgres-url",
        metavar="URL",
        help="the PostgreSQL server of the async section (default $CIDX_JOBS_POSTGRES_URL, "
        "else postgresql://postgres@127.0.0.1:5432/test if it answers); it works in a "
        "throwaway schema and drops it",
    )
    p.add_argument(
        "--no-postgres",
        action="store_true",
        help="measure the async section on SQLite only, and skip the postgres section",
    )
    p.add_argument(
        "--postgres-jobs",
        type=_size,
        help="jobs in the postgres section's throwaway schema, where its filtered page is "
        "measured (default 1M, quick 100k)",
    )
    p.add_argument(
        "--postgres-ops",
        type=_size,
        help="timed calls per single-row operation and contender in the postgres section "
        "(default 2000, quick 200)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        help="where built databases are cached (default $CIDX_JOBS_BENCH_CACHE or "
        "~/.cache/cidx-jobs-bench)",
    )
    p.add_argument("--work-dir", type=Path, help="where scratch databases go (default: a temp dir)")
    return p


def settings_from(args: argparse.Namespace, work_dir: Path) -> Settings:
    """The run's settings: the defaults (or quick ones) with the command line's overrides."""
    cache_dir = args.cache_dir or _settings.default_cache_dir()
    base = _settings.defaults(quick=args.quick, cache_dir=cache_dir, work_dir=work_dir)
    changes: dict[str, Any] = {}
    if args.sizes:
        changes["sizes"] = tuple(sorted({s for group in args.sizes for s in group}))
    if args.size_jobs:
        changes["size_jobs"] = tuple(sorted({s for group in args.size_jobs for s in group}))
    for name in (
        "ops",
        "index_ops",
        "rounds",
        "users",
        "large_cleanup",
        "threads",
        "processes",
        "duration",
        "pool_size",
        "async_ops",
        "async_clients",
        "async_rate",
        "lag_duration",
        "postgres_url",
        "postgres_jobs",
        "postgres_ops",
    ):
        value = getattr(args, name)
        if value is not None:
            changes[name] = value
    sections = tuple(args.only) if args.only else SECTIONS
    skip = set(args.skip)
    if args.no_postgres:
        changes["postgres"] = False
        skip.add("postgres")
    if args.no_peers:
        skip.add("peers")
        changes["postgres_peer"] = False
    changes["sections"] = tuple(s for s in SECTIONS if s in sections and s not in skip)
    return dataclasses.replace(base, **changes)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _plugins() -> dict[str, str | None]:
    """The entry points of the ``cidx_jobs`` group (the plugins ``open_persistence`` loads):
    name -> the distribution and its version."""
    found: dict[str, str | None] = {}
    for entry_point in importlib.metadata.entry_points(group="cidx_jobs"):
        dist = entry_point.dist
        found[entry_point.name] = f"{dist.name} {dist.version}" if dist is not None else None
    return found


def _redacted(url: str | None) -> str | None:
    """A URL without its password, for the report."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


def meta(settings: Settings, argv: Sequence[str]) -> dict[str, Any]:
    """What a reader needs to reproduce the run."""
    return {
        "command": "python -m cidx_jobs_bench " + " ".join(argv),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "packages": {
            name: _version(name)
            for name in (
                "cidx-jobs-core",
                "cidx-jobs-sqlite",
                "cidx-jobs-memory",
                "huey",
                "persist-queue",
                "APScheduler",
                "SQLAlchemy",
                "cidx-jobs-postgres",
                "psycopg",
                "psycopg-pool",
                "procrastinate",
                "fastapi",
                "uvicorn",
            )
        },
        # Every plugin open_persistence() loads: a third-party observer (metrics, say)
        # runs on every event of the timed calls and shows in the sqlite figures.
        "plugins": _plugins(),
        "settings": {
            key: _redacted(value)
            if key == "postgres_url"
            else str(value)
            if isinstance(value, Path)
            else value
            for key, value in dataclasses.asdict(settings).items()
        },
    }


def _runners() -> dict[str, Callable[[Settings, Report], None]]:
    from . import (
        _async_api,
        _check,
        _cleanup,
        _concurrency,
        _indexes,
        _ops,
        _peers,
        _postgres,
        _query,
        _size,
    )

    return {
        "check": _check.run,
        "ops": _ops.run,
        "query": _query.run,
        "cleanup": _cleanup.run,
        "indexes": _indexes.run,
        "large-cleanup": _cleanup.run_large,
        "size": _size.run,
        "concurrency": _concurrency.run,
        "async": _async_api.run,
        "peers": _peers.run,
        "postgres": _postgres.run,
    }


def run(settings: Settings, argv: Sequence[str] = ()) -> Report:
    """Measure every selected section and evaluate the targets."""
    report = Report(meta=meta(settings, argv))
    runners = _runners()
    started = time.perf_counter()
    timings: dict[str, float] = {}
    for name in settings.sections:
        t0 = time.perf_counter()
        try:
            runners[name](settings, report)
        except Exception as error:
            # A broken section must not cost the others' figures; the report says so.
            failed = report.section(f"{name}-failed", f"{name}: failed", ["error"])
            failed.add([f"{type(error).__name__}: {error}"], error=repr(error))
            settings.log(f"{name} failed: {error!r}")
        timings[name] = round(time.perf_counter() - t0, 1)
        settings.log(f"{name}: {timings[name]} s")
    report.meta["section_seconds"] = timings
    report.meta["seconds"] = round(time.perf_counter() - started, 1)
    report.targets = _targets.evaluate(report)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark from the command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    with contextlib.ExitStack() as stack:
        if args.work_dir is not None:
            work_dir = args.work_dir
            work_dir.mkdir(parents=True, exist_ok=True)
        else:
            work_dir = Path(tempfile.mkdtemp(prefix="cidx-jobs-bench-"))
            stack.callback(shutil.rmtree, work_dir, True)
        settings = settings_from(args, work_dir)
        report = run(settings, argv)
    print(report.markdown(), end="")
    load = report.meta["load_average"]
    loaded = ", ".join(report.meta["plugins"]) or "none"
    print(
        f"\n_{report.meta['command']} — Python {report.meta['python']}, SQLite "
        f"{report.meta['sqlite']}, {report.meta['cpus']} CPUs, {report.meta['seconds']} s"
        + (f", load average {' '.join(f'{x:.2f}' for x in load)} at the start" if load else "")
        + f"; plugins: {loaded}._"
    )
    if args.json is not None:
        report.write_json(args.json)
        settings.log(f"wrote {args.json}")
    return 0
