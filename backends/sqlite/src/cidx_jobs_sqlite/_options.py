"""The options of the SQLite backend, read from a URL's query string or a mapping."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path

import attrs

from cidx_jobs.backend import BackendConfig, Options
from cidx_jobs.errors import ConfigError, ValidationError

__all__ = ["SYNCHRONOUS_LEVELS", "SqliteOptions"]

#: The values of the ``synchronous`` option, as SQLite names them.
SYNCHRONOUS_LEVELS = ("off", "normal", "full", "extra")
#: The files SQLite keeps beside a database, which a backup must never replace.
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
#: The first bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"
#: The values of the ``check_on_open`` option.
CHECK_LEVELS = ("quick", "full", "off")

DEFAULT_POOL_SIZE = 10
MIN_POOL_SIZE = 5
MAX_POOL_SIZE = 10
DEFAULT_BUSY_TIMEOUT_MS = 5000
MAX_BUSY_TIMEOUT_MS = 600_000
MAX_SIZE_MB = 16 * 1024 * 1024  # 16 TiB; SQLite's own limit is far beyond any job store
#: The longest absolute database path SQLite opens, in bytes: its unix file system layer
#: holds a path in 512 bytes, and needs 8 of them for the ``-journal`` suffix (a 505-byte
#: path fails with SQLITE_CANTOPEN on 3.40). Checked before any folder is created.
MAX_PATH_BYTES = 504


@attrs.frozen(kw_only=True)
class SqliteOptions:
    """How to open and run an SQLite job store. Build it with :meth:`parse` or :meth:`from_config`,
    which validate every value.

    :ivar path: the database file, absolute, at most :data:`MAX_PATH_BYTES` (504) bytes long;
        missing parent folders are created.
    :ivar pool_size: the most connections open at once (5..10, default 10; opened as needed).
    :ivar busy_timeout_ms: how long a call waits for another connection's write lock
        (and for a free pooled connection) before it gives up with StorageBusyError
        (default 5000).
    :ivar synchronous: SQLite's ``synchronous`` level: ``normal`` (default; in WAL mode a
        process crash loses nothing, a power cut may lose the last transactions),
        ``full`` or ``extra`` (survive power cuts, slower writes) or ``off``.
    :ivar recover_corrupt: on opening a damaged file, move it aside and salvage what is
        readable into a fresh one (default); when false, raise StorageCorruptError.
    :ivar check_on_open: how the file is checked for damage at open: ``quick``
        (``PRAGMA quick_check``, default, about a second per 500 MB), ``full``
        (``PRAGMA integrity_check``, much slower) or ``off``.
    :ivar max_size_mb: the largest the database may grow, in MiB (0, the default, means
        no limit beyond the disk); a write beyond it raises StorageFullError.
    :ivar migrate: bring the schema up to date and switch the file to WAL mode at open
        (default). When false, the store changes nothing at open: the file must exist, a
        file of an older schema version stays as it is (calls that need the newer schema
        fail until :meth:`~cidx_jobs_sqlite.SqliteStorage.migrate` runs), and the
        ``cidx-jobs`` command line reads the database without upgrading it.
    :ivar read_only: open the file read-only (SQLite's ``mode=ro``; default false): the
        store needs only read permission (SQLite itself may create the ``-wal`` and ``-shm``
        files of a WAL database, and needs to write the folder for that when no ``-shm``
        exists), creates no database or folder, never recovers,
        checkpoints or migrates (it implies ``migrate=false`` and ``recover_corrupt=false``),
        and every write fails with StoragePermissionError. ``migrate=true`` or
        ``recover_corrupt=true`` beside it is a ConfigError. The ``cidx-jobs`` reading
        commands open the database this way.
    """

    path: Path
    pool_size: int = DEFAULT_POOL_SIZE
    busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS
    synchronous: str = "normal"
    recover_corrupt: bool = True
    check_on_open: str = "quick"
    max_size_mb: int = 0
    migrate: bool = True
    read_only: bool = False

    @property
    def busy_timeout(self) -> float:
        """``busy_timeout_ms`` in seconds."""
        return self.busy_timeout_ms / 1000

    @classmethod
    def parse(
        cls, path: object, options: Options | Mapping[str, object] | None = None
    ) -> SqliteOptions:
        """Validate ``path`` and the backend's options; unknown options are refused.

        :param path: the database file (``sqlite:///jobs.db`` gives ``jobs.db``).
        :param options: the options not read by the core (an :class:`~cidx_jobs.Options`
            or a plain mapping); :meth:`~cidx_jobs.Options.finish` is called on it.
        :raises ConfigError: the path is missing or unusable, or an option is unknown
            or invalid; the error's ``option`` names it.
        """
        if options is None:
            options = {}
        reader = options if isinstance(options, Options) else Options("sqlite", options)
        given = set(reader.remaining())
        pool_size = reader.get_int(
            "pool_size", DEFAULT_POOL_SIZE, minimum=MIN_POOL_SIZE, maximum=MAX_POOL_SIZE
        )
        busy_timeout_ms = reader.get_int(
            "busy_timeout_ms", DEFAULT_BUSY_TIMEOUT_MS, minimum=0, maximum=MAX_BUSY_TIMEOUT_MS
        )
        synchronous = reader.get_choice("synchronous", "normal", SYNCHRONOUS_LEVELS)
        recover_corrupt = reader.get_bool("recover_corrupt", True)
        check_on_open = reader.get_choice("check_on_open", "quick", CHECK_LEVELS)
        max_size_mb = reader.get_int("max_size_mb", 0, minimum=0, maximum=MAX_SIZE_MB)
        migrate = reader.get_bool("migrate", True)
        read_only = reader.get_bool("read_only", False)
        reader.finish()
        if read_only:
            for name, value in (("migrate", migrate), ("recover_corrupt", recover_corrupt)):
                if name in given and value:
                    raise ConfigError(
                        f"read_only=true opens the file without writing, so it cannot take "
                        f"{name}=true: drop one of the two options",
                        option=name,
                    )
            migrate = recover_corrupt = False
        return cls(
            path=_check_path(path),
            pool_size=pool_size,
            busy_timeout_ms=busy_timeout_ms,
            synchronous=synchronous,
            recover_corrupt=recover_corrupt,
            check_on_open=check_on_open,
            max_size_mb=max_size_mb,
            migrate=migrate,
            read_only=read_only,
        )

    @classmethod
    def from_config(cls, config: BackendConfig) -> SqliteOptions:
        """The options of a store opened through :func:`cidx_jobs.open_persistence`.

        :raises ConfigError: as :meth:`parse`, or the configuration names a host, port,
            user name or password (an SQLite database is a local file).
        """
        config.reject_location(
            why="an SQLite database is a local file: write sqlite:///relative/path.db or "
            "sqlite:////absolute/path.db"
        )
        return cls.parse(config.path, config.reader())

    def max_page_count(self, page_size: int) -> int | None:
        """``max_size_mb`` as SQLite's ``max_page_count`` for pages of ``page_size`` bytes."""
        if not self.max_size_mb:
            return None
        return max(1, math.floor(self.max_size_mb * 1024 * 1024 / page_size))


def _check_path(path: object) -> Path:
    if path is None or path == "":
        raise ConfigError(
            "the sqlite backend needs a database path: sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db, or {'backend': 'sqlite', 'path': ...}",
            option="path",
        )
    if not isinstance(path, str):
        raise ConfigError(f"option 'path' must be a string, got {path!r}", option="path")
    if path == ":memory:" or path.startswith("file:"):
        raise ConfigError(
            f"the sqlite backend stores jobs in a file; {path!r} is not a file path "
            "(use memory:// for a store that lives in memory)",
            option="path",
        )
    if "\x00" in path:
        raise ConfigError("option 'path' must not contain NUL characters", option="path")
    resolved = Path(path).expanduser()
    try:
        is_dir = resolved.is_dir()
    except OSError as error:  # e.g. a name longer than the file system allows
        raise ConfigError(f"option 'path' {path!r} is not usable: {error}", option="path") from None
    if path.endswith(("/", "\\")) or is_dir:
        raise ConfigError(
            f"option 'path' must name a database file, but {path!r} is a folder "
            "(e.g. sqlite:////var/lib/cidx/jobs.db)",
            option="path",
        )
    absolute = resolved.absolute()
    size = len(os.fsencode(absolute))
    if size > MAX_PATH_BYTES:
        raise ConfigError(
            f"option 'path' is {size} bytes long as an absolute path ({absolute.parts[1]}/... "
            f"with {len(absolute.parts) - 1} parts); SQLite opens paths of at most "
            f"{MAX_PATH_BYTES} bytes: choose a shorter path (nothing was created)",
            option="path",
        )
    return absolute


def check_backup_target(database: Path, target: Path) -> None:
    """Refuse, before any I/O that writes, a backup ``target`` that would destroy a database.

    SQLite's backup writes a database file at ``target``: over the database itself or one
    of its ``-wal``, ``-shm`` or ``-journal`` files (of this database, or of any database
    beside which ``target`` sits) it would break every process that has it open.

    :raises ValidationError: ``target`` is such a file, a folder, or an existing non-empty
        file that is not an SQLite database (which the backup would not replace either).
    """
    own = [database, *(database.with_name(database.name + suffix) for suffix in COMPANION_SUFFIXES)]
    resolved = Path(os.path.realpath(target))
    for path in own:
        if resolved == Path(os.path.realpath(path)) or _same_file(path, target):
            what = "the database itself" if path == database else f"the database's {path.name}"
            raise ValidationError(
                f"cannot back up {database} to {target}: it is {what}, which the backup would "
                "destroy; write the backup to another file",
                field="target",
            )
    for suffix in COMPANION_SUFFIXES:
        if target.name.endswith(suffix) and target.name != suffix:
            owner = target.with_name(target.name[: -len(suffix)])
            if owner.is_file():
                raise ValidationError(
                    f"cannot back up {database} to {target}: it is the {suffix} file of the "
                    f"database {owner}, which the backup would break; write the backup to "
                    "another file",
                    field="target",
                )
    if target.is_dir():
        raise ValidationError(
            f"cannot back up {database} to {target}: it is a folder; name a file in it "
            f"(e.g. {target / 'jobs-backup.db'})",
            field="target",
        )
    try:
        with target.open("rb") as file:
            head = file.read(len(SQLITE_HEADER))
    except OSError:
        return  # missing (the backup creates it), or unreadable (the backup reports that)
    if head and head != SQLITE_HEADER:
        raise ValidationError(
            f"cannot back up {database} to {target}: that file exists and is not an SQLite "
            "database, so the backup does not replace it; remove it, or choose another file",
            field="target",
        )


def _same_file(left: Path, right: Path) -> bool:
    try:
        return os.path.samefile(left, right)
    except OSError:
        return False
