"""A damaged ``-wal``: SQLite stops reading it at the first frame that fails its check and
silently drops every later commit; :mod:`cidx_jobs_sqlite._walcheck` finds them.

Every fault is real: a store writes jobs into a real ``-wal``, the files are copied while
it is open (the image a crash leaves: nothing checkpoints them), and one bit of the copy's
``-wal`` is flipped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cidx_jobs import SyncJob, open_persistence
from cidx_jobs.errors import StorageCorruptError
from cidx_jobs_sqlite import SqliteStorage
from cidx_jobs_sqlite._pool import Connection
from cidx_jobs_sqlite._walcheck import WalDamage, find_wal_damage, repair_wal, wal_damage

JOBS = 40
PAGE = 4096
FRAME = 24 + PAGE


def wal_of(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def frame_offset(frame: int) -> int:
    return 32 + (frame - 1) * FRAME


def frames(path: Path) -> int:
    return (wal_of(path).stat().st_size - 32) // FRAME


def commit_frames(path: Path) -> list[int]:
    wal = wal_of(path).read_bytes()
    return [
        n
        for n in range(1, frames(path) + 1)
        if wal[frame_offset(n) + 4 : frame_offset(n) + 8] != bytes(4)
    ]


def flip(path: Path, offset: int, bit: int = 0x10) -> None:
    with path.open("r+b") as file:
        file.seek(offset)
        byte = file.read(1)[0]
        file.seek(offset)
        file.write(bytes([byte ^ bit]))


def visible_jobs(path: Path) -> int:
    """What SQLite shows of the file: the count of a fresh read-only connection (which
    never checkpoints)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM sync_jobs").fetchone()[0])
    finally:
        conn.close()


@pytest.fixture
def crashed(tmp_path: Path) -> Iterator[Path]:
    """A database whose ``JOBS`` saves (one commit each) are only in its ``-wal``: copied
    while the store that wrote them was open, as a crash leaves it."""
    live = tmp_path / "live" / "jobs.db"
    with open_persistence(f"sqlite:///{live}") as store:
        storage = store.storage
        assert isinstance(storage, SqliteStorage)
        # Everything up to here (the schema) in the file, the saves only in the -wal.
        with storage._runner.connection("test") as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for i in range(JOBS):
            store.save_job(SyncJob.create(id=f"job-{i:03d}", user_id="alice", project_id="p"))
        copy = tmp_path / "crashed" / "jobs.db"
        copy.parent.mkdir()
        shutil.copyfile(live, copy)
        shutil.copyfile(wal_of(live), wal_of(copy))
    return copy


def test_one_flipped_bit_drops_every_later_commit_silently(crashed: Path) -> None:
    """The reproduction: SQLite reports no error, quick_check says ok, and the commits
    after the damaged frame are gone."""
    assert visible_jobs(crashed) == JOBS
    fresh = crashed.with_name("intact.db")
    shutil.copyfile(crashed, fresh)
    shutil.copyfile(wal_of(crashed), wal_of(fresh))
    second_commit = commit_frames(crashed)[1]
    flip(wal_of(crashed), frame_offset(second_commit) + 24 + 100)
    conn = sqlite3.connect(f"file:{crashed}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT count(*) FROM sync_jobs").fetchone()[0] == 1
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("where", "offset"),
    [
        ("page data", 24 + 100),
        ("page number", 2),
        ("commit field", 6),
        ("salt", 9),
        ("stored checksum", 17),
        ("last byte", FRAME - 1),
    ],
)
def test_a_flipped_bit_in_a_frame_is_found(crashed: Path, where: str, offset: int) -> None:
    commits = commit_frames(crashed)
    damaged = commits[4] - 1  # inside the fifth save, before its commit frame
    flip(wal_of(crashed), frame_offset(damaged) + offset)
    shown = visible_jobs(crashed)
    assert shown == 4, where
    found = find_wal_damage(crashed)
    assert found is not None, where
    assert found.frame == damaged
    assert found.offset == frame_offset(damaged)
    assert not found.header_damaged
    # Every save from the fifth on is a commit past the damage.
    assert found.commits_lost == JOBS - shown
    assert found.frames_after == frames(crashed) - damaged
    assert str(wal_of(crashed)) in found.describe()
    assert f"at least {JOBS - shown} committed transaction(s)" in found.describe()


