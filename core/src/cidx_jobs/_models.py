"""The value objects of cidx-jobs: jobs, checkpoints, filters, pages and policies."""

from __future__ import annotations

import base64
import enum
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from . import _validate as v
from .errors import ValidationError

__all__ = [
    "ACTIVE_STATUSES",
    "FINISHED_STATUSES",
    "LEASED_STATUSES",
    "TERMINAL_STATUSES",
    "Checkpoint",
    "CleanupPolicy",
    "CleanupReport",
    "JobFilter",
    "JobPage",
    "JobStatus",
    "RecoveryReport",
    "ResumePoint",
    "SyncJob",
]

MAX_LIMIT = 1000
MAX_OFFSET = 2**53
# A real cursor is about 150 characters: a timestamp, an id of at most 256 and a digest.
_MAX_CURSOR_LENGTH = 2048


class JobStatus(str, enum.Enum):
    """The state of a sync job.

    *Active* statuses (pending, queued, running) are never cleaned up.
    *Terminal* statuses (completed, failed, cancelled) are final: without an
    explicit ``expected`` status, an update never moves a terminal job back to
    an active status. ``interrupted`` marks a job a restart cut off; it is
    neither active nor terminal and may be resumed.
    """

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    def __str__(self) -> str:
        return self.value

    @property
    def is_active(self) -> bool:
        """True for pending, queued and running."""
        return self in ACTIVE_STATUSES

    @property
    def is_terminal(self) -> bool:
        """True for completed, failed and cancelled."""
        return self in TERMINAL_STATUSES

    @classmethod
    def parse(cls, value: object, field: str = "status") -> JobStatus:
        """Return the status named by ``value`` (a JobStatus or its string value).

        :raises ValidationError: ``value`` names no status.
        """
        if isinstance(value, JobStatus):
            return value
        try:
            return cls(value)
        except ValueError:
            names = ", ".join(s.value for s in cls)
            raise ValidationError(
                f"{field} {value!r} is not a job status (one of: {names})", field=field
            ) from None


#: Statuses of a job that is not finished: pending, queued, running. Cleanup never deletes
#: them, and they carry a lease that recovery can take over.
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING}
)
#: Statuses a job never leaves without ``expected``: completed, failed, cancelled.
TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED}
)
#: Statuses a cleanup may delete: everything that is not active.
FINISHED_STATUSES: frozenset[JobStatus] = frozenset(JobStatus) - ACTIVE_STATUSES
#: Statuses whose job carries a lease that heartbeats renew and recovery takes over: the
#: active ones and interrupted. An interrupted job waits to be resumed, and it belongs to the
#: store that will resume it (the one that recovered it, or the one that stopped it) for as
#: long as that store lives; once its owner's lease expires, recovery hands it to another.
LEASED_STATUSES: frozenset[JobStatus] = ACTIVE_STATUSES | {JobStatus.INTERRUPTED}


def _id(field: str) -> Any:
    def convert(value: object) -> str:
        return v.check_id(value, field)

    return attrs.field(converter=convert)


def _optional_id(field: str) -> Any:
    def convert(value: object) -> str | None:
        return None if value is None else v.check_id(value, field)

    return attrs.field(default=None, converter=convert)


def _optional_utc(field: str) -> Any:
    def convert(value: object) -> datetime | None:
        return v.to_optional_utc(value, field)

    return attrs.field(default=None, converter=convert)


def _created_at() -> Any:
    def convert(value: object) -> datetime:
        return v.to_utc(value, "created_at")

    return attrs.field(factory=utcnow, converter=convert)


def _optional_text(field: str) -> Any:
    def convert(value: object) -> str | None:
        return v.check_optional_text(value, field)

    return attrs.field(default=None, converter=convert)


def _bounded_int(field: str, default: int, minimum: int, maximum: int) -> Any:
    def convert(value: object) -> int:
        return v.check_int(value, field, minimum=minimum, maximum=maximum)

    return attrs.field(default=default, converter=convert)


