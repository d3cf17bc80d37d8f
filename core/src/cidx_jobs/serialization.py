"""JSON (de)serialization of the models, for APIs, logs and backends that store documents.

Built on one private :mod:`cattrs` converter (the JSON preconf converter, with
datetimes as ISO 8601 UTC strings and statuses as their values). Decoding
validates exactly as the constructors do.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

import cattrs
from cattrs.preconf.json import make_converter

from . import _validate as v
from ._models import Checkpoint, JobFilter, JobStatus, SyncJob
from .errors import ValidationError

__all__ = [
    "INTERNAL_FIELDS",
    "PUBLIC_FIELDS",
    "from_dict",
    "from_json",
    "to_dict",
    "to_json",
    "to_public_dict",
]

T = TypeVar("T", SyncJob, Checkpoint)


def _make_converter() -> cattrs.Converter:

    converter = make_converter()
    converter.register_unstructure_hook(datetime, lambda value: value.isoformat())

    def structure_datetime(value: Any, _type: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        if not isinstance(value, str):
            raise ValidationError(f"expected an ISO 8601 string, got {value!r}")
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(f"{value!r} is not an ISO 8601 datetime") from None
        return v.to_utc(parsed, "datetime")

    converter.register_structure_hook(datetime, structure_datetime)
    converter.register_structure_hook(JobStatus, lambda value, _type: JobStatus.parse(value))
    converter.register_unstructure_hook(JobStatus, lambda value: value.value)
    # Sets come out sorted so that the same filter always gives the same JSON.
    converter.register_unstructure_hook_func(
        lambda cls: cls in (set, frozenset) or getattr(cls, "__origin__", None) in (set, frozenset),
        lambda value: sorted(converter.unstructure(item) for item in value),
    )
    return converter


_converter = _make_converter()


def to_dict(obj: SyncJob | Checkpoint | JobFilter) -> dict[str, Any]:
    """A JSON-ready dict of a model (datetimes as ISO 8601 strings, statuses as values)."""
    result: dict[str, Any] = _converter.unstructure(obj)
    return result


#: The fields of a job that are the store's business, not an API client's: who runs the job
#: (a host name and a process id) and when it last renewed its lease.
INTERNAL_FIELDS: frozenset[str] = frozenset({"owner_id", "heartbeat_at"})
#: The fields :func:`to_public_dict` returns. An allowlist: a field added to SyncJob is left out
#: of API responses until it is listed here (a test keeps every field in one of the two sets).
PUBLIC_FIELDS: frozenset[str] = frozenset(
    {
        "id",
        "user_id",
        "project_id",
        "status",
        "progress",
        "phase",
        "created_at",
        "started_at",
        "completed_at",
        "error_message",
        "metadata",
    }
)


def to_public_dict(job: SyncJob) -> dict[str, Any]:
    """A JSON-ready dict of a job for an API response: the :data:`PUBLIC_FIELDS` of
    :func:`to_dict`, so without the :data:`INTERNAL_FIELDS` (``owner_id``, ``heartbeat_at``),
    which name the worker's host and process. The fields are an allowlist: a field added to
    :class:`~cidx_jobs.SyncJob` later stays out of responses until it is listed.

    :raises ValidationError: ``job`` is not a SyncJob.
    """
    if not isinstance(job, SyncJob):
        raise ValidationError(
            f"to_public_dict() takes a SyncJob, got {type(job).__name__}", field="job"
        )
    return {name: value for name, value in to_dict(job).items() if name in PUBLIC_FIELDS}


def from_dict(data: Any, cls: type[T]) -> T:
    """Build a model from :func:`to_dict`'s output, validating it.

    :raises ValidationError: the data is malformed or a field is invalid.
    """
    try:
        return _converter.structure(data, cls)
    except ValidationError:
        raise
    except (cattrs.BaseValidationError, KeyError, TypeError, ValueError) as error:
        found = _first_validation_error(error)
        if found is not None:
            raise found from error
        raise ValidationError(f"cannot build a {cls.__name__} from {data!r}: {error}") from error


def to_json(obj: SyncJob | Checkpoint | JobFilter) -> str:
    """The model as a JSON string."""
    import json

    return json.dumps(to_dict(obj), ensure_ascii=False)


def from_json(text: str | bytes, cls: type[T]) -> T:
    """Build a model from :func:`to_json`'s output.

    :raises ValidationError: the text is not JSON or does not describe a valid model.
    """
    import json

    try:
        data = json.loads(text)
    except (ValueError, TypeError, RecursionError) as error:
        raise ValidationError(f"not valid JSON: {error}") from error
    return from_dict(data, cls)


def _first_validation_error(error: BaseException) -> ValidationError | None:
    if isinstance(error, ValidationError):
        return error
    for inner in getattr(error, "exceptions", ()):
        found = _first_validation_error(inner)
        if found is not None:
            return found
    return None
