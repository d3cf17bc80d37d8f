"""Input checks shared by the models and the store; every failure is a ValidationError."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from typing import Any, NoReturn

from .errors import ValidationError

MAX_ID_LENGTH = 256
MAX_JSON_DEPTH = 64
#: The longest job ``phase``, in characters: the same as an id, because a phase names a
#: checkpoint phase, which is an id.
MAX_PHASE_LENGTH = MAX_ID_LENGTH
#: The marker owner of a released job is the store's owner id and ``:released``.
RELEASED_SUFFIX = ":released"
#: A store's owner id leaves room for that marker within the id limit.
MAX_OWNER_ID_LENGTH = MAX_ID_LENGTH - len(RELEASED_SUFFIX)
#: The ``owner_id`` setting leaves room for the random part (``:`` and 8 hex digits) too.
MAX_OWNER_SETTING_LENGTH = MAX_OWNER_ID_LENGTH - 9
#: The largest job ``error_message``, in bytes of UTF-8 (64 KiB): room for a long traceback,
#: while a row and a log line stay small.
MAX_ERROR_MESSAGE_BYTES = 64 * 1024
_JSON_SCALARS = (str, int, float, bool, type(None))


def check_id(value: object, field: str) -> str:
    """Return ``value`` if it is a usable identifier, else raise ValidationError."""
    if type(value) is not str:
        raise ValidationError(f"{field} must be a str, got {type(value).__name__}", field=field)
    # Ids are ASCII in practice, and ASCII is always valid UTF-8: check only for NUL.
    if 0 < len(value) <= MAX_ID_LENGTH and value.isascii() and "\x00" not in value:
        return value
    if not value:
        raise ValidationError(f"{field} must not be empty", field=field)
    if len(value) > MAX_ID_LENGTH:
        raise ValidationError(
            f"{field} is {len(value)} characters long; the limit is {MAX_ID_LENGTH}", field=field
        )
    check_text(value, field)
    return value


def check_text(value: str, field: str) -> str:
    """Reject strings that cannot be stored as UTF-8 (lone surrogates) or hold NUL."""
    if "\x00" in value:
        raise ValidationError(f"{field} must not contain NUL characters", field=field)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"{field} contains a lone surrogate and cannot be stored as UTF-8", field=field
        ) from None
    return value


def check_optional_text(value: object, field: str) -> str | None:
    """Return ``value`` if it is ``None`` or a storable str (see :func:`check_text`).

    A ``field`` named ``phase`` is at most :data:`MAX_PHASE_LENGTH` characters long, one
    named ``error_message`` at most :data:`MAX_ERROR_MESSAGE_BYTES` bytes as UTF-8; the
    length is checked first, so an oversized value costs no encoding.

    :raises ValidationError: ``value`` is not a str, holds NUL or a lone surrogate, or is
        over its field's limit.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(
            f"{field} must be a str or None, got {type(value).__name__}", field=field
        )
    if field == "phase":
        if len(value) > MAX_PHASE_LENGTH:
            raise ValidationError(
                f"phase is {len(value)} characters long; the limit is {MAX_PHASE_LENGTH} "
                "(a phase is a short name such as 'indexing'; put details in metadata)",
                field=field,
            )
    elif field == "error_message" and len(value) * 4 > MAX_ERROR_MESSAGE_BYTES:
        _check_error_message_size(value)
    return check_text(value, field)


def _check_error_message_size(value: str) -> None:
    # A code point takes 1 to 4 bytes: more characters than the limit is over it at once.
    length = len(value)
    size = length if length > MAX_ERROR_MESSAGE_BYTES else len(value.encode("utf-8", "replace"))
    if size > MAX_ERROR_MESSAGE_BYTES:
        raise ValidationError(
            f"error_message is {'at least ' if size == length else ''}{size} bytes as UTF-8 "
            f"({length} characters); the limit is {MAX_ERROR_MESSAGE_BYTES} bytes: store a "
            "summary (e.g. the exception and the last lines of its traceback) and keep the "
            "full text in your own logs",
            field="error_message",
        )


