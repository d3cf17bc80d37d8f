"""Recovery at open and the files around it (issue 10, items 1, 3 and 5 to 8).

Each trial builds a real database through the public API, then one of:

``not a database``
    random bytes, zeros, a tar archive or random whole pages at the configured path: the
    open must raise ``StorageCorruptError`` with ``recover_corrupt`` on and off, and leave
    every file of the folder byte for byte.
``live wal``
    a writer process dies with its last commits only in the ``-wal``; one to three pages
    that the ``-wal`` does not hold are overwritten with random bytes (any page: the
    header, the schema, roots, interior pages, leaves, index pages). With
    ``recover_corrupt`` off the open must refuse and leave the file and its ``-wal`` byte
    for byte; with it on, the file and its ``-wal`` are moved aside byte for byte (the
    ``-shm`` with them), every salvaged job equals one written (none invented), and the
    jobs kept are exactly those that were not on a damaged table leaf (counted from
    SQLite's ``dbstat`` on the intact file), whichever other page was hit.
``symlink``
    the configured path is a symlink to a damaged database in another folder: the link
    stays, the damaged target is moved aside in its own folder, the fresh database is the
    link's target.
``page kinds``
    once per run, a file of 9,000 jobs (one in 50 with metadata on
    overflow pages) damaged in turn at one page of each kind: an interior page of
    ``sync_jobs`` that is not its root, a leaf, the first page (header and schema), the
    roots of both tables and of the primary-key index, an overflow page. Every job not on
    the damaged page must be kept, the lost ones must be exactly those named in
    ``jobs_lost``, and ``complete`` must be ``False`` unless the page held no row (the
    index's root).
``mode and owner``
    a damaged database of mode 0600, 0640 or 0660 (as root, also owned by ``nobody``):
    the fresh database, its ``-wal`` and ``-shm`` and the moved-aside file keep the mode
    and the owner.
``wal flip``
    a store's saves only in its ``-wal`` (copied while it was open, as a crash leaves them);
    one bit flipped in a commit frame that is neither the first nor the last: the open must
    treat the file as damaged (SQLite itself drops every later commit silently), keep the
    ``-wal`` byte for byte.
``live writer``
    once per quick run (five times in a full one), a writer process keeps saving new jobs
    while one leaf of the checkpoints (a page its saves never touch) is overwritten and
    another process opens the file and recovers it: every save the writer saw return must
    be in the live store afterwards, none only in the moved-aside file.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import shutil
import sqlite3
import stat
import struct
import subprocess
import sys
import tarfile
import textwrap
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cidx_jobs import JobPersistence, JobStatus, SyncJob
from cidx_jobs.errors import StorageCorruptError

from ._common import open_sqlite
from ._config import StressConfig
from ._report import ScenarioResult

__all__ = ["run"]

UTC = timezone.utc
START = datetime(2031, 1, 1, tzinfo=UTC)
NOBODY = 65534

_WRITER = textwrap.dedent(
    """
    import os, sys
    from datetime import datetime, timezone
    from cidx_jobs import JobStatus, SyncJob
    from cidx_jobs_stress._common import open_sqlite
    store = open_sqlite(__import__("pathlib").Path(sys.argv[1]))
    for n in range(int(sys.argv[2])):
        store.save_job(SyncJob(id=f"wal-{n:05d}", user_id="w", project_id="p",
                               status=JobStatus.RUNNING,
                               created_at=datetime(2031, 1, 2, tzinfo=timezone.utc)))
    os._exit(0)  # dies with these commits in the -wal only
    """
)


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _folder(folder: Path) -> dict[str, str | None]:
    return {p.name: _digest(p) for p in sorted(folder.iterdir())}


def _job(n: int, rng: random.Random) -> SyncJob:
    return SyncJob(
        id=f"job-{n:05d}",
        user_id=rng.choice(["alice", "bob", "carol"]),
        project_id="repo",
        status=rng.choice(list(JobStatus)),
        created_at=START + timedelta(seconds=n),
        metadata={"pad": "x" * rng.randint(10, 400), "n": n},
    )


def _fill(path: Path, jobs: int, rng: random.Random) -> dict[str, SyncJob]:
    written = {}
    store = open_sqlite(path)
    try:
        with store.transaction():
            for n in range(jobs):
                job = _job(n, rng)
                store.save_job(job)
                store.save_checkpoint(job.id, "git_pull", {"n": n})
                written[job.id] = job
    finally:
        store.close()
    return written


def _pages(path: Path) -> tuple[int, list[tuple[int, str, str, int]]]:
    """The page size and (page, b-tree, page type, cells) of every page, as SQLite sees
    the file with its -wal."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        rows = conn.execute("SELECT pageno, name, pagetype, ncell FROM dbstat").fetchall()
    finally:
        conn.close()
    return size, [(int(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]


def _wal_pages(wal: Path, page_size: int) -> set[int]:
    data = wal.read_bytes() if wal.exists() else b""
    pages = set()
    for offset in range(32, len(data) - 24 - page_size + 1, 24 + page_size):
        pages.add(struct.unpack(">I", data[offset : offset + 4])[0])
    return pages


def _damage(path: Path, pages: list[int], size: int, rng: random.Random) -> None:
    with path.open("r+b") as file:
        for page in pages:
            file.seek((page - 1) * size)
            file.write(rng.randbytes(size))


def _recovered(result: ScenarioResult, path: Path, label: str) -> JobPersistence | None:
    try:
        store = open_sqlite(path)
    except Exception as error:  # any failure to open is the finding
        result.fail(f"{label}: the open with recovery failed: {error!r}")
        return None
    return store


def _not_a_database(result: ScenarioResult, folder: Path, rng: random.Random) -> None:
    kind = rng.choice(["random bytes", "zeros", "tar archive", "random whole pages"])
    path = folder / "jobs.db"
    if kind == "random bytes":
        path.write_bytes(rng.randbytes(rng.randint(1, 200_000)))
    elif kind == "zeros":
        path.write_bytes(bytes(4096 * rng.randint(1, 40)))
    elif kind == "random whole pages":
        path.write_bytes(rng.randbytes(4096 * rng.randint(1, 40)))
    else:
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w") as archive:
            data = rng.randbytes(rng.randint(1, 50_000))
            info = tarfile.TarInfo("settings.yaml")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        path.write_bytes(buffer.getvalue())
    before = _folder(folder)
    for recover in (False, True):
        result.checked += 1
        try:
            open_sqlite(path, recover_corrupt=recover).close()
            result.fail(f"not a database ({kind}): opened with recover_corrupt={recover}")
        except StorageCorruptError as error:
            if "not an SQLite database" not in str(error):
                result.fail(f"not a database ({kind}): unclear message {error}")
        except Exception as error:
            result.fail(f"not a database ({kind}): {error!r}")
        if _folder(folder) != before:
            result.fail(f"not a database ({kind}): the folder changed")
    result.outcomes[f"not a database: {kind} refused, untouched"] += 1


def _live_wal(result: ScenarioResult, folder: Path, rng: random.Random) -> None:
    path = folder / "jobs.db"
    written = _fill(path, rng.randint(300, 1500), rng)
    in_wal = rng.randint(50, 400)
    subprocess.run([sys.executable, "-c", _WRITER, str(path), str(in_wal)], check=True)
    wal = path.with_name("jobs.db-wal")
    page_size, pages = _pages(path)
    held = _wal_pages(wal, page_size)
    candidates = sorted({page for page, *_ in pages} - held)
    hit = rng.sample(candidates, min(len(candidates), rng.randint(1, 3)))
    lost_cells = sum(
        cells
        for page, name, kind, cells in pages
        if page in hit and name == "sync_jobs" and kind == "leaf"
    )
    total = len(written) + in_wal
    result.faults += len(hit)
    _damage(path, hit, page_size, rng)
    before = (_digest(path), _digest(wal))
    result.checked += 1
    try:
        open_sqlite(path, recover_corrupt=False).close()
        # A hit that SQLite does not notice at open (a page no check reads) is possible.
        result.outcomes["live wal: damage not noticed with recovery off"] += 1
    except StorageCorruptError:
        pass
    if (_digest(path), _digest(wal)) != before:
        result.fail(f"live wal: recover_corrupt=false changed the file or its -wal (pages {hit})")
        return
    store = _recovered(result, path, "live wal")
    if store is None:
        return
    try:
        report = getattr(store.storage, "recovery", None)
        if report is None:
            result.outcomes["live wal: no recovery needed"] += 1
            return
        aside = report.moved_to
        result.checked += 1
        if (_digest(aside), _digest(aside.with_name(aside.name + "-wal"))) != before:
            result.fail("live wal: the moved-aside file or its -wal is not byte for byte")
        ids = [*written, *(f"wal-{n:05d}" for n in range(in_wal))]
        kept = {job.id: job for job in map(store.load_job, ids) if job is not None}
        for job_id, job in kept.items():
            result.checked += 1
            original = written.get(job_id)
            if original is not None and job != original:
                result.fail(f"live wal: salvaged {job_id} differs from the job written")
        result.checked += 1
        if store.count_jobs() != len(kept):
            result.fail(f"live wal: {store.count_jobs() - len(kept)} jobs never written appeared")
        result.checked += 1
        if len(kept) != total - lost_cells or report.jobs_kept != len(kept):
            kinds = sorted({(name, kind) for page, name, kind, _ in pages if page in hit})
            result.fail(
                f"live wal: kept {len(kept)} of {total}, expected {total - lost_cells} "
                f"(damaged {kinds}); report {report}"
            )
        if lost_cells and (report.complete or len(report.jobs_lost) != lost_cells):
            result.fail(f"live wal: the report does not say what was lost: {report}")
        result.outcomes["live wal: recovered"] += 1
        result.outcomes["live wal: jobs salvaged"] += len(kept)
        result.outcomes["live wal: jobs lost with their leaf"] += lost_cells
    finally:
        store.close()


def _damaged(path: Path, rng: random.Random) -> int:
    """Fill ``path`` and damage one leaf of the jobs; how many jobs remain readable."""
    written = _fill(path, rng.randint(200, 800), rng)
    page_size, pages = _pages(path)
    leaves = [
        (page, cells) for page, name, kind, cells in pages if (name, kind) == ("sync_jobs", "leaf")
    ]
    page, cells = rng.choice(leaves)
    _damage(path, [page], page_size, rng)
    return len(written) - cells


def _symlink(result: ScenarioResult, folder: Path, rng: random.Random) -> None:
    volume = folder / "volume"
    volume.mkdir()
    target = volume / "real.db"
    link = folder / "jobs.db"
    link.symlink_to(target)
    expected = _damaged(target, rng)
    result.faults += 1
    store = _recovered(result, link, "symlink")
    if store is None:
        return
    try:
        report = getattr(store.storage, "recovery", None)
        result.checked += 1
        if not link.is_symlink() or os.readlink(link) != str(target):
            result.fail("symlink: the link was replaced")
        elif report is None or report.moved_to.parent != volume:
            result.fail(f"symlink: the damaged target was not moved aside in its folder: {report}")
        elif store.count_jobs() != expected:
            result.fail(f"symlink: {store.count_jobs()} jobs, expected {expected}")
        else:
            result.outcomes["symlink: followed, link kept"] += 1
    finally:
        store.close()


def _mode_and_owner(result: ScenarioResult, folder: Path, rng: random.Random) -> None:
    os.chmod(folder, 0o755)
    path = folder / "jobs.db"
    expected = _damaged(path, rng)
    mode = rng.choice([0o600, 0o640, 0o660])
    os.chmod(path, mode)
    owner = (os.geteuid(), os.getegid())
    if owner[0] == 0:
        owner = (NOBODY, NOBODY)
        os.chown(path, *owner)
    result.faults += 1
    store = _recovered(result, path, "mode and owner")
    if store is None:
        return
    try:
        report = getattr(store.storage, "recovery", None)
        store.save_job(SyncJob.create(id="after", user_id="u", project_id="p"))
        files = [path, path.with_name("jobs.db-wal"), path.with_name("jobs.db-shm")]
        if report is not None:
            files.append(report.moved_to)
        for item in files:
            result.checked += 1
            info = item.stat()
            if (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) != (mode, *owner):
                result.fail(
                    f"mode and owner: {item.name} is {stat.S_IMODE(info.st_mode):04o} "
                    f"{info.st_uid}:{info.st_gid}, expected {mode:04o} {owner[0]}:{owner[1]}"
                )
        result.checked += 1
        if store.count_jobs() != expected + 1:
            result.fail(f"mode and owner: {store.count_jobs()} jobs, expected {expected + 1}")
        result.outcomes[f"mode and owner: {mode:04o} kept"] += 1
    finally:
        store.close()


def _wal_flip(result: ScenarioResult, folder: Path, rng: random.Random) -> None:
    """One flipped bit in the -wal of a crashed store (issue 10, item 15): SQLite drops every
    commit after the damaged frame silently; the open must find it and recover, keeping the
    -wal byte for byte."""
    live = folder / "live" / "jobs.db"
    live.parent.mkdir()
    store = open_sqlite(live)
    commits = rng.randint(20, 200)
    try:
        with store.storage._runner.connection("stress") as conn:  # type: ignore[attr-defined]
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the saves only in the -wal
        for n in range(commits):
            store.save_job(SyncJob.create(id=f"job-{n:05d}", user_id="alice", project_id="p"))
        # A copy while the store is open is what a crash leaves: nothing checkpointed.
        path = folder / "jobs.db"
        shutil.copyfile(live, path)
        shutil.copyfile(live.with_name("jobs.db-wal"), folder / "jobs.db-wal")
    finally:
        store.close()
    wal = folder / "jobs.db-wal"
    data = wal.read_bytes()
    page_size = struct.unpack(">I", data[8:12])[0]
    frame = 24 + page_size
    count = (len(data) - 32) // frame
    # A commit frame that is neither the first nor the last (damage in the last commit looks
    # like a write cut short by a crash, and is not a finding).
    # Only the frames of the -wal's current generation (its header's salts) count: an
    # automatic checkpoint may have restarted the -wal, leaving older frames behind them.
    current = next(
        (n for n in range(count) if data[32 + n * frame + 8 : 32 + n * frame + 16] != data[16:24]),
        count,
    )
    marks = [n for n in range(current) if data[32 + n * frame + 4 : 32 + n * frame + 8] != bytes(4)]
    if len(marks) < 3:
        result.fail(f"wal flip: only {len(marks)} commits in the -wal")
        return
    hit = rng.choice(marks[1:-1])
    offset = 32 + hit * frame + 24 + rng.randrange(page_size)
    damaged = bytearray(data)
    damaged[offset] ^= 1 << rng.randrange(8)
    wal.write_bytes(bytes(damaged))
    result.faults += 1
    before = _digest(wal)
    recovered = _recovered(result, path, "wal flip")
    if recovered is None:
        return
    try:
        report = getattr(recovered.storage, "recovery", None)
        result.checked += 1
        if report is None:
            result.fail(f"wal flip: the commits after frame {hit + 1} were dropped silently")
            return
        kept = recovered.count_jobs()
        result.checked += 2
        if _digest(report.moved_to.with_name(report.moved_to.name + "-wal")) != before:
            result.fail("wal flip: the moved-aside -wal is not byte for byte")
        result.outcomes["wal flip: recovered"] += 1
        result.outcomes["wal flip: jobs kept (the commits before the damage)"] += kept
        result.outcomes["wal flip: jobs only in the moved-aside -wal"] += commits - kept
    finally:
        recovered.close()


_PARTS = {
    "not a database": _not_a_database,
    "live wal": _live_wal,
    "symlink": _symlink,
    "mode and owner": _mode_and_owner,
    "wal flip": _wal_flip,
}


def _acked(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line]


def _live_writer(result: ScenarioResult, folder: Path, rng: random.Random) -> None:
    """Recovery at open while another process keeps saving into the damaged file (issue 10,
    item 1): every save that process saw succeed must be in the live store afterwards."""
    path = folder / "jobs.db"
    _fill(path, rng.randint(3000, 6000), rng)
    page_size, pages = _pages(path)
    # A page the writer's saves never touch: a leaf of the checkpoints.
    leaves = [page for page, name, kind, _ in pages if (name, kind) == ("job_checkpoints", "leaf")]
    if not leaves:
        result.fail("live writer: the file has no checkpoint leaf to damage")
        return
    target = rng.randint(50, 500)
    acked, stop = folder / "acked.txt", folder / "stop"
    acked.touch()
    writer = subprocess.Popen(
        [sys.executable, "-m", "cidx_jobs_stress.child", "saver", str(path), str(acked), str(stop)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    store = None
    try:
        deadline = time.monotonic() + 60
        while len(_acked(acked)) < target and time.monotonic() < deadline:
            if writer.poll() is not None:
                break
            time.sleep(0.01)
        _damage(path, [rng.choice(leaves)], page_size, rng)
        result.faults += 1
        before = len(_acked(acked))
        store = _recovered(result, path, "live writer")
        during = len(_acked(acked)) - before
        deadline = time.monotonic() + 30
        while len(_acked(acked)) <= before + during + 20 and time.monotonic() < deadline:
            time.sleep(0.01)  # the writer goes on into the fresh file
    finally:
        stop.touch()
        try:
            out, err = writer.communicate(timeout=120)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.communicate()
    if store is None:
        return
    try:
        if writer.returncode != 0:
            result.fail(f"live writer: the writer failed: {err[-500:]}")
            return
        if getattr(store.storage, "recovery", None) is None:
            result.outcomes["live writer: damage not found"] += 1
            return
        saved = _acked(acked)
        lost = [job_id for job_id in saved if store.load_job(job_id) is None]
        result.checked += len(saved)
        if lost:
            result.fail(
                f"live writer: {len(lost)} of {len(saved)} acknowledged saves are not in the "
                f"live store; first lost: {lost[:5]}"
            )
        result.outcomes["live writer: recoveries"] += 1
        result.outcomes["live writer: acknowledged saves checked"] += len(saved)
        result.outcomes["live writer: saves acknowledged while the recovery opened"] += during
        result.outcomes["live writer: writer's calls that raised"] += int(out.strip() or 0)
    finally:
        store.close()


def _page_kinds(result: ScenarioResult, folder: Path, jobs: int, rng: random.Random) -> None:
    base = folder / "base.db"
    store = open_sqlite(base)
    try:
        with store.transaction():
            for n in range(jobs):
                pad = "o" * 9000 if n % 50 == 0 else "p" * 300
                job = SyncJob(
                    id=f"job-{n:05d}",
                    user_id="alice",
                    project_id="repo",
                    status=JobStatus.COMPLETED,
                    created_at=START + timedelta(seconds=n),
                    metadata={"pad": pad},
                )
                store.save_job(job)
                store.save_checkpoint(job.id, "git_pull", {"n": n})
    finally:
        store.close()
    page_size, _ = _pages(base)

    def pick(name: str, kind: str | None = None, root: bool | None = None) -> tuple[int, int]:
        conn = sqlite3.connect(f"file:{base}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT pageno, path, pagetype, ncell FROM dbstat WHERE name = ?", (name,)
            ).fetchall()
        finally:
            conn.close()
        chosen = [
            (int(r[0]), int(r[3]) if r[2] == "leaf" and name == "sync_jobs" else 0)
            for r in rows
            if (kind is None or r[2] == kind) and (root is None or (r[1] == "/") == root)
        ]
        return rng.choice(chosen)

    cases: dict[str, Callable[[], tuple[int, int]]] = {
        "interior page of sync_jobs": lambda: pick("sync_jobs", "internal", root=False),
        "leaf of sync_jobs": lambda: pick("sync_jobs", "leaf"),
        "header and schema page": lambda: (1, 0),
        "root of sync_jobs": lambda: pick("sync_jobs", root=True),
        "root of job_checkpoints": lambda: pick("job_checkpoints", root=True),
        "root of the primary key": lambda: pick("sqlite_autoindex_sync_jobs_1", root=True),
        "overflow page of sync_jobs": lambda: pick("sync_jobs", "overflow"),
    }
    for label, choose in cases.items():
        result.trials += 1
        try:
            page, cells = choose()
        except IndexError:
            result.skipped.append(f"page kinds: {label}: the file has no such page")
            continue
        # An overflow page holds one job's metadata.
        lost = 1 if "overflow" in label else cells
        path = folder / "case.db"
        shutil.copyfile(base, path)
        _damage(path, [page], page_size, rng)
        result.faults += 1
        recovered = _recovered(result, path, f"page kinds: {label}")
        if recovered is None:
            continue
        try:
            report = getattr(recovered.storage, "recovery", None)
            result.checked += 1
            if report is None:
                result.fail(f"page kinds: {label}: the damage was not found")
                continue
            count = recovered.count_jobs()
            holds_rows = label != "root of the primary key"
            if (
                count != jobs - lost
                or report.jobs_kept != count
                or len(report.jobs_lost) != lost
                or report.complete is holds_rows
            ):
                result.fail(f"page kinds: {label} (page {page}): kept {count}, report {report}")
            result.outcomes[f"page kinds: {label}: jobs kept of {jobs}"] += count
        finally:
            recovered.close()
            for leftover in folder.glob("case.db*"):
                leftover.unlink()


def run(config: StressConfig, workdir: Path) -> ScenarioResult:
    """Run the recovery-files trials in ``workdir``."""
    result = ScenarioResult("recovery files")
    rng = random.Random(f"{config.seed}:recovery-files")
    folder = workdir / "page-kinds"
    folder.mkdir(parents=True)
    try:
        _page_kinds(result, folder, 9000, rng)
    except Exception as error:  # a crash of a trial is a failure
        result.fail(f"page kinds: the trial crashed: {error!r}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    for trial in range(config.scaled(1, 5)):
        folder = workdir / f"live-writer-{trial}"
        folder.mkdir(parents=True)
        result.trials += 1
        try:
            _live_writer(result, folder, rng)
        except Exception as error:  # a crash of a trial is a failure
            result.fail(f"live writer: the trial crashed: {error!r}")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    rounds = config.scaled(2, 10)
    for round_number in range(rounds):
        for name, part in _PARTS.items():
            folder = workdir / f"{name.replace(' ', '-')}-{round_number}"
            folder.mkdir(parents=True)
            result.trials += 1
            result.outcomes[f"{name}: trials"] += 1
            try:
                part(result, folder, rng)
            except Exception as error:  # a crash of a trial is a failure
                result.fail(f"{name}: the trial crashed: {error!r}")
            finally:
                shutil.rmtree(folder, ignore_errors=True)
    return result
