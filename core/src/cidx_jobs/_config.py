"""Configuration: URLs and mappings, the shared store settings and typed backend options.

This module imports nothing of the facade or the plugin layer, so that both can use it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

from ._models import utcnow
from ._validate import MAX_OWNER_SETTING_LENGTH, check_id
from .errors import ConfigError, ValidationError

#: The environment variable :func:`~cidx_jobs.open_persistence` reads when given no configuration.
URL_ENV_VAR = "CIDX_JOBS_URL"
#: Options every backend accepts; core reads them before the backend sees the rest.
COMMON_OPTIONS = (
    "path",
    "max_metadata_bytes",
    "retention_days",
    "checkpoint_max_age_hours",
    "lease_timeout_seconds",
    "owner_id",
)
DEFAULT_MAX_METADATA_BYTES = 1024 * 1024
DEFAULT_RETENTION = timedelta(days=7)
# ASCII digits only: int() also takes "1_000" and full-width digits, which no one means.
_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MASKED = r"\1***"
_SECRET_OPTION = re.compile(r"(?i)([?&](?:password|passwd|sslpassword)=)[^&#]*")


@attrs.frozen(kw_only=True)
class StoreSettings:
    """Settings every backend shares, read from the common configuration options.

    * ``max_metadata_bytes`` (option of the same name): the largest job
      metadata or checkpoint data accepted, as UTF-8 JSON; default 1 MiB.
    * ``retention`` (option ``retention_days``): how long finished jobs are
      kept by :meth:`~cidx_jobs.JobPersistence.run_cleanup`; default 7 days.
    * ``checkpoint_max_age`` (option ``checkpoint_max_age_hours``): the oldest
      checkpoint the default resume policy resumes from; default 24 hours.
    * ``lease_timeout`` (option ``lease_timeout_seconds``): how long a job's
      owner may go without a heartbeat before recovery takes the job; 300 s.
    * ``owner_id`` (option of the same name): this store's owner id for job
      leases; by default ``host:pid:random``.
    * ``clock``: returns the current aware UTC time; tests replace it.

    :raises ConfigError: a setting is of the wrong type or out of range.
    """

    max_metadata_bytes: int = attrs.field(default=DEFAULT_MAX_METADATA_BYTES)
    retention: timedelta = attrs.field(default=DEFAULT_RETENTION)
    checkpoint_max_age: timedelta = attrs.field(default=timedelta(hours=24))
    lease_timeout: timedelta = attrs.field(default=timedelta(minutes=5))
    owner_id: str | None = attrs.field(default=None)
    clock: Callable[[], datetime] = attrs.field(default=utcnow)

    @max_metadata_bytes.validator
    def _check_bytes(self, attribute: attrs.Attribute[int], value: object) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ConfigError(
                f"{attribute.name} must be an int of at least 2, got {value!r}",
                option=attribute.name,
            )

    @lease_timeout.validator
    def _check_lease(self, attribute: attrs.Attribute[timedelta], value: object) -> None:
        if not isinstance(value, timedelta) or value <= timedelta(0):
            raise ConfigError(
                f"lease_timeout must be a positive timedelta, got {value!r}",
                option="lease_timeout",
            )

    @owner_id.validator
    def _check_owner(self, attribute: attrs.Attribute[str | None], value: object) -> None:
        if value is not None:
            try:
                check_id(value, "owner_id")
            except ValidationError as error:
                raise ConfigError(f"owner_id is invalid: {error}", option="owner_id") from None
            if len(value) > MAX_OWNER_SETTING_LENGTH:  # type: ignore[arg-type]  # a str now
                raise ConfigError(
                    f"owner_id is {len(value)} characters long; the limit is "  # type: ignore[arg-type]
                    f"{MAX_OWNER_SETTING_LENGTH}, as each store adds a random part to it",
                    option="owner_id",
                )

    @retention.validator
    @checkpoint_max_age.validator
    def _check_duration(self, attribute: attrs.Attribute[timedelta], value: object) -> None:
        if not isinstance(value, timedelta) or value < timedelta(0):
            raise ConfigError(
                f"{attribute.name} must be a non-negative timedelta, got {value!r}",
                option=attribute.name,
            )

    @clock.validator
    def _check_clock(self, attribute: attrs.Attribute[object], value: object) -> None:
        if not callable(value):
            raise ConfigError(f"clock must be callable, got {value!r}", option="clock")


class Options:
    """Typed access to a backend's options; each problem is a ConfigError naming the option.

    A backend reads what it understands, then calls :meth:`finish`, which
    rejects any option left unread (a typo must not be silently ignored).
    """

    def __init__(
        self, backend: str, values: Mapping[str, object], known: tuple[str, ...] = ()
    ) -> None:
        self.backend = backend
        self._values = dict(values)
        self._known: set[str] = set(known)

    def _take(self, name: str) -> object | None:
        self._known.add(name)
        return self._values.pop(name, None)

    def get_str(self, name: str, default: str | None = None) -> str | None:
        """The option as a string, or ``default``.

        :raises ConfigError: the value is not a string.
        """
        value = self._take(name)
        if value is None:
            return default
        if not isinstance(value, str):
            # Never a secret's value: messages end up in logs.
            shown = type(value).__name__ if "password" in name else repr(value)
            raise ConfigError(f"option {name!r} must be a string, got {shown}", option=name)
        return value

    def get_int(self, name: str, default: int, *, minimum: int, maximum: int) -> int:
        """The option as an int within ``minimum..maximum`` (strings from URLs are parsed).

        :raises ConfigError: the value is not an integer or is out of range.
        """
        value = self._take(name)
        if value is None:
            return default
        if isinstance(value, int) and not isinstance(value, bool):
            number = value
        elif isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
            number = int(value.strip())
        else:
            raise ConfigError(
                f"option {name!r} must be an integer (ASCII digits), got {value!r}", option=name
            )
        if not minimum <= number <= maximum:
            raise ConfigError(
                f"option {name!r} must be between {minimum} and {maximum}, got {number}",
                option=name,
            )
        return number

    def get_float(self, name: str, default: float, *, minimum: float, maximum: float) -> float:
        """The option as a float within ``minimum..maximum``.

        :raises ConfigError: the value is not a number or is out of range.
        """
        value = self._take(name)
        if value is None:
            return default
        try:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str) and not _NUMBER.fullmatch(value.strip()):
                raise ValueError
            number = float(value) if isinstance(value, (int, float, str)) else float("nan")
        except ValueError:
            number = float("nan")
        if not minimum <= number <= maximum:  # also false for NaN
            raise ConfigError(
                f"option {name!r} must be a number between {minimum} and {maximum}, got {value!r}",
                option=name,
            )
        return number

    def get_bool(self, name: str, default: bool) -> bool:
        """The option as a bool (``true/false``, ``yes/no``, ``on/off``, ``1/0`` in URLs).

        :raises ConfigError: the value is not a boolean.
        """
        value = self._take(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"option {name!r} must be true or false, got {value!r}", option=name)

    def get_choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        """The option as one of ``choices`` (case-insensitive).

        :raises ConfigError: the value is not one of them.
        """
        value = self._take(name)
        if value is None:
            return default
        text = str(value).strip().lower()
        if text not in choices:
            raise ConfigError(
                f"option {name!r} must be one of {', '.join(choices)}; got {value!r}", option=name
            )
        return text

    def remaining(self) -> dict[str, object]:
        """The options not read so far."""
        return dict(self._values)

    def finish(self) -> None:
        """Reject every option that was not read.

        :raises ConfigError: an option is unknown to the backend.
        """
        if self._values:
            name = sorted(self._values)[0]
            known = ", ".join(sorted(self._known)) or "none"
            raise ConfigError(
                f"unknown option {name!r} for the {self.backend!r} backend (known options: {known})",
                option=name,
            )


def mask_password(url: str | None) -> str | None:
    """``url`` with the password of its address, and any ``password`` option of its query,
    replaced by ``***``, for logs and reprs."""
    if url is None or "://" not in url:
        return url
    scheme, _, rest = url.partition("://")
    ends = [index for index in (rest.find(mark) for mark in "/?#") if index >= 0]
    end = min(ends, default=len(rest))
    address, tail = rest[:end], rest[end:]
    credentials, at, host = address.rpartition("@")
    if at and ":" in credentials:
        address = f"{credentials.split(':', 1)[0]}:***@{host}"
    return f"{scheme}://{address}{_SECRET_OPTION.sub(_MASKED, tail)}"


@attrs.frozen(kw_only=True)
class BackendConfig:
    """What a backend factory receives: where its storage is and the options for it.

    The common options (``max_metadata_bytes``, ``retention_days``,
    ``checkpoint_max_age_hours``, ``lease_timeout_seconds``, ``owner_id``) are
    core's and never reach a backend: the facade applies them.

    :ivar backend: the backend name (the URL scheme, lower case).
    :ivar url: the URL the store was opened with (credentials included), or
        ``None`` for a mapping.
    :ivar path: the URL's path, percent-decoded (``sqlite:///jobs.db`` gives
        ``jobs.db``, ``postgresql://host/db`` gives ``db``) or the mapping's
        ``path`` entry; ``None`` when there is none.
    :ivar host: the URL's host name, percent-decoded (brackets of an IPv6
        address removed), or the mapping's ``host`` entry; ``None`` when there is none.
    :ivar port: the URL's port, or ``None``.
    :ivar username: the URL's user name, percent-decoded, or ``None``.
    :ivar password: the URL's password, percent-decoded, or ``None``.
    :ivar options: the backend's own options, unparsed (from the URL's query
        string, or the mapping's other entries); read them with :meth:`reader`.
    :ivar owner_id: the owner id of the store that will wrap this storage (its
        :attr:`~cidx_jobs.JobPersistence.owner_id`), e.g. for a server backend's
        connection name; ``None`` when the storage is built outside
        :func:`~cidx_jobs.open_persistence`.
    """

    backend: str
    url: str | None = attrs.field(repr=lambda url: repr(mask_password(url)))
    path: str | None
    options: Mapping[str, object]
    host: str | None = None
    port: int | None = None
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    owner_id: str | None = None

    def reader(self) -> Options:
        """A fresh :class:`Options` over this backend's options."""
        return Options(self.backend, self.options, known=COMMON_OPTIONS)

    def reject_location(self, *, why: str) -> None:
        """Refuse a host, port, user name or password, for a backend that has no server.

        :param why: how to write the configuration instead, for the message.
        :raises ConfigError: one of them is set.
        """
        for name in ("host", "port", "username", "password"):
            if getattr(self, name) is not None:
                raise ConfigError(
                    f"the {self.backend!r} backend takes no {name} ({why})", option=name
                )


