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

from cidx_jobs import find_backend, open_persistence
from cidx_jobs.backend import Backend
from cidx_jobs.errors import CidxJobsError

from ._capabilities import Capabilities
from ._hypothesis import NO_SHRINK_ENV_VAR

URL_ENV_VAR = "CIDX_JOBS_CONTRACT_URL"
CAPABILITIES_ENV_VAR = "CIDX_JOBS_CONTRACT_CAPABILITIES"
TMP_PLACEHOLDER = "{tmp}"
_HERE = Path(__file__).resolve().parent


def _parser() -> argparse.ArgumentParser:
    flags = "\n".join(
        f"  {name:<20} {Capabilities.describe(name)}" for name in Capabilities.names()
    )
    parser = argparse.ArgumentParser(
        prog="python -m cidx_jobs_contract",
        description=(
            "Run the cidx-jobs contract suite against the installed backend that URL names. "
            "Each test gets a fresh, isolated storage from the backend's scratch factory "
            f"(for SQLite, a new folder; '{TMP_PLACEHOLDER}' in the URL marks where it goes), "
            "removed after the test; the run leaves nothing behind. The backend's declared "
            "capabilities choose the tests; --without narrows them. Exit status 0 when every "
            "test passes, 2 when the URL cannot be opened."
        ),
        epilog=f"capability flags:\n{flags}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--without",
        dest="disable",
        action="append",
        default=[],
        metavar="FLAG",
        choices=Capabilities.names(),
        help="skip the tests of a capability the backend declares (repeatable)",
    )
    parser.add_argument(
        "--with",
        dest="enable",
        action="append",
        default=[],
        metavar="FLAG",
        choices=Capabilities.names(),
        help="run the tests of a capability the backend does not declare (repeatable)",
    )
    parser.add_argument(
        "--no-shrink",
        action="store_true",
        help=f"report a failing stateful example without shrinking it (sets {NO_SHRINK_ENV_VAR}=1)",
    )
    parser.add_argument("url", help="the store URL, e.g. memory:// or sqlite://")
    parser.add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="passed to pytest (e.g. -x -k cursor)"
    )
    return parser


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


def _probe(url: str) -> tuple[Backend | None, str | None]:
    """The backend ``url`` names, after opening and closing one scratch store of it;
    or the error message if that fails."""
    try:
        backend = find_backend(url)[0]
        if backend.scratch is None:
            return None, (
                f"backend {backend.name!r} (plugin {backend.plugin!r}) registered no scratch "
                "factory, so the suite cannot give each test an isolated storage"
            )
        with tempfile.TemporaryDirectory(prefix="cidx-contract-") as folder:
            with backend.scratch(url, Path(folder)) as config:
                open_persistence(config).close()
    except CidxJobsError as error:
        return None, f"{type(error).__name__}: {error}"
    except Exception as error:  # a third party's scratch factory may fail any way it likes
        return None, f"the backend's scratch factory failed: {type(error).__name__}: {error}"
    return backend, None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the contract suite on the backend a URL names; return the exit status.

    :param argv: the arguments after the program name (default ``sys.argv[1:]``):
        ``[--without FLAG]... [--with FLAG]... [--no-shrink] URL [pytest args...]``.
    :returns: 0 when every test passed, pytest's non-zero exit status otherwise,
        2 when the URL cannot be opened at all.
    """
    parser = _parser()
    options = parser.parse_args(argv)
    both = sorted(set(options.enable) & set(options.disable))
    if both:
        parser.error(f"--with and --without both name {', '.join(both)}")
    backend, problem = _probe(options.url)
    if backend is None:
        print(f"cannot open {options.url!r}: {problem}", file=sys.stderr)
        return 2
    declared = Capabilities.from_declared(backend.capabilities)
    capabilities = attrs.evolve(
        declared,
        **dict.fromkeys(options.enable, True),
        **dict.fromkeys(options.disable, False),
    )
    on = [name for name in Capabilities.names() if getattr(capabilities, name)]
    print(f"backend {backend.name!r} ({backend.plugin}); capabilities: {', '.join(on) or 'none'}")
    environment = {
        URL_ENV_VAR: options.url,
        CAPABILITIES_ENV_VAR: json.dumps(attrs.asdict(capabilities)),
    }
    if options.no_shrink:
        environment[NO_SHRINK_ENV_VAR] = "1"
    # pytest's own temporary folders go in one that is removed afterwards, so that
    # the run leaves nothing behind (the scratch factory removes each storage itself).
    with tempfile.TemporaryDirectory(prefix="cidx-contract-run-") as basetemp:
        # Hypothesis' example database too, which it would keep in ./.hypothesis
        environment["HYPOTHESIS_STORAGE_DIRECTORY"] = str(Path(basetemp) / "hypothesis")
        arguments = [
            str(_HERE / "_suite.py"),
            # Our own configuration, not the one of the current folder or repository.
            "-c",
            str(_HERE / "_pytest.ini"),
            "--rootdir",
            str(_HERE),
            "--confcutdir",
            str(_HERE),
            "--basetemp",
            str(Path(basetemp) / "pytest"),
            "-p",
            "no:cacheprovider",
            "--import-mode=importlib",
            *options.pytest_args,
        ]
        with _environment(environment):
            return int(pytest.main(arguments))
