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


#: Options that keep a command from changing the file at open, where the backend takes them
#: (a backend that refuses one has no such behaviour to turn off): no salvage of a damaged
#: file (moving a running server's live file aside would lose its acknowledged writes) and
#: no check at open (``doctor`` runs its own).
SAFE_OPEN = (("recover_corrupt", "false"), ("check_on_open", "off"))
#: The option that opens the store read-only, for the commands that only read.
READ_ONLY = ("read_only", "true")


def _may_migrate_at_open(url: str) -> bool:
    """Whether a backend that refuses ``migrate=false`` may be opened anyway: only one that
    keeps nothing beyond its process (no :attr:`~cidx_jobs.backend.Capability.PERSISTENT`),
    which has no stored schema to migrate."""
    from cidx_jobs._plugins import Hooks
    from cidx_jobs.backend import Capability

    backend = Hooks().backends().get(backend_name(url))
    return backend is not None and Capability.PERSISTENT not in backend.capabilities


def open_store(
    url: str, *, read_only: bool = False, create: bool = False, migrating: bool = False
) -> tuple[JobPersistence, bool]:
    """The store ``url`` names, opened without migrating, salvaging or checking where the
    backend can, and read-only (``read_only``) where it can.

    :param create: open it migrating, so that a missing database is created (``migrate``).
    :param migrating: the command may migrate (``migrate``): a persistent backend that
        refuses ``migrate=false`` is opened anyway, as the server opens it. Any other
        command refuses such a backend before it opens anything (exit 2).
    :returns: the store, and whether it was opened with ``migrate=false`` (``False`` for a
        backend that does not take the option, or with ``create``: it was opened as the
        server opens it).
    :raises CidxJobsError: the store cannot be opened.
    """
    base = with_option(url, "owner_id", None)
    settings = StoreSettings(owner_id=cli_owner_id())
    # ``create`` (only for ``migrate``) opens as a server does, which creates and migrates.
    wanted = [*([] if create else [NO_MIGRATE]), *SAFE_OPEN, *([READ_ONLY] if read_only else [])]
    while True:
        opened = base
        for name, value in wanted:
            opened = with_option(opened, name, value)
        try:
            return open_persistence(opened, settings=settings), NO_MIGRATE in wanted
        except ConfigError as error:
            refused = [option for option in wanted if option[0] == error.option]
            if not refused or error.option not in dict(wanted):
                raise
            if refused[0] == NO_MIGRATE and not migrating and not _may_migrate_at_open(url):
                name = backend_name(url)
                raise CommandError(
                    f"the {name} backend cannot be opened without migrating its schema, and "
                    "only `cidx-jobs migrate` may migrate: use the backend's own tools to "
                    f"look at it, or run `cidx-jobs migrate` once every server runs this "
                    "release",
                    status=2,
                ) from None
            wanted.remove(refused[0])


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
#: The longest age, retention or lease timeout a command takes: 100 years, in days.
MAX_DAYS = 36_500
MAX_SECONDS = MAX_DAYS * 86400
#: The shortest duration a seconds option takes: shorter rounds to nothing in a timedelta.
MIN_SECONDS = 0.001
#: The largest count an option takes (e.g. --top, --limit).
MAX_COUNT = 1_000_000


def parse_when(text: str) -> datetime:
    """A time an operator types: ISO 8601 (``2025-06-01``, ``2025-06-01T12:00``, with an
    offset or ``Z``; without one it is UTC), or an age before now (``90s``, ``30m``,
    ``2h``, ``7d``, ``2w``) of at most :data:`MAX_DAYS` days."""
    value = text.strip()
    age = _AGE.fullmatch(value)
    if age is not None:
        seconds = float(age[1]) * _UNITS[age[2]]
        if not seconds <= MAX_SECONDS:
            raise argparse.ArgumentTypeError(
                f"{text!r} is too long ago: an age is at most {MAX_DAYS}d"
            )
        return utcnow() - timedelta(seconds=seconds)
    try:
        parsed = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc)
    except OverflowError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is out of range: write a time between the years 1 and 9999 in UTC"
        ) from None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: write an ISO date or time (2025-06-01, "
            "2025-06-01T12:00Z) or an age (30m, 2h, 7d)"
        ) from None


def _number(text: str) -> float:
    try:
        return float(text)
    except (ValueError, OverflowError):
        return float("nan")


def positive_seconds(text: str) -> float:
    """A number of seconds from :data:`MIN_SECONDS` to :data:`MAX_DAYS` days."""
    value = _number(text)
    if not MIN_SECONDS <= value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds from {MIN_SECONDS} to {MAX_SECONDS} "
            f"({MAX_DAYS} days)"
        )
    return value


def days(text: str) -> float:
    """A number of days from 0 to :data:`MAX_DAYS`."""
    value = _number(text)
    if not 0 <= value <= MAX_DAYS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of days from 0 to {MAX_DAYS}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {MAX_COUNT}")
    return value
