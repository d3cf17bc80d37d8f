"""The ``cidx-jobs`` command line: ``demo`` and ``info``, and the operator's commands.

Exit status: 0 when the command did what it was asked and found nothing wrong; 1 when it
found a problem (``doctor``'s complaints, a pending migration for ``migrate --check``, an
unknown job, a finished job an override left alone, a storage failure); 2 for a usage or
configuration error (a bad argument, no or a bad URL, an operation the backend does not
support). Errors are one line on stderr that says what to do, never a traceback (set
``CIDX_JOBS_DEBUG=1`` to get one).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from cidx_jobs._config import URL_ENV_VAR
from cidx_jobs.errors import (
    CidxJobsError,
    ConfigError,
    PluginError,
    StorageError,
    UnsupportedOperationError,
    ValidationError,
)

from ._output import Output
from ._store import (
    CommandError,
    days,
    parse_when,
    positive_int,
    positive_seconds,
)

#: Set to get a traceback for an unexpected failure.
DEBUG_ENV_VAR = "CIDX_JOBS_DEBUG"
#: The exit statuses.
OK, PROBLEM, USAGE = 0, 1, 2
#: The exit status when the reader of the output went away, as a shell reports SIGPIPE.
BROKEN_PIPE = 141

_DESCRIPTION = f"""\
Durable job state for the CIDX server: the operator's tools.

