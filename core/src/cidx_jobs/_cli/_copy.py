"""``cidx-jobs copy SOURCE_URL TARGET_URL``: every job and checkpoint from one store to another.

The move from SQLite to PostgreSQL, and any other pair of backends. The copy works through
the :class:`~cidx_jobs.backend.Storage` interface of both stores, below the facade: it
stores each job exactly as the source holds it (status, times, owner, heartbeat, metadata)
instead of letting a facade stamp a new owner and lease on it, and fires no events.

How it stays correct:

* Both stores list their jobs in the interface's order (``created_at DESC, id DESC``, keyset
  pages), so the copy walks the two lists side by side, as a merge: one page query per batch
  on each store finds which source jobs the target already holds, with no lookup per job.
* Each batch is written in one target transaction (jobs with their checkpoints), so an
  interrupted copy leaves whole batches. Re-run with ``--resume``, it skips what the target
  already holds with identical content, writes what is missing (a job's missing checkpoints
  too) and refuses a job or checkpoint whose content differs (:class:`CopyConflictError`):
  nothing in the target is ever overwritten.
* At the end both stores are read again in full, in that order, and their counts and a
  SHA-256 over a canonical encoding of every field must agree
  (:class:`CopyVerificationError` otherwise). Reading the source again, not trusting what
  the copy read, is what catches a writer that was not stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import hashlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs

from cidx_jobs._models import Checkpoint, JobFilter, SyncJob
from cidx_jobs._open import find_backend
from cidx_jobs._persistence import JobPersistence
from cidx_jobs._plugins import Hooks
from cidx_jobs._validate import encode_json_object
from cidx_jobs.backend import Capability, Storage
from cidx_jobs.errors import (
    CidxJobsError,
    ConfigError,
    DuplicateJobError,
    StorageError,
    UnsupportedOperationError,
    ValidationError,
)

from ._output import Output
from ._store import CommandError, backend_name

#: Jobs per batch (and per page read) unless ``--batch-size`` says otherwise.
DEFAULT_BATCH = 500
#: The largest ``--batch-size``: one batch is one transaction on the target, and a longer one
#: holds SQLite's write lock (or a PostgreSQL transaction) for longer than is worth it.
MAX_BATCH = 10_000

#: Draws a progress bar: ``progress(description, total)`` enters to ``advance(n)``.
Progress = Callable[[str, "int | None"], AbstractContextManager[Callable[[int], None]]]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


#: The difference reported for a job only the target holds.
_NOT_IN_SOURCE = (
    "only the target holds it: --resume finishes a copy into this target, it does not merge "
    "two stores"
)


class CopyConflictError(CidxJobsError):
    """The target holds a job (or a checkpoint) with the id of one of the source's but other
    content: ``copy`` never overwrites it, so it stopped. The batches written before stay.

    :ivar job_id: the job.
    :ivar differences: the fields that differ, as ``name: target's value != source's``.
    """

    def __init__(self, job_id: str, differences: Sequence[str]) -> None:
        shown = "; ".join(differences[:3]) + ("; ..." if len(differences) > 3 else "")
        super().__init__(
            f"the target already holds job {job_id!r} with other content than the source's "
            f"({shown}), and copy never overwrites: either the source changed since an "
            "earlier copy (a writer was not stopped) or the target holds other data; stop "
            "every writer, then copy again into an empty target (a new PostgreSQL schema or "
            "database, or a new SQLite file, made with `cidx-jobs migrate`)"
        )
        self.job_id = job_id
        self.differences = tuple(differences)


class CopyVerificationError(CidxJobsError):
    """After the copy, the two stores' counts or checksums differ.

    :ivar source: the source's :class:`Summary`.
    :ivar target: the target's :class:`Summary`.
    :ivar first_difference: the first difference in the canonical order, for people.
    """

    def __init__(self, source: Summary, target: Summary, first_difference: str) -> None:
        super().__init__(
            f"verification failed: the source holds {source.jobs} job(s) and "
            f"{source.checkpoints} checkpoint(s) (sha256 {source.checksum[:16]}), the target "
            f"{target.jobs} and {target.checkpoints} (sha256 {target.checksum[:16]}); first "
            f"difference: {first_difference}. Something wrote to a store during the copy: "
            "stop every writer of both stores, then copy again into an empty target"
        )
        self.source = source
        self.target = target
        self.first_difference = first_difference


@attrs.frozen(kw_only=True)
class Summary:
    """What a store holds, as the verification read it.

    :ivar jobs: how many jobs.
    :ivar checkpoints: how many checkpoints.
    :ivar checksum: SHA-256, in hex, over every job and checkpoint in the canonical order
        (see :func:`job_record`).
    """

    jobs: int
    checkpoints: int
    checksum: str


@attrs.frozen(kw_only=True)
class CopyReport:
    """What :func:`copy_store` did.

    :ivar copied_jobs: jobs written to the target.
    :ivar copied_checkpoints: checkpoints written to the target (of those jobs, and missing
        ones of jobs the target already held).
    :ivar skipped_jobs: source jobs the target already held, identical.
    :ivar source: the source's summary, read after the copy.
    :ivar target: the target's summary, read after the copy (equal to ``source``).
    :ivar seconds: how long the copy and the verification took.
    """

    copied_jobs: int
    copied_checkpoints: int
    skipped_jobs: int
    source: Summary
    target: Summary
    seconds: float


# -- the canonical encoding --------------------------------------------------------------------


def _micros(when: datetime | None) -> int | None:
    # An integer, not isoformat(): the same instant must encode the same whatever tzinfo
    # object a driver hands back (timezone.utc, a session's zone) and with or without
    # microseconds.
    return None if when is None else (when - _EPOCH) // _MICROSECOND


def _encode(value: list[Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


#: The job's fields in :func:`job_record`'s order (every field of SyncJob, the lease's too:
#: SyncJob's equality ignores owner_id and heartbeat_at), for naming differences.
_JOB_FIELDS = tuple(field.name for field in attrs.fields(SyncJob))


def _plain(value: Any) -> Any:
    # Metadata stays the dict itself, whose key order json.dumps keeps, so a backend that
    # reordered keys (as jsonb does) would show.
    if isinstance(value, datetime):
        return _micros(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _job_values(job: SyncJob) -> list[Any]:
    return [_plain(getattr(job, name)) for name in _JOB_FIELDS]


def _checkpoint_values(checkpoint: Checkpoint) -> list[Any]:
    return [checkpoint.phase, _micros(checkpoint.created_at), checkpoint.data]


def job_record(job: SyncJob, checkpoints: Sequence[Checkpoint]) -> bytes:
    """The canonical encoding of a job and its checkpoints that the checksum hashes: one
    JSON line, ``["job", <every field>, [[phase, created_at, data], ...]]``, times as integer
    microseconds since the epoch (UTC), checkpoints in :meth:`Storage.get_checkpoints`'s
    order (``created_at``, then phase). Two stores hold the same job exactly when the
    records are equal."""
    values = [*_job_values(job), [_checkpoint_values(c) for c in checkpoints]]
    return (_encode(["job", *values]) + "\n").encode("utf-8")


def _differences(source: SyncJob, target: SyncJob) -> list[str]:
    found = []
    for name, mine, theirs in zip(
        _JOB_FIELDS, _job_values(source), _job_values(target), strict=True
    ):
        if _encode([mine]) != _encode([theirs]):
            found.append(f"{name}: target's {theirs!r} != source's {mine!r}")
    return found


# -- reading in the canonical order ------------------------------------------------------------


def _key(job: SyncJob) -> tuple[datetime, str]:
    return job.created_at, job.id


def _jobs(storage: Storage, page: int, who: str) -> Iterator[SyncJob]:
    """Every job of ``storage``, in the interface's order (``created_at DESC, id DESC``),
    page by page with keyset cursors.

    :raises StorageError: the storage failed, or it returned jobs out of that order (the
        side-by-side walk of the two stores relies on it).
    """
    after: tuple[datetime, str] | None = None
    while True:
        jobs = storage.select_jobs(JobFilter(), after, page)
        for job in jobs:
            key = _key(job)
            if after is not None and not key < after:
                raise StorageError(
                    f"the {who} listed job {job.id!r} out of the order the storage interface "
                    "promises (created_at DESC, id DESC): its backend is broken, so copy "
                    "cannot tell which jobs the target holds; report it to its authors"
                )
            after = key
            yield job
        # Only an empty page ends the walk: a storage may return fewer than asked for.
        if not jobs:
            return


def _side_by_side(
    source: Iterator[SyncJob], target: Iterator[SyncJob]
) -> Iterator[tuple[SyncJob | None, SyncJob | None]]:
    """The two ordered streams merged: ``(job, job)`` for an id both hold at the same
    place, ``(job, None)`` for one only the source holds, ``(None, job)`` for the target's
    own. The streams are read lazily, so writing a source-only job to the target before
    the target's stream is read past its place is safe: the target's next page starts
    after its current head, and every job written sorts before that head."""
    mine = next(source, None)
    theirs = next(target, None)
    while mine is not None or theirs is not None:
        if theirs is None or (mine is not None and _key(mine) > _key(theirs)):
            yield mine, None
            mine = next(source, None)
        elif mine is None or _key(theirs) > _key(mine):
            yield None, theirs
            theirs = next(target, None)
        else:
            yield mine, theirs
            mine = next(source, None)
            theirs = next(target, None)


#: Maps ``get_checkpoints`` over a page of job ids: ``map`` or a thread pool's.
Mapper = Callable[[Callable[[str], list[Checkpoint]], list[str]], Iterator[list[Checkpoint]]]


def _prefetched(
    storage: Storage,
    jobs: Iterator[SyncJob],
    page: int,
    mapper: Mapper,
    found: dict[str, list[Checkpoint]],
) -> Iterator[SyncJob]:
    """``jobs`` unchanged, with each job's checkpoints put in ``found`` (by id) before the
    job is yielded, a page at a time: the interface reads checkpoints one job at a time,
    and on a database server those round trips, not the rows, are what a copy waits for,
    so a thread pool's ``mapper`` overlaps them. ``found`` holds one page at most while
    the consumer pops what it uses."""
    while True:
        chunk = list(itertools.islice(jobs, page))
        if not chunk:
            return
        for job, checkpoints in zip(
            chunk, mapper(storage.get_checkpoints, [job.id for job in chunk]), strict=True
        ):
            found[job.id] = checkpoints
        yield from chunk
        if len(chunk) < page:
            return


def _mapper(pool: ThreadPoolExecutor | None) -> Mapper:
    return map if pool is None else pool.map


@contextlib.contextmanager
def _pools(threads: tuple[int, int]) -> Iterator[tuple[Mapper, Mapper]]:
    with contextlib.ExitStack() as stack:
        pools = [
            None
            if n <= 1
            else stack.enter_context(ThreadPoolExecutor(n, thread_name_prefix="cidx-jobs-copy"))
            for n in threads
        ]
        yield _mapper(pools[0]), _mapper(pools[1])


# -- copying -------------------------------------------------------------------------------------


def _checkpoint_conflicts(
    source: Sequence[Checkpoint], target: Sequence[Checkpoint]
) -> tuple[list[Checkpoint], list[str]]:
    """The source's checkpoints the target lacks, and how the target's differ."""
    wanted = {c.phase: c for c in source}
    differences = []
    for checkpoint in target:
        mine = wanted.pop(checkpoint.phase, None)
        if mine is None:
            differences.append(f"checkpoint {checkpoint.phase!r}: only in the target")
        elif _encode(_checkpoint_values(mine)) != _encode(_checkpoint_values(checkpoint)):
            differences.append(f"checkpoint {checkpoint.phase!r}: other data or time")
    return [c for c in source if c.phase in wanted], differences


def _write(target: Storage, batch: list[tuple[SyncJob | None, list[Checkpoint]]]) -> None:
    """One batch in one target transaction: whole or not at all, so an interruption (a
    kill, a lost connection) leaves only whole batches for ``--resume`` to find."""
    with target.transaction():
        for job, checkpoints in batch:
            if job is not None:
                target.insert_job(job, encode_json_object(job.metadata, "metadata")[1])
            for checkpoint in checkpoints:
                data = encode_json_object(checkpoint.data, "data")[1]
                if not target.upsert_checkpoint(checkpoint, data):
                    raise StorageError(
                        f"the target lost job {checkpoint.job_id!r} while its checkpoints "
                        "were copied: something else writes to the target; stop it and run "
                        "the copy again with --resume"
                    )


def copy_store(
    source: JobPersistence,
    target: JobPersistence,
    *,
    resume: bool = False,
    batch_size: int = DEFAULT_BATCH,
    progress: Progress | None = None,
    threads: tuple[int, int] = (1, 1),
) -> CopyReport:
    """Copy every job and checkpoint of ``source`` into ``target``, then verify the copy
    (:func:`verify`).

    Works through both stores' :attr:`~cidx_jobs.JobPersistence.storage`, so every field is
    stored as the source holds it. Lease tokens are not part of the interface and are not
    copied: a running job's old holder can make no fenced write to the target.

    :param resume: the target may hold jobs already (an interrupted copy): those identical
        to the source's are kept; without it, a non-empty target is refused.
    :param batch_size: jobs per page read and per target transaction (1 to
        :data:`MAX_BATCH`).
    :param progress: draws a bar: called as ``progress(description, total)`` for the copy,
        then for the verification, it enters to ``advance(jobs)`` (as
        :meth:`~._output.Output.progress` does).
    :param threads: how many threads read each store's checkpoints (source, target); more
        than one only for a storage that is safe to share between threads (see
        :func:`reader_threads`).
    :raises ValidationError: ``batch_size`` is out of range (nothing was read).
    :raises CommandError: the target holds jobs and ``resume`` is false (nothing was
        written).
    :raises CopyConflictError: the target holds a job or checkpoint of the source's id with
        other content; the batches before it were written.
    :raises CopyVerificationError: the stores differ after the copy.
    :raises StorageError: a store failed; the batches before the failure were written.
    """
    if type(batch_size) is not int or not 1 <= batch_size <= MAX_BATCH:
        raise ValidationError(
            f"batch_size must be a whole number from 1 to {MAX_BATCH}, got {batch_size!r}",
            field="batch_size",
        )
    started = time.monotonic()
    if not resume:
        held = target.storage.count_jobs(JobFilter())
        if held:
            raise CommandError(
                f"the target already holds {held} job(s), and copy fills only an empty store: "
                "copy into an empty one (made with `cidx-jobs migrate`), or pass --resume to "
                "finish an interrupted copy into this one (the jobs it holds must equal the "
                "source's)"
            )
    total = None if progress is None else source.storage.count_jobs(JobFilter())
    bar = progress or _no_progress
    with bar("copying", total) as advance, _pools((threads[0], 1)) as (mapper, _):
        copied_jobs, copied_checkpoints, skipped = _copy(
            source.storage, target.storage, resume, batch_size, advance, mapper
        )
    with bar("verifying", total) as advance:
        source_summary, target_summary = verify(
            source, target, batch_size, advance, threads=threads
        )
    return CopyReport(
        copied_jobs=copied_jobs,
        copied_checkpoints=copied_checkpoints,
        skipped_jobs=skipped,
        source=source_summary,
        target=target_summary,
        seconds=time.monotonic() - started,
    )


@contextlib.contextmanager
def _no_progress(_description: str, _total: int | None) -> Iterator[Callable[[int], None]]:
    yield lambda _n: None


def _copy(
    src: Storage,
    dst: Storage,
    resume: bool,
    batch_size: int,
    advance: Callable[[int], None],
    mapper: Mapper,
) -> tuple[int, int, int]:
    """The copy itself: (jobs, checkpoints) written and jobs kept."""
    copied_jobs = copied_checkpoints = skipped = 0
    batch: list[tuple[SyncJob | None, list[Checkpoint]]] = []
    seen = 0

    def flush() -> None:
        nonlocal batch, seen
        if batch:
            try:
                _write(dst, batch)
            except DuplicateJobError as error:
                # Not where the walk looked for it: the target's job has the id but another
                # created_at (or a writer added it meanwhile).
                theirs = dst.get_job(error.job_id)
                mine = next(j for j, _ in batch if j is not None and j.id == error.job_id)
                raise CopyConflictError(
                    error.job_id,
                    _differences(mine, theirs) if theirs is not None else ["written meanwhile"],
                ) from None
        batch = []
        advance(seen)
        seen = 0

    if resume:
        # A target that is an interrupted copy of this source holds its newest jobs; one
        # whose newest job the source lacks is another store: refuse it before writing.
        newest = next(_jobs(dst, 1, "target"), None)
        if newest is not None and src.get_job(newest.id) is None:
            raise CopyConflictError(newest.id, [_NOT_IN_SOURCE])
    # Without --resume the target was empty: no need to read it while copying.
    theirs_in_order: Iterator[SyncJob] = _jobs(dst, batch_size, "target") if resume else iter(())
    found: dict[str, list[Checkpoint]] = {}
    mine_in_order = _prefetched(src, _jobs(src, batch_size, "source"), batch_size, mapper, found)
    for mine, theirs in _side_by_side(mine_in_order, theirs_in_order):
        if mine is None:
            # Not a copy of this source: --resume finishes a copy, it does not merge two
            # stores. The batch in hand is not written.
            assert theirs is not None  # _side_by_side yields one side at least
            same_id = src.get_job(theirs.id)  # at another created_at, if at all
            raise CopyConflictError(
                theirs.id,
                _differences(same_id, theirs) if same_id is not None else [_NOT_IN_SOURCE],
            )
        seen += 1
        checkpoints = found.pop(mine.id)
        if theirs is None:
            batch.append((mine, checkpoints))
            copied_jobs += 1
            copied_checkpoints += len(checkpoints)
        else:
            differences = _differences(mine, theirs)
            missing, other = _checkpoint_conflicts(checkpoints, dst.get_checkpoints(mine.id))
            if differences or other:
                flush()  # keep what was copied before the conflict
                raise CopyConflictError(mine.id, differences + other)
            skipped += 1
            if missing:
                batch.append((None, missing))
                copied_checkpoints += len(missing)
        if seen >= batch_size:
            flush()
    flush()
    return copied_jobs, copied_checkpoints, skipped


def verify(
    source: JobPersistence,
    target: JobPersistence,
    page: int = DEFAULT_BATCH,
    on_page: Callable[[int], None] | None = None,
    *,
    threads: tuple[int, int] = (1, 1),
) -> tuple[Summary, Summary]:
    """Read both stores in full, in the canonical order, and compare them.

    :param threads: how many threads read each store's checkpoints (source, target); more
        than one only for a storage that is safe to share between threads.

    :returns: the two summaries, equal.
    :raises CopyVerificationError: the counts or the checksums differ; the error names the
        first difference.
    :raises StorageError: a store failed.
    """
    sums = {"source": hashlib.sha256(), "target": hashlib.sha256()}
    jobs = {"source": 0, "target": 0}
    checkpoints = {"source": 0, "target": 0}
    stores = {"source": source.storage, "target": target.storage}
    found: dict[str, dict[str, list[Checkpoint]]] = {"source": {}, "target": {}}
    with _pools(threads) as mappers:
        streams = [
            _prefetched(stores[side], _jobs(stores[side], page, side), page, mapper, found[side])
            for side, mapper in zip(("source", "target"), mappers, strict=True)
        ]
        first = _compare(streams, found, sums, jobs, checkpoints, page, on_page)
    for side in ("source", "target"):
        counted = stores[side].count_jobs(JobFilter())
        if counted != jobs[side]:
            # The walk and the count disagree: the storage's paging lost jobs (or a writer
            # was not stopped), and a checksum over what the walk saw proves nothing.
            raise StorageError(
                f"the {side} counts {counted} job(s) but listing them gave {jobs[side]}: "
                "a writer was not stopped, or its backend's paging is broken; stop every "
                "writer and copy again"
            )
    summaries = tuple(
        Summary(jobs=jobs[side], checkpoints=checkpoints[side], checksum=sums[side].hexdigest())
        for side in ("source", "target")
    )
    if summaries[0] != summaries[1]:
        raise CopyVerificationError(summaries[0], summaries[1], first or "none found")
    return summaries[0], summaries[1]


def _compare(
    streams: list[Iterator[SyncJob]],
    found: dict[str, dict[str, list[Checkpoint]]],
    sums: dict[str, Any],
    jobs: dict[str, int],
    checkpoints: dict[str, int],
    page: int,
    on_page: Callable[[int], None] | None,
) -> str | None:
    """The side-by-side walk of :func:`verify`: it hashes and counts into ``sums``,
    ``jobs`` and ``checkpoints``, and returns the first difference (or ``None``)."""
    first: str | None = None
    since = 0
    for mine, theirs in _side_by_side(streams[0], streams[1]):
        records = {}
        for side, job in (("source", mine), ("target", theirs)):
            if job is None:
                continue
            job_checkpoints = found[side].pop(job.id)
            records[side] = job_record(job, job_checkpoints)
            sums[side].update(records[side])
            jobs[side] += 1
            checkpoints[side] += len(job_checkpoints)
        if first is None:
            if theirs is None:
                assert mine is not None
                first = f"job {mine.id!r} is missing from the target"
            elif mine is None:
                first = f"job {theirs.id!r} is in the target but not in the source"
            elif records["source"] != records["target"]:
                assert mine is not None
                detail = _differences(mine, theirs) or ["its checkpoints"]
                first = f"job {mine.id!r} differs ({'; '.join(detail[:3])})"
        since += 1
        if on_page is not None and since >= page:
            on_page(since)
            since = 0
    if on_page is not None and since:
        on_page(since)
    return first


# -- the command -----------------------------------------------------------------------------------


def batch_size(text: str) -> int:
    """``--batch-size``: a whole number from 1 to :data:`MAX_BATCH`."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_BATCH:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to {MAX_BATCH}")
    return value


