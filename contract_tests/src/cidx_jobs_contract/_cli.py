"""``python -m cidx_jobs_contract URL [pytest args]``: the contract suite against any backend."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import attrs
import pytest

from cidx_jobs import open_persistence
from cidx_jobs.errors import CidxJobsError

from ._capabilities import Capabilities

URL_ENV_VAR = "CIDX_JOBS_CONTRACT_URL"
CAPABILITIES_ENV_VAR = "CIDX_JOBS_CONTRACT_CAPABILITIES"
TMP_PLACEHOLDER = "{tmp}"
_HERE = Path(__file__).resolve().parent


def _parser() -> argparse.ArgumentParser:
    flags = "\n".join(
        f"  {name:<20} {Capabilities.describe(name)} (default: {'on' if default else 'off'})"
        for name, default in attrs.asdict(Capabilities()).items()
    )
    parser = argparse.ArgumentParser(
        prog="python -m cidx_jobs_contract",
        description=(
            "Run the cidx-jobs contract suite against the installed backend that URL selects. "
            f"'{TMP_PLACEHOLDER}' in the URL becomes a fresh temporary folder for each test, "
            f"e.g. 'sqlite:///{TMP_PLACEHOLDER}/jobs.db'. Exit status 0 when every test passes."
        ),
        epilog=f"capability flags:\n{flags}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--with",
        dest="enable",
        action="append",
        default=[],
        metavar="FLAG",
        choices=Capabilities.names(),
        help="declare a capability the backend has (repeatable)",
    )
    parser.add_argument(
        "--without",
        dest="disable",
        action="append",
        default=[],
        metavar="FLAG",
        choices=Capabilities.names(),
        help="declare a capability the backend lacks (repeatable)",
    )
    parser.add_argument("url", help="the store URL, e.g. memory:// or sqlite:///{tmp}/jobs.db")
    parser.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="passed to pytest (e.g. -x -k cursor)"
    )
    return parser


def url_for(url: str, folder: Path) -> str:
    """``url`` with every ``{tmp}`` replaced by ``folder``."""
    return url.replace(TMP_PLACEHOLDER, folder.as_posix())


@contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _check_url(url: str) -> str | None:
    """Open and close the store once; the error message if that fails."""
    with tempfile.TemporaryDirectory(prefix="cidx-contract-") as folder:
        try:
            open_persistence(url_for(url, Path(folder))).close()
        except CidxJobsError as error:
            return f"{type(error).__name__}: {error}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the contract suite on the backend a URL names; return the exit status.

    :param argv: the arguments after the program name (default ``sys.argv[1:]``):
        ``[--with FLAG]... [--without FLAG]... URL [pytest args...]``.
    :returns: 0 when every test passed, pytest's non-zero exit status otherwise,
        2 when the URL cannot be opened at all.
    """
    options = _parser().parse_args(argv)
    capabilities = attrs.evolve(
        Capabilities(),
        **dict.fromkeys(options.enable, True),
        **dict.fromkeys(options.disable, False),
    )
    problem = _check_url(options.url)
    if problem is not None:
        print(f"cannot open {options.url!r}: {problem}", file=sys.stderr)
        return 2
    arguments = [
        str(_HERE / "_suite.py"),
        # Our own configuration, not the one of the current folder or repository.
        "-c",
        str(_HERE / "_pytest.ini"),
        "--rootdir",
        str(_HERE),
        "--confcutdir",
        str(_HERE),
        "-p",
        "no:cacheprovider",
        "--import-mode=importlib",
        *options.pytest_args,
    ]
    environment = {
        URL_ENV_VAR: options.url,
        CAPABILITIES_ENV_VAR: json.dumps(attrs.asdict(capabilities)),
    }
    with _environment(environment):
        return int(pytest.main(arguments))
