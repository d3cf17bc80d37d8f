"""JobPersistence: the facade the server calls, over a backend's storage."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from types import TracebackType
from typing import Any, NoReturn

from . import _validate as v
from ._config import StoreSettings
from ._models import (
    FINISHED_STATUSES,
    Checkpoint,
    CleanupReport,
    JobFilter,
    JobPage,
    JobStatus,
    Lease,
    RecoveryReport,
    ResumePoint,
    SyncJob,
    _before,
    utcnow,
)
from ._plugins import Hooks
from .backend import StatusChange, Storage
from .errors import (
    JobNotFoundError,
    LeaseLostError,
    PluginError,
    StorageError,
    StorageOutcomeUnknownError,
    UnsupportedOperationError,
    ValidationError,
)

logger = logging.getLogger("cidx_jobs")

_CHECKPOINT_MEMORY = 10_000
_RECOVERY_BATCH = 500
_DEFAULT_BATCH = 1000
#: What claim_job() starts by default: a job waiting to run, or one to resume.
_CLAIMABLE = frozenset({JobStatus.PENDING, JobStatus.QUEUED, JobStatus.INTERRUPTED})
#: The heartbeat of a job handed over: older than any lease timeout is long.
_LONG_AGO = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: What recovery hands out to be resumed (as interrupted), not re-queued.
_RESUMABLE = frozenset({JobStatus.RUNNING, JobStatus.INTERRUPTED})


def _with_lease(
    job: SyncJob,
    owner: str,
    heartbeat_at: datetime,
    status: JobStatus | None = None,
    completed_at: datetime | None = None,
) -> SyncJob:
    # The job is validated already; rebuilding it unvalidated keeps save_job cheap.
    return SyncJob.from_trusted(
        id=job.id,
        user_id=job.user_id,
        project_id=job.project_id,
        status=job.status if status is None else status,
        progress=job.progress,
        phase=job.phase,
        created_at=job.created_at,
        started_at=job.started_at,
        completed_at=job.completed_at if completed_at is None else completed_at,
        error_message=job.error_message,
        metadata=job.metadata,
        owner_id=owner,
        heartbeat_at=heartbeat_at,
    )


def _expected(
    value: JobStatus | str | Iterable[JobStatus | str] | None,
) -> frozenset[JobStatus] | None:
    if value is None:
        return None
    if isinstance(value, (str, JobStatus)):
        return frozenset({JobStatus.parse(value, "expected")})
    if not isinstance(value, Iterable):
        raise ValidationError(
            f"expected must be a status, a set of statuses or None, got {type(value).__name__}",
            field="expected",
        )
    statuses = frozenset(JobStatus.parse(item, "expected") for item in value)
    if not statuses:
        raise ValidationError("expected must name at least one status", field="expected")
    return statuses


class _Local(threading.local):
    # A class default makes the per-call lookup in _emit a plain attribute read.
    pending: list[tuple[Callable[..., None], tuple[Any, ...]]] | None = None


class _ServerClock:
    """The database server's time between readings: the last reading plus the monotonic
    time elapsed since (half the round trip is the reading's error)."""

    __slots__ = ("_reading", "_storage")

    def __init__(self, storage: Storage) -> None:
        self._storage = storage
        #: (server time, monotonic time of the reading), replaced whole: readers need no lock.
        self._reading: tuple[datetime, float] | None = None

    @classmethod
    def of(cls, storage: Storage) -> _ServerClock | None:
        """The server clock of ``storage``, or ``None`` when it has none."""
        clock = cls(storage)
        try:
            clock._read()
        except UnsupportedOperationError:
            return None
        except StorageError:
            # The server has a clock but did not answer now: the host's clock serves until a
            # later reading succeeds.
            logger.warning("could not read the database server's clock; using this host's")
        return clock

    def _read(self) -> None:
        before = time.monotonic()
        server = self._storage.server_time()
        after = time.monotonic()
        self._reading = (server, (before + after) / 2)

    def refresh(self) -> None:
        """Read the server's time again; on a storage failure keep the last reading."""
        try:
            self._read()
        except StorageError:
            logger.debug("could not read the database server's clock", exc_info=True)

    def now(self) -> datetime:
        """The server's time now, as well as this process knows it."""
        reading = self._reading
        if reading is None:
            return utcnow()
        return reading[0] + timedelta(seconds=time.monotonic() - reading[1])


def make_owner_id(settings: StoreSettings | None = None) -> str:
    """A new owner id for a store: the ``owner_id`` setting (by default host and
    process, ``HOST:PID``), a colon and a random part.

    The random part is never configured: a lease belongs to one incarnation, so
    a worker restarted under the same name neither keeps its predecessor's jobs
    alive with its heartbeats nor skips them when it recovers.
    """
    base = settings.owner_id if settings is not None else None
    return f"{base or f'{socket.gethostname()}:{os.getpid()}'}:{secrets.token_hex(4)}"


class JobPersistence:
    """The job store: what the server calls, whatever the backend.

    A facade over one backend's :class:`~cidx_jobs.backend.Storage`: its
    methods validate their inputs (raising
    :class:`~cidx_jobs.errors.ValidationError` before any I/O), apply the status
    rules and the policy hooks, make one storage call where the operation is one
    statement, and fire the event hooks after the change is stored. It owns the
    hooks, the settings (and so the clock), the owner id, the checkpoint-throttle
    memory and the event buffering of :meth:`transaction`.

    Open one with :func:`~cidx_jobs.open_persistence`, or build it around a
    storage directly: ``JobPersistence(storage, settings=StoreSettings(clock=...))``.

    Every method may raise :class:`~cidx_jobs.errors.StorageError` (or a
    subclass) when the storage fails; such a call wrote nothing, except after
    :class:`~cidx_jobs.errors.StorageOutcomeUnknownError` (the connection was
    lost during the commit). A store is safe to share between threads.

    :param storage: the backend's storage; the facade closes it in :meth:`close`.
    :param hooks: the hooks to call; by default a fresh plugin manager with the
        installed plugins.
    :param settings: the common settings; by default :class:`StoreSettings`'s.
    :param owner_id: this store's exact owner id (:func:`~cidx_jobs.open_persistence`
        passes the one it gave the backend in
        :attr:`~cidx_jobs.backend.BackendConfig.owner_id`); by default a new one:
        the ``owner_id`` setting (by default ``HOST:PID``), a colon and a random part.
    :raises ValidationError: ``storage`` is not a Storage, or ``owner_id`` is not a valid id.
    """

    __slots__ = (
        "__weakref__",
        "_checkpoint_lock",
        "_checkpoint_times",
        "_clock",
        "_hooks",
        "_local",
        "_server_clock",
        "_settings",
        "_storage",
        "owner_id",
    )

    def __init__(
        self,
        storage: Storage,
        *,
        hooks: Hooks | None = None,
        settings: StoreSettings | None = None,
        owner_id: str | None = None,
    ) -> None:
        if not isinstance(storage, Storage):
            raise ValidationError(
                f"JobPersistence() takes a cidx_jobs.backend.Storage, got {type(storage).__name__}",
                field="storage",
            )
        self._storage = storage
        self._hooks = hooks if hooks is not None else Hooks()
        self._settings = settings if settings is not None else StoreSettings()
        self._local = _Local()
        self._checkpoint_times: dict[tuple[str, str], datetime] = {}
        self._checkpoint_lock = threading.Lock()
        if owner_id is not None:
            v.check_id(owner_id, "owner_id")
            if len(owner_id) > v.MAX_OWNER_ID_LENGTH:
                raise ValidationError(
                    f"owner_id is {len(owner_id)} characters long; the limit is "
                    f"{v.MAX_OWNER_ID_LENGTH}",
                    field="owner_id",
                )
        # With the default clock and a database server, every time the store writes is the
        # server's: the clocks of the hosts sharing it then need not agree for leases to hold.
        self._server_clock: _ServerClock | None = None
        self._clock: Callable[[], datetime] = self._settings.clock
        if self._settings.clock is utcnow:
            server_clock = _ServerClock.of(storage)
            if server_clock is not None:
                self._server_clock = server_clock
                self._clock = server_clock.now
        #: Who this store instance is, for job leases (see ``make_owner_id``).
        self.owner_id: str = owner_id if owner_id is not None else make_owner_id(self._settings)

    @property
    def storage(self) -> Storage:
        """The backend's storage, for what only that backend offers (e.g. SQLite's
        ``backup()``); calls made on it directly bypass validation and events."""
        return self._storage

    @property
    def hooks(self) -> Hooks:
        """The hooks this store calls."""
        return self._hooks

    @property
    def settings(self) -> StoreSettings:
        """The common settings in force (read-only: open a new store to change them)."""
        return self._settings

    def __repr__(self) -> str:
        return f"<JobPersistence {self._storage!r}>"

    # -- the public API --------------------------------------------------------------

    def save_job(self, job: SyncJob) -> bool:
        """Store a new job; returns ``True``.

        Unless the job names an owner, this store instance becomes its owner,
        with a lease starting now (see :meth:`recover_interrupted_jobs`).

        :raises ValidationError: ``job`` is not a SyncJob, or its metadata is no
            longer JSON-compatible (the dict was changed after the job was built)
            or is over the ``max_metadata_bytes`` limit.
        :raises DuplicateJobError: a job with this id exists; it is left unchanged.
        """
        if not isinstance(job, SyncJob):
            raise ValidationError(
                f"save_job() takes a SyncJob, got {type(job).__name__}", field="job"
            )
        # The dict is mutable: check it again, as it may have changed since the job was built.
        metadata_json = v.encode_json_object(job.metadata, "metadata")[1]
        v.check_size(metadata_json, self._settings.max_metadata_bytes, "metadata")
        if job.owner_id is None or job.heartbeat_at is None:
            job = _with_lease(job, job.owner_id or self.owner_id, job.heartbeat_at or self._now())
        self._storage.insert_job(job, metadata_json)
        self._emit(self._hooks.job_saved, job)
        return True

    def load_job(self, job_id: str) -> SyncJob | None:
        """The job with this id, or ``None``.

        :raises ValidationError: ``job_id`` is not a valid id.
        """
        return self._storage.get_job(v.check_id(job_id, "job_id"))

    def update_job_status(
        self,
        job_id: str,
        status: JobStatus | str,
        *,
        error_message: str | None = None,
        expected: JobStatus | str | Iterable[JobStatus | str] | None = None,
        lease: Lease | None = None,
    ) -> bool:
        """Change a job's status; ``True`` if it was changed.

        Without ``expected``, last write wins, except that a terminal job
        (completed, failed, cancelled) never goes back to an active status: such
        a call returns ``False`` and changes nothing. With ``expected`` (a status
        or a set of them) it is a compare-and-set that applies only when the
        current status is one of them; name the current status to retry a
        finished job deliberately. ``started_at`` is set on the first move to
        running; ``completed_at`` (when the job stopped, which cleanup's
        retention counts from) on entering a terminal status, and on a move from
        an active status to interrupted; a move to an active status clears it.
        A move to running makes this store the job's owner and starts its lease.
        See :class:`~cidx_jobs.backend.StatusChange` for the exact rules.

        With ``lease`` (from :meth:`claim_job`) the change is fenced: it applies
        only while the job is running under that lease, e.g. a worker finishing
        its job. A move to running takes a new lease, so it cannot be fenced:
        use :meth:`claim_job`.

        :returns: ``False`` for an unknown id or a change that does not apply.
        :raises ValidationError: an argument is invalid (e.g. an unknown status, a
            lease of another job, a lease with ``expected`` or with a move to running).
        :raises LeaseLostError: with ``lease``: the job no longer runs under it;
            nothing was changed.
        """
        job_id = v.check_id(job_id, "job_id")
        new_status = JobStatus.parse(status)
        fence = None
        if lease is not None:
            fence = self._check_lease(lease, job_id)
            if expected is not None:
                raise ValidationError(
                    "expected and lease exclude each other: a fenced change applies to the "
                    "running job of the lease only",
                    field="expected",
                )
            if new_status is JobStatus.RUNNING:
                raise ValidationError(
                    "a move to running takes a new lease: call claim_job() instead",
                    field="status",
                )
        change = StatusChange(
            status=new_status,
            error_message=v.check_optional_text(error_message, "error_message"),
            expected=_expected(expected),
            now=self._now(),
            owner=self.owner_id,
            fence=fence,
        )
        changed = self._storage.set_status(job_id, change)
        if not changed and lease is not None:
            self._lease_lost(lease)
        if changed:
            self._emit(
                self._hooks.status_changed, job_id, change.status, change.error_message, change.now
            )
        return changed

    def update_job_progress(
        self, job_id: str, progress: int, phase: str | None = None, *, lease: Lease | None = None
    ) -> bool:
        """Set a job's progress (0..100) and, unless ``phase`` is ``None``, its phase.

        With ``lease`` (from :meth:`claim_job`) the write is fenced: it is stored
        only while the job is running under that lease.

        :returns: ``False`` for an unknown id.
        :raises ValidationError: ``progress`` is not an int in 0..100, an id or
            phase is invalid, or ``lease`` is not a Lease of this job.
        :raises LeaseLostError: with ``lease``: the job was cancelled, finished,
            deleted or taken over; nothing was stored.
        """
        job_id = v.check_id(job_id, "job_id")
        progress = v.check_int(progress, "progress", minimum=0, maximum=100)
        phase = v.check_optional_text(phase, "phase")
        if lease is None:
            return self._storage.set_progress(job_id, progress, phase)
        fence = self._check_lease(lease, job_id)
        if not self._storage.set_progress(job_id, progress, phase, fence=fence):
            self._lease_lost(lease)
        return True

    def claim_job(
        self,
        job_id: str,
        *,
        expected: JobStatus | str | Iterable[JobStatus | str] | None = None,
    ) -> Lease | None:
        """Start a job: move it to running under a new lease of this store, and return the
        lease, or ``None`` if the job is unknown or not in an ``expected`` status.

        A compare-and-set: of several workers claiming one job, exactly one gets
        the lease. Pass the lease to the worker's writes (``lease=``) to fence
        them: once the job is cancelled, finished, deleted or taken over by
        recovery, they store nothing and raise
        :class:`~cidx_jobs.errors.LeaseLostError`. Keep the lease alive with
        :meth:`heartbeat`. Fires ``cidx_jobs_status_changed``.

        A claim whose connection was lost after it was sent (where a write's
        outcome is unknown) is resolved here: a fenced write that changes
        nothing tells whether this claim's lease was stored, and if it was not,
        the claim is made once more.

        :param expected: the statuses a job may be claimed from; default pending,
            queued and interrupted. Name running to take a running job from its
            current holder, whose lease is then lost.
        :raises ValidationError: an argument is invalid.
        :raises StorageOutcomeUnknownError: the connection was lost after the
            claim was sent, and the check that would tell failed too.
        """
        job_id = v.check_id(job_id, "job_id")
        statuses = _expected(expected)
        now = self._now()
        token = secrets.token_hex(8)
        change = StatusChange(
            status=JobStatus.RUNNING,
            error_message=None,
            expected=_CLAIMABLE if statuses is None else statuses,
            now=now,
            owner=self.owner_id,
            lease=token,
        )
        try:
            claimed = self._storage.set_status(job_id, change)
        except StorageOutcomeUnknownError:
            if self._local.pending is not None:
                raise  # inside a block the block's commit decides; nothing to find out here
            claimed = self._claim_outcome(job_id, change, token)
        if not claimed:
            return None
        self._emit(self._hooks.status_changed, job_id, JobStatus.RUNNING, None, now)
        return Lease(job_id=job_id, owner_id=self.owner_id, token=token, claimed_at=now)

    def _claim_outcome(self, job_id: str, change: StatusChange, token: str) -> bool:
        # The connection died after the claim was sent: whether it was stored, a fenced write
        # that changes nothing tells (it applies only while the job runs under this token).
        # Not stored: nothing of it can apply later, so the claim is made once more.
        try:
            job = self._storage.get_job(job_id)
            stored = (
                job is not None
                and job.status is JobStatus.RUNNING
                and job.owner_id == self.owner_id
                and self._storage.set_progress(job_id, job.progress, job.phase, fence=token)
            )
        except StorageError as error:
            raise StorageOutcomeUnknownError(
                f"the claim of job {job_id!r} may or may not be stored: the connection was "
                f"lost as it was sent, and checking failed too ({error}). Read the job: "
                "running under this store's owner id means claimed (claim it again with "
                "expected='running' to get a lease), otherwise claim it again"
            ) from error
        if stored:
            logger.info("the claim of job %s was stored although its connection was lost", job_id)
            return True
        return self._storage.set_status(job_id, change)

    def release_job(self, lease: Lease) -> None:
        """Give a claimed job up without finishing it, so that the next recovery of any store
        (this one included) resumes it at once.

        In one transaction the job, still running under ``lease``, becomes
        ``interrupted`` (the lease's fenced writes then raise
        :class:`~cidx_jobs.errors.LeaseLostError`) and its lease passes to a
        marker owner, ``<owner_id>:released``, that has already expired: this
        store's :meth:`heartbeat` does not keep it, and the next
        :meth:`recover_interrupted_jobs` anywhere takes it with its checkpoint,
        whatever its ``lease_timeout``. Use it for a job a worker will not
        work after all (e.g. a claim whose requester went away:
        ``AsyncJobPersistence.claim_job()`` does this for a cancelled claim). Fires ``cidx_jobs_status_changed``.

        :raises ValidationError: ``lease`` is not a Lease.
        :raises LeaseLostError: the job no longer runs under ``lease``; nothing was changed.
        """
        if not isinstance(lease, Lease):
            raise ValidationError(
                f"lease must be a Lease from claim_job(), got {type(lease).__name__}",
                field="lease",
            )
        released = f"{self.owner_id}{v.RELEASED_SUFFIX}"
        with self.transaction():
            self.update_job_status(lease.job_id, JobStatus.INTERRUPTED, lease=lease)
            job = self._storage.get_job(lease.job_id)
            # Inside the block nothing else can change the job between the two writes; a
            # storage that says otherwise has broken its transaction promise.
            if job is None or not self._storage.take_over(
                job, JobStatus.INTERRUPTED, released, self._now()
            ):
                raise StorageError(f"job {lease.job_id!r} changed inside a transaction block")
            # Expired by the heartbeat alone: completed_at (the retention's start) stays now.
            self._storage.renew_leases(released, _LONG_AGO)
        logger.info("released job %s for recovery to resume", lease.job_id)

    def query_jobs(self, filter: JobFilter | None = None) -> list[SyncJob]:
        """The jobs matching ``filter``, newest first; an empty list when none match.

        :raises ValidationError: ``filter`` is not a JobFilter (or its cursor is invalid).
        """
        return self.query_page(filter).jobs

    def query_page(self, filter: JobFilter | None = None) -> JobPage:
        """One page of matching jobs and the cursor of the next page.

        Pass the page to :meth:`JobFilter.next_page` to get the next page's
        filter; ``next_cursor`` is ``None`` on the last page. Keyset pages
        cost the same however deep they are, unlike ``offset``.

        :raises ValidationError: ``filter`` is not a JobFilter (or its cursor is invalid).
        """
        filter = self._check_filter(filter)
        if filter.matches_nothing():
            return JobPage(jobs=[], next_cursor=None)
        # One row more than asked tells whether another page exists.
        rows = self._storage.select_jobs(filter, filter.after_key(), filter.limit + 1)
        if len(rows) > filter.limit:
            del rows[filter.limit :]
            return JobPage(jobs=rows, next_cursor=filter.cursor_after(rows[-1]))
        return JobPage(jobs=rows, next_cursor=None)

    def count_jobs(self, filter: JobFilter | None = None) -> int:
        """How many jobs match ``filter`` (``limit``, ``offset`` and ``cursor`` are ignored).

        :raises ValidationError: ``filter`` is not a JobFilter.
        """
        filter = self._check_filter(filter)
        if filter.matches_nothing():
            return 0
        return self._storage.count_jobs(filter)

    def delete_expired_jobs(self, older_than: datetime) -> int:
        """Delete the non-active jobs that finished before ``older_than``, with their checkpoints.

        A job finished at ``completed_at``, or at ``created_at`` when it never
        completed. Active jobs (pending, queued, running) are never deleted.
        The count is logged on the ``cidx_jobs`` logger.

        :returns: how many jobs were deleted.
        :raises ValidationError: ``older_than`` is not an aware datetime.
        """
        cutoff = v.to_utc(older_than, "older_than")
        cutoffs = dict.fromkeys(FINISHED_STATUSES, cutoff)
        jobs, checkpoints = self._delete_expired(cutoffs, _DEFAULT_BATCH, dry_run=False)
        # The default observer logs the count on the cidx_jobs logger.
        self._emit(
            self._hooks.cleanup_done,
            CleanupReport(jobs_deleted=jobs, checkpoints_deleted=checkpoints, cutoffs=cutoffs),
        )
        return jobs

    def run_cleanup(
        self,
        now: datetime | None = None,
        *,
        retention: timedelta | None = None,
        dry_run: bool = False,
    ) -> CleanupReport:
        """Apply the cleanup policy (a hook; by default every finished job expires after the
        configured retention) and report what was deleted.

        Deletes in batches of the policy's ``batch_size`` so other writers never
        wait long. With ``dry_run``, counts what would go and deletes nothing.
        Fires the ``cidx_jobs_cleanup_done`` event.

        Each batch commits on its own (outside :meth:`transaction`): when a
        storage error stops a cleanup part-way, the batches before it stay
        deleted (those jobs had expired anyway) and no event fires; run it again
        to finish.

        On the store's clock (no ``now``), it logs a WARNING on the ``cidx_jobs``
        logger when the store holds a job created more than 5 minutes after that
        clock's now: the clock stepped backward since (or a process's clock ran
        ahead). It goes on: by a clock that is behind, it deletes less, never
        more. A clock that steps *forward* leaves nothing to see in the store and
        makes cleanup delete jobs early (see docs/lifecycle.md, "Clock steps").

        :param now: the time to measure retention from; default the store's clock.
        :param retention: a :class:`~datetime.timedelta` overriding the configured retention.
        :raises ValidationError: ``now`` is naive or ``retention`` is not a non-negative timedelta.
        :raises PluginError: the cleanup policy hook returned no policy, or the
            storage deleted more than a batch's limit at once.
        """
        on_clock = now is None
        now = self._now() if now is None else v.to_utc(now, "now")
        if retention is None:
            retention = self._settings.retention
        elif not isinstance(retention, timedelta) or retention < timedelta(0):
            raise ValidationError("retention must be a non-negative timedelta", field="retention")
        if not isinstance(dry_run, bool):
            raise ValidationError("dry_run must be a bool", field="dry_run")
        policy = self._hooks.cleanup_policy(retention)
        cutoffs = policy.cutoffs(now)
        if on_clock:
            # A job stamped after this clock's now is the only trace a clock step leaves in
            # the store. Refusing would protect no job (a clock that is behind deletes
            # less), and one job from a clock that ran ahead would block cleanup until that
            # time, so it is a warning; one indexed read of the newest such job.
            margin = timedelta(minutes=5)
            ahead = self._storage.select_jobs(JobFilter(created_after=now + margin), None, 1)
            if ahead:
                logger.warning(
                    "cleanup: job %s was created at %s, %s after this process's clock "
                    "(%s): the clock stepped backward, or a process's clock ran ahead. "
                    "Cleanup goes on and keeps such jobs longer; a clock that steps "
                    "forward makes it delete jobs early. Keep the clock synchronised by "
                    "slewing, not stepping (e.g. chrony's makestep only at boot)",
                    ahead[0].id,
                    ahead[0].created_at.isoformat(),
                    ahead[0].created_at - now,
                    now.isoformat(),
                )
        jobs, checkpoints = (0, 0)
        if cutoffs:
            jobs, checkpoints = self._delete_expired(cutoffs, policy.batch_size, dry_run=dry_run)
        report = CleanupReport(
            jobs_deleted=jobs, checkpoints_deleted=checkpoints, cutoffs=cutoffs, dry_run=dry_run
        )
        self._emit(self._hooks.cleanup_done, report)
        return report

    def save_checkpoint(
        self, job_id: str, phase: str, data: Mapping[str, Any], *, lease: Lease | None = None
    ) -> bool:
        """Store the checkpoint of one phase of a job, replacing that phase's previous one.

        The checkpoint policy hook may skip the write (throttling); a skipped
        write keeps the previous checkpoint, fires ``cidx_jobs_checkpoint_skipped``
        and returns ``True`` if the job exists.

        With ``lease`` (from :meth:`claim_job`) the write is fenced: it is stored
        only while the job is running under that lease.

        :returns: ``False`` if the job does not exist.
        :raises ValidationError: an argument is invalid, ``data`` is not a
            JSON-compatible dict within ``max_metadata_bytes``, or ``lease`` is
            not a Lease of this job.
        :raises LeaseLostError: with ``lease``: the job was cancelled, finished,
            deleted or taken over; nothing was stored.
        """
        job_id = v.check_id(job_id, "job_id")
        phase = v.check_id(phase, "phase")
        data, data_json = v.encode_json_object(data, "data")
        v.check_size(data_json, self._settings.max_metadata_bytes, "data")
        fence = None if lease is None else self._check_lease(lease, job_id)
        now = self._now()
        # The default policy writes every checkpoint and never reads when the last one was
        # written: with it alone, skip the policy call and the memory it would read.
        policy = not self._hooks.checkpoint_policy_is_default()
        if policy and not self._hooks.checkpoint_policy(
            job_id, phase, data, self._checkpoint_times.get((job_id, phase)), now
        ):
            # A read is far cheaper than the write the policy saved.
            job = self._storage.get_job(job_id)
            if lease is not None and (
                job is None or job.status is not JobStatus.RUNNING or job.owner_id != lease.owner_id
            ):
                self._lease_lost(lease)
            if job is None:
                return False
            self._emit(self._hooks.checkpoint_skipped, job_id, phase, now)
            return True
        checkpoint = Checkpoint.from_trusted(job_id=job_id, phase=phase, data=data, created_at=now)
        if fence is None:
            if not self._storage.upsert_checkpoint(checkpoint, data_json):
                return False
        elif not self._storage.upsert_checkpoint(checkpoint, data_json, fence=fence):
            self._lease_lost(lease)  # type: ignore[arg-type]  # fence implies lease
        # Deferred like an event: a rolled-back write must not count for throttling.
        self._emit(self._checkpoint_written if policy else self._hooks.checkpoint_saved, checkpoint)
        return True

    def _checkpoint_written(self, checkpoint: Checkpoint) -> None:
        with self._checkpoint_lock:
            # Bounded: the memory only serves throttling, so forgetting is harmless.
            if len(self._checkpoint_times) >= _CHECKPOINT_MEMORY:
                self._checkpoint_times.clear()
            self._checkpoint_times[(checkpoint.job_id, checkpoint.phase)] = checkpoint.created_at
        self._hooks.checkpoint_saved(checkpoint)

    def load_checkpoint(self, job_id: str, phase: str) -> dict[str, Any] | None:
        """The data of the checkpoint of this job and phase, or ``None``.

        :raises ValidationError: an id or the phase is invalid.
        """
        return self._storage.get_checkpoint_data(
            v.check_id(job_id, "job_id"), v.check_id(phase, "phase")
        )

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """Every checkpoint of a job, oldest first (one per phase); empty for an unknown job.

        :raises ValidationError: ``job_id`` is invalid.
        """
        return self._storage.get_checkpoints(v.check_id(job_id, "job_id"))

    def resume_point(self, job_id: str) -> Checkpoint | None:
        """The checkpoint to resume this job from, as the resume policy hook chooses.

        By default the newest checkpoint, if younger than the store's
        ``checkpoint_max_age``; ``None`` means start from the beginning.

        :raises ValidationError: ``job_id`` is invalid.
        :raises JobNotFoundError: there is no such job.
        :raises PluginError: a resume policy returned something invalid.
        """
        job = self.load_job(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return self._hooks.resume_policy(
            job,
            self._storage.get_checkpoints(job.id),
            self._now(),
            self._settings.checkpoint_max_age,
        )

    def heartbeat(self) -> int:
        """Renew the lease of every active or interrupted job this store owns; returns how many.

        Call it more often than the ``lease_timeout`` that
        :meth:`recover_interrupted_jobs` uses, e.g. from the worker's progress loop.
        On a database server it also reads the server's clock again (see
        :attr:`uses_server_clock`).
        """
        if self._server_clock is not None:
            self._server_clock.refresh()
        return self._storage.renew_leases(self.owner_id, self._now())

    def now(self) -> datetime:
        """The current time as this store writes it: the database server's when
        :attr:`uses_server_clock`, else the settings' ``clock``. Pass it where a
        caller computes a time the store compares with its own (e.g.
        ``run_cleanup(now=...)``). It makes no call to the storage."""
        return self._clock()

    @property
    def uses_server_clock(self) -> bool:
        """Whether the times this store writes come from the database server's clock.

        True when the settings' ``clock`` is the default one and the storage has
        a server clock (:meth:`~cidx_jobs.backend.Storage.server_time`; PostgreSQL
        has one, SQLite and memory do not). The store then reads the server's
        time when it opens and at each :meth:`heartbeat` and recovery, and
        between two readings adds the monotonic time elapsed since the last one:
        heartbeats, lease expiry, ``started_at``, ``completed_at`` and cleanup
        cutoffs of every host sharing the server follow one clock, and a step of
        a host's own clock changes none of them. A failed reading keeps the last
        one (with no reading yet, the host's clock serves).
        """
        return self._server_clock is not None

    def recover_interrupted_jobs(self, lease_timeout: timedelta | None = None) -> RecoveryReport:
        """Take over the jobs of owners whose lease expired; call it at server start, and
        periodically (:class:`~cidx_jobs.LeaseRunner` does both).

        Jobs that were running, or left interrupted (by a graceful stop, an
        earlier recovery whose process died before resuming them, or
        ``update_job_status()``), under an owner whose last heartbeat is older
        than ``lease_timeout`` become ``interrupted``, owned by this store, and
        come back with the checkpoint to resume from (chosen by the resume
        policy hook). Their ``completed_at`` becomes now, so the cleanup's
        retention counts from the hand-out and a job of any age stays
        resumable for the whole retention; resuming it (a move to running)
        clears it again. While this store lives its heartbeats keep the
        interrupted jobs it took; if it dies before resuming them, the next
        recovery elsewhere takes them again. Pending and queued jobs of such
        owners keep their status and come back for re-queueing. Every take-over is a compare-and-set on the job's status,
        owner and heartbeat, so the jobs of a live sibling process (which keeps
        heartbeating) are never touched, and when several processes recover at
        once each job goes to exactly one of them. This store's own jobs are
        never taken. Fires ``cidx_jobs_recovery_done`` with the report.

        :param lease_timeout: how long an owner may stay silent; default the
            store's ``lease_timeout`` setting (option ``lease_timeout_seconds``, 300 s).
        :raises ValidationError: ``lease_timeout`` is not a positive timedelta.
        :raises PluginError: a resume policy returned something invalid.
        """
        if lease_timeout is None:
            lease_timeout = self._settings.lease_timeout
        elif not isinstance(lease_timeout, timedelta) or lease_timeout <= timedelta(0):
            raise ValidationError(
                "lease_timeout must be a positive timedelta", field="lease_timeout"
            )
        if self._server_clock is not None:
            self._server_clock.refresh()
        now = self._now()
        stale_before = _before(now, lease_timeout)
        interrupted: list[ResumePoint] = []
        requeue: list[SyncJob] = []
        seen: set[str] = set()
        while True:
            stale = [
                job
                for job in self._storage.find_stale(stale_before, self.owner_id, _RECOVERY_BATCH)
                if job.id not in seen
            ]
            if not stale:
                break
            for job in stale:
                seen.add(job.id)
                if job.status in _RESUMABLE:
                    if self._storage.take_over(job, JobStatus.INTERRUPTED, self.owner_id, now):
                        if job.status is JobStatus.RUNNING:
                            self._emit(
                                self._hooks.status_changed,
                                job.id,
                                JobStatus.INTERRUPTED,
                                None,
                                now,
                            )
                        # As stored: take_over stamped completed_at with the interruption.
                        taken = _with_lease(job, self.owner_id, now, JobStatus.INTERRUPTED, now)
                        checkpoint = self._hooks.resume_policy(
                            taken,
                            self._storage.get_checkpoints(job.id),
                            now,
                            self._settings.checkpoint_max_age,
                        )
                        interrupted.append(ResumePoint(job=taken, checkpoint=checkpoint))
                elif self._storage.take_over(job, job.status, self.owner_id, now):
                    requeue.append(_with_lease(job, self.owner_id, now))
        if interrupted or requeue:
            logger.warning(
                "recovered %d interrupted job(s) and %d job(s) to re-queue from dead owners",
                len(interrupted),
                len(requeue),
            )
        report = RecoveryReport(interrupted=interrupted, requeue=requeue)
        self._emit(self._hooks.recovery_done, report)
        return report

    def hand_over_jobs(self) -> int:
        """Give this store's jobs up, so that other stores' recovery takes them at once; call
        it when the process stops gracefully (:class:`~cidx_jobs.LeaseRunner` does, on exit).

        Every job running under this store becomes ``interrupted`` (a
        compare-and-set, as recovery does: its lease is cleared, so the fenced
        writes of this process's workers that still run raise
        :class:`~cidx_jobs.errors.LeaseLostError` and store nothing), and then
        the lease of every job this store owns (active or interrupted) is set to
        have expired long ago: the next :meth:`recover_interrupted_jobs` of any
        other store, whatever its ``lease_timeout``, resumes the interrupted ones
        and re-queues the pending and queued ones. Stop heartbeating first: a
        later :meth:`heartbeat` of this store would renew them again. The jobs
        and the ids of those it interrupted are logged on the ``cidx_jobs`` logger (at
        WARNING when it interrupted one, else INFO). Fires
        ``cidx_jobs_status_changed`` for each job it interrupts.

        :returns: how many jobs were handed over (interrupted ones included).
        """
        now = self._now()
        interrupted: list[str] = []
        page_filter: JobFilter | None = JobFilter(
            statuses=frozenset({JobStatus.RUNNING}), owner_id=self.owner_id, limit=_RECOVERY_BATCH
        )
        while page_filter is not None:
            page = self.query_page(page_filter)
            for job in page.jobs:
                # Filtered by owner in storage; checked again in case a third-party
                # storage ignores the criterion (the take-over's compare-and-set would
                # refuse another owner's job anyway).
                if job.owner_id == self.owner_id and self._storage.take_over(
                    job, JobStatus.INTERRUPTED, self.owner_id, now
                ):
                    interrupted.append(job.id)
                    self._emit(self._hooks.status_changed, job.id, JobStatus.INTERRUPTED, None, now)
            page_filter = page_filter.next_page(page) if page.next_cursor else None
        handed = self._storage.renew_leases(self.owner_id, _LONG_AGO)
        # A deploy that cut jobs off is worth seeing in a log left at its default level.
        logger.log(
            logging.WARNING if interrupted else logging.INFO,
            "handed over %d job(s) of owner %s to the other workers; interrupted: %s",
            handed,
            self.owner_id,
            ", ".join(interrupted) or "none",
        )
        return handed

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """A block whose calls (from this thread) commit together or, on an exception, not at all.

        Events fired by calls inside the block are delivered after the commit,
        and dropped on a rollback. Blocks nest by joining the outermost one.
        Other threads' calls are not part of the block; depending on the
        backend they may wait until it ends.

        :raises StorageError: the commit failed; nothing of the block was stored.
        """
        local = self._local
        if local.pending is not None:
            yield
            return
        local.pending = []
        try:
            with self._storage.transaction():
                yield
        except BaseException:
            local.pending = None
            raise
        pending, local.pending = local.pending, None
        for notify, args in pending:
            notify(*args)

    def close(self) -> None:
        """Release the store's resources; later calls raise StorageUnavailableError. Idempotent."""
        self._storage.close()

    def __enter__(self) -> JobPersistence:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------------------

    def _now(self) -> datetime:
        return self._clock()

    def _check_lease(self, lease: object, job_id: str) -> str:
        if not isinstance(lease, Lease):
            raise ValidationError(
                f"lease must be a Lease from claim_job(), got {type(lease).__name__}",
                field="lease",
            )
        if lease.job_id != job_id:
            raise ValidationError(
                f"the lease is on job {lease.job_id!r}, not on {job_id!r}", field="lease"
            )
        return lease.token

    def _lease_lost(self, lease: Lease) -> NoReturn:
        # The fenced write stored nothing; this read only explains why.
        job = self._storage.get_job(lease.job_id)
        if job is None:
            raise LeaseLostError(lease.job_id, "the job no longer exists")
        if job.status is not JobStatus.RUNNING:
            reason = f"the job is {job.status.value} now"
        elif job.owner_id != lease.owner_id:
            reason = f"owner {job.owner_id} holds the job now"
        else:
            reason = "the job was claimed again since this lease was issued"
        raise LeaseLostError(lease.job_id, reason, status=job.status, owner_id=job.owner_id)

    def _check_filter(self, filter: JobFilter | None) -> JobFilter:
        if filter is None:
            return JobFilter()
        if not isinstance(filter, JobFilter):
            raise ValidationError(
                f"expected a JobFilter, got {type(filter).__name__}", field="filter"
            )
        return filter

    def _delete_expired(
        self, cutoffs: Mapping[JobStatus, datetime], batch_size: int, *, dry_run: bool
    ) -> tuple[int, int]:
        if dry_run:
            return self._storage.count_expired(cutoffs)
        # The loop lives here, not in each backend, so that every backend cleans up in
        # bounded batches and none can stop after the first.
        jobs = checkpoints = 0
        while True:
            batch_jobs, batch_checkpoints = self._storage.delete_expired(cutoffs, batch_size)
            if batch_jobs <= 0:  # a DB-API "unknown" row count (-1) must not loop forever
                return jobs, checkpoints
            if batch_jobs > batch_size:
                raise PluginError(
                    f"the storage {self._storage!r} deleted {batch_jobs} jobs in one cleanup "
                    f"batch, more than the limit of {batch_size}: its delete_expired() breaks "
                    "the Storage contract (the batches it deleted stay deleted)"
                )
            jobs += batch_jobs
            checkpoints += batch_checkpoints

    def _emit(self, notify: Callable[..., None], *args: Any) -> None:
        pending = self._local.pending
        if pending is not None:
            pending.append((notify, args))
        else:
            notify(*args)
