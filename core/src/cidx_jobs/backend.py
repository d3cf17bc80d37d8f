"""The storage interface: everything a backend author needs, in one public module.

A backend is a plugin that registers a factory through the
:func:`~cidx_jobs.hookspecs.cidx_jobs_register_backends` hook. The factory
receives a :class:`BackendConfig` and returns a :class:`Storage`; core wraps
that storage in the :class:`~cidx_jobs.JobPersistence` facade, which validates
every input, applies the policies, fires the events and keeps the clock and the
owner id. A storage only stores and finds rows, and translates its driver's
failures into :mod:`cidx_jobs.errors`.

What a backend declares, it declares once, when it registers: its
:class:`Capability` flags and a :data:`ScratchFactory` that makes a fresh,
isolated storage for one test (the contract suite and its command line read
both). See "Writing a backend" in the docs.
"""

from __future__ import annotations

import abc
import collections
import enum
import os
from collections.abc import Callable, Collection, Iterable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import attrs

from ._config import BackendConfig, Options
from ._models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Checkpoint,
    JobFilter,
    JobStatus,
    SyncJob,
)
from .errors import (
    PluginError,
    StorageBusyError,
    StorageCorruptError,
    StorageError,
    StorageFullError,
    StoragePermissionError,
    StorageUnavailableError,
    UnsupportedOperationError,
)

__all__ = [
    "Backend",
    "BackendConfig",
    "BackendFactory",
    "Capability",
    "Fault",
    "FaultInjector",
    "Health",
    "HealthCheck",
    "InventoryFactory",
    "Options",
    "RegisterBackend",
    "ScratchFactory",
    "StatusChange",
    "Storage",
    "StorageInfo",
    "StoreConfig",
]

#: A store configuration: a URL or a mapping with a ``backend`` key.
StoreConfig = str | Mapping[str, object]


@attrs.frozen(kw_only=True)
class StatusChange:
    """A requested status change, validated; storages apply it with :meth:`apply` or its SQL twin.

    The rules, which every storage must follow exactly:

    * With ``expected``, the change applies only if the current status is in it.
    * Without it, the change applies unless it would move a terminal job back to
      an active status.
    * ``started_at`` is set to ``now`` on a move to running when it is empty
      (kept afterwards).
    * ``completed_at`` is when the job stopped: for a terminal status when it
      finished, for ``interrupted`` when it was interrupted. Cleanup's retention
      counts from it, so an interrupted job is kept for the whole retention after
      its interruption however old it is. It is set to ``now`` on entering a
      terminal status when it is empty or the job was not terminal (so a move
      between two terminal statuses keeps it); set to ``now`` on a move to
      ``interrupted`` when it is empty or the job was active (so a move from
      ``interrupted`` or a terminal status to ``interrupted`` keeps it); and
      cleared on a move to an active status.
    * ``error_message`` replaces the stored one when given, else is kept.
    * A move to running with an ``owner`` takes the job's lease: ``owner_id``
      becomes ``owner``, ``heartbeat_at`` becomes ``now`` and the stored lease
      token becomes ``lease`` (``None`` clears it). Other changes keep the lease.
    * With ``fence`` (a fenced write), the change applies only if the job is
      running and its stored lease token is ``fence``, checked in the same
      atomic step as the change itself. A storage keeps the token beside the
      job: it is not a field of :class:`~cidx_jobs.SyncJob`.
    """

    status: JobStatus
    error_message: str | None
    expected: frozenset[JobStatus] | None
    now: datetime
    owner: str | None = None
    #: The lease token a move to running records (see :class:`~cidx_jobs.Lease`).
    lease: str | None = None
    #: The lease token the job must hold for the change to apply.
    fence: str | None = None

    @property
    def takes_lease(self) -> bool:
        """Whether the change records ``owner`` and ``now`` as the job's lease."""
        return self.status is JobStatus.RUNNING and self.owner is not None

    def allowed_from(self, current: JobStatus) -> bool:
        """Whether the change applies to a job whose status is ``current``."""
        if self.expected is not None:
            return current in self.expected
        return not (current in TERMINAL_STATUSES and self.status in ACTIVE_STATUSES)

    def apply(self, job: SyncJob) -> SyncJob | None:
        """The job after the change, or ``None`` if the change does not apply to it."""
        if not self.allowed_from(job.status):
            return None
        started_at = job.started_at
        if self.status is JobStatus.RUNNING and started_at is None:
            started_at = self.now
        completed_at = job.completed_at
        if self.status in ACTIVE_STATUSES:
            completed_at = None
        elif self.status in TERMINAL_STATUSES:
            if job.status not in TERMINAL_STATUSES or completed_at is None:
                completed_at = self.now
        elif job.status in ACTIVE_STATUSES or completed_at is None:
            # Interrupted: the job stops now. Cleanup's retention must count from here, not
            # from a created_at that may be older than the retention.
            completed_at = self.now
        takes_lease = self.takes_lease
        return attrs.evolve(
            job,
            owner_id=self.owner if takes_lease else job.owner_id,
            heartbeat_at=self.now if takes_lease else job.heartbeat_at,
            status=self.status,
            started_at=started_at,
            completed_at=completed_at,
            error_message=self.error_message
            if self.error_message is not None
            else job.error_message,
        )