def add_parser(commands: Any) -> None:
    """Register ``copy`` with the subcommands of :func:`cidx_jobs._cli.build_parser`."""
    copy = commands.add_parser(
        "copy",
        help="copy every job and checkpoint from one store to another (SQLite to PostgreSQL), "
        "then verify counts and a checksum",
        description="Copy every job and checkpoint of the store SOURCE_URL into the store "
        "TARGET_URL, in batches, exactly as stored (statuses, times, owners, heartbeats), "
        "then read both again and compare their counts and a SHA-256 checksum. Stop every "
        "writer of both stores first: this is a one-time copy, not a live replication. "
        "TARGET_URL must name a store with an up-to-date schema (`cidx-jobs migrate --url "
        "TARGET_URL` creates one) that holds no job, unless --resume. Exit 0 when the copy "
        "is verified, 1 for a non-empty target, a conflict, a failed verification or a "
        "storage failure, 2 for a usage or configuration error. See docs/operations.md.",
    )
    copy.add_argument("source", metavar="SOURCE_URL", help="the store to copy (only read)")
    copy.add_argument("target", metavar="TARGET_URL", help="the store to fill")
    copy.add_argument(
        "--resume",
        action="store_true",
        help="the target may hold jobs already (an interrupted copy): keep those identical "
        "to the source's, copy the rest; a job that differs is a conflict (exit 1)",
    )
    copy.add_argument(
        "--batch-size",
        type=batch_size,
        default=DEFAULT_BATCH,
        metavar="N",
        help=f"jobs per page read and per target transaction (default {DEFAULT_BATCH}, at most "
        f"{MAX_BATCH})",
    )
    copy.add_argument("--json", action="store_true", help="write JSON instead of text")


