"""Opening the store a command works on, and parsing what operators type.

Every command opens its store with the option ``migrate=false`` where the backend takes it,
so that no command but ``migrate`` upgrades a database under a running server of an older
release; a command that writes refuses a database whose schema is out of date. The
command's store has an owner id of its own (``cidx-jobs-cli:host:pid:random``): an
``owner_id`` in the URL belongs to a server, and a command must not pose as that server.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import socket
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qsl, urlencode

from cidx_jobs._config import URL_ENV_VAR, StoreSettings, parse_config
from cidx_jobs._models import utcnow
from cidx_jobs._open import open_persistence
from cidx_jobs._persistence import JobPersistence
from cidx_jobs.errors import ConfigError, UnsupportedOperationError

#: The option that opens a store without migrating (see Storage.migrate).
NO_MIGRATE = ("migrate", "false")


class CommandError(Exception):
    """A command's failure, with its exit status: 1 for a problem found, 2 for a usage or
    configuration error. The message is one line that says what to do."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def with_option(url: str, name: str, value: str | None) -> str:
    """``url`` with the query option ``name`` set to ``value`` (removed for ``None``).

    Edits the query string as text: re-assembling the URL from its parts would turn
    ``sqlite:////abs.db`` into ``sqlite://abs.db``.
    """
    base, _, query = url.partition("?")
    pairs = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != name]
    if value is not None:
        pairs.append((name, value))
    return f"{base}?{urlencode(pairs)}" if pairs else base


def configured_url(url: str | None) -> str:
    """The URL a command uses: ``--url``, else ``CIDX_JOBS_URL``.

    :raises ConfigError: neither is set, or the value is not a URL.
    """
    chosen = url or os.environ.get(URL_ENV_VAR)
    if not chosen:
        raise ConfigError(
            f"no job store given: pass --url URL or set {URL_ENV_VAR} "
            "(e.g. sqlite:////var/lib/cidx/jobs.db), as the server is configured",
            option="url",
        )
    parse_config(chosen)  # a malformed URL fails here, with its own message
    return chosen


def backend_name(url: str) -> str:
    return parse_config(url)[0]


def cli_owner_id() -> str:
    return f"cidx-jobs-cli:{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def open_store(url: str) -> tuple[JobPersistence, bool]:
    """The store ``url`` names, opened without migrating where the backend can.

    :returns: the store, and whether it was opened with ``migrate=false`` (``False`` for a
        backend that does not take the option: it was opened as the server opens it).
    :raises CidxJobsError: the store cannot be opened.
    """
    base = with_option(url, "owner_id", None)
    settings = StoreSettings(owner_id=cli_owner_id())
    try:
        return open_persistence(with_option(base, *NO_MIGRATE), settings=settings), True
    except ConfigError as error:
        if error.option != NO_MIGRATE[0]:
            raise
    return open_persistence(base, settings=settings), False


def check_schema(store: JobPersistence, *, writes: bool) -> str | None:
    """Refuse (``writes``) or warn about a database whose schema is older than this release's.

    :returns: a warning for a reading command, or ``None``.
    :raises CommandError: the command writes, or the database has no schema at all.
    """
    try:
        info = store.storage.describe()
    except UnsupportedOperationError:
        return None
    current, latest = info.schema_version, info.latest_schema_version
    if current is None or latest is None or current >= latest:
        return None
    if current == 0:
        raise CommandError(
            f"{info.location} has no cidx-jobs schema yet: run `cidx-jobs migrate` to create "
            "it, or check the URL"
        )
    message = (
        f"{info.location} has schema version {current}, and this release writes {latest}: "
        "run `cidx-jobs migrate` once every server runs this release"
    )
    if writes:
        raise CommandError(message)
    return message + " (reading it as it is)"


# -- parsing ------------------------------------------------------------------------------

_AGE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_when(text: str) -> datetime:
    """A time an operator types: ISO 8601 (``2025-06-01``, ``2025-06-01T12:00``, with an
    offset or ``Z``; without one it is UTC), or an age before now (``90s``, ``30m``,
    ``2h``, ``7d``, ``2w``)."""
    value = text.strip()
    age = _AGE.fullmatch(value)
    if age is not None:
        return utcnow() - timedelta(seconds=float(age[1]) * _UNITS[age[2]])
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: write an ISO date or time (2025-06-01, "
            "2025-06-01T12:00Z) or an age (30m, 2h, 7d)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number")
    return value


def non_negative_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of at least 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value