class Capability(str, enum.Enum):
    """Optional behaviour a backend declares when it registers.

    The contract suite runs the tests of a capability only for backends that
    declare it, and says so when it skips them. Everything else is mandatory.
    """

    #: Data survives ``close()`` and reopening the same storage.
    PERSISTENT = "persistent"
    #: Many threads may call one store at the same time.
    CONCURRENT_THREADS = "concurrent_threads"
    #: Several processes (and store handles) may use the same storage at once.
    MULTI_PROCESS = "multi_process"
    #: :meth:`Storage.fault_injector` returns a :class:`FaultInjector`.
    FAULT_INJECTION = "fault_injection"

    @classmethod
    def parse_all(cls, values: Iterable[Capability | str], who: str) -> frozenset[Capability]:
        """``values`` as capabilities.

        :raises PluginError: a value is not a capability; the message names ``who``.
        """
        try:
            return frozenset(cls(value) for value in values)
        except (ValueError, TypeError) as error:
            names = ", ".join(member.value for member in cls)
            raise PluginError(
                f"{who} declared an unknown capability ({error}); the capabilities are: {names}"
            ) from None


class Fault(enum.Enum):
    """A storage failure that the contract suite injects through a :class:`FaultInjector`.

    Each fault names the error the facade's caller must see; the backend's own
    error translation produces it from the driver's failure.
    """

    #: The connection to the storage went away. Expect :class:`~cidx_jobs.errors.StorageUnavailableError`.
    CONNECTION_LOST = "connection_lost"
    #: A lock wait timed out, or the statement was a deadlock victim.
    #: Expect :class:`~cidx_jobs.errors.StorageBusyError`.
    LOCK_TIMEOUT = "lock_timeout"
    #: The disk is full. Expect :class:`~cidx_jobs.errors.StorageFullError`.
    DISK_FULL = "disk_full"
    #: The storage refused access. Expect :class:`~cidx_jobs.errors.StoragePermissionError`.
    PERMISSION_DENIED = "permission_denied"
    #: The storage found damaged data. Expect :class:`~cidx_jobs.errors.StorageCorruptError`.
    CORRUPT = "corrupt"

    @property
    def error(self) -> type[StorageError]:
        """The error a call that meets this fault raises."""
        return _FAULT_ERRORS[self]