def _url(text: str, name: str) -> str:
    if not text.strip():
        raise ConfigError(
            f"{name} is empty: give a store's URL (e.g. sqlite:////var/lib/cidx/jobs.db)"
        )
    # A malformed URL, an unknown backend or a bad common option fails here, with its own
    # message, before either store is opened.
    find_backend(text)
    return text


#: The most threads that read one store's checkpoints at once.
MAX_READERS = 4


def reader_threads(url: str, store: JobPersistence) -> int:
    """How many threads may read the store at once: :data:`MAX_READERS` for a backend that
    declares :attr:`~cidx_jobs.backend.Capability.CONCURRENT_THREADS` (bounded by its
    :meth:`~cidx_jobs.backend.Storage.max_concurrency`), else 1."""
    backend = Hooks().backends().get(backend_name(url))
    if backend is None or Capability.CONCURRENT_THREADS not in backend.capabilities:
        return 1
    return max(1, min(MAX_READERS, store.storage.max_concurrency() or MAX_READERS))


def _same_file(first: str, second: str) -> bool:
    # Two spellings of one file (a symlink, "..", a relative path) are one store.
    try:
        return os.path.samefile(first, second)
    except (OSError, ValueError):
        return False


def _location(store: JobPersistence, url: str) -> str:
    try:
        return store.storage.describe().location
    except UnsupportedOperationError:
        return url