@pytest.mark.parametrize(
    ("where", "offset"), [("magic", 3), ("page size", 10), ("salt", 17), ("checksum", 25)]
)
def test_a_flipped_bit_in_the_wal_header_is_found(crashed: Path, where: str, offset: int) -> None:
    """SQLite ignores a -wal whose header fails its checksum: every commit in it is lost."""
    flip(wal_of(crashed), offset)
    assert visible_jobs(crashed) == 0, where
    found = find_wal_damage(crashed)
    assert found is not None, where
    assert found.header_damaged
    assert found.frame == 0
    assert found.commits_lost == JOBS
    assert "its header is damaged" in found.describe()


def test_an_intact_wal_and_no_wal_are_no_finding(crashed: Path, tmp_path: Path) -> None:
    assert visible_jobs(crashed) == JOBS
    assert find_wal_damage(crashed) is None
    missing = tmp_path / "none.db"
    assert find_wal_damage(missing) is None
    empty = tmp_path / "empty.db"
    empty.touch()
    wal_of(empty).touch()
    assert find_wal_damage(empty) is None


def test_damage_in_the_last_commit_is_not_provable(crashed: Path) -> None:
    """A damaged last frame looks exactly like a write torn by a crash: nothing after it
    shows that a commit was lost, so it is no finding (that one commit is lost)."""
    flip(wal_of(crashed), frame_offset(frames(crashed)) + 24 + 100)
    assert visible_jobs(crashed) == JOBS - 1
    assert find_wal_damage(crashed) is None


def test_frames_of_an_earlier_wal_generation_are_normal_leftovers(tmp_path: Path) -> None:
    """After a checkpoint restarts the WAL, the new frames overwrite the start of the file
    and the old generation's frames (other salts) stay behind it."""
    path = tmp_path / "jobs.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        for _ in range(50):
            conn.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(2000),))
        before = wal_of(path).read_bytes()[16:24]
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        conn.execute("INSERT INTO t (v) VALUES (x'00')")  # restarts the WAL
        wal = wal_of(path).read_bytes()
        assert wal[16:24] != before
        old = [
            n
            for n in range(1, frames(path) + 1)
            if wal[frame_offset(n) + 8 : frame_offset(n) + 16] == before
        ]
        assert len(old) > 20
        assert find_wal_damage(path) is None
    finally:
        conn.close()


def test_what_a_rolled_back_transaction_spilled_is_no_finding(tmp_path: Path) -> None:
    """A transaction too big for the page cache writes frames before it commits; rolled
    back and overwritten by a shorter one, its frames stay past a break in the checksum
    chain, with the current salts but never a commit flag."""
    path = tmp_path / "jobs.db"
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute("PRAGMA cache_size = 10")
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        conn.execute("BEGIN")
        for _ in range(200):
            conn.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(2000),))
        spilled = frames(path)
        conn.execute("ROLLBACK")
        conn.execute("INSERT INTO t (v) VALUES (x'00')")
        assert frames(path) == spilled > 50  # the shorter commit overwrote the start
        salts = wal_of(path).read_bytes()[16:24]
        wal = wal_of(path).read_bytes()
        current = [
            n
            for n in range(1, spilled + 1)
            if wal[frame_offset(n) + 8 : frame_offset(n) + 16] == salts
        ]
        assert len(current) == spilled  # same generation: a break in the chain, no commit
        assert find_wal_damage(path) is None
        assert conn.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    finally:
        conn.close()


