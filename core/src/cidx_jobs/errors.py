"""The exceptions of cidx-jobs.

Every error the library raises on purpose derives from :class:`CidxJobsError`,
and, where one fits, from the matching builtin, so that ``except LookupError``
and ``except ValueError`` keep working in code that does not know this library.
Backends translate their drivers' exceptions into these types: no ``sqlite3``
(or other driver) exception escapes a backend.
"""

from __future__ import annotations

__all__ = [
    "BackendNotFoundError",
    "CidxJobsError",
    "ConfigError",
    "DuplicateJobError",
    "JobNotFoundError",
    "LeaseLostError",
    "PluginError",
    "SchemaVersionError",
    "StorageBusyError",
    "StorageCorruptError",
    "StorageError",
    "StorageFullError",
    "StorageOutcomeUnknownError",
    "StoragePermissionError",
    "StorageUnavailableError",
    "UnsupportedOperationError",
    "ValidationError",
]


class CidxJobsError(Exception):
    """Base class of every error raised by cidx-jobs and its backends."""


class ValidationError(CidxJobsError, ValueError):
    """An input was rejected before any I/O; nothing was written.

    ``field`` names the offending field or argument when there is one.
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class DuplicateJobError(CidxJobsError):
    """A job with this id already exists; the stored job was left unchanged."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"a job with id {job_id!r} already exists; ids must be unique "
            "(load it with load_job() or choose a new id)"
        )
        self.job_id = job_id


class JobNotFoundError(CidxJobsError, LookupError):
    """The job named by an operation that requires it does not exist."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id


class LeaseLostError(CidxJobsError):
    """A write made on behalf of a job lease that is no longer held; nothing was stored.

    The job was taken over by another owner (recovery after the lease expired, or
    claimed again), or it is no longer running (cancelled, finished, released), or
    it was deleted. The worker holding the lease must stop working on the job: its
    results would overwrite those of the job's current owner.

    :ivar job_id: the job.
    :ivar status: the job's status when the write was refused, or ``None`` if it
        no longer exists.
    :ivar owner_id: the job's owner then, or ``None``.
    """

    def __init__(
        self, job_id: str, reason: str, *, status: object = None, owner_id: str | None = None
    ) -> None:
        super().__init__(
            f"the lease on job {job_id!r} is lost ({reason}); the write was not stored: "
            "stop working on this job"
        )
        self.job_id = job_id
        self.reason = reason
        self.status = status
        self.owner_id = owner_id


class ConfigError(CidxJobsError, ValueError):
    """A configuration value is missing, unknown or invalid.

    ``option`` names the offending option when there is one.
    """

    def __init__(self, message: str, *, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class BackendNotFoundError(ConfigError, LookupError):
    """No installed plugin provides the requested backend.

    ``available`` lists the names of the backends that are installed.
    """

    def __init__(self, name: str, available: list[str]) -> None:
        installed = ", ".join(sorted(available)) or "none"
        super().__init__(
            f"no cidx-jobs backend named {name!r} is installed (installed: {installed}); "
            "install the distribution that provides it, e.g. `pip install cidx-jobs-sqlite`",
            option="backend",
        )
        self.name = name
        self.available = sorted(available)


class PluginError(CidxJobsError):
    """A plugin misbehaved while being registered (e.g. two plugins claim one backend name)."""


class StorageError(CidxJobsError):
    """The storage behind a backend failed; the failed call wrote nothing, unless the error
    is a :class:`StorageOutcomeUnknownError`.

    Backends raise one of the subclasses where the cause is known, and this
    class itself for any other driver failure (with the driver's exception
    chained as ``__cause__``).
    """


class StoragePermissionError(StorageError, PermissionError):
    """The storage refused access: this process lacks a permission on the database file or its
    folder, the file system is read-only, or a database server denied the role."""


class StorageFullError(StorageError):
    """The disk (or the database's size limit) is full; the transaction was rolled back."""


class StorageCorruptError(StorageError):
    """The stored data is damaged (a corrupt database file, or a server reporting damaged
    data) and automatic recovery is off, failed or does not apply."""


class StorageUnavailableError(StorageError):
    """The storage went away (file removed, I/O error, connection lost), or the store is closed.

    The call wrote nothing; later calls try to reconnect (except on a closed store).
    """


class StorageBusyError(StorageUnavailableError):
    """A lock wait timed out, or the storage chose this call as a deadlock victim.

    The call wrote nothing (a transaction block it was part of was rolled back
    as a whole); retrying later is safe.
    """


class StorageOutcomeUnknownError(StorageError):
    """The connection was lost while a commit was in flight: the write may or may not be stored.

    This is the one storage failure after which "nothing was written" does not
    hold. Read the job back (e.g. ``load_job``) before deciding whether to
    repeat the call; never repeat a non-idempotent write blindly.
    """


class SchemaVersionError(StorageError):
    """The database was written by a newer release whose schema this one cannot read."""


class UnsupportedOperationError(CidxJobsError, NotImplementedError):
    """The backend does not offer this operation (an optional operator method of
    :class:`~cidx_jobs.backend.Storage`, such as ``backup()`` or ``check_health()``).

    Nothing was done. The message says what to use instead where there is something (for
    a database server, its own backup tool). ``operation`` names the method.
    """

    def __init__(self, message: str, *, operation: str | None = None) -> None:
        super().__init__(message)
        self.operation = operation