def _json_object(field: str) -> Any:
    def convert(value: object) -> dict[str, Any]:
        return v.check_json_object(value, field)

    return attrs.field(factory=dict, converter=convert, hash=False)


def _owner_id(value: object) -> str | None:
    return None if value is None else v.check_id(value, "owner_id")


def _heartbeat_at(value: object) -> datetime | None:
    return v.to_optional_utc(value, "heartbeat_at")


def _status(value: object) -> JobStatus:
    return JobStatus.parse(value)


def utcnow() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(timezone.utc)


@attrs.frozen(kw_only=True)
class SyncJob:
    """One sync job, as stored.

    Every field is validated on construction: ids are non-empty strings,
    ``progress`` is an int in 0..100, datetimes are timezone-aware (and are
    converted to UTC), ``metadata`` is a JSON-compatible dict.

    ``owner_id`` and ``heartbeat_at`` are the lease the store manages: the
    store instance that saved the job or last started it running owns it, and
    :meth:`JobPersistence.heartbeat` renews the lease. Leave them ``None``
    when creating a job; :meth:`JobPersistence.save_job` fills them in. They
    take no part in equality.
    Change a job with :func:`attrs.evolve`, which validates again.

    :raises ValidationError: a field is invalid.
    """

    id: str = _id("id")
    user_id: str = _id("user_id")
    project_id: str = _id("project_id")
    status: JobStatus = attrs.field(default=JobStatus.PENDING, converter=_status)
    progress: int = _bounded_int("progress", 0, 0, 100)
    phase: str | None = _optional_text("phase")
    created_at: datetime = _created_at()
    started_at: datetime | None = _optional_utc("started_at")
    completed_at: datetime | None = _optional_utc("completed_at")
    error_message: str | None = _optional_text("error_message")
    metadata: dict[str, Any] = _json_object("metadata")
    # The lease is the store's bookkeeping, not the job's content: equality
    # ignores it, so a job saved and loaded again still compares equal.
    owner_id: str | None = attrs.field(default=None, eq=False, converter=_owner_id)
    heartbeat_at: datetime | None = attrs.field(default=None, eq=False, converter=_heartbeat_at)

    @classmethod
    def create(
        cls,
        *,
        id: str,
        user_id: str,
        project_id: str,
        metadata: Mapping[str, Any] | None = None,
        status: JobStatus = JobStatus.PENDING,
        now: datetime | None = None,
    ) -> SyncJob:
        """A new job created now (or at ``now``), pending unless told otherwise.

        :raises ValidationError: a field is invalid.
        """
        return cls(
            id=id,
            user_id=user_id,
            project_id=project_id,
            status=status,
            created_at=now if now is not None else utcnow(),
            metadata=dict(metadata or {}),
        )

    @classmethod
    def from_trusted(
        cls,
        *,
        id: str,
        user_id: str,
        project_id: str,
        status: JobStatus,
        progress: int,
        phase: str | None,
        created_at: datetime,
        started_at: datetime | None,
        completed_at: datetime | None,
        error_message: str | None,
        metadata: dict[str, Any],
        owner_id: str | None = None,
        heartbeat_at: datetime | None = None,
    ) -> SyncJob:
        """Build a job from values a backend stored after validating them.

        This skips validation, which a backend reading its own rows does not
        need; never pass it user input. Datetimes must be aware UTC.
        """
        job = _new(cls)
        _set_job_id(job, id)
        _set_user_id(job, user_id)
        _set_project_id(job, project_id)
        _set_status(job, status)
        _set_progress(job, progress)
        _set_phase(job, phase)
        _set_created_at(job, created_at)
        _set_started_at(job, started_at)
        _set_completed_at(job, completed_at)
        _set_error_message(job, error_message)
        _set_metadata(job, metadata)
        _set_owner_id(job, owner_id)
        _set_heartbeat_at(job, heartbeat_at)
        return job


