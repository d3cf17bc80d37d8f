"""Recovery at open while another process keeps writing (issue 10, item 1).

A worker saves jobs in a loop; another process opens the same file, finds a damaged page the
worker's saves never touch, and recovers. Every save the worker saw succeed must be in the live
store at the path afterwards, never only in the file recovery moved aside.
"""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cidx_jobs import JobStatus, SyncJob
from cidx_jobs.errors import StorageBusyError

from .conftest import open_sqlite

WRITER = """
import sys, time
from pathlib import Path
from cidx_jobs import SyncJob
from cidx_jobs.errors import StorageError
from cidx_jobs_sqlite import SqliteOptions, SqliteStorage
from cidx_jobs import Hooks, JobPersistence, get_plugin_manager

path, acked, stop = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
hooks = Hooks(get_plugin_manager(load_entrypoints=False))
store = JobPersistence(SqliteStorage(SqliteOptions.parse(path)), hooks=hooks)
n = errors = 0
with acked.open("a") as out:
    while not stop.exists():
        job_id = f"live-{n:06d}"
        n += 1
        try:
            store.save_job(SyncJob.create(id=job_id, user_id="writer", project_id="repo"))
        except StorageError as error:
            errors += 1
            print(type(error).__name__, error, file=sys.stderr)
            time.sleep(0.01)
            continue
        # Written only once the call returned: the id is an acknowledged write.
        out.write(job_id + "\\n")
        out.flush()
store.close()
print(errors)
"""


