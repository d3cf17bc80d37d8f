"""The operator side of the SQLite backend: what ``cidx-jobs stats``, ``doctor`` and
``migrate`` ask a storage (the optional operator methods of :class:`~cidx_jobs.backend.Storage`),
and :func:`salvage_file`, behind ``cidx-jobs salvage``, which works on files, not on a store.

Everything here reads, except :func:`migrate` and the file :func:`salvage_file` writes. The checks look at what only this backend
knows (the file, its ``-wal`` and ``-shm``, the folder, SQLite's settings); ``cidx-jobs
doctor`` adds the checks every backend shares (leases, schema version, clock).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import sqlite3
import stat
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from cidx_jobs import ACTIVE_STATUSES, SyncJob
from cidx_jobs.backend import Health, HealthCheck, StorageInfo
from cidx_jobs.errors import (
    StorageCorruptError,
    StorageError,
    StorageFullError,
    StoragePermissionError,
    ValidationError,
)

from . import _schema
from ._codec import JOB_COLUMNS_SQL, decode_job
from ._connection import JOURNAL_SIZE_LIMIT
from ._errors import FULL, error_code
from ._recovery import (
    COMPANION_SUFFIXES,
    SQLITE_MAGIC,
    RecoveryReport,
    _salvage,
    _write_fresh,
    create_like,
    looks_like_sqlite,
)
from ._runner import ALL, ONE
from ._walcheck import _find, find_wal_damage, repair_wal

if TYPE_CHECKING:
    from ._storage import SqliteStorage

MIB = 1024 * 1024
#: A WAL this much larger than the size it is truncated back to means checkpoints cannot
#: finish (a reader holds an old snapshot): a warning, and past the second size a problem.
WAL_WARNING_BYTES = 2 * JOURNAL_SIZE_LIMIT
WAL_PROBLEM_BYTES = 16 * JOURNAL_SIZE_LIMIT
#: Free disk space below this is a problem: the next cleanup or migration may fail.
FREE_SPACE_PROBLEM_BYTES = 100 * MIB
#: Free pages beyond this share of a file larger than JOURNAL_SIZE_LIMIT suggest a VACUUM.
FREE_PAGES_WARNING = 0.5
#: How much of ``max_size_mb`` may be used before a warning, and before a problem.
SIZE_LIMIT_WARNING = 0.75
SIZE_LIMIT_PROBLEM = 0.9
#: How many lines of an integrity check a finding quotes.
INTEGRITY_LINES = 5

_SYNCHRONOUS = {0: "off", 1: "normal", 2: "full", 3: "extra"}
# The operator's queries. The storage's own statements live in _statements.py; these serve
# only the command line and read what the storage never asks.
_TOP_USERS = (
    "SELECT user_id, count(*) AS jobs FROM sync_jobs GROUP BY user_id "
    "ORDER BY jobs DESC, user_id LIMIT ?"
)


def _pragma(storage: SqliteStorage, name: str) -> object:
    row = storage._runner.run(ONE, f"PRAGMA {name}", (), f"reading PRAGMA {name}")
    return None if row is None else row[0]


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _companions(path: Path) -> list[Path]:
    """The database file with its ``-wal`` and ``-shm`` files."""
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def _mib(size: int) -> str:
    return f"{size / MIB:.1f} MiB"


# -- describe -----------------------------------------------------------------------------


def describe(storage: SqliteStorage) -> StorageInfo:
    """The file, its size (with the WAL), its schema version and the settings in force."""
    path = storage.path
    options = storage.options
    version = int(str(_pragma(storage, "user_version")))
    page_size = int(str(_pragma(storage, "page_size")))
    page_count = int(str(_pragma(storage, "page_count")))
    free_pages = int(str(_pragma(storage, "freelist_count")))
    wal_bytes = _file_size(path.with_name(path.name + "-wal"))
    settings = {
        "journal_mode": str(_pragma(storage, "journal_mode")),
        "synchronous": _SYNCHRONOUS.get(int(str(_pragma(storage, "synchronous"))), "?"),
        "foreign_keys": "on" if _pragma(storage, "foreign_keys") else "off",
        "busy_timeout_ms": str(_pragma(storage, "busy_timeout")),
        "pool_size": str(options.pool_size),
        "page_size": str(page_size),
        "pages": str(page_count),
        "free_pages": str(free_pages),
        "wal_bytes": str(wal_bytes),
        "max_size_mb": str(options.max_size_mb) if options.max_size_mb else "no limit",
        "check_on_open": options.check_on_open,
        "recover_corrupt": "true" if options.recover_corrupt else "false",
        "migrate_at_open": "true" if options.migrate else "false",
        "read_only": "true" if options.read_only else "false",
        "sqlite_version": sqlite3.sqlite_version,
    }
    pending = tuple(
        f"{migration.version}: {migration.description}"
        for migration in _schema.MIGRATIONS
        if migration.version > version
    )
    return StorageInfo(
        location=str(path),
        size_bytes=_file_size(path) + wal_bytes,
        schema_version=version,
        latest_schema_version=_schema.SCHEMA_VERSION,
        pending_migrations=pending,
        settings=settings,
    )


def top_users(storage: SqliteStorage, limit: int) -> list[tuple[str, int]]:
    """One grouped query over the ``sync_jobs_user_created`` index."""
    rows = storage._runner.run(ALL, _TOP_USERS, (limit,), "counting jobs per user")
    return [(str(user), int(jobs)) for user, jobs in rows]


#: The first-created job of one status: a short range of the (status, created_at) index.
_OLDEST_OF_STATUS = (
    f"SELECT {JOB_COLUMNS_SQL} FROM sync_jobs WHERE status = ? ORDER BY created_at, id LIMIT 1"
)


def _unreadable_errors() -> tuple[type[BaseException], ...]:
    from ._storage import _UNREADABLE

    return _UNREADABLE


def oldest_active(storage: SqliteStorage) -> SyncJob | None:
    """One ``ORDER BY created_at LIMIT 1`` query per active status, merged (one query with
    ``status IN (...)`` sorts every active job: 111 ms against 0.15 ms measured)."""
    found = []
    for status in sorted(ACTIVE_STATUSES, key=lambda s: s.value):
        row = storage._runner.run(ONE, _OLDEST_OF_STATUS, (status.value,), "finding the oldest job")
        if row is not None:
            try:
                found.append(decode_job(row))
            except _unreadable_errors() as error:
                raise storage._unreadable(row, error) from error
    return min(found, key=lambda job: (job.created_at, job.id), default=None)


def migrate(storage: SqliteStorage) -> tuple[int, int]:
    """WAL mode and every pending migration, in one transaction, on a pooled connection."""
    with storage._runner.connection("migrating the database") as conn:
        return storage._connector.migrate(conn)


# -- check_health -------------------------------------------------------------------------


def check_health(storage: SqliteStorage, *, thorough: bool) -> list[HealthCheck]:
    """Every check of this backend, in the order ``cidx-jobs doctor`` shows them."""
    info = describe(storage)
    return [
        _integrity(storage, thorough=thorough),
        _recovery(storage),
        _journal_mode(info),
        _wal_size(storage.path),
        _permissions(storage.path),
        _disk_space(storage.path, info),
        _size_limit(storage, info),
        _free_pages(info),
        _settings(info),
    ]


def _integrity(storage: SqliteStorage, *, thorough: bool) -> HealthCheck:
    pragma = "integrity_check" if thorough else "quick_check"
    try:
        lines = [
            str(row[0])
            for row in storage._runner.run(ALL, f"PRAGMA {pragma}", (), "checking the database")
        ]
        if thorough and lines == ["ok"]:
            orphans = storage._runner.run(
                ALL, "PRAGMA foreign_key_check", (), "checking the foreign keys"
            )
            if orphans:
                lines = [f"{len(orphans)} checkpoint(s) whose job does not exist"]
    except StorageCorruptError as error:
        lines = [str(error)]
    advice = (
        "stop every server, keep a copy of the database with its -wal and -shm files, then "
        "start one server: it checks the file at open and, with recover_corrupt on (the "
        "default), moves it aside and salvages every readable job into a fresh file; or "
        "restore the last good backup"
    )
    if lines == ["ok"]:
        return HealthCheck(
            name="integrity",
            health=Health.OK,
            summary=f"PRAGMA {pragma}: ok",
            data={"check": pragma, "result": lines},
        )
    shown = "; ".join(lines[:INTEGRITY_LINES])
    more = f" (and {len(lines) - INTEGRITY_LINES} more)" if len(lines) > INTEGRITY_LINES else ""
    return HealthCheck(
        name="integrity",
        health=Health.PROBLEM,
        summary=f"PRAGMA {pragma} found damage: {shown}{more}",
        advice=advice,
        data={"check": pragma, "result": lines},
    )


def _recovery(storage: SqliteStorage) -> HealthCheck:
    path = storage.path
    report = storage.recovery
    copies = sorted(str(p) for p in path.parent.glob(f"{path.name}.corrupt-*"))
    if report is not None:
        return HealthCheck(
            name="recovery",
            health=Health.PROBLEM,
            summary=(
                f"the file was damaged ({report.problem}) and was recovered when this command "
                f"opened it: {report.jobs_kept} job(s) kept, {report.jobs_lost} lost; the "
                f"damaged file is {report.moved_to}"
            ),
            advice=(
                "check the disk (dmesg, smartctl), read what you need from the damaged copy "
                f"(cidx-jobs salvage {report.moved_to} salvaged.db), then delete it"
            ),
            data={
                "moved_to": str(report.moved_to),
                "jobs_kept": report.jobs_kept,
                "jobs_lost": list(report.jobs_lost),
                "copies": copies,
            },
        )
    if copies:
        return HealthCheck(
            name="recovery",
            health=Health.WARNING,
            summary=f"{len(copies)} damaged copy(ies) left by earlier recoveries: {copies[0]}",
            advice=(
                "read what you need from them (cidx-jobs salvage DAMAGED salvaged.db writes "
                "every readable job into a fresh database), then delete them"
            ),
            data={"copies": copies},
        )
    return HealthCheck(
        name="recovery", health=Health.OK, summary="no damaged copies beside the database"
    )


def _journal_mode(info: StorageInfo) -> HealthCheck:
    mode = info.settings["journal_mode"]
    if mode.lower() == "wal":
        return HealthCheck(name="journal_mode", health=Health.OK, summary="WAL mode")
    return HealthCheck(
        name="journal_mode",
        health=Health.PROBLEM,
        summary=f"the database is in {mode} mode, not WAL: readers wait for writers",
        advice=(
            "keep the database on a local file system (WAL does not work over NFS or SMB); "
            "the store switches it to WAL when it opens with migrate on (cidx-jobs migrate)"
        ),
        data={"journal_mode": mode},
    )


def _wal_size(path: Path) -> HealthCheck:
    wal = path.with_name(path.name + "-wal")
    size = _file_size(wal)
    data = {"path": str(wal), "bytes": size, "limit_bytes": JOURNAL_SIZE_LIMIT}
    if size <= WAL_WARNING_BYTES:
        return HealthCheck(
            name="wal_size", health=Health.OK, summary=f"WAL {_mib(size)}", data=data
        )
    return HealthCheck(
        name="wal_size",
        health=Health.PROBLEM if size > WAL_PROBLEM_BYTES else Health.WARNING,
        summary=(
            f"the WAL is {_mib(size)}, far above the {_mib(JOURNAL_SIZE_LIMIT)} it is cut back "
            "to: checkpoints cannot finish, usually because a reader keeps an old snapshot open"
        ),
        advice=(
            f"find the process that holds {path.name} open for a long time (fuser, lsof: a "
            "stuck worker, a long transaction() block, an open sqlite3 shell) and end it; the "
            "WAL shrinks after the next checkpoint"
        ),
        data=data,
    )


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _permissions(path: Path) -> HealthCheck:
    folder = path.parent
    files = [p for p in _companions(path) if p.exists()]
    data: dict[str, object] = {
        str(p): {
            "mode": f"{stat.S_IMODE(p.stat().st_mode):04o}",
            "uid": p.stat().st_uid,
            "gid": p.stat().st_gid,
        }
        for p in [*files, folder]
    }
    problems: list[str] = []
    advice: list[str] = []
    for file in files:
        missing = [
            name
            for name, flag in (("read", os.R_OK), ("write", os.W_OK))
            if not os.access(file, flag)
        ]
        if missing:
            problems.append(f"this process cannot {' or '.join(missing)} {file.name}")
            advice.append(f"give the service's user read and write permission on {file}")
    if not os.access(folder, os.W_OK | os.X_OK):
        problems.append(f"this process cannot create files in {folder}")
        advice.append(f"give the service's user write permission on the folder {folder}")
    owner = path.stat().st_uid
    strangers = [file for file in files[1:] if file.stat().st_uid != owner]
    if strangers:
        names = ", ".join(f"{f.name} belongs to {_owner_name(f.stat().st_uid)}" for f in strangers)
        problems.append(f"{names}, but {path.name} to {_owner_name(owner)}")
        advice.append(
            f"chown {owner} {' '.join(str(f) for f in strangers)}, and run cidx-jobs as the "
            "database's owner"
        )
    exposed = [
        p.name or str(p) for p in [*files, folder] if stat.S_IMODE(p.stat().st_mode) & stat.S_IWOTH
    ]
    if exposed:
        problems.append(f"anyone may write to {', '.join(exposed)}")
        advice.append("chmod o-w on them (e.g. 0640 for the files, 0750 for the folder)")
    mode = f"{stat.S_IMODE(path.stat().st_mode):04o}"
    if not problems:
        return HealthCheck(
            name="permissions",
            health=Health.OK,
            summary=f"{path.name} mode {mode}, owner {_owner_name(owner)}; folder writable",
            data=data,
        )
    return HealthCheck(
        name="permissions",
        health=Health.PROBLEM,
        summary="; ".join(problems),
        advice="; ".join(advice),
        data=data,
    )


def _disk_space(path: Path, info: StorageInfo) -> HealthCheck:
    usage = shutil.disk_usage(path.parent)
    data = {"free_bytes": usage.free, "total_bytes": usage.total}
    size = info.size_bytes or 0
    if usage.free < FREE_SPACE_PROBLEM_BYTES:
        return HealthCheck(
            name="disk_space",
            health=Health.PROBLEM,
            summary=f"only {_mib(usage.free)} free on the database's file system",
            advice=(
                "free disk space (old backups, logs), or run cidx-jobs cleanup; writes fail "
                "with StorageFullError when the disk is full"
            ),
            data=data,
        )
    if usage.free < size:
        return HealthCheck(
            name="disk_space",
            health=Health.WARNING,
            summary=(
                f"{_mib(usage.free)} free, less than the database's {_mib(size)}: a VACUUM "
                "or a backup beside it would not fit"
            ),
            advice="free disk space, or write backups to another file system",
            data=data,
        )
    return HealthCheck(
        name="disk_space", health=Health.OK, summary=f"{_mib(usage.free)} free", data=data
    )


def _size_limit(storage: SqliteStorage, info: StorageInfo) -> HealthCheck:
    limit_mb = storage.options.max_size_mb
    if not limit_mb:
        return HealthCheck(name="size_limit", health=Health.OK, summary="no max_size_mb limit")
    used = int(info.settings["pages"]) * int(info.settings["page_size"])
    share = used / (limit_mb * MIB)
    data = {"used_bytes": used, "limit_mb": limit_mb}
    if share < SIZE_LIMIT_WARNING:
        return HealthCheck(
            name="size_limit",
            health=Health.OK,
            summary=f"{share:.0%} of max_size_mb={limit_mb}",
            data=data,
        )
    return HealthCheck(
        name="size_limit",
        health=Health.PROBLEM if share >= SIZE_LIMIT_PROBLEM else Health.WARNING,
        summary=f"the database uses {share:.0%} of max_size_mb={limit_mb}",
        advice=(
            "run cidx-jobs cleanup (a shorter --retention-days frees more), or raise "
            "max_size_mb; writes past the limit fail with StorageFullError"
        ),
        data=data,
    )


def _free_pages(info: StorageInfo) -> HealthCheck:
    pages = int(info.settings["pages"])
    free = int(info.settings["free_pages"])
    page_size = int(info.settings["page_size"])
    share = free / pages if pages else 0.0
    data = {"free_pages": free, "pages": pages}
    if share > FREE_PAGES_WARNING and pages * page_size > JOURNAL_SIZE_LIMIT:
        return HealthCheck(
            name="free_pages",
            health=Health.WARNING,
            summary=f"{share:.0%} of the file ({_mib(free * page_size)}) is free pages",
            advice=(
                "nothing is wrong: new jobs reuse them; to give the space back, run VACUUM in "
                "a quiet moment (it rewrites the file and needs as much free disk)"
            ),
            data=data,
        )
    return HealthCheck(
        name="free_pages",
        health=Health.OK,
        summary=f"{share:.0%} of the file is free pages",
        data=data,
    )


def _settings(info: StorageInfo) -> HealthCheck:
    settings = info.settings
    shown = ", ".join(
        f"{name}={settings[name]}"
        for name in ("synchronous", "foreign_keys", "busy_timeout_ms", "pool_size", "page_size")
    )
    shown += f", SQLite {settings['sqlite_version']}"
    problems = []
    if settings["synchronous"] == "off":
        problems.append("synchronous=off: a power cut or an OS crash can damage the file")
    if not problems:
        return HealthCheck(name="settings", health=Health.OK, summary=shown, data=dict(settings))
    return HealthCheck(
        name="settings",
        health=Health.WARNING,
        summary=f"{'; '.join(problems)} ({shown})",
        advice="use synchronous=normal (the default) or full in the store's URL",
        data=dict(settings),
    )


# -- salvage ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class SalvageReport:
    """What :func:`salvage_file` kept and lost.

    :ivar source: the damaged file that was read (never changed).
    :ivar target: the fresh database that was written.
    :ivar jobs_kept: jobs written into ``target``.
    :ivar checkpoints_kept: checkpoints written into it.
    :ivar jobs_lost: ids of jobs the primary-key index names that could not be read.
    :ivar checkpoints_lost: checkpoints that could not be read or whose job was lost.
    :ivar rows_unreadable: rows known to exist that could not be read or were not valid.
    :ivar wal_repair: the one flipped bit of the source's ``-wal`` that was set right in
        the salvage's copy, so that the commits after it were read too, or ``None``.
    :ivar wal_damage: the damage left in the source's ``-wal`` (commits past a damaged
        frame, which the salvage, reading the ``-wal`` as SQLite does, cannot read), or
        ``None``.
    :ivar complete: True only when every page of the tables was read, no row known to
        exist was lost and the ``-wal`` held no commit past damage.
    :ivar seconds: how long it took.
    """

    source: Path
    target: Path
    jobs_kept: int
    checkpoints_kept: int
    jobs_lost: tuple[str, ...]
    checkpoints_lost: int
    rows_unreadable: int
    wal_repair: str | None
    wal_damage: str | None
    complete: bool
    seconds: float


def salvage_file(source: Path, target: Path, *, force: bool = False) -> SalvageReport:
    """Read every readable job and checkpoint of the damaged database ``source`` (a file
    that recovery moved aside, or the database of a stopped server) with the backend's
    own salvage, and write them into a fresh database at ``target``.

    ``source`` and its ``-wal`` are only read, as plain files, and its ``-shm`` is not
    touched: SQLite never opens them, so no byte of them changes and no file appears
    beside them. When the ``-wal`` hides commits behind one flipped bit that can be set
    right with certainty (:func:`._walcheck.repair_wal`), the salvage reads a repaired
    copy of it (in a private folder beside ``target``) and keeps those commits. ``target`` is
    created with the mode (and, run as root, the owner) of ``source``, written under a
    temporary name beside it and renamed into place when it is complete.

    :param force: replace an existing ``target`` (an SQLite database that is not in use).
    :raises ValidationError: ``source`` is missing or not a file (``field="source"``);
        ``target`` exists without ``force``, is ``source`` or one of its companion files,
        is a folder, lies in a missing folder, is not an SQLite database, or has a
        ``-wal`` or ``-shm`` beside it (``field="target"``). Nothing was written.
    :raises StorageCorruptError: ``source`` is not an SQLite database, not even a damaged
        one (random bytes, another program's file).
    :raises StoragePermissionError: ``source`` cannot be read, or ``target``'s folder
        written.
    :raises StorageFullError: no space is left for ``target``; nothing was left behind.
    :raises StorageError: the salvage or the fresh database failed otherwise.
    """
    started = time.monotonic()
    source = Path(os.path.realpath(source))
    target = Path(os.path.abspath(target))
    _check_salvage_paths(source, target, force=force)
    report = RecoveryReport(moved_to=source, problem="salvaged by cidx-jobs salvage")
    partial = target.with_name(f".{target.name}.salvage-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        damage = find_wal_damage(source, use_shm=False)
        repair = None if damage is None else repair_wal(source)
        if repair is None:
            jobs, checkpoints = _salvage(source, report)
        else:
            with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
                # The file itself through a link, beside the repaired -wal: nothing of the
                # source is copied or changed.
                view = Path(tmp) / source.name
                view.symlink_to(source)
                wal = view.with_name(view.name + "-wal")
                create_like(wal, None)
                wal.write_bytes(repair.wal)
                jobs, checkpoints = _salvage(view, report)
                damage = _find(view, use_shm=False)
        create_like(partial, source)
        _write_fresh(partial, jobs, checkpoints)
        os.replace(partial, target)
    except PermissionError as error:
        raise StoragePermissionError(
            f"cannot salvage {source} into {target}: {error.strerror or error} "
            f"({error.filename or target.parent}); run as a user who may read {source} and "
            f"create files in {target.parent}"
        ) from error
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFullError(
                f"no space left to write {target}: free disk space, or write it to another "
                "file system"
            ) from error
        raise StorageError(f"cannot salvage {source} into {target}: {error}") from error
    except sqlite3.Error as error:
        if error_code(error) == FULL:
            raise StorageFullError(
                f"no space left to write {target}: free disk space, or write it to another "
                "file system"
            ) from error
        raise StorageError(f"cannot write the salvaged jobs into {target}: {error}") from error
    finally:
        for suffix in ("", *COMPANION_SUFFIXES):
            with contextlib.suppress(OSError):
                os.remove(partial.with_name(partial.name + suffix))
    return SalvageReport(
        source=source,
        target=target,
        jobs_kept=report.jobs_kept,
        checkpoints_kept=report.checkpoints_kept,
        jobs_lost=tuple(report.jobs_lost),
        checkpoints_lost=report.checkpoints_lost,
        rows_unreadable=report.rows_unreadable,
        wal_repair=None if repair is None else repair.describe(),
        wal_damage=None if damage is None else damage.describe(),
        complete=report.complete and damage is None,
        seconds=time.monotonic() - started,
    )


def _check_salvage_paths(source: Path, target: Path, *, force: bool) -> None:
    try:
        mode = source.stat().st_mode
    except FileNotFoundError:
        raise ValidationError(
            f"{source} does not exist: name the damaged file (jobs.db.corrupt-... beside the "
            "database)",
            field="source",
        ) from None
    except PermissionError as error:
        raise StoragePermissionError(
            f"cannot read {source}: {error.strerror}; run as the database's owner"
        ) from error
    if not stat.S_ISREG(mode):
        raise ValidationError(f"{source} is not a file: name the damaged file", field="source")
    if not os.access(source, os.R_OK):
        raise StoragePermissionError(f"cannot read {source}: run as the database's owner")
    if not looks_like_sqlite(source):
        raise StorageCorruptError(
            f"{source} is not an SQLite database, not even a damaged one; nothing was written. "
            "Check the path"
        )
    resolved = Path(os.path.realpath(target))
    for suffix in ("", *COMPANION_SUFFIXES):
        own = source.with_name(source.name + suffix)
        if resolved == own or (own.exists() and target.exists() and os.path.samefile(own, target)):
            what = "the damaged file itself" if not suffix else f"its {suffix} file"
            raise ValidationError(
                f"cannot salvage {source} into {target}: it is {what}, which must stay as it "
                "is; write the salvaged database to another file",
                field="target",
            )
    if not target.parent.is_dir():
        raise ValidationError(
            f"cannot salvage into {target}: the folder {target.parent} does not exist",
            field="target",
        )
    if target.is_dir():
        raise ValidationError(
            f"cannot salvage into {target}: it is a folder; name a file in it "
            f"(e.g. {target / 'jobs-salvaged.db'})",
            field="target",
        )
    if not os.path.lexists(target):
        return
    if not force:
        raise ValidationError(
            f"{target} exists: pass --force to replace it, or name another file",
            field="target",
        )
    with contextlib.suppress(OSError), target.open("rb") as file:
        head = file.read(len(SQLITE_MAGIC))
        if head and head != SQLITE_MAGIC:
            raise ValidationError(
                f"{target} exists and is not an SQLite database, so it is not replaced, "
                "--force or not; remove it, or name another file",
                field="target",
            )
    in_use = [
        target.name + suffix
        for suffix in COMPANION_SUFFIXES
        if os.path.lexists(target.with_name(target.name + suffix))
    ]
    if in_use:
        raise ValidationError(
            f"{target} has {', '.join(in_use)} beside it: it may be a database in use (or not "
            "closed cleanly), and replacing it would break it; stop what uses it, or name "
            "another file",
            field="target",
        )