@attrs.frozen(kw_only=True)
class Checkpoint:
    """The saved state of one phase of a job; a newer checkpoint of a phase replaces the older.

    :raises ValidationError: a field is invalid.
    """

    job_id: str = _id("job_id")
    phase: str = _id("phase")
    data: dict[str, Any] = _json_object("data")
    created_at: datetime = _created_at()

    @classmethod
    def from_trusted(
        cls, *, job_id: str, phase: str, data: dict[str, Any], created_at: datetime
    ) -> Checkpoint:
        """Build a checkpoint from values a backend stored after validating them.

        Skips validation, like :meth:`SyncJob.from_trusted`; never pass it user input.
        """
        checkpoint = _new(cls)
        _set_checkpoint_job_id(checkpoint, job_id)
        _set_checkpoint_phase(checkpoint, phase)
        _set_checkpoint_data(checkpoint, data)
        _set_checkpoint_created_at(checkpoint, created_at)
        return checkpoint


# from_trusted builds a model from stored values without validation; a backend calls it
# for every row it reads. Setting the slots through their descriptors skips the frozen
# class's __setattr__ and the attribute lookup object.__setattr__ does for every field.
_new = object.__new__
_Setter = Callable[[Any, Any], None]


def _slot_setters(cls: type, *names: str) -> tuple[_Setter, ...]:
    return tuple(cls.__dict__[name].__set__ for name in names)


(
    _set_job_id,
    _set_user_id,
    _set_project_id,
    _set_status,
    _set_progress,
    _set_phase,
    _set_created_at,
    _set_started_at,
    _set_completed_at,
    _set_error_message,
    _set_metadata,
    _set_owner_id,
    _set_heartbeat_at,
) = _slot_setters(
    SyncJob,
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
    "owner_id",
    "heartbeat_at",
)
(
    _set_checkpoint_job_id,
    _set_checkpoint_phase,
    _set_checkpoint_data,
    _set_checkpoint_created_at,
) = _slot_setters(Checkpoint, "job_id", "phase", "data", "created_at")


def _statuses(value: object) -> frozenset[JobStatus] | None:
    if value is None:
        return None
    if isinstance(value, (str, JobStatus)):
        return frozenset({JobStatus.parse(value, "statuses")})
    if not isinstance(value, Iterable):
        raise ValidationError(
            f"statuses must be a set of JobStatus or None, got {type(value).__name__}",
            field="statuses",
        )
    return frozenset(JobStatus.parse(item, "statuses") for item in value)


