"""``cidx-jobs salvage DAMAGED TARGET``: the backend's own salvage of a damaged SQLite file
into a fresh database, run as an operator runs it (a real process, real files).

The damage is real: a page of a real database is overwritten (its number read from the
intact file through SQLite's ``dbstat``), or one bit of a real ``-wal`` is flipped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest

from cidx_jobs import SyncJob, open_persistence

from .cli_helpers import cli, json_lines, one_line_error

#: Every test runs the command line in a process of its own.
pytestmark = pytest.mark.slow

JOBS = 300
FRAME = 24 + 4096


def files_of(folder: Path) -> dict[str, tuple[str, int, int]]:
    """Every file in ``folder``: its digest, modification time and mode."""
    return {
        path.name: (
            hashlib.sha256(path.read_bytes()).hexdigest(),
            path.stat().st_mtime_ns,
            path.stat().st_mode,
        )
        for path in sorted(folder.iterdir())
    }


def make_jobs(path: Path, jobs: int = JOBS) -> None:
    with open_persistence(f"sqlite:///{path}") as store:
        with store.transaction():
            for i in range(jobs):
                store.save_job(
                    SyncJob.create(
                        id=f"job-{i:04d}",
                        user_id=f"user-{i % 7}",
                        project_id="repo",
                        metadata={"note": "x" * 200},
                    )
                )
                store.save_checkpoint(f"job-{i:04d}", "clone", {"commit": i})


def leaf_pages(path: Path, table: str) -> list[int]:
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY path",
            (table,),
        ).fetchall()
    finally:
        conn.close()
    return [int(row[0]) for row in rows]


def damage_page(path: Path, page: int, size: int = 4096) -> None:
    with path.open("r+b") as file:
        file.seek((page - 1) * size)
        file.write(b"\xa5" * size)


def count_jobs(path: Path) -> tuple[int, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        jobs = int(conn.execute("SELECT count(*) FROM sync_jobs").fetchone()[0])
        checkpoints = int(conn.execute("SELECT count(*) FROM job_checkpoints").fetchone()[0])
    finally:
        conn.close()
    return jobs, checkpoints


@pytest.fixture
def damaged(tmp_path: Path) -> Path:
    """A database of ``JOBS`` jobs with one leaf page of ``sync_jobs`` overwritten."""
    path = tmp_path / "data" / "jobs.db.corrupt-20260101T000000Z"
    path.parent.mkdir()
    make_jobs(path)
    leaves = leaf_pages(path, "sync_jobs")
    assert len(leaves) > 10
    damage_page(path, leaves[len(leaves) // 2])
    return path


def test_salvage_writes_every_readable_job_and_says_what_was_lost(
    damaged: Path, tmp_path: Path
) -> None:
    target = tmp_path / "salvaged.db"
    before = files_of(damaged.parent)
    result = cli("salvage", str(damaged), str(target), "--json")
    assert result.returncode == 1, result.stderr  # something was lost
    (report,) = json_lines(result.stdout)
    assert report["source"] == str(damaged)
    assert report["target"] == str(target)
    assert report["complete"] is False
    assert report["wal_damage"] is None
    lost = report["jobs_lost"]
    assert 0 < len(lost) < 30  # exactly the jobs of the damaged leaf
    assert report["jobs_kept"] + len(lost) == JOBS
    assert report["checkpoints_kept"] == report["jobs_kept"]
    # The target is a working store with every kept job and checkpoint.
    assert count_jobs(target) == (report["jobs_kept"], report["checkpoints_kept"])
    with open_persistence(f"sqlite:///{target}") as store:
        kept = next(f"job-{i:04d}" for i in range(JOBS) if f"job-{i:04d}" not in lost)
        assert store.load_job(kept) is not None
        assert store.load_checkpoint(kept, "clone") == {"commit": int(kept[4:])}
        assert store.load_job(lost[0]) is None
    # The source folder is as it was: no byte, time or mode changed, no file added.
    assert files_of(damaged.parent) == before


def test_salvage_prints_what_it_kept_and_lost(damaged: Path, tmp_path: Path) -> None:
    result = cli("salvage", str(damaged), str(tmp_path / "salvaged.db"))
    assert result.returncode == 1
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"salvaged {damaged} into {tmp_path / 'salvaged.db'}")
    assert "kept" in lines[0]
    assert "checkpoint(s)" in lines[0]
    assert lines[1].startswith("lost ")
    assert "job-" in lines[1]
    assert lines[-1].startswith("incomplete:")


def test_salvage_of_the_file_a_recovery_moved_aside(tmp_path: Path) -> None:
    """The path the docs give: a store recovers a damaged file at open; the moved-aside
    copy salvages to the same jobs."""
    path = tmp_path / "jobs.db"
    make_jobs(path)
    damage_page(path, leaf_pages(path, "sync_jobs")[3])
    with open_persistence(f"sqlite:///{path}") as store:
        report = store.storage.recovery  # type: ignore[attr-defined]
        assert report is not None
    moved: Path = report.moved_to
    before = files_of(tmp_path)
    result = cli("salvage", str(moved), str(tmp_path / "salvaged.db"), "--json")
    (salvaged,) = json_lines(result.stdout)
    assert salvaged["jobs_kept"] == report.jobs_kept
    assert salvaged["jobs_lost"] == report.jobs_lost
    after = files_of(tmp_path)
    assert after.pop("salvaged.db")
    assert after == before


def test_salvage_reads_the_commits_of_the_wal(tmp_path: Path) -> None:
    """A server that died leaves commits only in the -wal: they are salvaged, and the
    -wal is neither checkpointed nor removed, nor a -shm made beside it."""
    live = tmp_path / "live.db"
    crashed = tmp_path / "crashed" / "jobs.db"
    crashed.parent.mkdir()
    with open_persistence(f"sqlite:///{live}") as store:
        for i in range(30):
            store.save_job(SyncJob.create(id=f"job-{i:02d}", user_id="alice", project_id="p"))
        shutil.copyfile(live, crashed)
        shutil.copyfile(f"{live}-wal", f"{crashed}-wal")
    before = files_of(crashed.parent)
    assert set(before) == {"jobs.db", "jobs.db-wal"}
    result = cli("salvage", str(crashed), str(tmp_path / "salvaged.db"), "--json")
    assert result.returncode == 0, result.stderr
    (report,) = json_lines(result.stdout)
    assert report["jobs_kept"] == 30
    assert report["complete"] is True
    assert files_of(crashed.parent) == before


def crashed_with_wal(tmp_path: Path) -> Path:
    """30 saves (one commit each) that are only in the -wal of a copy taken while the store
    was open, as a crash leaves it."""
    live = tmp_path / "live.db"
    crashed = tmp_path / "crashed" / "jobs.db"
    crashed.parent.mkdir()
    with open_persistence(f"sqlite:///{live}") as store:
        storage = store.storage
        with storage._runner.connection("test") as conn:  # type: ignore[attr-defined]
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for i in range(30):
            store.save_job(SyncJob.create(id=f"job-{i:02d}", user_id="alice", project_id="p"))
        shutil.copyfile(live, crashed)
        shutil.copyfile(f"{live}-wal", f"{crashed}-wal")
    return crashed


def flip_page_bit(crashed: Path, *, high: bool) -> None:
    """Flip a bit of an early save's page in the -wal: the lowest bit of a checksum word,
    or its highest (the checksum words are in the byte order the WAL's magic says)."""
    wal = Path(f"{crashed}-wal")
    data = bytearray(wal.read_bytes())
    big_endian = int.from_bytes(data[:4], "big") & 1
    low_byte = 3 if big_endian else 0
    byte = 3 - low_byte if high else low_byte
    data[32 + 20 * FRAME + 24 + 100 + byte] ^= 0x80 if high else 0x01
    wal.write_bytes(bytes(data))


def test_salvage_sets_one_flipped_bit_of_the_wal_right(tmp_path: Path) -> None:
    """SQLite would show only the saves before the flipped bit; the salvage finds the bit,
    reads a repaired copy of the -wal, and keeps every save. The -wal stays as it was."""
    crashed = crashed_with_wal(tmp_path)
    flip_page_bit(crashed, high=False)
    before = files_of(crashed.parent)
    result = cli("salvage", str(crashed), str(tmp_path / "salvaged.db"), "--json")
    assert result.returncode == 0, result.stderr
    (report,) = json_lines(result.stdout)
    assert report["jobs_kept"] == 30
    assert report["complete"] is True
    assert report["wal_damage"] is None
    assert "was flipped" in report["wal_repair"]
    assert files_of(crashed.parent) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".salvaged")]