def _opened(url: str, *, writes: bool, out: Output) -> JobPersistence:
    from ._commands import open_url

    return open_url(url, out, writes=writes)


def cmd_copy(args: argparse.Namespace, out: Output) -> int:
    """``cidx-jobs copy``: returns 0 when the copy is verified.

    :raises CommandError: SOURCE_URL and TARGET_URL name the same store, or the target's
        backend keeps nothing after the command (both status 2), or the target holds jobs
        without ``--resume`` (status 1).
    :raises ConfigError: a URL is malformed or names no installed backend (before any I/O).
    :raises CopyConflictError: the target holds a job of the source's id with other content.
    :raises CopyVerificationError: the stores differ after the copy.
    :raises StorageError: a store failed.
    """
    # Both URLs are checked before either store is opened: a typo in the second must not
    # cost a connection to the first.
    source_url, target_url = _url(args.source, "SOURCE_URL"), _url(args.target, "TARGET_URL")
    backend = find_backend(target_url)[0]
    if Capability.PERSISTENT not in backend.capabilities:
        raise CommandError(
            f"TARGET_URL names a {backend.name!r} store, which keeps nothing once this "
            "command exits: copy into a store that persists (SQLite, PostgreSQL)",
            status=2,
        )
    if source_url == target_url:
        raise CommandError(
            "SOURCE_URL and TARGET_URL are the same store: name another target", status=2
        )
    with contextlib.ExitStack() as stack:
        source = stack.enter_context(_opened(source_url, writes=False, out=out))
        target = stack.enter_context(_opened(target_url, writes=True, out=out))
        where_from, where_to = _location(source, source_url), _location(target, target_url)
        if where_from == where_to or _same_file(where_from, where_to):
            raise CommandError(
                f"SOURCE_URL and TARGET_URL are the same store ({where_from}): name another target",
                status=2,
            )
        report = copy_store(
            source,
            target,
            resume=args.resume,
            batch_size=args.batch_size,
            progress=out.progress if out.progress_bars else None,
            threads=(reader_threads(source_url, source), reader_threads(target_url, target)),
        )
    if args.json:
        out.json(
            {
                "source": where_from,
                "target": where_to,
                "copied_jobs": report.copied_jobs,
                "copied_checkpoints": report.copied_checkpoints,
                "skipped_jobs": report.skipped_jobs,
                "jobs": report.target.jobs,
                "checkpoints": report.target.checkpoints,
                "sha256": report.target.checksum,
                "verified": True,
                "seconds": round(report.seconds, 3),
            }
        )
        return 0
    skipped = f", kept {report.skipped_jobs} already there" if report.skipped_jobs else ""
    out.line(
        f"copied {report.copied_jobs} job(s) and {report.copied_checkpoints} checkpoint(s) "
        f"from {where_from} to {where_to}{skipped} ({report.seconds:.2f} s)"
    )
    out.line(
        f"verified: both hold {report.target.jobs} job(s) and {report.target.checkpoints} "
        f"checkpoint(s), sha256 {report.target.checksum}",
        "green",
    )
    return 0