@attrs.frozen(kw_only=True)
class JobFilter:
    """What :meth:`JobPersistence.query_jobs` returns and :meth:`~JobPersistence.count_jobs` counts.

    Every criterion is optional and they combine with AND. ``created_after``
    is inclusive and ``created_before`` exclusive. Results are ordered newest
    first (``created_at`` descending, then ``id`` descending). Page with
    ``offset``, or, for deep pages, with the ``cursor`` of the previous
    :class:`JobPage` (the two cannot be combined). An empty ``statuses`` set
    matches no job.

    :raises ValidationError: a criterion is invalid (e.g. ``limit`` outside 1..1000).
    """

    user_id: str | None = _optional_id("user_id")
    project_id: str | None = _optional_id("project_id")
    statuses: frozenset[JobStatus] | None = attrs.field(default=None, converter=_statuses)
    #: Only the jobs whose lease this owner holds or held last
    #: (:attr:`SyncJob.owner_id`), e.g. one worker's running jobs.
    owner_id: str | None = _optional_id("owner_id")
    created_after: datetime | None = _optional_utc("created_after")
    created_before: datetime | None = _optional_utc("created_before")
    limit: int = _bounded_int("limit", 50, 1, MAX_LIMIT)
    offset: int = _bounded_int("offset", 0, 0, MAX_OFFSET)
    cursor: str | None = attrs.field(default=None)

    @cursor.validator
    def _check_cursor(self, _attribute: object, value: object) -> None:
        if value is None:
            return
        if not isinstance(value, str):
            raise ValidationError("cursor must be a str or None", field="cursor")
        if self.offset:
            raise ValidationError(
                "cursor and offset cannot be combined; a cursor already says where the page starts",
                field="cursor",
            )
        self.after_key()  # decodes, so a bad cursor fails here, before any I/O

    def matches_nothing(self) -> bool:
        """True when no job can match (an empty status set or an empty date range)."""
        if self.statuses is not None and not self.statuses:
            return True
        return (
            self.created_after is not None
            and self.created_before is not None
            and self.created_after >= self.created_before
        )

    def matches(self, job: SyncJob) -> bool:
        """True when ``job`` meets every criterion (the cursor and paging aside)."""
        return (
            (self.user_id is None or job.user_id == self.user_id)
            and (self.project_id is None or job.project_id == self.project_id)
            and (self.owner_id is None or job.owner_id == self.owner_id)
            and (self.statuses is None or job.status in self.statuses)
            and (self.created_after is None or job.created_at >= self.created_after)
            and (self.created_before is None or job.created_at < self.created_before)
        )

    def fingerprint(self) -> str:
        """A short digest of the criteria, so a cursor only pages the filter that made it."""
        key = json.dumps(
            [
                self.user_id,
                self.project_id,
                None if self.statuses is None else sorted(s.value for s in self.statuses),
                None if self.created_after is None else self.created_after.isoformat(),
                None if self.created_before is None else self.created_before.isoformat(),
                *(() if self.owner_id is None else (self.owner_id,)),
            ]
        )
        return hashlib.blake2b(key.encode(), digest_size=8).hexdigest()

    def cursor_after(self, job: SyncJob) -> str:
        """The opaque cursor of the page that starts after ``job``."""
        raw = json.dumps(
            [1, job.created_at.isoformat(), job.id, self.fingerprint()], ensure_ascii=False
        )
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    def after_key(self) -> tuple[datetime, str] | None:
        """The (created_at, id) position the cursor points after, or None without a cursor.

        Backends use this for keyset pagination: return jobs strictly older in
        the ``(created_at DESC, id DESC)`` order.

        :raises ValidationError: the cursor is malformed or belongs to another filter.
        """
        if self.cursor is None:
            return None
        if len(self.cursor) > _MAX_CURSOR_LENGTH:
            raise ValidationError("cursor is too long to be one this library made", field="cursor")
        try:
            padded = self.cursor + "=" * (-len(self.cursor) % 4)
            version, created, job_id, fingerprint = json.loads(
                base64.urlsafe_b64decode(padded.encode("ascii"))
            )
            parsed = datetime.fromisoformat(created)
            if parsed.tzinfo is None or not isinstance(job_id, str) or version != 1:
                raise ValueError("malformed cursor")
            created_at = parsed.astimezone(timezone.utc)
        except (ValueError, TypeError, UnicodeError, RecursionError, OverflowError) as error:
            raise ValidationError(
                "cursor is not one this library made; pass the next_cursor of a JobPage",
                field="cursor",
            ) from error
        if fingerprint != self.fingerprint():
            raise ValidationError(
                "cursor was made for a different filter; "
                "a cursor only pages the filter it came from",
                field="cursor",
            )
        return created_at, job_id

    def next_page(self, page: JobPage) -> JobFilter:
        """The filter for the page after ``page``.

        :raises ValidationError: ``page`` is the last page.
        """
        if page.next_cursor is None:
            raise ValidationError("this is the last page; there is no next page", field="cursor")
        return attrs.evolve(self, cursor=page.next_cursor, offset=0)


@attrs.frozen(kw_only=True)
class JobPage:
    """One page of a query: the jobs and the cursor of the next page (None on the last page)."""

    jobs: list[SyncJob]
    next_cursor: str | None


def _retention(value: object) -> dict[JobStatus, timedelta]:
    if not isinstance(value, Mapping):
        raise ValidationError("retention must map statuses to timedeltas", field="retention")
    return {JobStatus.parse(status, "retention"): keep for status, keep in value.items()}