def test_salvage_reports_commits_a_damaged_wal_frame_hides(tmp_path: Path) -> None:
    """The highest bit of a word cannot be placed with certainty (several positions give
    the same checksum): the commits after it are reported, not guessed."""
    crashed = crashed_with_wal(tmp_path)
    flip_page_bit(crashed, high=True)
    before = files_of(crashed.parent)
    result = cli("salvage", str(crashed), str(tmp_path / "salvaged.db"), "--json")
    assert result.returncode == 1
    (report,) = json_lines(result.stdout)
    assert 0 < report["jobs_kept"] < 30
    assert report["complete"] is False
    assert report["wal_repair"] is None
    assert "-wal is damaged" in report["wal_damage"]
    assert "committed transaction(s)" in report["wal_damage"]
    assert files_of(crashed.parent) == before
    text = cli("salvage", str(crashed), str(tmp_path / "again.db"))
    assert "not salvaged: " in text.stdout


def test_the_target_gets_the_source_mode(damaged: Path, tmp_path: Path) -> None:
    os.chmod(damaged, 0o640)
    target = tmp_path / "salvaged.db"
    assert cli("salvage", str(damaged), str(target)).returncode == 1
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_an_existing_target_is_replaced_only_with_force(damaged: Path, tmp_path: Path) -> None:
    target = tmp_path / "salvaged.db"
    make_jobs(target, jobs=3)
    original = target.read_bytes()
    refused = cli("salvage", str(damaged), str(target))
    assert refused.returncode == 2
    assert "exists: pass --force" in one_line_error(refused)
    assert target.read_bytes() == original
    forced = cli("salvage", str(damaged), str(target), "--force", "--json")
    assert forced.returncode == 1
    assert count_jobs(target)[0] == json_lines(forced.stdout)[0]["jobs_kept"]
    assert not [p.name for p in tmp_path.iterdir() if ".salvage-" in p.name]


