"""The ``-shm`` file (SQLite's wal-index) removed or replaced under processes that use it.

In WAL mode every process that has the database open maps ``<db>-shm`` into memory and
finds committed frames of ``<db>-wal`` through it; the file's locks are also how writers
of different processes take turns. The unix VFS shares one mapping between the
connections of a process, keyed by the *database* file, so once the ``-shm`` at the path
is removed or replaced, the processes that had it open go on using the unlinked one, and
the next process to open the database builds a second wal-index in a new ``-shm``. Two
wal-indexes mean two write locks and two views of the ``-wal``: commits of one side
overwrite or hide the other's (measured: 20 of 50 acknowledged writes lost after removing
``-shm``; 40 of 50 after removing ``-wal`` and ``-shm``; see docs/sqlite.md).

SQLite does not notice this itself, so this module does, from two sides, without opening
the files: closing any descriptor of a file drops every POSIX lock the process holds on
it, SQLite's included, so the checks only read ``/proc`` and call ``stat``.

* :func:`check_wal_index`, before a process's connection opens the file: it refuses while
  another process holds the database open (SQLite's shared lock on the database file)
  but no lock on the ``-shm`` at the path (the lock every user of a wal-index holds).
* :class:`ShmWatch`, in a process that has the database open: the runner's periodic
  identity check asks it whether the ``-shm`` this process mapped is still the one at
  the path.

Both need Linux's ``/proc``; elsewhere they check nothing.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cidx_jobs.errors import StorageError, StorageOutcomeUnknownError, StorageUnavailableError

logger = logging.getLogger("cidx_jobs.sqlite")

#: Where Linux lists every file lock of the system, with its holder's pid.
PROC_LOCKS = "/proc/locks"
#: Where Linux lists this process's memory mappings, with the mapped file's path.
PROC_MAPS = "/proc/self/maps"
#: The byte range of SQLite's SHARED lock on the database file (os_unix.c: PENDING_BYTE
#: + 2, 510 bytes). A WAL-mode connection holds it for as long as it is open.
SHARED_FIRST = 0x40000000 + 2
#: The "dead man switch" byte of the ``-shm`` (os_unix.c: UNIX_SHM_DMS): every process
#: using a wal-index holds a read lock on it; a process that finds none builds the index
#: afresh.
SHM_DMS = 128
#: How long a suspicious state must last before :func:`check_wal_index` believes it. A
#: process that is opening the database holds its shared lock a moment before it locks
#: the ``-shm`` (microseconds, more when it is descheduled), and one that closes its last
#: connection releases them in the other order; the removal of a live ``-shm`` lasts
#: until the processes that used it close.
SETTLE_SECONDS = 0.25

_DELETED = " (deleted)"


def _locks_by_file() -> dict[tuple[int, int, int], list[tuple[int, str, int, int]]] | None:
    """Every POSIX lock held now, by file ((major, minor, inode)), as (pid, READ or WRITE,
    first byte, last byte); ``None`` where ``/proc/locks`` cannot be read."""
    try:
        with open(PROC_LOCKS, encoding="ascii", errors="replace") as listing:
            lines = listing.readlines()
    except OSError:
        return None
    locks: dict[tuple[int, int, int], list[tuple[int, str, int, int]]] = {}
    for line in lines:
        fields = line.split()
        # "1: POSIX  ADVISORY  READ 28755 fe:00:2154591 128 128"; a waiter's line has
        # "->" after the number and holds nothing yet.
        if len(fields) != 8 or fields[1] != "POSIX":
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            key = (int(major, 16), int(minor, 16), int(inode))
            first = int(fields[6])
            last = sys.maxsize if fields[7] == "EOF" else int(fields[7])
        except ValueError:
            continue
        locks.setdefault(key, []).append((pid, fields[3], first, last))
    return locks


def _key(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (os.major(stat.st_dev), os.minor(stat.st_dev), stat.st_ino)


def _readers(locks: list[tuple[int, str, int, int]], byte: int, me: int) -> set[int]:
    """The other processes that hold a read lock on ``byte``."""
    return {
        pid
        for pid, kind, first, last in locks
        if kind == "READ" and first <= byte <= last and pid != me
    }


def _maps(pid: int, name: str) -> str | None:
    """``"unlinked"`` if process ``pid`` maps a file named ``name`` that was unlinked since,
    ``"mapped"`` if it maps the file of that name, else ``None`` (also where its mappings
    cannot be read, or it exited)."""
    unlinked = name + _DELETED
    found = None
    try:
        with open(f"/proc/{pid}/maps", encoding="utf-8", errors="surrogateescape") as maps:
            for line in maps:
                fields = line.rstrip("\n").split(maxsplit=5)
                if len(fields) == 6 and fields[5] == unlinked:
                    return "unlinked"
                if len(fields) == 6 and fields[5] == name:
                    found = "mapped"
    except OSError:
        return None
    return found


def strays(path: Path) -> tuple[set[int], str] | None:
    """The other processes that have the database at ``path`` open without the ``-shm``
    at the path, and what is wrong with that ``-shm``; ``None`` when there are none, or
    where this cannot be seen (no ``/proc/locks``).

    A process is counted when it holds SQLite's shared lock on the database file (a
    WAL-mode connection holds it while open) but no lock on the dead man switch of the
    ``-shm`` at the path (which every process using that wal-index holds): it uses a
    ``-shm`` that was removed or replaced, if it also maps a file of that name (or may
    not be looked at). Processes in other pid namespaces, and files whose device
    /proc/locks names differently from ``stat`` (btrfs subvolumes), are not seen.
    """
    real = os.path.realpath(path)  # SQLite names the -shm after the link's target
    database = _key(real)
    if database is None:
        return None
    locks = _locks_by_file()
    if locks is None:
        return None
    me = os.getpid()
    holders = _readers(locks.get(database, []), SHARED_FIRST, me)
    if not holders:
        return None
    shm = _key(real + "-shm")
    users = set() if shm is None else _readers(locks.get(shm, []), SHM_DMS, me)
    # Only a process that maps an unlinked file of that name is counted: that is proof it
    # uses a removed or replaced -shm. One that maps the -shm at the path without holding
    # its lock yet is opening (or closing) the database, one that maps none reads it with a
    # wal-index in heap memory, and one whose mappings cannot be read is given the benefit
    # of the doubt: a refusal on a guess would stop servers opening under load (it did, with
    # a check that counted them, at a load average of 6).
    stray = {pid for pid in holders - users if _maps(pid, real + "-shm") == "unlinked"}
    if stray:
        return stray, "missing" if shm is None else "replaced"
    return None


def check_wal_index(path: Path, *, settle: float = SETTLE_SECONDS) -> None:
    """Refuse to open the database at ``path`` while other processes use a ``-shm`` (or
    ``-wal``) that is no longer the one at the path.

    Opening then would build a second wal-index beside theirs, and the two sides' commits
    would overwrite or hide each other. Call this before every new connection of a store
    opens the file (the first one and the pool's later ones), before SQLite touches it:
    once SQLite has read the file, the new ``-shm`` exists and the harm is done. A clean
    state costs one read of ``/proc/locks`` (no other process has the file open, or every
    one holds the ``-shm`` at the path); a suspicious one is looked at again for up to
    ``settle`` seconds, since a process opening or closing the file shows it for a moment.
    Linux only; elsewhere, and where ``/proc/locks`` cannot be read, it checks nothing.

    :raises StorageUnavailableError: another process has the database open through a
        removed or replaced ``-shm`` (or a removed ``-wal``), and still did after
        ``settle`` seconds; the message names the processes.
    """
    found = strays(path)
    if found is None:
        return
    pids, problem = found
    deadline = time.monotonic() + settle
    delay = 0.005
    while True:
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay *= 2
        again = strays(path)
        if again is None:
            return
        pids &= again[0]
        problem = again[1]
        if not pids:
            return
        if time.monotonic() >= deadline:
            break
    raise StorageUnavailableError(_refusal(path, sorted(pids), problem))


def _refusal(path: Path, pids: list[int], problem: str) -> str:
    which = ", ".join(map(str, pids))
    if problem == "missing":
        what = f"{path}-shm was removed while processes {which} have the database open"
    else:
        what = (
            f"{path}-shm was removed or replaced while processes {which} have the database "
            "open through the old one"
        )
    return (
        f"{what}; opening it now would build a second wal-index beside theirs and lose "
        "writes of both, so it was not opened and nothing was written. Retry once those "
        "processes have closed the database (a cidx-jobs store closes its connections at "
        "its next read after noticing; the last one to close writes the -wal into the "
        "database); if this persists, stop every process that uses the database and start "
        "them again. Never remove or truncate -shm or -wal while the database is open"
    )


class ShmWatch:
    """Notices, in a process that has the database open, that the ``-shm`` it mapped is no
    longer the one at the path (see the module's docstring).

    :meth:`problem` costs one ``stat`` while the ``-shm`` at the path is the one already
    confirmed; otherwise it reads ``/proc/self/maps``, which shows whether the file this
    process mapped under that name was unlinked. It compares names, not inode numbers:
    ``/proc`` and ``stat`` disagree on the device of some file systems, and a false alarm
    would retire every connection for nothing.
    """

    __slots__ = ("_confirmed", "_enabled", "_interval", "_next", "_path", "_reported", "_shm")

    def __init__(self, path: Path, interval: float) -> None:
        self._path = path
        self._interval = interval
        self._next = 0.0
        self._shm = os.path.realpath(path) + "-shm"
        self._enabled = os.path.exists(PROC_MAPS)
        #: The (device, inode) at the path last found to be the mapped one (or, with
        #: ``None``, that no -shm was there and none was mapped).
        self._confirmed: tuple[int, int] | bool | None = False
        self._reported = False

    def problem(self) -> str | None:
        """What is wrong with the ``-shm`` this process uses, or ``None`` if nothing is (or
        this cannot be seen)."""
        if not self._enabled:
            return None
        try:
            stat = os.stat(self._shm)
            identity: tuple[int, int] | None = (stat.st_dev, stat.st_ino)
        except OSError:
            identity = None
        if identity == self._confirmed:
            return None
        live, unlinked = self._mapped()
        if unlinked and not live:
            return "removed" if identity is None else "replaced"
        # Mapped under its name, or not mapped at all (no connection is in WAL mode, or
        # SQLite keeps this one's wal-index in heap memory): nothing to see.
        self._confirmed = identity
        self._reported = False
        return None

    def _mapped(self) -> tuple[bool, bool]:
        """Whether this process maps a file named like the ``-shm``, and whether it maps
        one that was unlinked."""
        live = unlinked = False
        try:
            with open(PROC_MAPS, encoding="utf-8", errors="surrogateescape") as maps:
                for line in maps:
                    fields = line.rstrip("\n").split(maxsplit=5)
                    if len(fields) < 6:
                        continue
                    name = fields[5]
                    if name == self._shm:
                        live = True
                    elif name == self._shm + _DELETED:
                        unlinked = True
        except OSError:
            return True, False  # cannot tell: assume all is well
        return live, unlinked

    def check(self, invalidate: Callable[[], None], *, committed: bool = False) -> None:
        """Raise if the ``-shm`` this process uses was removed or replaced, after
        ``invalidate()`` (the pool's: every connection is closed, busy ones when they come
        back).

        Closing is what repairs the state: when the last process that used the old
        ``-shm`` closes, SQLite writes the ``-wal`` into the database through it, and the
        next connection (which :func:`check_wal_index` lets open only then) starts a new
        one. Until then the calls that meet it fail.

        At most once per ``interval`` seconds (the runner calls this after every
        transaction, besides its periodic checks): otherwise it costs a clock read.

        :param committed: the call committed a transaction just before.
        :raises StorageUnavailableError: the ``-shm`` was removed or replaced.
        :raises StorageOutcomeUnknownError: so, after a commit (``committed``): it went
            into the ``-wal`` through the old ``-shm``, where it stays unless another
            process builds a second wal-index before every process has closed.
        """
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self._interval
        problem = self.problem()
        if problem is not None:
            invalidate()
            raise self._error(problem, committed)

    def _error(self, problem: str, committed: bool) -> StorageError:
        """The error for a call that met ``problem``, logged at ERROR once per problem."""
        path = self._path
        if not self._reported:
            self._reported = True
            logger.error(
                "the -shm file of the job database %s was %s while this process had the "
                "database open; its connections are closed so that the last process to close "
                "writes the -wal into the database. New connections are refused while other "
                "processes still use the old -shm: restart every process that uses %s if this "
                "persists, and never remove or truncate -shm or -wal of an open database",
                path,
                problem,
                path,
            )
        if committed:
            return StorageOutcomeUnknownError(
                f"the -shm file of the job database {path} was {problem} while open; this "
                "transaction was committed into the -wal through the old -shm and the store "
                "closed its connections. It is kept unless another program opened the "
                "database meanwhile: read it back before repeating it"
            )
        return StorageUnavailableError(
            f"the -shm file of the job database {path} was {problem} while open; this call "
            "failed and the store closed its connections. Retry: the store reopens the "
            "database once no process uses the old -shm (restart every process that uses "
            "the database if this persists)"
        )