_FAULT_ERRORS: dict[Fault, type[StorageError]] = {
    Fault.CONNECTION_LOST: StorageUnavailableError,
    Fault.LOCK_TIMEOUT: StorageBusyError,
    Fault.DISK_FULL: StorageFullError,
    Fault.PERMISSION_DENIED: StoragePermissionError,
    Fault.CORRUPT: StorageCorruptError,
}


class FaultInjector(abc.ABC):
    """The seam through which tests make a storage fail the way its driver fails.

    A backend wires it once, where its statements reach the driver, so that an
    injected fault goes through the same error translation as a real one.
    """

    @abc.abstractmethod
    def fail_next(self, fault: Fault, *, after: int = 0) -> None:
        """Make a coming statement the storage sends (from any thread) fail with ``fault``:
        the next one, or with ``after=N`` the one after the next ``N`` (which succeed).
        ``BEGIN`` and ``COMMIT`` count as statements, so a test can fault each
        statement of a call in turn, the commit included.

        The failure must enter where a real one would: for
        :attr:`Fault.CONNECTION_LOST` the connection is really dropped; for the
        others the driver's own exception for that condition is raised before
        the statement runs, so the statement changes nothing.
        """

    @abc.abstractmethod
    def clear(self) -> bool:
        """Cancel a fault that no statement has met yet.

        :returns: whether one was still pending (the calls made since
            :meth:`fail_next` sent fewer than ``after + 1`` statements).
        """


# -- operator: what the optional operator methods of Storage return ------------------------


@attrs.frozen(kw_only=True)
class StorageInfo:
    """What a storage tells an operator about itself (:meth:`Storage.describe`), for
    ``cidx-jobs stats`` and ``cidx-jobs migrate``.

    :ivar location: where the data lives, for people: a file's path, or a server and a
        database (never a password).
    :ivar size_bytes: the space the data takes (files, or the database on its server), or
        ``None`` if the backend cannot tell.
    :ivar schema_version: the version of the stored schema, or ``None`` for a backend that
        has no versioned schema.
    :ivar latest_schema_version: the schema version this release writes, or ``None``.
    :ivar pending_migrations: one line per migration that :meth:`Storage.migrate` would
        apply, oldest first; empty when the schema is up to date.
    :ivar settings: the settings in force, by name, as text (``{"journal_mode": "wal"}``).
    """

    location: str
    size_bytes: int | None = None
    schema_version: int | None = None
    latest_schema_version: int | None = None
    pending_migrations: tuple[str, ...] = ()
    settings: Mapping[str, str] = attrs.field(factory=dict)


class Health(str, enum.Enum):
    """How a :class:`HealthCheck` came out; ``cidx-jobs doctor`` exits 1 on a problem."""

    #: Nothing to do.
    OK = "ok"
    #: Worth a look, but the store works as it should.
    WARNING = "warning"
    #: Something is wrong, or will be soon: the check's advice says what to do.
    PROBLEM = "problem"


@attrs.frozen(kw_only=True)
class HealthCheck:
    """One finding of a storage's self-check (:meth:`Storage.check_health`), for
    ``cidx-jobs doctor``.

    :ivar name: a short, stable identifier of the check (``integrity``, ``wal_size``,
        ``permissions``, ...), for scripts.
    :ivar health: how it came out.
    :ivar summary: what was found, in one line.
    :ivar advice: what to do about it, in one line; ``None`` when nothing needs doing.
    :ivar data: details for ``--json``, as JSON-compatible values.
    """

    name: str
    health: Health
    summary: str
    advice: str | None = None
    data: Mapping[str, object] = attrs.field(factory=dict)