@pytest.mark.parametrize("companion", ["", "-wal", "-shm"])
def test_the_source_and_its_companions_are_never_the_target(damaged: Path, companion: str) -> None:
    Path(f"{damaged}-wal").touch()
    Path(f"{damaged}-shm").touch()
    before = files_of(damaged.parent)
    result = cli("salvage", str(damaged), f"{damaged}{companion}", "--force")
    assert result.returncode == 2
    assert "must stay as it is" in one_line_error(result)
    assert files_of(damaged.parent) == before


def test_a_target_in_use_or_not_a_database_is_refused_even_with_force(
    damaged: Path, tmp_path: Path
) -> None:
    in_use = tmp_path / "in-use.db"
    make_jobs(in_use, jobs=1)
    Path(f"{in_use}-wal").write_bytes(b"")
    result = cli("salvage", str(damaged), str(in_use), "--force")
    assert result.returncode == 2
    assert "may be a database in use" in one_line_error(result)
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    result = cli("salvage", str(damaged), str(text), "--force")
    assert result.returncode == 2
    assert "is not an SQLite database" in one_line_error(result)
    assert text.read_text() == "not a database"


def test_a_missing_source_or_one_that_is_no_database(tmp_path: Path) -> None:
    missing = cli("salvage", str(tmp_path / "nope.db"), str(tmp_path / "out.db"))
    assert missing.returncode == 2
    assert "does not exist" in one_line_error(missing)
    noise = tmp_path / "noise.db"
    noise.write_bytes(os.urandom(8 * 4096))
    result = cli("salvage", str(noise), str(tmp_path / "out.db"))
    assert result.returncode == 1
    assert "is not an SQLite database" in one_line_error(result)
    assert not (tmp_path / "out.db").exists()


def test_salvage_is_in_the_help() -> None:
    result = cli("--help")
    assert "salvage" in result.stdout
    usage = cli("salvage", "--help")
    assert usage.returncode == 0
    assert "DAMAGED" in usage.stdout
    assert "TARGET" in usage.stdout