Every command but demo, info, salvage and copy works on the store that --url names, or else
{URL_ENV_VAR}: the same URL the server is configured with
(e.g. sqlite:////var/lib/cidx/jobs.db). Commands never migrate the database
(except migrate). Exit status: 0 ok, 1 problems found, 2 usage or configuration
error. See docs/operations.md.
"""


class _Formatter(logging.Formatter):
    """Log records as one line each: ``cidx-jobs: warning: ...``, with no traceback."""

    def format(self, record: logging.LogRecord) -> str:
        message = " ".join(record.getMessage().split())
        if record.exc_info and record.exc_info[1] is not None:
            message += f" ({type(record.exc_info[1]).__name__}: {record.exc_info[1]})"
        return f"cidx-jobs: {record.levelname.lower()}: {message}"


def _not_an_event(record: logging.LogRecord) -> bool:
    # The facade's and the default observers' own messages ("job x failed", "recovered 2
    # jobs") repeat what the command prints; errors, and what backends log, still show.
    return record.name != "cidx_jobs" or record.levelno >= logging.ERROR


def _configure_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    if not os.environ.get(DEBUG_ENV_VAR):
        handler.setFormatter(_Formatter())
        handler.addFilter(_not_an_event)
    logger = logging.getLogger("cidx_jobs")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if os.environ.get(DEBUG_ENV_VAR) else logging.WARNING)
    logger.propagate = False


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every command."""
    from cidx_jobs import __version__

    parser = argparse.ArgumentParser(
        prog="cidx-jobs",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cidx-jobs-core {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--url",
        default=None,
        help=f"the job store's URL (default: ${URL_ENV_VAR})",
    )
    reading = argparse.ArgumentParser(add_help=False, parents=[store])
    reading.add_argument("--json", action="store_true", help="write JSON instead of a table")
    lease = argparse.ArgumentParser(add_help=False)
    lease.add_argument(
        "--lease-timeout",
        type=positive_seconds,
        default=None,
        metavar="SECONDS",
        help="how long an owner may stay silent before its jobs count as abandoned "
        "(default: the store's lease_timeout_seconds, 300)",
    )

    demo = commands.add_parser(
        "demo",
        help="run simulated sync jobs through a restart and resume them from their checkpoints",
    )
    demo.add_argument(
        "--dir",
        default="cidx-jobs-demo",
        help="folder for the demo's SQLite database (default: ./cidx-jobs-demo)",
    )
    demo.add_argument("--url", default=None, help="use this store URL instead (e.g. memory://)")
    demo.add_argument("--jobs", type=int, default=3, help="how many jobs to run (default 3)")

    info = commands.add_parser("info", help="list the installed backends and plugins")
    info.add_argument("--json", action="store_true", help="write JSON instead of text")

    listing = commands.add_parser(
        "list", parents=[reading], help="list jobs, newest first, with filters"
    )
    listing.add_argument("--user", help="only this user's jobs")
    listing.add_argument("--project", help="only this project's jobs")
    listing.add_argument(
        "--status",
        action="append",
        metavar="STATUS[,STATUS]",
        help="only jobs with these statuses (repeat it, or separate them with commas)",
    )
    listing.add_argument(
        "--since",
        type=parse_when,
        metavar="WHEN",
        help="only jobs created at or after WHEN: 2025-06-01, 2025-06-01T12:00Z, or an age: 2h, 7d",
    )
    listing.add_argument(
        "--until", type=parse_when, metavar="WHEN", help="only jobs created before WHEN"
    )
    amount = listing.add_mutually_exclusive_group()
    amount.add_argument(
        "--limit", type=positive_int, default=50, help="show at most this many (default 50)"
    )
    amount.add_argument(
        "--all", action="store_true", help="page through every matching job (cursor pages)"
    )

    show = commands.add_parser(
        "show", parents=[reading, lease], help="one job, its lease and its checkpoints"
    )
    show.add_argument("id", help="the job's id")

    stats = commands.add_parser(
        "stats",
        parents=[reading, lease],
        help="counts by status, the oldest active job, expired leases, top users, size",
    )
    stats.add_argument(
        "--top", type=positive_int, default=10, help="how many users to rank (default 10)"
    )

    cleanup = commands.add_parser(
        "cleanup", parents=[reading], help="delete expired jobs as the cleanup policy says"
    )
    cleanup.add_argument(
        "--retention-days",
        type=days,
        default=None,
        metavar="N",
        help="keep finished jobs this many days (default: the store's retention_days, 7)",
    )
    cleanup.add_argument(
        "--dry-run", action="store_true", help="delete nothing; say what would be deleted"
    )

    commands.add_parser(
        "recover",
        parents=[reading, lease],
        help="one recovery sweep: take over the jobs of owners whose lease expired",
    )

    cancel = commands.add_parser(
        "cancel", parents=[reading], help="mark an unfinished job cancelled (compare-and-set)"
    )
    cancel.add_argument("id", help="the job's id")
    cancel.add_argument("--reason", default=None, help="stored as the job's error message")

    fail = commands.add_parser(
        "fail", parents=[reading], help="mark an unfinished job failed (compare-and-set)"
    )
    fail.add_argument("id", help="the job's id")
    fail.add_argument("--reason", required=True, help="stored as the job's error message")

    migrate = commands.add_parser(
        "migrate", parents=[reading], help="bring the database's schema up to date"
    )
    migrate.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 if migrations are pending, and list them",
    )

    doctor = commands.add_parser(
        "doctor",
        parents=[reading, lease],
        help="check the database, leases and clock; exit 1 and say what to do on a problem",
    )
    doctor.add_argument(
        "--full", action="store_true", help="run the slow checks too (a full integrity check)"
    )

    backup = commands.add_parser(
        "backup", parents=[reading], help="an online, consistent copy of the database"
    )
    backup.add_argument("dest", help="the copy's file (a folder: a dated file in it)")
    backup.add_argument("--force", action="store_true", help="replace DEST if it exists")

    salvage = commands.add_parser(
        "salvage",
        help="read every readable job of a damaged SQLite file (e.g. one recovery moved aside) "
        "into a fresh database",
        description="Read the damaged SQLite job database DAMAGED (the jobs.db.corrupt-... "
        "file a recovery moved aside, or the database of a stopped server) with the sqlite "
        "backend's own salvage, and write every readable job and checkpoint into a fresh "
        "database TARGET. DAMAGED, its -wal and its -shm are only read. Exit 0 when "
        "everything was read, 1 when something was lost.",
    )
    salvage.add_argument("source", metavar="DAMAGED", help="the damaged database file (only read)")
    salvage.add_argument("target", metavar="TARGET", help="the fresh database to write")
    salvage.add_argument(
        "--force", action="store_true", help="replace TARGET if it is a database not in use"
    )
    salvage.add_argument("--json", action="store_true", help="write JSON instead of text")

    from ._copy import add_parser as add_copy

    add_copy(commands)
    return parser


def _command(name: str) -> Callable[[argparse.Namespace, Output], int]:
    from . import _commands, _copy

    return {
        "list": _commands.cmd_list,
        "show": _commands.cmd_show,
        "stats": _commands.cmd_stats,
        "cleanup": _commands.cmd_cleanup,
        "recover": _commands.cmd_recover,
        "cancel": _commands.cmd_cancel,
        "fail": _commands.cmd_fail,
        "migrate": _commands.cmd_migrate,
        "doctor": _commands.cmd_doctor,
        "backup": _commands.cmd_backup,
        "salvage": _commands.cmd_salvage,
        "copy": _copy.cmd_copy,
    }[name]


def _status_of(error: CidxJobsError) -> int:
    if isinstance(error, (ConfigError, PluginError, UnsupportedOperationError, ValidationError)):
        return USAGE
    return PROBLEM


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit:  # --help, --version, or a usage error (argparse printed it)
        code = exit.code
        return OK if code is None else code if isinstance(code, int) else USAGE
    except Exception as error:  # an argument no parser foresaw: still one line, exit 2
        if os.environ.get(DEBUG_ENV_VAR):
            raise
        Output().error(f"bad arguments ({type(error).__name__}: {error}); see cidx-jobs --help")
        return USAGE
    out = Output()
    _configure_logging()
    try:
        if args.command == "demo":
            from cidx_jobs._demo import run_demo

            return run_demo(directory=args.dir, url=args.url, jobs=args.jobs)
        if args.command == "info":
            from ._info import show_info

            return show_info(out, as_json=args.json)
        status = _command(args.command)(args, out)
        # Flush here, where a reader gone away is caught, not at the interpreter's exit
        # (which would print "Exception ignored" and exit 120).
        sys.stdout.flush()
        return status
    except CommandError as error:
        out.error(str(error))
        return error.status
    except CidxJobsError as error:
        from ._commands import OUTDATED

        hint = ""
        if OUTDATED and isinstance(error, StorageError):
            hint = (
                "; the database's schema is older than this release can read: run "
                "`cidx-jobs migrate` once every server runs this release"
            )
        out.error(f"{type(error).__name__}: {error}{hint}")
        return _status_of(error)
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    except BrokenPipeError:
        # The reader went away (`cidx-jobs list | head`): not worth a word, but the output
        # was cut short, so the status says so as a shell's SIGPIPE death would (128 + 13).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return BROKEN_PIPE
    except Exception as error:
        if os.environ.get(DEBUG_ENV_VAR):
            raise
        out.error(
            f"internal error ({type(error).__name__}: {error}); please report it, with the "
            f"traceback that {DEBUG_ENV_VAR}=1 shows"
        )
        return PROBLEM