def _checkpoint_leaves(path: Path) -> tuple[int, list[int]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = [
            int(row[0])
            for row in conn.execute(
                "SELECT pageno FROM dbstat WHERE name = 'job_checkpoints' AND pagetype = 'leaf'"
            )
        ]
    finally:
        conn.close()
    return size, pages


def _acked(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


@pytest.mark.slow
def test_recovery_at_open_loses_no_write_of_a_live_writer(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    store = open_sqlite(path)
    # Enough rows that salvaging them takes a while: the writer keeps saving meanwhile.
    with store.transaction():
        for n in range(6000):
            job = SyncJob(
                id=f"old-{n:05d}",
                user_id="alice",
                project_id="repo",
                status=JobStatus.COMPLETED,
                metadata={"pad": "p" * 200},
            )
            store.save_job(job)
            store.save_checkpoint(job.id, "git_pull", {"n": n, "pad": "c" * 200})
    store.close()  # the last close checkpoints the WAL: every page is in the file itself
    size, leaves = _checkpoint_leaves(path)
    assert len(leaves) > 10

    acked, stop = tmp_path / "acked.txt", tmp_path / "stop"
    acked.touch()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path), str(acked), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while len(_acked(acked)) < 200:
            assert writer.poll() is None, writer.communicate()
            assert time.monotonic() < deadline, "the writer saved nothing"
            time.sleep(0.02)
        # A leaf of the checkpoints, which the writer's saves of jobs never read or write:
        # it keeps saving into the damaged file until the recovery stops it.
        with path.open("r+b") as file:
            file.seek((random.Random(1).choice(leaves) - 1) * size)
            file.write(random.Random(2).randbytes(size))
        before = len(_acked(acked))
        recovered = open_sqlite(path)
        assert recovered.storage.recovery is not None, "the damage was not found"
        during = len(_acked(acked)) - before
        # The writer meets the replaced file, then goes on saving into the fresh one.
        deadline = time.monotonic() + 30
        while len(_acked(acked)) <= before + during + 20 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stop.touch()
        try:
            out, err = writer.communicate(timeout=60)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.communicate()
    assert writer.returncode == 0, err
    try:
        saved = _acked(acked)
        lost = [job_id for job_id in saved if recovered.load_job(job_id) is None]
        assert not lost, (
            f"{len(lost)} of {len(saved)} acknowledged saves are not in the live store "
            f"({during} were acknowledged while the recovery ran); first lost: {lost[:5]}"
        )
        # The writer went on saving after the recovery, into the fresh file.
        assert len(saved) > before + during
    finally:
        recovered.close()
    assert json.loads(out) >= 1  # the writer was told: busy, or its file was replaced


OPENER = """
import sys
from cidx_jobs import Hooks, JobPersistence, get_plugin_manager
from cidx_jobs_sqlite import SqliteOptions, SqliteStorage

hooks = Hooks(get_plugin_manager(load_entrypoints=False))
store = JobPersistence(SqliteStorage(SqliteOptions.parse(sys.argv[1])), hooks=hooks)
print(store.count_jobs(), store.storage.recovery is not None)
store.close()
"""


@pytest.mark.slow
def test_two_links_to_one_damaged_file_recover_it_once(tmp_path: Path) -> None:
    volume, first, second = tmp_path / "volume", tmp_path / "a", tmp_path / "b"
    for folder in (volume, first, second):
        folder.mkdir()
    path = volume / "jobs.db"
    store = open_sqlite(path)
    with store.transaction():
        for n in range(2500):
            store.save_job(
                SyncJob(id=f"old-{n:05d}", user_id="alice", project_id="repo", metadata={"p": n})
            )
            store.save_checkpoint(f"old-{n:05d}", "git_pull", {"pad": "c" * 200})
    store.close()
    size, leaves = _checkpoint_leaves(path)
    with path.open("r+b") as file:
        file.seek((leaves[len(leaves) // 2] - 1) * size)
        file.write(random.Random(3).randbytes(size))
    (first / "jobs.db").symlink_to(path)
    (second / "jobs.db").symlink_to(path)
    # Two workers configured with different links start at once: the recovery takes the lock
    # of the folder the file is in, so the second one waits and opens the recovered file.
    openers = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(link / "jobs.db")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for link in (first, second)
    ]
    try:
        results = [opener.communicate(timeout=120) for opener in openers]
    finally:
        for opener in openers:
            if opener.poll() is None:
                opener.kill()
                opener.communicate()
    for opener, (_out, err) in zip(openers, results, strict=True):
        assert opener.returncode == 0, err
    counts = [out.split() for out, _err in results]
    assert sorted(recovered for _count, recovered in counts) == ["False", "True"], counts
    assert {count for count, _recovered in counts} == {"2500"}
    assert len(list(volume.glob("jobs.db.corrupt-*[0-9Z]"))) == 1


HOLDER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
conn.execute("INSERT INTO job_checkpoints SELECT 'old-00000', 'held', '{}', 0")
print("holding", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
conn.close()
"""


def test_a_writer_holding_the_lock_past_the_busy_timeout_defers_the_recovery(
    tmp_path: Path,
) -> None:
    path = tmp_path / "jobs.db"
    store = open_sqlite(path)
    with store.transaction():
        for n in range(300):
            store.save_job(SyncJob(id=f"old-{n:05d}", user_id="alice", project_id="repo"))
            store.save_checkpoint(f"old-{n:05d}", "git_pull", {"pad": "c" * 200})
    store.close()
    size, leaves = _checkpoint_leaves(path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == "holding\n"
        with path.open("r+b") as file:
            file.seek((leaves[-1] - 1) * size)
            file.write(random.Random(4).randbytes(size))
        damaged = path.read_bytes()
        with pytest.raises(StorageBusyError, match="kept its lock for 300 ms"):
            open_sqlite(path, {"busy_timeout_ms": "300"})
        # Nothing was moved or changed while the writer held on.
        assert path.read_bytes() == damaged
        assert not list(tmp_path.glob("jobs.db.corrupt-*"))
    finally:
        holder.communicate("done\n", timeout=30)
    recovered = open_sqlite(path)
    try:
        assert recovered.storage.recovery is not None
        assert recovered.count_jobs() == 300
    finally:
        recovered.close()
