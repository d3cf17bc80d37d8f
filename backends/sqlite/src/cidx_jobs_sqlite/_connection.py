"""Opening the database: connections, their pragmas, the check (and recovery) at open, WAL
mode and the schema migrations.

The first connection of a store checks the file and, if it is damaged, recovers it (see
:mod:`._recovery`); the pool's later connections only configure themselves and bring
the schema up to date if another process migrated the file meanwhile.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path

from cidx_jobs.errors import (
    StorageCorruptError,
    StorageError,
    StoragePermissionError,
    StorageUnavailableError,
)

from . import _schema
from ._errors import DAMAGE, error_code, folder_error, permission_problem
from ._options import SqliteOptions
from ._pool import Connection
from ._recovery import (
    RecoveryReport,
    create_like,
    file_identity,
    folder_lock,
    looks_like_sqlite,
    probe,
    recover,
    writers_held_off,
)
from ._runner import retry_busy, translating
from ._shm import check_wal_index
from ._undecodable import find_undecodable
from ._walcheck import wal_damage

logger = logging.getLogger("cidx_jobs.sqlite")

#: UPSERT (ON CONFLICT DO UPDATE) arrived in 3.24; row values and DESC indexes earlier.
MIN_SQLITE = (3, 24, 0)
#: Prepared statements each connection keeps (sqlite3's default is 128).
CACHED_STATEMENTS = 256
#: The size a WAL that a big cleanup grew is truncated back to after checkpoints.
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


def connection_pragmas(options: SqliteOptions) -> tuple[str, ...]:
    """The pragmas every connection runs first (they hold per connection, not per file)."""
    return (
        # Off by default and per connection: without it the cascade to checkpoints silently
        # does nothing.
        "PRAGMA foreign_keys = ON",
        f"PRAGMA synchronous = {options.synchronous.upper()}",
        # Keep a WAL that a big cleanup grew from staying big on disk.
        f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}",
        # Zeroing every deleted row (this build's default) makes a cleanup write each page
        # twice; FAST zeroes only what costs no extra I/O. The rows are no secret beyond
        # the file's own permissions.
        "PRAGMA secure_delete = FAST",
    )


class Connector:
    """Opens the connections of one store to the database file ``options.path``.

    :param connection_class: the class of every connection (tests substitute one that
        injects failures or traces statements).
    """

    def __init__(self, options: SqliteOptions, connection_class: type[Connection]) -> None:
        self.options = options
        self.path = options.path
        self._path_str = str(options.path)
        self._busy = options.busy_timeout
        self._pragmas = connection_pragmas(options)
        self._connection_class = connection_class
        self._lock = threading.Lock()
        #: What the recovery at open kept and lost, if the file was damaged.
        self.recovery: RecoveryReport | None = None

    def open(self) -> Connection:
        """The store's first connection, after checking (and if need be recovering) the file.

        :raises StoragePermissionError: the file or a folder cannot be created, read or written.
        :raises StorageCorruptError: the file is damaged and ``recover_corrupt`` is off, or
            the path holds a file that is not an SQLite database.
        :raises SchemaVersionError: the file was written by a newer release, or by another
            program.
        :raises StorageUnavailableError: another process has the database open through a
            removed or replaced ``-shm`` (or a removed ``-wal``).
        :raises StorageError: SQLite failed otherwise.
        """
        if sqlite3.sqlite_version_info < MIN_SQLITE:
            raise StorageError(
                f"the sqlite backend needs SQLite {'.'.join(map(str, MIN_SQLITE))} or newer; "
                f"this Python has SQLite {sqlite3.sqlite_version}"
            )
        if not self.options.migrate and not self.path.is_file():
            # Opening without migrating promises to change nothing: not even a new file.
            raise StorageUnavailableError(
                f"{self.path} does not exist, and this store was opened not to create a "
                "database (migrate=false or read_only=true); check the path"
            )
        if self.options.read_only:
            if not os.access(self.path, os.R_OK):
                raise StoragePermissionError(
                    f"no read permission on {self.path}: reading the job database needs it "
                    "(fix the file's owner or mode, or run as the database's owner)"
                )
        else:
            self._make_folder()
            problem = permission_problem(self.path)
            if problem is not None:
                raise StoragePermissionError(problem)
        # Before SQLite reads the file, which would create a new -shm beside the one other
        # processes may still use (docs/sqlite.md, "The -shm file").
        check_wal_index(self.path)
        conn = self._bare_connect()
        try:
            damage = self._check(conn)
            if damage is not None:
                conn.close()
                conn = self._recover(damage)
            self._configure(conn)
            self._setup(conn, initial=True)
        except BaseException:
            conn.close()
            raise
        return conn

    def connect(self) -> Connection:
        """A new pooled connection (the pool calls this lazily, and after retiring one).

        :raises StorageError: as :meth:`open`, except that the file is not checked for damage.
        """
        if not self.options.read_only:
            self._make_folder()
        for _attempt in range(3):
            check_wal_index(self.path)
            before = file_identity(self.path)
            conn = self._bare_connect()
            try:
                self._configure(conn)
                self._setup(conn, initial=False)
            except BaseException:
                conn.close()
                raise
            # The identity is read after the connect: a file replaced in between (a recovery's
            # swap) would give a connection to the old file the new file's identity, and its
            # writes would pass the check after every write.
            if conn.identity == before:
                return conn
            conn.close()
        raise StorageUnavailableError(
            f"{self.path} kept being replaced while a connection was opened; retry the call"
        )

    # -- the steps -----------------------------------------------------------------------------

    def _bare_connect(self) -> Connection:
        """A connection with no pragmas applied yet (some read the file's header)."""
        with translating(self.path, "opening the database"):
            if self.options.read_only:
                # mode=ro: no write, no checkpoint, no new file (SQLite creates no database).
                return sqlite3.connect(
                    f"file:{urllib.parse.quote(self._path_str)}?mode=ro",
                    uri=True,
                    timeout=self._busy,
                    isolation_level=None,
                    check_same_thread=False,
                    cached_statements=CACHED_STATEMENTS,
                    factory=self._connection_class,
                )
            real = os.path.realpath(self._path_str)  # a dangling link's target too
            if not os.path.lexists(real):
                # SQLite would create it with the umask's mode, readable by every user on a
                # default system: a new database is created owner-only, and its -wal and
                # -shm take its mode. An error is left to the connect, which reports it.
                with contextlib.suppress(OSError):
                    create_like(Path(real), None)
            return sqlite3.connect(
                self._path_str,
                timeout=self._busy,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=CACHED_STATEMENTS,
                factory=self._connection_class,
            )

    def _configure(self, conn: Connection) -> None:
        with translating(self.path, "configuring a connection"):
            for pragma in self._pragmas:
                conn.execute(pragma)

    def _make_folder(self) -> None:
        """Create the missing folders of the path, one at a time (a deep path never
        recurses), and remove those this call created if one of them cannot be made.

        :raises StorageFullError: no space (or no inode) is left to create a folder.
        :raises StoragePermissionError: no permission, or the file system is read-only.
        :raises StorageUnavailableError: a file stands where a folder should be, or
            another failure.
        """
        folder = self.path.parent
        if folder.is_dir():
            return
        missing = []
        step = folder
        while not step.is_dir() and step != step.parent:
            missing.append(step)
            step = step.parent
        created: list[Path] = []
        try:
            for step in reversed(missing):
                try:
                    step.mkdir()
                except FileExistsError:
                    if not step.is_dir():
                        raise
                    continue  # another process made it meanwhile
                created.append(step)
        except OSError as error:
            for step in reversed(created):
                with contextlib.suppress(OSError):
                    step.rmdir()
            raise folder_error(self.path, error) from error

    def _check(self, conn: Connection) -> str | None:
        """What is damaged in the file, or ``None``; refuses files of newer releases."""
        with translating(self.path, "checking the database"):
            try:
                version = _schema.read_version(conn)
                if version > _schema.SCHEMA_VERSION:
                    raise _schema.newer_version_error(self.path, version)
                damage = probe(conn, self.options.check_on_open)
                if damage is None and self.options.check_on_open == "full":
                    # integrity_check does not read text as UTF-8; sqlite3 does, and
                    # refuses a row that is not.
                    damage = find_undecodable(conn)
                if damage is None and self.options.check_on_open != "off":
                    # SQLite drops every commit after a damaged -wal frame without an error,
                    # and the next write overwrites them (never raises; holds the -wal).
                    damage = wal_damage(conn, self.path)
                return damage
            except sqlite3.DatabaseError as error:
                if error_code(error) in DAMAGE:
                    return str(error)
                raise

    def _recover(self, damage: str) -> Connection:
        path = self.path
        if not looks_like_sqlite(path):
            raise StorageCorruptError(
                f"{path} is not an SQLite database ({damage}); it was left untouched. Check "
                "that the configured path names the job database"
            )
        if not self.options.recover_corrupt:
            raise StorageCorruptError(
                f"{path} is damaged ({damage}) and recover_corrupt is off. Restore it from a "
                "backup, or open it with recover_corrupt=true to move it aside and salvage "
                "every readable job into a fresh database"
            )
        # The folder of the file itself: two paths linked to one database take one lock.
        with folder_lock(Path(os.path.realpath(path)).parent):
            # Another process may have recovered the file while this one waited.
            conn = self._bare_connect()
            try:
                damage_now = self._check(conn)
            except BaseException:
                conn.close()
                raise
            if damage_now is None:
                return conn
            conn.close()
            try:
                # Writers of other processes are held off from before the salvage reads the
                # file until it is replaced: none of their acknowledged writes can end up
                # only in the file moved aside.
                with (
                    translating(path, "salvaging the damaged database"),
                    writers_held_off(path, self._busy),
                ):
                    self.recovery = recover(path, damage_now)
            except PermissionError as error:
                raise StoragePermissionError(
                    f"cannot recover the damaged {path}: {error}; grant write permission on "
                    f"the folder {path.parent}"
                ) from error
            except OSError as error:
                raise StorageError(f"cannot recover the damaged {path}: {error}") from error
        return self._bare_connect()

    def _begin_immediate(self, conn: sqlite3.Connection) -> None:
        retry_busy(
            functools.partial(conn.execute, "BEGIN IMMEDIATE"),
            time.monotonic() + self._busy,
            conn=conn,
            timeout=self._busy,
        )

    def _setup(self, conn: Connection, *, initial: bool) -> None:
        """Bring a new connection's file up to date (WAL, schema) and remember the file."""
        path = self.path
        with translating(path, "preparing the database"):
            version = _schema.read_version(conn)
            if self.options.migrate and (initial or version != _schema.SCHEMA_VERSION):
                self.migrate(conn)
            limit = self.options.max_page_count(int(conn.execute("PRAGMA page_size").fetchone()[0]))
            if limit is not None:
                conn.execute(f"PRAGMA max_page_count = {limit}")
        identity = file_identity(path)
        if identity is None:
            raise StorageUnavailableError(f"{path} vanished while it was being opened")
        conn.identity = identity

    def migrate(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """Switch the file to WAL mode and bring its schema up to date (idempotent).

        :returns: the schema version before and after.
        :raises SchemaVersionError: the file is newer than this release, or not ours.
        :raises sqlite3.Error: SQLite failed; the schema was not changed.
        """
        with self._lock:
            self._enable_wal(conn)
            return _schema.apply_migrations(
                conn, self.path, self._begin_immediate, _schema.SCHEMA_VERSION
            )

    def _enable_wal(self, conn: sqlite3.Connection) -> None:
        mode = retry_busy(
            lambda: str(conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]),
            time.monotonic() + self._busy,
            conn=conn,
            timeout=self._busy,
        )
        if mode.lower() != "wal":
            logger.warning(
                "%s could not be switched to WAL mode (it is in %s mode): readers will wait "
                "for writers. Keep the database on a local file system",
                self.path,
                mode,
            )