def to_utc(value: object, field: str) -> datetime:
    """Return an aware datetime converted to UTC; naive or non-datetime values are rejected."""
    if not isinstance(value, datetime):
        raise ValidationError(
            f"{field} must be a datetime, got {type(value).__name__}", field=field
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(
            f"{field} must be timezone-aware (e.g. datetime.now(timezone.utc)); got naive {value!r}",
            field=field,
        )
    if value.tzinfo is timezone.utc:
        return value
    try:
        return value.astimezone(timezone.utc)
    except OverflowError:
        raise ValidationError(f"{field} is out of the representable range", field=field) from None


def to_optional_utc(value: object, field: str) -> datetime | None:
    return None if value is None else to_utc(value, field)


def check_json_object(value: object, field: str) -> dict[str, Any]:
    """Check that ``value`` is a dict that round-trips through JSON unchanged.

    Allowed: dict with str keys, list, str, int, finite float, bool, None,
    nested at most ``MAX_JSON_DEPTH`` levels. Tuples, sets, non-str keys,
    NaN and infinities are rejected because JSON would not give them back.
    """
    return encode_json_object(value, field)[0]


def encode_json_object(value: object, field: str) -> tuple[dict[str, Any], str]:
    """Check ``value`` as :func:`check_json_object` does and return it with its encoding.

    The common case costs one encode in C, and for a nested value one decode: a
    value that comes back equal from JSON is JSON-compatible. Only a failure (or
    a value deep enough to need counting) walks it in Python, to name what is wrong.

    :raises ValidationError: ``value`` is not a JSON-compatible dict (the message
        names the offending key or value).
    """
    if type(value) is dict:
        obj: dict[str, Any] = value
    elif isinstance(value, Mapping):
        obj = dict(value)
    else:
        raise ValidationError(f"{field} must be a dict, got {type(value).__name__}", field=field)
    encoded = ""
    try:
        encoded = _encode(obj)
        if not encoded.isascii():
            encoded.encode("utf-8")  # lone surrogates cannot be stored
        # A flat object of exact JSON scalars comes back equal once it encoded (the encoder
        # rejects NaN, infinities and over-long ints): only nesting, tuples, subclasses and
        # other key types need the decode to prove it.
        flat = _is_flat(obj)
        round_trips = flat or _scan(encoded, 0)[0] == obj
    except (TypeError, ValueError, RecursionError, UnicodeError):
        flat = round_trips = False
    # A flat object is one level deep; for another, a bracket count at or under the limit
    # proves the depth is too.
    if not flat and (not round_trips or encoded.count("[") + encoded.count("{") > MAX_JSON_DEPTH):
        _check_json_value(obj, field, 0)
        if not round_trips:
            raise ValidationError(f"{field} does not come back unchanged from JSON", field=field)
    return obj, encoded


_EXACT_SCALARS = frozenset(_JSON_SCALARS)


def _is_flat(obj: dict[Any, Any]) -> bool:
    for key, item in obj.items():
        if type(key) is not str or type(item) not in _EXACT_SCALARS:
            return False
    return True


def _check_json_value(value: object, path: str, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise ValidationError(
            f"{path} is nested deeper than {MAX_JSON_DEPTH} levels", field=path.split("[")[0]
        )
    if isinstance(value, str):
        check_text_json(value, path)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(
                f"{path} is {value!r}, which JSON cannot represent", field=path.split("[")[0]
            )
    elif isinstance(value, _JSON_SCALARS):
        return
    elif isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValidationError(
                    f"{path} has a key of type {type(key).__name__}; JSON object keys must be str",
                    field=path.split("[")[0],
                )
            check_text_json(key, path)
            _check_json_value(item, f"{path}[{key!r}]", depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_json_value(item, f"{path}[{index}]", depth + 1)
    else:
        raise ValidationError(
            f"{path} holds a {type(value).__name__}, which is not JSON-compatible "
            "(use dict, list, str, int, float, bool or None)",
            field=path.split("[")[0],
        )


def check_text_json(value: str, path: str) -> None:
    # NUL is fine inside JSON (it is escaped), lone surrogates are not valid UTF-8.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(
            f"{path} contains a lone surrogate and cannot be stored as UTF-8",
            field=path.split("[")[0],
        ) from None


# One encoder for the process: json.dumps() with any non-default option builds a
# new encoder on every call, which costs more than the encoding itself.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
# What the decoder's scanner reads is what _encode wrote (one compact value), so the
# scanner can take it directly: json.loads spends more time checking its argument and
# skipping whitespace than decoding a small object.
_scan: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _not_json(value: object) -> NoReturn:
    raise TypeError(f"{type(value).__name__} is not JSON-compatible")


def _make_encode() -> Callable[[Mapping[str, Any]], str]:
    # JSONEncoder.encode builds its C encoder again on every call; build it once. It
    # has no cycle check (markers=None): a cycle recurses until the recursion limit
    # stops it with RecursionError, which the callers treat as any other encoding
    # failure. Before Python 3.12 that limit is the Python one, and a program that
    # raised it far could overflow the C stack first, so there the one-time encoder is
    # used only while the limit is at most _SAFE_RECURSION_LIMIT. Interpreters without
    # the C encoder use JSONEncoder.encode.
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return _ENCODER.encode
    chunks = make(
        None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False
    )
    join = "".join
    if sys.version_info >= (3, 12):  # C recursion has its own limit

        def encode(value: Mapping[str, Any]) -> str:
            return join(chunks(value, 0))

        return encode

    recursion_limit = sys.getrecursionlimit

    def encode_checked(value: Mapping[str, Any]) -> str:
        if recursion_limit() > _SAFE_RECURSION_LIMIT:
            return _ENCODER.encode(value)  # its cycle check stops a cycle at once
        return join(chunks(value, 0))

    return encode_checked


#: The highest Python recursion limit under which a cycle cannot overflow the C stack of
#: the one-time encoder before Python 3.12 (the default limit is 1,000; a crash was seen
#: at 100,000, none up to 30,000).
_SAFE_RECURSION_LIMIT = 10_000
_encode = _make_encode()


def encode_json(value: Mapping[str, Any]) -> str:
    """Encode an already-checked JSON object compactly (as ``json.dumps`` with
    ``ensure_ascii=False, separators=(",", ":"), allow_nan=False``).

    :raises TypeError: a value is not JSON-compatible.
    :raises ValueError: a float is NaN or infinite.
    :raises RecursionError: the value contains itself.
    """
    return _encode(value)


def check_size(encoded: str, limit: int, field: str) -> None:
    if len(encoded) * 4 <= limit:  # no code point takes more than 4 bytes in UTF-8
        return
    size = len(encoded.encode("utf-8"))
    if size > limit:
        raise ValidationError(
            f"{field} is {size} bytes as JSON; the limit is {limit} bytes "
            "(raise it with the max_metadata_bytes option)",
            field=field,
        )


def check_int(value: object, field: str, *, minimum: int, maximum: int) -> int:
    if type(value) is not int:
        raise ValidationError(f"{field} must be an int, got {type(value).__name__}", field=field)
    if not minimum <= value <= maximum:
        raise ValidationError(
            f"{field} must be between {minimum} and {maximum}, got {value}", field=field
        )
    return value