class Storage(abc.ABC):
    """Where a backend keeps jobs and checkpoints: the interface a backend implements.

    Core calls these methods only with validated inputs: ids are valid, times
    are aware UTC datetimes within the models' range, JSON text is what core's
    encoder produced. Each call is atomic on its own and joins the current
    :meth:`transaction` when made inside one on the same thread.

    Every method raises a :class:`~cidx_jobs.errors.StorageError` subclass when
    the storage fails, never a driver's exception; such a call wrote nothing,
    except that :class:`~cidx_jobs.errors.StorageOutcomeUnknownError` says the
    connection was lost while a commit was in flight. After :meth:`close`,
    every method raises :class:`~cidx_jobs.errors.StorageUnavailableError`.
    A storage is safe to share between threads unless its backend does not
    declare :attr:`Capability.CONCURRENT_THREADS`.
    """

    @abc.abstractmethod
    def insert_job(self, job: SyncJob, metadata_json: str) -> None:
        """Insert a new job; ``metadata_json`` is its metadata, encoded by core.

        :raises DuplicateJobError: the id exists; nothing changed, and an open
            :meth:`transaction` stays usable (a duplicate is an expected outcome,
            not a storage failure).
        """

    @abc.abstractmethod
    def get_job(self, job_id: str) -> SyncJob | None:
        """The stored job (with its lease fields), or ``None``."""

    @abc.abstractmethod
    def set_status(self, job_id: str, change: StatusChange) -> bool:
        """Apply ``change`` atomically, following :class:`StatusChange`'s rules
        (its ``fence`` included).

        :returns: ``False`` if the job is unknown or the change does not apply.
        """

    @abc.abstractmethod
    def set_progress(
        self, job_id: str, progress: int, phase: str | None, *, fence: str | None = None
    ) -> bool:
        """Set progress and, unless ``phase`` is ``None``, the phase.

        :param fence: a lease token: then write only if the job is running and
            holds this token, checked in the same atomic step as the write.
        :returns: ``False`` if the job is unknown (or, with ``fence``, does not
            hold the lease); nothing was written.
        """

    @abc.abstractmethod
    def select_jobs(
        self, filter: JobFilter, after: tuple[datetime, str] | None, limit: int
    ) -> list[SyncJob]:
        """At most ``limit`` jobs matching ``filter``, ordered ``created_at DESC, id DESC``.

        Skips ``filter.offset`` matching jobs first; with ``after`` (a keyset
        cursor's ``(created_at, id)``), returns only jobs that sort after it.
        ``filter.limit`` and ``filter.cursor`` are already folded into ``limit``
        and ``after``.
        """

    @abc.abstractmethod
    def count_jobs(self, filter: JobFilter) -> int:
        """How many jobs match ``filter``'s criteria (its paging fields are ignored)."""

    @abc.abstractmethod
    def delete_expired(self, cutoffs: Mapping[JobStatus, datetime], limit: int) -> tuple[int, int]:
        """Delete one batch: at most ``limit`` of the jobs whose status is a key of
        ``cutoffs`` and whose ``coalesce(completed_at, created_at)`` is before that
        status's cutoff, with their checkpoints, in one transaction (or as part of
        the open :meth:`transaction`). ``completed_at`` is when the job stopped (see
        :class:`StatusChange`), interrupted jobs included.

        The facade calls it again until it returns no job, so a storage may
        delete fewer than ``limit`` (e.g. to hold its write lock briefly) but
        never more, and other writers wait for one batch at most.

        :returns: (jobs, checkpoints) deleted by this batch.
        """

    @abc.abstractmethod
    def count_expired(self, cutoffs: Mapping[JobStatus, datetime]) -> tuple[int, int]:
        """How many jobs (and their checkpoints) :meth:`delete_expired` would delete in all,
        for a dry run; deletes nothing."""

    @abc.abstractmethod
    def upsert_checkpoint(
        self, checkpoint: Checkpoint, data_json: str, *, fence: str | None = None
    ) -> bool:
        """Insert or replace the checkpoint of ``(job_id, phase)``; ``data_json`` is its data.

        :param fence: a lease token: then write only if the job is running and
            holds this token, checked in the same atomic step as the write.
        :returns: ``False`` if the job is unknown (or, with ``fence``, does not
            hold the lease); nothing was written.
        """

    @abc.abstractmethod
    def get_checkpoint(self, job_id: str, phase: str) -> Checkpoint | None:
        """The checkpoint of this job and phase, or ``None``."""

    def get_checkpoint_data(self, job_id: str, phase: str) -> dict[str, Any] | None:
        """The data of the checkpoint of this job and phase, or ``None``.

        Optional: the default reads the whole checkpoint with
        :meth:`get_checkpoint`; override it where the data alone costs less.
        """
        checkpoint = self.get_checkpoint(job_id, phase)
        return None if checkpoint is None else checkpoint.data

    @abc.abstractmethod
    def get_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """The job's checkpoints ordered by ``created_at``, then phase; empty if unknown."""

    @abc.abstractmethod
    def renew_leases(self, owner: str, now: datetime) -> int:
        """Set ``heartbeat_at = now`` on every job whose ``owner_id`` is ``owner`` and whose
        status is in :data:`~cidx_jobs.LEASED_STATUSES` (active or interrupted).

        ``now`` may be in the past: a store that stops hands its jobs over by
        renewing them at the epoch, which makes them stale at once.

        :returns: how many jobs were renewed.
        """

    @abc.abstractmethod
    def find_stale(self, before: datetime, exclude_owner: str, limit: int) -> list[SyncJob]:
        """At most ``limit`` jobs whose status is in :data:`~cidx_jobs.LEASED_STATUSES`
        (active or interrupted), whose ``owner_id`` is not ``exclude_owner`` (a job with no
        owner qualifies) and whose ``heartbeat_at`` is ``None`` or before ``before``."""

    @abc.abstractmethod
    def take_over(self, job: SyncJob, status: JobStatus, owner: str, now: datetime) -> bool:
        """Atomically, if the stored job still has ``job``'s status, ``owner_id`` and
        ``heartbeat_at``, set its status, ``owner_id = owner`` and ``heartbeat_at = now``,
        and clear its lease token (so that the writes of the lease's holder are refused).

        ``job`` is one :meth:`find_stale` returned, so it is active or interrupted. When
        ``status`` is ``interrupted``, also set ``completed_at = now`` (for an interrupted
        job too): the job's retention counts from its hand-out, so cleanup cannot delete a
        job that recovery just handed out.
        With any other ``status`` (recovery keeps a pending or queued job's), leave
        ``completed_at`` as it is.

        :returns: ``False`` if anything of the three changed meanwhile (another
            recoverer won, or the owner renewed its lease).
        """

    @abc.abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """A transaction for the calling thread: commit on a clean exit, roll back on an exception.

        Core never nests them. Other threads' calls are not part of it, and
        see none of its writes before it commits. Blocks of several threads are
        serializable: a block that reads a job and writes it back loses no
        concurrent update.

        A storage failure inside the block dooms it, even when the caller caught
        the error and went on: the block must not commit, and leaving it raises.

        :raises StorageError: the commit failed, or a storage failure doomed the
            block (e.g. the storage rolled it back as a deadlock victim); nothing
            of the block was stored.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release every resource; idempotent."""

    def max_concurrency(self) -> int | None:
        """How many calls this storage serves at once (e.g. its connection pool's size), or
        ``None`` (the default) if it does not say.

        Optional. :class:`~cidx_jobs.AsyncJobPersistence` sizes its thread pool by
        it, so that its threads never queue for connections they cannot get.
        """
        return None

    def fault_injector(self) -> FaultInjector | None:
        """The seam tests inject storage faults through, or ``None`` (the default).

        A backend that returns one declares :attr:`Capability.FAULT_INJECTION`.
        """
        return None

    # -- operator -------------------------------------------------------------------------
    # Optional methods for the people who run the server (the ``cidx-jobs`` command line:
    # stats, doctor, backup, migrate). Each has a default, so a backend that implements
    # none of them still works; the defaults that cannot answer raise
    # UnsupportedOperationError, which the command line reports as "not supported by this
    # backend". The facade never calls them.

    def describe(self) -> StorageInfo:
        """Where the data lives, its size, its schema version and the settings in force.

        Optional: the default raises :class:`~cidx_jobs.errors.UnsupportedOperationError`.
        It must change nothing (``cidx-jobs stats`` and ``migrate --check`` call it).

        :raises UnsupportedOperationError: the backend does not describe itself.
        :raises StorageError: the storage failed.
        """
        raise UnsupportedOperationError(
            f"{type(self).__name__} does not describe itself (its backend does not implement "
            "Storage.describe())",
            operation="describe",
        )

    def check_health(self, *, thorough: bool = False) -> list[HealthCheck]:
        """The storage's own checks (integrity, space, permissions, settings), read-only.

        Optional: the default raises :class:`~cidx_jobs.errors.UnsupportedOperationError`.
        Each finding that is not :attr:`Health.OK` carries advice an operator can act on.
        Checks that apply to every backend (expired leases, the schema version, the clock)
        are ``cidx-jobs doctor``'s own, not the storage's.

        :param thorough: run the slow checks too (e.g. a full integrity check that reads
            every page and index), not only the quick ones.
        :raises UnsupportedOperationError: the backend has no self-check.
        :raises StorageError: the storage failed.
        """
        raise UnsupportedOperationError(
            f"{type(self).__name__} has no self-check (its backend does not implement "
            "Storage.check_health())",
            operation="check_health",
        )

    def server_time(self) -> datetime:
        """The current time on the database server, aware and in UTC, to measure the clock
        offset between this host and the server.

        Optional: the default raises :class:`~cidx_jobs.errors.UnsupportedOperationError`,
        which is right for an embedded database (it has no clock of its own).

        :raises UnsupportedOperationError: there is no database server.
        :raises StorageError: the storage failed.
        """
        raise UnsupportedOperationError(
            f"{type(self).__name__} has no database server whose clock could differ from "
            "this host's",
            operation="server_time",
        )

    def top_users(self, limit: int) -> list[tuple[str, int]]:
        """The ``limit`` users with the most jobs, as ``(user_id, jobs)``, most first (ties by
        user id).

        Optional: the default reads every job through :meth:`select_jobs`, which is correct
        for every storage but slow on a large one; override it with one grouped query.

        :raises StorageError: the storage failed.
        """
        counts: collections.Counter[str] = collections.Counter()
        after: tuple[datetime, str] | None = None
        while True:
            page = self.select_jobs(JobFilter(), after, 1000)
            for job in page:
                counts[job.user_id] += 1
            if len(page) < 1000:
                break
            after = (page[-1].created_at, page[-1].id)
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        return ranked[:limit]

    def oldest_active(self) -> SyncJob | None:
        """The active (pending, queued or running) job created first (ties by the smallest
        id), or ``None``.

        Optional: the default pages through every active job with :meth:`select_jobs`
        (newest first), which is correct for every storage but slow on a large one;
        override it with one ordered query per active status.

        :raises StorageError: the storage failed.
        """
        oldest: SyncJob | None = None
        after: tuple[datetime, str] | None = None
        while True:
            page = self.select_jobs(JobFilter(statuses=ACTIVE_STATUSES, limit=1000), after, 1000)
            if page:
                oldest = page[-1]
            if len(page) < 1000:
                return oldest
            after = (page[-1].created_at, page[-1].id)

    def backup(self, target: str | os.PathLike[str]) -> None:
        """Write a consistent copy of the data to the file ``target`` while the store stays in
        use (an existing file there is replaced).

        Optional: the default raises :class:`~cidx_jobs.errors.UnsupportedOperationError`.
        A backend whose data lives on a database server overrides it to raise that error
        with a message naming the server's own backup tool (``pg_dump``, say), which
        ``cidx-jobs backup`` shows the operator.

        :raises UnsupportedOperationError: the backend cannot copy its data to a file.
        :raises StoragePermissionError: ``target`` cannot be written.
        :raises StorageError: the copy failed; ``target`` may be incomplete.
        """
        raise UnsupportedOperationError(
            f"{type(self).__name__} cannot copy its data to a file; back up the database it "
            "stores jobs in with that database's own backup tool",
            operation="backup",
        )

    def migrate(self) -> tuple[int, int]:
        """Bring the stored schema up to date, all or nothing; idempotent.

        Optional: the default raises :class:`~cidx_jobs.errors.UnsupportedOperationError`.
        A backend that migrates when it opens should also accept the option
        ``migrate=false``, which opens without migrating (and without changing anything
        else), so that ``cidx-jobs migrate --check`` and the other commands can read a
        database without upgrading it under a running server; this method then migrates.

        :returns: the schema version before and after.
        :raises UnsupportedOperationError: the backend has no schema to migrate.
        :raises SchemaVersionError: the data was written by a newer release.
        :raises StorageError: the storage failed; nothing was changed.
        """
        raise UnsupportedOperationError(
            f"{type(self).__name__} has no schema to migrate", operation="migrate"
        )