def parse_config(
    config: str | Mapping[str, object] | None,
) -> tuple[str, str | None, dict[str, object]]:
    """Split a configuration into (backend, url, options).

    A URL's path, host, port, user name and password (percent-decoded) become
    the options ``path``, ``host``, ``port``, ``username`` and ``password``.

    :raises ConfigError: no configuration, a malformed URL, or no backend key.
    """
    if config is None:
        config = os.environ.get(URL_ENV_VAR)
        if not config:
            raise ConfigError(
                f"no job store configured: pass a URL such as 'sqlite:///jobs.db' or "
                f"'memory://', or set the {URL_ENV_VAR} environment variable",
                option="url",
            )
    if isinstance(config, str):
        if "://" not in config:
            raise ConfigError(
                f"{config!r} is not a job store URL; expected BACKEND://..., "
                "e.g. 'sqlite:///var/lib/cidx/jobs.db' or 'memory://'",
                option="url",
            )
        parts = urlsplit(config)
        if "#" in config:
            raise ConfigError(
                "the URL has a fragment ('#...'), which would be dropped; percent-encode a '#' "
                "in a path or option as %23",
                option="url",
            )
        backend = parts.scheme.lower()
        options: dict[str, object] = {}
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError as error:
            raise ConfigError(
                f"the URL's query string is malformed: {error}", option="url"
            ) from None
        for key, value in pairs:
            if key in options:
                raise ConfigError(f"option {key!r} is given twice in the URL", option=key)
            options[key] = value
        # sqlite:///rel.db -> "rel.db", sqlite:////abs.db -> "/abs.db"
        path = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
        if path:
            if "path" in options:
                raise ConfigError(
                    "the URL has a path and a 'path' option; give the path once", option="path"
                )
            options["path"] = path
        try:
            port = parts.port
        except ValueError as error:
            raise ConfigError(f"the URL's port is invalid: {error}", option="port") from None
        location: dict[str, str | int | None] = {
            "host": unquote(parts.hostname) if parts.hostname else None,
            "port": port,
            "username": unquote(parts.username) if parts.username is not None else None,
            "password": unquote(parts.password) if parts.password is not None else None,
        }
        for key, found in location.items():
            if found is not None:
                if key in options:
                    raise ConfigError(
                        f"the URL gives the {key} twice (in the address and as an option)",
                        option=key,
                    )
                options[key] = found
        return backend, config, options
    if isinstance(config, Mapping):
        options = dict(config)
        backend_name = options.pop("backend", None)
        if not isinstance(backend_name, str) or not backend_name:
            raise ConfigError(
                "the configuration mapping needs a 'backend' key naming the backend, "
                "e.g. {'backend': 'sqlite', 'path': 'jobs.db'}",
                option="backend",
            )
        for key in options:
            if not isinstance(key, str):
                raise ConfigError(f"option names must be strings, got {key!r}", option=repr(key))
        return backend_name.lower(), None, options
    raise ConfigError(
        f"configuration must be a URL string or a mapping, got {type(config).__name__}",
        option="url",
    )


def read_settings(options: Options, base: StoreSettings | None = None) -> StoreSettings:
    """Read the common options out of ``options``.

    :raises ConfigError: a common option is invalid.
    """
    base = base or StoreSettings()
    max_bytes = options.get_int(
        "max_metadata_bytes", base.max_metadata_bytes, minimum=2, maximum=256 * 1024 * 1024
    )
    days = options.get_float(
        "retention_days", base.retention / timedelta(days=1), minimum=0, maximum=36500
    )
    hours = options.get_float(
        "checkpoint_max_age_hours",
        base.checkpoint_max_age / timedelta(hours=1),
        minimum=0,
        maximum=24 * 36500,
    )
    lease = options.get_float(
        "lease_timeout_seconds",
        base.lease_timeout.total_seconds(),
        minimum=0.001,
        maximum=365 * 86400,
    )
    owner_id = options.get_str("owner_id", base.owner_id)
    return StoreSettings(
        max_metadata_bytes=max_bytes,
        retention=timedelta(days=days),
        checkpoint_max_age=timedelta(hours=hours),
        lease_timeout=timedelta(seconds=lease),
        owner_id=owner_id,
        clock=base.clock,
    )