_DAWN = datetime.min.replace(tzinfo=timezone.utc)


def _before(now: datetime, keep: timedelta) -> datetime:
    # A retention reaching before year 1 means "keep everything": nothing finished earlier.
    try:
        return now - keep
    except OverflowError:
        return _DAWN


@attrs.frozen(kw_only=True)
class CleanupPolicy:
    """Which jobs expire, declared so that a backend can delete them with indexed, batched deletes.

    ``retention`` maps a status to how long after it stopped (``completed_at``:
    when a terminal job finished or an interrupted one was interrupted; or
    ``created_at`` when it is empty) a job of that status is kept.
    Statuses missing from the mapping never expire; active statuses are
    refused, because cleanup never deletes a job that may still run.

    :raises ValidationError: an active status is given, or a retention is negative.
    """

    retention: Mapping[JobStatus, timedelta] = attrs.field(converter=_retention)
    batch_size: int = _bounded_int("batch_size", 1000, 1, 100_000)

    @retention.validator
    def _check_retention(self, _attribute: object, value: Mapping[JobStatus, timedelta]) -> None:
        for status, keep in value.items():
            if status.is_active:
                raise ValidationError(
                    f"cleanup policy cannot expire active status {status.value!r}",
                    field="retention",
                )
            if not isinstance(keep, timedelta) or keep < timedelta(0):
                raise ValidationError(
                    f"retention for {status.value!r} must be a non-negative timedelta",
                    field="retention",
                )

    @classmethod
    def uniform(cls, keep: timedelta, *, batch_size: int = 1000) -> CleanupPolicy:
        """Every non-active status expires ``keep`` after the job finished.

        :raises ValidationError: ``keep`` is negative.
        """
        return cls(retention=dict.fromkeys(FINISHED_STATUSES, keep), batch_size=batch_size)

    def cutoffs(self, now: datetime) -> dict[JobStatus, datetime]:
        """For each expiring status, the finish time before which a job of it is deleted.

        :raises ValidationError: ``now`` is naive.
        """
        now = v.to_utc(now, "now")
        return {status: _before(now, keep) for status, keep in self.retention.items()}


@attrs.frozen(kw_only=True)
class Lease:
    """A worker's hold on a running job, from :meth:`JobPersistence.claim_job`.

    Pass it as ``lease=`` to the job's progress, checkpoint and status writes:
    each such write checks, in the statement that stores it, that the job is
    still running under this very lease, and otherwise stores nothing and raises
    :class:`~cidx_jobs.errors.LeaseLostError` (fencing). Every claim and every
    take-over by recovery issues a new token, so a lease lost once stays lost,
    even if the job comes back to the same store later.

    :ivar job_id: the job held.
    :ivar owner_id: the store instance holding it (its ``owner_id``).
    :ivar token: the lease's unique token, stored with the job.
    :ivar claimed_at: when the lease was taken (the store's clock).
    """

    job_id: str
    owner_id: str
    token: str
    claimed_at: datetime


@attrs.frozen(kw_only=True)
class ResumePoint:
    """An interrupted job and the checkpoint it resumes from (``None``: start over)."""

    job: SyncJob
    checkpoint: Checkpoint | None


@attrs.frozen(kw_only=True)
class RecoveryReport:
    """What :meth:`JobPersistence.recover_interrupted_jobs` found.

    ``interrupted``: jobs that were running, or left interrupted, under an owner
    whose lease expired; they are now ``interrupted`` and owned by the recovering
    store, which should resume them.
    ``requeue``: pending and queued jobs of dead owners; they keep their status
    and are now owned by the recovering store, which should queue them again.
    """

    interrupted: list[ResumePoint]
    requeue: list[SyncJob]


@attrs.frozen(kw_only=True)
class CleanupReport:
    """What one cleanup deleted (or, with ``dry_run``, would delete)."""

    jobs_deleted: int
    checkpoints_deleted: int
    cutoffs: Mapping[JobStatus, datetime]
    dry_run: bool = False