def test_the_check_on_the_opening_connection_keeps_the_wal(crashed: Path) -> None:
    """Closing the last connection would checkpoint the readable frames into the file and
    delete the -wal with the lost commits; after a finding it does not."""
    flip(wal_of(crashed), frame_offset(3) + 24 + 100)
    before = {p.name: digest(p) for p in (crashed, wal_of(crashed))}
    # The store's connections are of a subclass, which (unlike sqlite3's own class) can
    # be weakly referenced: the guard that holds the file open lives as long as ``conn``.
    conn = sqlite3.connect(crashed, isolation_level=None, factory=Connection)
    assert conn.execute("PRAGMA user_version").fetchone()[0] > 0
    problem = wal_damage(conn, crashed)
    assert problem is not None
    assert "is damaged" in problem
    conn.close()
    assert {p.name: digest(p) for p in (crashed, wal_of(crashed))} == before


def test_the_check_without_a_shm_follows_the_whole_chain(crashed: Path) -> None:
    """Without the -shm that SQLite's first read builds (the -wal read on its own, as the
    salvage does), the check follows the checksum chain from the header."""
    flip(wal_of(crashed), frame_offset(commit_frames(crashed)[9]) + 24 + 7)
    assert not crashed.with_name(crashed.name + "-shm").exists()
    found = find_wal_damage(crashed)
    assert isinstance(found, WalDamage)
    # The tenth save's own commit frame is the damaged one: the ones after it are proven.
    assert found.commits_lost == JOBS - 10


def test_the_shm_tells_where_sqlite_stopped(crashed: Path) -> None:
    """With the -shm of SQLite's own first read, only the frames past where it stopped
    are checksummed: the header it wrote says the last frame it read as committed."""
    damaged = commit_frames(crashed)[19]
    flip(wal_of(crashed), frame_offset(damaged) + 24 + 7)
    conn = sqlite3.connect(f"file:{crashed}?mode=ro", uri=True)
    try:
        assert conn.execute("SELECT count(*) FROM sync_jobs").fetchone()[0] == 19
        shm = crashed.with_name(crashed.name + "-shm").read_bytes()[:48]
        (last_read,) = struct.unpack("=I", shm[16:20])
        assert last_read == commit_frames(crashed)[18]
        found = find_wal_damage(crashed)
        # Frames after the last commit that still chain are the damaged save's own.
        assert found is not None
        assert found.frame == damaged > last_read
    finally:
        conn.close()


def test_a_writer_appending_during_the_check_is_no_finding(tmp_path: Path) -> None:
    """Frames another process is writing while the check reads them can look damaged;
    a finding is only made when a second reading agrees."""
    path = tmp_path / "jobs.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("PRAGMA journal_mode = WAL")
    setup.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
    setup.close()
    stop = threading.Event()
    written = []

    def write() -> None:
        # Checkpoints restart the WAL now and then, so generations overwrite each other.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA wal_autocheckpoint = 200")
        try:
            while not stop.is_set():
                conn.execute("BEGIN IMMEDIATE")
                for _ in range(5):
                    conn.execute("INSERT INTO t (v) VALUES (?)", (os.urandom(1500),))
                conn.execute("COMMIT")
                written.append(1)
        finally:
            conn.close()

    writer = threading.Thread(target=write)
    reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.start()
    try:
        findings = []
        checks = 0
        # Until both sides did enough, whatever the machine's load (bounded in time).
        deadline = time.monotonic() + 20
        while (len(written) < 150 or checks < 100) and time.monotonic() < deadline:
            reader.execute("SELECT count(*) FROM t").fetchone()
            found = find_wal_damage(path)
            checks += 1
            if found is not None:
                findings.append(found)
    finally:
        stop.set()
        writer.join()
        reader.close()
    assert len(written) >= 20
    assert checks >= 20
    assert findings == []


def test_a_symlinked_path_is_checked_at_its_target(crashed: Path, tmp_path: Path) -> None:
    flip(wal_of(crashed), frame_offset(commit_frames(crashed)[2]) + 24 + 100)
    link = tmp_path / "link.db"
    link.symlink_to(crashed)
    found = find_wal_damage(link)
    assert found is not None
    assert found.wal == wal_of(crashed)


# -- repairing one flipped bit -------------------------------------------------------------


