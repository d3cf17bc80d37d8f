"""Finding commits that SQLite silently drops from a damaged ``-wal``.

SQLite reads the ``-wal`` frame by frame while each frame carries the salts of the WAL
header and its running checksum holds; at the first frame that fails, it stops, and
every later frame is ignored: one flipped bit in an early frame drops every later
commit, with no error and no log, and the next write overwrites them.

What can be proven from the file, and is checked here:

* A frame carries the salts of the WAL generation it was written in; a checkpoint that
  restarts the WAL writes a new header with new salts, so frames of an earlier
  generation carry other salts and are normal leftovers.
* A frame's stored checksum is the running checksum over every frame of its generation
  up to it. So a frame ``k`` whose own content, chained from the checksum stored in
  frame ``k - 1``, gives exactly the checksum stored in ``k`` was written by SQLite right
  after frame ``k - 1`` (a 64-bit match: chance is no explanation).
* Such a frame with the commit flag, after the first frame SQLite's reading stops at,
  is a commit that existed past the damage: SQLite only ever appends a commit after
  frames it could read (or a power cut kept the later frames on the disk and not that
  one; the commits are lost all the same). Frames past the break *without* a commit
  flag are normal: what is left of a large transaction that spilled to the ``-wal`` and
  rolled back, overwritten by a shorter one.

:func:`repair_wal` goes one step further for the salvage: it finds the one flipped bit
that broke the chain, where the checksum can place it with certainty.

Where SQLite stopped is read from SQLite itself, in the ``-shm`` that the opening
connection built (its header holds the last committed frame and the running checksum
there), so only the frames past it are read and checksummed: a ``-wal`` whose frames
all hold costs a few small reads however large it is. Checksums come from the
salvage's own WAL code (:mod:`._recovery`).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import attrs

from ._recovery import _PAGE_SIZES, _WAL_MAGIC, _hold_open, _wal_checksum

_WAL_HEADER = 32
_FRAME_HEADER = 24
#: The wal-index header of a ``-shm``: two copies of 48 bytes, in the host's byte order.
_SHM_HEADER = 48
_SHM_VERSION = 3007000
#: Frames read at once while looking past the damage.
_CHUNK_FRAMES = 256
#: Commit frames tried as the proof before a layout is given up (a wrong byte order or
#: page size for a damaged header verifies none).
_PROOF_ATTEMPTS = 16
#: How often the files are read again when they changed under the check (another
#: process writing) before the check gives up without a finding.
_ATTEMPTS = 3


@attrs.frozen(kw_only=True)
class WalDamage:
    """Commits in a ``-wal`` that SQLite's own reading of it drops.

    :ivar wal: the ``-wal`` file.
    :ivar frame: the first frame (1-based) SQLite stops reading at; 0 for the header.
    :ivar offset: that frame's byte offset in the file.
    :ivar frames_after: frames of the current WAL generation after it (every frame of
        it, when the header is damaged).
    :ivar commits_lost: commit frames among them: at least this many transactions that
        were committed are not in the database SQLite shows.
    :ivar header_damaged: the WAL header itself failed its checksum (SQLite then ignores
        every frame).
    """

    wal: Path
    frame: int
    offset: int
    frames_after: int
    commits_lost: int
    header_damaged: bool = False

    def describe(self) -> str:
        """One line for the problem of a recovery or an error message."""
        where = (
            "its header is damaged, so SQLite ignores every frame"
            if self.header_damaged
            else f"frame {self.frame} (byte {self.offset}) fails its salt or checksum "
            "check, so SQLite ignores it and every later frame"
        )
        return (
            f"{self.wal} is damaged: {where}, and at least {self.commits_lost} committed "
            f"transaction(s) in {self.frames_after} later frame(s) of the current WAL "
            "would be lost without an error"
        )


@attrs.frozen
class _Layout:
    order: str
    page_size: int
    salts: bytes
    #: The last frame SQLite reads as committed, and the running checksum after it.
    start: int
    sums: tuple[int, int]
    header_damaged: bool = False

    @property
    def frame_size(self) -> int:
        return _FRAME_HEADER + self.page_size

    def offset(self, frame: int) -> int:
        return _WAL_HEADER + (frame - 1) * self.frame_size


def wal_damage(conn: sqlite3.Connection, path: Path) -> str | None:
    """What is damaged in the ``-wal`` of the database at ``path``, as a problem for the
    recovery at open, or ``None``: ``None`` too when there is no ``-wal`` or it is empty.

    Call it on the opening connection after its first read (which made SQLite index the
    ``-wal`` in the ``-shm``) and before anything writes: a write overwrites the frames
    after the damage. When damage is found, the connection's close is kept from
    checkpointing the ``-wal`` into the file and deleting it (as :func:`._recovery.probe`
    does), so the recovery keeps both byte for byte.

    Never raises: a ``-wal`` or ``-shm`` that cannot be read is no finding.
    """
    found = find_wal_damage(path)
    if found is None:
        return None
    _hold_open(conn)
    return found.describe()


def find_wal_damage(path: Path, *, use_shm: bool = True) -> WalDamage | None:
    """Commits past a damaged frame of the ``-wal`` of the database at ``path``, which
    SQLite's reading of the ``-wal`` drops; ``None`` if there are none (or the files
    cannot be read).

    :param use_shm: start where the ``-shm`` says SQLite stopped reading (a connection
        must have read the file since its last process closed it, so that the ``-shm``
        is SQLite's index of the ``-wal`` as it is now). ``False`` follows the checksum
        chain from the ``-wal``'s header, as the salvage reads it: about 0.25 ms per
        frame, 4 s for a ``-wal`` of 64 MiB.

    A finding is confirmed by reading the files again: a frame another process was
    writing while it was read looks damaged once and whole the next time.

    Never raises.
    """
    # SQLite keeps the -wal and -shm beside the file a symlink names.
    path = Path(os.path.realpath(path))
    first: WalDamage | None = None
    for _ in range(_ATTEMPTS):
        try:
            found = _find(path, use_shm=use_shm)
        except (OSError, ValueError, struct.error):
            return None
        if found is None:
            return None
        if first is not None and found == first:
            return found
        first = found
    return None


def _find(path: Path, *, use_shm: bool = True) -> WalDamage | None:
    wal_path = path.with_name(path.name + "-wal")
    with contextlib.suppress(FileNotFoundError), wal_path.open("rb") as wal:
        size = os.fstat(wal.fileno()).st_size
        if size < _WAL_HEADER:
            return None
        header = os.pread(wal.fileno(), _WAL_HEADER, 0)
        layout = _layout(path, header, use_shm=use_shm)
        candidates = [layout] if layout else _damaged_header_layouts(path, wal.fileno(), header)
        for candidate in candidates:
            found = _past_the_break(wal_path, wal.fileno(), size, candidate)
            if found is not None:
                return found
    return None


def _layout(path: Path, header: bytes, *, use_shm: bool) -> _Layout | None:
    """Where SQLite stopped reading, from the ``-shm`` SQLite built, when its header is
    whole and belongs to this ``-wal`` generation; ``None`` otherwise."""
    magic, _version, page_size, _seq = struct.unpack(">4I", header[:16])
    if magic not in _WAL_MAGIC or page_size not in _PAGE_SIZES:
        return None
    order = ">" if magic & 1 else "<"
    if _wal_checksum(header[:24], order, (0, 0)) != struct.unpack(">2I", header[24:32]):
        return None
    chain = struct.unpack(">2I", header[24:32])
    for _ in range(_ATTEMPTS if use_shm else 0):
        found = _shm_index(path, header, page_size)
        if found is not None:
            frame, sums = found
            return _Layout(order, page_size, header[16:24], frame, sums if frame else chain)
    # No usable index (a read-only store that could not map the -shm, or one another
    # process kept rewriting): follow the chain from the header, as SQLite does; slower.
    return _Layout(order, page_size, header[16:24], 0, chain)


#: Descriptors of the database files and -shm files read here, by (device, inode), never
#: closed: closing any descriptor of a file drops every POSIX lock this process holds on it,
#: SQLite's included (the opening connection's lock on the -shm's dead-man switch: another
#: process would then think itself the only user, truncate the -shm, and every process
#: mapping it would die of SIGBUS). One or two per database a process opens.
_KEPT: dict[tuple[int, int], int] = {}
_KEPT_LOCK = threading.Lock()


def _read_kept(path: Path, length: int, offset: int) -> bytes | None:
    """``length`` bytes of ``path`` from ``offset`` through a descriptor kept open; ``None``
    if the file cannot be opened or read."""
    try:
        stat = os.stat(path)
        key = (stat.st_dev, stat.st_ino)
        with _KEPT_LOCK:
            fd = _KEPT.get(key)
            if fd is None:
                fd = _KEPT[key] = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return os.pread(fd, length, offset)
    except OSError:
        return None


def _shm_index(path: Path, header: bytes, page_size: int) -> tuple[int, tuple[int, int]] | None:
    """The last frame SQLite read as committed and the running checksum there, from the
    wal-index header of the ``-shm`` (https://sqlite.org/walformat.html), if it is whole,
    and of this ``-wal``'s generation."""
    shm = _read_kept(path.with_name(path.name + "-shm"), 2 * _SHM_HEADER, 0)
    if shm is None:
        return None
    # SQLite writes the header's two copies one after the other: they differ only while
    # a writer is between them.
    if len(shm) != 2 * _SHM_HEADER or shm[:_SHM_HEADER] != shm[_SHM_HEADER:]:
        return None
    native = "<" if sys.byteorder == "little" else ">"
    version, _unused, _change, is_init, _big, shm_page, frame = struct.unpack(
        f"{native}3IBBHI", shm[:20]
    )
    shm_page = 65536 if shm_page == 1 else shm_page
    if (
        version != _SHM_VERSION
        or not is_init
        or _wal_checksum(shm[:40], native, (0, 0)) != struct.unpack(f"{native}2I", shm[40:48])
        or shm[32:40] != header[16:24]
        or (frame and shm_page != page_size)
    ):
        return None
    sums: tuple[int, int] = struct.unpack(f"{native}2I", shm[24:32])
    return frame, sums


def _damaged_header_layouts(path: Path, fd: int, header: bytes) -> list[_Layout]:
    """For a ``-wal`` whose header fails its checksum (SQLite then reads no frame): the
    layouts it may have, with the salts of its first frame, under each byte order and
    page size it may use (a flipped bit may be in the header's own fields)."""
    first = os.pread(fd, _FRAME_HEADER, _WAL_HEADER)
    if len(first) < _FRAME_HEADER:
        return []
    magic, _version, page_size, _seq = struct.unpack(">4I", header[:16])
    sizes = [page_size] if page_size in _PAGE_SIZES else []
    head = _read_kept(path, 18, 0)
    if head is not None and len(head) == 18:
        value = int.from_bytes(head[16:18], "big")
        value = 65536 if value == 1 else value
        if value in _PAGE_SIZES and value not in sizes:
            sizes.append(value)
    orders = [">" if magic & 1 else "<"] if magic in _WAL_MAGIC else []
    orders += [order for order in (">", "<") if order not in orders]
    return [
        _Layout(order, size, first[8:16], 0, (0, 0), header_damaged=True)
        for size in sizes
        for order in orders
    ]


def _frame(fd: int, layout: _Layout, frame: int) -> bytes:
    return os.pread(fd, layout.frame_size, layout.offset(frame))


def _chains(frame: bytes, order: str, sums: tuple[int, int]) -> bool:
    """Whether ``frame``'s content, chained from ``sums``, gives the checksum it stores."""
    chained = _wal_checksum(frame[:8], order, sums)
    chained = _wal_checksum(frame[_FRAME_HEADER:], order, chained)
    return chained == struct.unpack(">2I", frame[16:24])


def _past_the_break(wal_path: Path, fd: int, size: int, layout: _Layout) -> WalDamage | None:
    frames = (size - _WAL_HEADER) // layout.frame_size
    # 1. SQLite's own reading from where it said it stopped: frames a transaction wrote
    # before its commit (or another process appended meanwhile) still chain. With a
    # damaged header, SQLite reads no frame at all.
    sums = layout.sums
    broken = layout.start + 1
    while not layout.header_damaged and broken <= frames:
        frame = _frame(fd, layout, broken)
        if frame[8:16] != layout.salts or frame[:4] == bytes(4):
            break
        chained = _wal_checksum(frame[:8], layout.order, sums)
        chained = _wal_checksum(frame[_FRAME_HEADER:], layout.order, chained)
        if chained != struct.unpack(">2I", frame[16:24]):
            break
        sums = chained
        broken += 1
    if broken > frames:
        return None
    # 2. Past the break: frames of this generation, and which of them are commits.
    later = 0
    commits: list[int] = []
    frame_size = layout.frame_size
    number = broken if layout.header_damaged else broken + 1
    while number <= frames:
        count = min(_CHUNK_FRAMES, frames - number + 1)
        chunk = os.pread(fd, count * frame_size, layout.offset(number))
        for i in range(len(chunk) // frame_size):
            start = i * frame_size
            if chunk[start + 8 : start + 16] != layout.salts:
                continue
            later += 1
            if chunk[start + 4 : start + 8] != bytes(4):
                commits.append(number + i)
        number += count
    # 3. The proof: one commit frame that chains from the checksum its predecessor
    # stores (the predecessor of frame 1 is the header).
    for commit in commits[:_PROOF_ATTEMPTS]:
        frame = _frame(fd, layout, commit)
        previous = (
            os.pread(fd, 8, 24) if commit == 1 else os.pread(fd, 8, layout.offset(commit - 1) + 16)
        )
        if _chains(frame, layout.order, struct.unpack(">2I", previous)):
            return WalDamage(
                wal=wal_path,
                frame=0 if layout.header_damaged else broken,
                offset=0 if layout.header_damaged else layout.offset(broken),
                frames_after=later,
                commits_lost=len(commits),
                header_damaged=layout.header_damaged,
            )
    return None


# -- repairing one flipped bit --------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WalRepair:
    """A ``-wal`` with one flipped bit set right (see :func:`repair_wal`).

    :ivar wal: the whole repaired ``-wal``, in memory (the file is not changed).
    :ivar frame: the frame (1-based) that held the flipped bit.
    :ivar offset: the byte of the ``-wal`` that held it.
    :ivar bit: which bit of that byte (0 is the least significant).
    """

    wal: bytes
    frame: int
    offset: int
    bit: int

    def describe(self) -> str:
        """One line for a report."""
        return (
            f"bit {self.bit} of byte {self.offset} (in frame {self.frame}) of the -wal was "
            "flipped; set right, the checksums of that frame and of every frame after it hold"
        )


def repair_wal(path: Path) -> WalRepair | None:
    """The ``-wal`` of the database at ``path`` with the one flipped bit that makes SQLite
    stop reading it set right, or ``None`` when the damage is not one flipped bit of a
    frame (or there is none). The file is only read.

    A frame's checksum is a sum of its 32-bit words, each step adding the running sums,
    so a change of one word by ``2**b`` changes the final checksum by ``2**b`` times a
    factor fixed by the word's position: the flipped bit is found by comparison, not by
    trying every bit. A repair counts only when it is certain: the repaired frame gives
    exactly the checksum SQLite stored for it (64 bits), and the frame after it chains
    from that checksum, and no other single bit would do (in the high bits of a word the
    checksum cannot tell several positions apart: such a flip is not repaired). A
    flipped bit in a frame's salts or in its stored checksum is set right the same way;
    damage to the ``-wal``'s header is not repaired.

    Never raises.
    """
    try:
        return _repair(Path(os.path.realpath(path)).with_name(Path(path).name + "-wal"))
    except (OSError, ValueError, struct.error):
        return None


def _repair(wal_path: Path) -> WalRepair | None:
    return repair_wal_bytes(wal_path.read_bytes())


def repair_wal_bytes(wal: bytes) -> WalRepair | None:
    """:func:`repair_wal` on the bytes of a ``-wal`` already read (as the salvage reads it).

    Never raises.
    """
    try:
        return _repair_bytes(wal)
    except (ValueError, struct.error):
        return None


def _repair_bytes(wal: bytes) -> WalRepair | None:
    if len(wal) < _WAL_HEADER:
        return None
    header = wal[:_WAL_HEADER]
    magic, _version, page_size, _seq = struct.unpack(">4I", header[:16])
    if magic not in _WAL_MAGIC or page_size not in _PAGE_SIZES:
        return None
    order = ">" if magic & 1 else "<"
    sums = struct.unpack(">2I", header[24:32])
    if _wal_checksum(header[:24], order, (0, 0)) != sums:
        return None
    salts = header[16:24]
    frame_size = _FRAME_HEADER + page_size
    frames = (len(wal) - _WAL_HEADER) // frame_size

    def at(number: int) -> bytes:
        start = _WAL_HEADER + (number - 1) * frame_size
        return wal[start : start + frame_size]

    # Where SQLite stops: the first frame whose salts or running checksum fail.
    broken = 1
    while broken <= frames:
        frame = at(broken)
        chained = _frame_sums(frame, order, sums)
        if frame[8:16] != salts or chained != struct.unpack(">2I", frame[16:24]):
            break
        sums = chained
        broken += 1
    if broken > frames:
        return None
    frame = at(broken)
    after = at(broken + 1) if broken < frames else None
    found = []
    for repaired, offset, bit in _single_bit_repairs(frame, order, sums, salts):
        stored = struct.unpack(">2I", repaired[16:24])
        if _frame_sums(repaired, order, sums) != stored:
            continue
        # The frame after it must chain from it: the repair is SQLite's own frame.
        if after is not None and (
            after[8:16] != salts
            or _frame_sums(after, order, stored) != struct.unpack(">2I", after[16:24])
        ):
            continue
        found.append((repaired, offset, bit))
    # The checksum is weak in the high bits of a word: a flip of bit 31 changes it by
    # 2**31 times a factor of which only the parity counts, so flips in several words can
    # give the same checksum. Only a single candidate is a repair.
    if len(found) != 1:
        return None
    repaired, offset, bit = found[0]
    start = _WAL_HEADER + (broken - 1) * frame_size
    fixed = wal[:start] + repaired + wal[start + frame_size :]
    return WalRepair(wal=fixed, frame=broken, offset=start + offset, bit=bit)


def _frame_sums(frame: bytes, order: str, sums: tuple[int, int]) -> tuple[int, int]:
    chained = _wal_checksum(frame[:8], order, sums)
    return _wal_checksum(frame[_FRAME_HEADER:], order, chained)


def _single_bit_repairs(
    frame: bytes, order: str, sums: tuple[int, int], salts: bytes
) -> Iterator[tuple[bytes, int, int]]:
    """Each frame that differs from ``frame`` in one bit and could be the one SQLite
    wrote, with the offset (in the frame) and the bit of that byte."""
    stored = struct.unpack(">2I", frame[16:24])
    computed = _frame_sums(frame, order, sums)
    # A flipped bit in the salts: the content chains, only the salts differ.
    if computed == stored:
        diff = int.from_bytes(frame[8:16], "big") ^ int.from_bytes(salts, "big")
        if diff and diff & (diff - 1) == 0:
            position = diff.bit_length() - 1
            yield frame[:8] + salts + frame[16:], 15 - position // 8, position % 8
        return
    # A flipped bit in the stored checksum: it differs from the computed one in one bit.
    diff = int.from_bytes(frame[16:24], "big") ^ int.from_bytes(
        struct.pack(">2I", *computed), "big"
    )
    if diff & (diff - 1) == 0:
        position = diff.bit_length() - 1
        yield (
            frame[:16] + struct.pack(">2I", *computed) + frame[24:],
            23 - position // 8,
            position % 8,
        )
    # A flipped bit in the checksummed words (the page number, the commit field and the
    # page): adding d to word k changes the checksum by d * T**r * v, with T the step's
    # matrix [[1, 1], [1, 2]] (d1' = d1 + d2, d2' = d1 + 2 * d2), r the steps after k's
    # and v = (1, 1) for the first word of a step, (0, 1) for the second.
    covered = frame[:8] + frame[_FRAME_HEADER:]
    words = struct.unpack(f"{order}{len(covered) // 4}I", covered)
    steps = len(words) // 2
    mask = 0xFFFFFFFF
    need = ((stored[0] - computed[0]) & mask, (stored[1] - computed[1]) & mask)
    factors: dict[int, list[tuple[int, int]]] = {}
    for first in (True, False):
        vector = (1, 1) if first else (0, 1)
        table = [vector]
        for _ in range(steps - 1):
            d1, d2 = table[-1]
            table.append(((d1 + d2) & mask, (d1 + 2 * d2) & mask))
        factors[first] = table
    for index, word in enumerate(words):
        u1, u2 = factors[index % 2 == 0][steps - 1 - index // 2]
        for bit in range(32):
            change = -(1 << bit) if word >> bit & 1 else 1 << bit
            if ((u1 * change) & mask, (u2 * change) & mask) != need:
                continue
            fixed = list(words)
            fixed[index] = word ^ (1 << bit)
            raw = struct.pack(f"{order}{len(fixed)}I", *fixed)
            byte = index * 4 + (3 - bit // 8 if order == ">" else bit // 8)
            offset = byte if byte < 8 else byte + _FRAME_HEADER - 8
            yield raw[:8] + frame[8:_FRAME_HEADER] + raw[8:], offset, bit % 8
