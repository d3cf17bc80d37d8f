"""The ``cidx-jobs`` command line: ``cidx-jobs demo`` and ``cidx-jobs info``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .errors import CidxJobsError


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = argparse.ArgumentParser(prog="cidx-jobs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

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

    commands.add_parser("info", help="list the installed backends and plugins")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from ._demo import run_demo

            return run_demo(directory=args.dir, url=args.url, jobs=args.jobs)
        return _info()
    except CidxJobsError as error:
        print(f"cidx-jobs: {type(error).__name__}: {error}", file=sys.stderr)
        return 2


def _info() -> int:
    from ._plugins import Hooks

    hooks = Hooks()
    print("backends:", ", ".join(sorted(hooks.backends())) or "none")
    print("plugins:", ", ".join(sorted(n for n, _ in hooks.pm.list_name_plugin())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