def low_byte(path: Path) -> int:
    """The byte of a checksum word that holds its lowest bits, in the WAL's byte order."""
    return 3 if int.from_bytes(wal_of(path).read_bytes()[:4], "big") & 1 else 0


@pytest.mark.parametrize(
    ("where", "offset", "bit"),
    [
        ("page data", 24 + 400, 0x01),
        ("page data, bit 6", 24 + 2000, 0x40),
        ("page number", 3, 0x01),
        ("commit field", 7, 0x02),
        ("salt", 12, 0x80),
        ("stored checksum", 20, 0x01),
    ],
)
def test_one_flipped_bit_is_set_right(crashed: Path, where: str, offset: int, bit: int) -> None:
    damaged = commit_frames(crashed)[4] - 1
    original = wal_of(crashed).read_bytes()
    # Word-aligned offsets name the lowest byte of a checksum word in either byte order.
    at = frame_offset(damaged) + offset
    if offset >= 24:
        at += low_byte(crashed)
    flip(wal_of(crashed), at, bit)
    assert visible_jobs(crashed) == 4
    repair = repair_wal(crashed)
    assert repair is not None, where
    assert repair.wal == original
    assert (repair.frame, repair.offset, 1 << repair.bit) == (damaged, at, bit)
    assert wal_of(crashed).read_bytes() != original  # the file itself is not changed
    assert f"byte {at}" in repair.describe()


def test_a_flip_the_checksum_cannot_place_is_not_repaired(crashed: Path) -> None:
    """The checksum changes by 2**31 times a factor whose parity alone counts when the
    highest bit of a word flips: several positions fit, and guessing one is no repair."""
    damaged = commit_frames(crashed)[4] - 1
    flip(wal_of(crashed), frame_offset(damaged) + 24 + 400 + 3 - low_byte(crashed), 0x80)
    assert find_wal_damage(crashed) is not None
    assert repair_wal(crashed) is None


def test_two_flipped_bits_are_not_repaired(crashed: Path) -> None:
    damaged = commit_frames(crashed)[4] - 1
    flip(wal_of(crashed), frame_offset(damaged) + 24 + 400 + low_byte(crashed), 0x01)
    flip(wal_of(crashed), frame_offset(damaged) + 24 + 1200 + low_byte(crashed), 0x04)
    assert find_wal_damage(crashed) is not None
    assert repair_wal(crashed) is None


def test_an_intact_wal_needs_no_repair(crashed: Path, tmp_path: Path) -> None:
    assert repair_wal(crashed) is None
    assert repair_wal(tmp_path / "none.db") is None


# -- at open ---------------------------------------------------------------------------


def test_a_store_opening_a_damaged_wal_recovers_and_keeps_it_byte_for_byte(
    crashed: Path,
) -> None:
    flip(wal_of(crashed), frame_offset(commit_frames(crashed)[9]) + 24 + 100)
    wal_digest = digest(wal_of(crashed))
    file_digest = digest(crashed)
    with open_persistence(f"sqlite:///{crashed}") as store:
        storage = store.storage
        assert isinstance(storage, SqliteStorage)
        report = storage.recovery
        assert report is not None
        assert "-wal is damaged" in report.problem
        # The salvage reads the -wal as SQLite does: the nine commits before the damaged
        # tenth; the later ones are only in the moved-aside -wal.
        assert store.count_jobs() == 9
        moved = report.moved_to
    assert digest(moved) == file_digest
    assert digest(wal_of(moved)) == wal_digest


def test_recover_corrupt_off_refuses_a_damaged_wal_and_changes_nothing(crashed: Path) -> None:
    flip(wal_of(crashed), frame_offset(commit_frames(crashed)[9]) + 24 + 100)
    before = {p.name: digest(p) for p in (crashed, wal_of(crashed))}
    with pytest.raises(StorageCorruptError, match="-wal is damaged"):
        open_persistence(f"sqlite:///{crashed}?recover_corrupt=false")
    assert {p.name: digest(p) for p in (crashed, wal_of(crashed))} == before