#: A backend's factory: builds the storage that a configuration names.
#: It reads its options with ``config.reader()`` and raises
#: :class:`~cidx_jobs.errors.ConfigError` for a bad one, or a
#: :class:`~cidx_jobs.errors.StorageError` when the storage cannot be opened.
BackendFactory = Callable[[BackendConfig], Storage]

#: Makes a fresh, empty, isolated storage for one test: called with the
#: configuration the test run was given (``None`` for the backend's default)
#: and a private folder for any files; enters to the configuration that opens
#: the new storage, and on exit removes everything it made (files, schemas,
#: databases), so that a test run leaves nothing behind.
ScratchFactory = Callable[[StoreConfig | None, Path], AbstractContextManager[StoreConfig]]

#: Lists the storages a backend holds under a base configuration (schemas, databases,
#: table prefixes: whatever its scratch factory makes), so that the contract suite can
#: check that each test's scratch storage is gone afterwards. Optional; a backend whose
#: scratch storages are files in the folder it is given needs none (the suite checks it).
InventoryFactory = Callable[[StoreConfig | None], Collection[str]]


class RegisterBackend(Protocol):
    """The callable a backend provider is handed by ``cidx_jobs_register_backends``."""

    def __call__(
        self,
        name: str,
        factory: BackendFactory,
        *,
        capabilities: Iterable[Capability | str] = (),
        scratch: ScratchFactory | None = None,
        inventory: InventoryFactory | None = None,
    ) -> None:
        """Register the backend ``name`` (the URL scheme that selects it).

        :param factory: builds the backend's :class:`Storage` from a :class:`BackendConfig`.
        :param capabilities: the optional behaviour the backend has.
        :param scratch: makes an isolated storage for one test (see :data:`ScratchFactory`).
        :param inventory: lists the storages under a base configuration (see
            :data:`InventoryFactory`).
        :raises PluginError: the name is taken by another plugin, or an argument is malformed.
        """


@attrs.frozen(kw_only=True)
class Backend:
    """A registered backend, as :meth:`cidx_jobs.Hooks.backends` returns it.

    :ivar name: the URL scheme that selects it.
    :ivar plugin: the name of the plugin that registered it.
    :ivar factory: builds its storage.
    :ivar capabilities: what it declared.
    :ivar scratch: how to make an isolated storage for one test, or ``None``.
    :ivar inventory: how to list the storages under a base configuration, or ``None``.
    """

    name: str
    plugin: str
    factory: BackendFactory
    capabilities: frozenset[Capability] = frozenset()
    scratch: ScratchFactory | None = None
    inventory: InventoryFactory | None = None
