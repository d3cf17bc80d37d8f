"""Recovery at open and the files around it: what is never moved, what is kept byte for
byte, symlinks, modes and owners, and salvage whichever page is damaged.

Every fault is real: pages of a real file are overwritten (their numbers read from the
intact file through SQLite's ``dbstat``), a writer process really dies with its ``-wal``,
links are real symlinks, and owners are changed with a real ``chown``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from cidx_jobs import JobPersistence
from cidx_jobs.errors import StorageCorruptError
from cidx_jobs_sqlite import _recovery
from cidx_jobs_sqlite._codec import JOB_COLUMNS
from cidx_jobs_sqlite._recovery import RecoveryReport, looks_like_sqlite

from .conftest import OpenStore, make_job, minutes, open_sqlite, raw_connect, storage_of

NOBODY = 65534
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def folder_state(folder: Path) -> dict[str, str | None]:
    return {p.name: digest(p) for p in sorted(folder.iterdir())}


def fill(open_store: OpenStore, path: Path, jobs: int, *, big_every: int = 0) -> None:
    """``jobs`` jobs with a checkpoint each; every ``big_every``-th one with metadata that
    spills to overflow pages."""
    store = open_store(path)
    with store.transaction():
        for n in range(jobs):
            pad = "o" * 9000 if big_every and n % big_every == 0 else "p" * 60
            store.save_job(make_job(f"job-{n:05d}", created_at=minutes(n), metadata={"pad": pad}))
            store.save_checkpoint(f"job-{n:05d}", "git_pull", {"n": n})
    store.close()


def pages_of(path: Path, table: str) -> list[tuple[int, str, str, int]]:
    """(page number, path in the b-tree, page type, cells) of every page of ``table``."""
    with raw_connect(path) as conn:
        rows = conn.execute(
            "SELECT pageno, path, pagetype, ncell FROM dbstat WHERE name = ? ORDER BY path",
            (table,),
        ).fetchall()
    conn.close()
    return [(int(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]


def page_size(path: Path) -> int:
    with raw_connect(path) as conn:
        size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    conn.close()
    return size


def damage(path: Path, pages: list[int], size: int) -> None:
    with path.open("r+b") as file:
        for page in pages:
            file.seek((page - 1) * size)
            file.write(os.urandom(size))


def job_ids(store: JobPersistence) -> set[str]:
    with raw_connect(storage_of(store).path) as conn:
        ids = {row[0] for row in conn.execute("SELECT id FROM sync_jobs")}
    conn.close()
    return ids


# -- 6: a file that is not a database is never moved -------------------------------------------


def tar_bytes() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = b"important: settings\n" * 300
        info = tarfile.TarInfo("settings.yaml")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: os.urandom(64 * 1024), id="random-bytes"),
        pytest.param(lambda: bytes(64 * 1024), id="zeros"),
        pytest.param(tar_bytes, id="tar-archive"),
        pytest.param(lambda: os.urandom(4096 * 3 + 512), id="random-not-whole-pages"),
    ],
)
def test_a_file_that_is_not_a_database_is_refused_and_left_byte_for_byte(
    open_store: OpenStore, db_path: Path, content: object
) -> None:
    assert callable(content)
    db_path.write_bytes(content())
    before = folder_state(db_path.parent)
    for recover_corrupt in (True, False):
        with pytest.raises(StorageCorruptError, match=r"not an SQLite database.*untouched"):
            open_store(recover_corrupt=recover_corrupt)
        assert folder_state(db_path.parent) == before


def test_an_empty_file_is_an_empty_database(open_store: OpenStore, db_path: Path) -> None:
    db_path.write_bytes(b"")
    store = open_store()
    assert store.count_jobs() == 0
    assert storage_of(store).recovery is None
    store.save_job(make_job("j1"))
    assert store.load_job("j1") is not None


def test_a_database_with_a_destroyed_header_still_looks_like_one(
    open_store: OpenStore, db_path: Path
) -> None:
    fill(open_store, db_path, 200)
    damage(db_path, [1], page_size(db_path))
    assert looks_like_sqlite(db_path)


# -- 7: a live -wal is kept, and the damaged file is not changed ------------------------------

WRITER = textwrap.dedent(
    """
    import os, sys
    from cidx_jobs import SyncJob, JobStatus
    from cidx_jobs_sqlite import SqliteOptions, SqliteStorage
    from cidx_jobs import JobPersistence, Hooks, get_plugin_manager
    from datetime import datetime, timezone
    store = JobPersistence(
        SqliteStorage(SqliteOptions.parse(sys.argv[1], {})),
        hooks=Hooks(get_plugin_manager(load_entrypoints=False)),
    )
    for n in range(int(sys.argv[2])):
        store.save_job(SyncJob(id=f"wal-{n:04d}", user_id="bob", project_id="repo",
                               status=JobStatus.PENDING,
                               created_at=datetime(2025, 1, 1, tzinfo=timezone.utc)))
    # Dies with its commits in the -wal only: no close, no checkpoint.
    os._exit(0)
    """
)


def run_writer(db_path: Path, count: int) -> None:
    subprocess.run(
        [sys.executable, "-c", WRITER, str(db_path), str(count)], check=True, timeout=120
    )


@pytest.fixture
def damaged_with_wal(open_store: OpenStore, db_path: Path) -> tuple[set[str], int]:
    """A damaged file whose -wal (and -shm) a dead writer left; the ids only in the -wal,
    and how many jobs the damaged leaf held."""
    fill(open_store, db_path, 600)
    leaves = [p for p in pages_of(db_path, "sync_jobs") if p[2] == "leaf"]
    size = page_size(db_path)
    run_writer(db_path, 300)
    wal = db_path.with_name("jobs.db-wal")
    assert wal.stat().st_size > 0
    # A leaf of the filled jobs, which the writer's inserts (sorting after them) left alone.
    damage(db_path, [leaves[1][0]], size)
    return {f"wal-{n:04d}" for n in range(300)}, leaves[1][3]


def test_recovery_off_leaves_the_damaged_file_and_its_wal_byte_for_byte(
    open_store: OpenStore, db_path: Path, damaged_with_wal: tuple[set[str], int]
) -> None:
    wal = db_path.with_name("jobs.db-wal")
    shm = db_path.with_name("jobs.db-shm")
    before = (digest(db_path), digest(wal))
    with pytest.raises(StorageCorruptError, match="recover_corrupt is off"):
        open_store(recover_corrupt=False)
    assert (digest(db_path), digest(wal)) == before
    assert shm.exists()
    assert not list(db_path.parent.glob("*.corrupt-*"))


def test_recovery_moves_the_file_with_its_wal_and_salvages_the_wals_commits(
    open_store: OpenStore, db_path: Path, damaged_with_wal: tuple[set[str], int]
) -> None:
    in_wal, on_damaged_leaf = damaged_with_wal
    wal = db_path.with_name("jobs.db-wal")
    before = (digest(db_path), digest(wal))
    store = open_store()
    report = storage_of(store).recovery
    assert report is not None
    aside = report.moved_to
    moved_wal = aside.with_name(aside.name + "-wal")
    assert (digest(aside), digest(moved_wal)) == before
    assert aside.with_name(aside.name + "-shm").exists()
    ids = job_ids(store)
    assert in_wal <= ids
    assert len(ids) == 900 - on_damaged_leaf
    assert report.jobs_kept == len(ids)
    assert len(report.jobs_lost) == on_damaged_leaf
    assert report.complete is False


# -- 8: a symlinked path is followed -----------------------------------------------------------


def test_a_symlinked_database_is_recovered_where_the_link_points(
    open_store: OpenStore, tmp_path: Path
) -> None:
    volume = tmp_path / "volume"
    volume.mkdir()
    target = volume / "real.db"
    link_folder = tmp_path / "etc"
    link_folder.mkdir()
    link = link_folder / "jobs.db"
    link.symlink_to(target)
    fill(open_store, link, 300)
    leaves = [p for p in pages_of(target, "sync_jobs") if p[2] == "leaf"]
    before = (target.read_bytes(), leaves[2][3])
    damage(target, [leaves[2][0]], page_size(target))
    damaged = target.read_bytes()
    store = open_store(link)
    report = storage_of(store).recovery
    assert report is not None
    # The link is still the link, to the same target, which is now the fresh database.
    assert link.is_symlink()
    assert os.readlink(link) == str(target)
    assert report.moved_to.parent == volume
    assert report.moved_to.read_bytes() == damaged
    assert sorted(p.name for p in link_folder.iterdir()) == ["jobs.db"]
    assert store.count_jobs() == 300 - before[1]
    with raw_connect(target) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()


# -- 5: modes and owners -----------------------------------------------------------------------


def damaged_file(open_store: OpenStore, path: Path, jobs: int = 300) -> None:
    fill(open_store, path, jobs)
    leaves = [p for p in pages_of(path, "sync_jobs") if p[2] == "leaf"]
    damage(path, [leaves[1][0]], page_size(path))


def test_recovery_keeps_the_files_mode(open_store: OpenStore, db_path: Path) -> None:
    damaged_file(open_store, db_path)
    os.chmod(db_path, 0o600)
    store = open_store()
    report = storage_of(store).recovery
    assert report is not None
    store.save_job(make_job("after"))
    for path in (db_path, db_path.with_name("jobs.db-wal"), db_path.with_name("jobs.db-shm")):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(report.moved_to.stat().st_mode) == 0o600


def test_a_fresh_database_of_recovery_is_created_like_its_original(tmp_path: Path) -> None:
    original = tmp_path / "original"
    original.write_bytes(b"")
    os.chmod(original, 0o640)
    fresh = tmp_path / "fresh"
    _recovery.create_like(fresh, original)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o640
    alone = tmp_path / "alone"
    _recovery.create_like(alone, None)
    assert stat.S_IMODE(alone.stat().st_mode) == _recovery.NEW_DATABASE_MODE == 0o600


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder other users can reach (pytest's own is private to root)."""
    folder = Path(tempfile.mkdtemp(prefix="cidx-owner-"))
    os.chmod(folder, 0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def become_nobody() -> None:
    os.setgid(NOBODY)
    os.setgroups([])
    os.setuid(NOBODY)


def importable_by_nobody(folder: Path) -> Path:
    """A copy, in ``folder``, of the packages the service's script imports: where they are
    installed (a root-only pyenv, an editable install in a private clone) the user nobody
    may not be able to read them."""
    lib = folder / "lib"
    lib.mkdir()
    names = ("cidx_jobs", "cidx_jobs_sqlite", "attr", "attrs", "cattrs", "pluggy")
    for name in (*names, "typing_extensions", "exceptiongroup"):
        spec = importlib.util.find_spec(name)
        if spec is None:
            assert name not in names, f"{name} is not importable here"
            continue
        if spec.submodule_search_locations:
            source = Path(next(iter(spec.submodule_search_locations)))
            shutil.copytree(source, lib / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            assert spec.origin is not None
            shutil.copy(spec.origin, lib / Path(spec.origin).name)
    for path in (lib, *lib.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return lib


def interpreter_for_nobody() -> str:
    """This Python, or the system's of the same version when this one lives where the
    user ``nobody`` cannot reach it (a root-owned pyenv, say)."""
    for candidate in (
        sys.executable,
        f"/usr/bin/python{sys.version_info[0]}.{sys.version_info[1]}",
    ):
        with contextlib.suppress(OSError):
            done = subprocess.run(
                [candidate, "-c", "pass"], preexec_fn=become_nobody, timeout=60, check=False
            )
            if done.returncode == 0:
                return candidate
    pytest.skip("no Python of this version that the user nobody may run")


@pytest.mark.skipif(not IS_ROOT, reason="giving a file to another user needs root")
def test_root_recovering_a_service_users_file_keeps_its_owner(
    open_store: OpenStore, shared_folder: Path
) -> None:
    data = shared_folder / "data"
    data.mkdir()
    path = data / "jobs.db"
    damaged_file(open_store, path)
    for item in (data, path):
        os.chown(item, NOBODY, NOBODY)
    os.chmod(path, 0o600)
    store = open_store(path)
    report = storage_of(store).recovery
    assert report is not None
    store.close()
    for item in (path, report.moved_to):
        assert (item.stat().st_uid, item.stat().st_gid) == (NOBODY, NOBODY), item
        assert stat.S_IMODE(item.stat().st_mode) == 0o600
    # The service, as its own user, goes on with the recovered file.
    script = textwrap.dedent(
        """
        import sys
        sys.path.insert(0, sys.argv[2])
        from cidx_jobs import Hooks, JobPersistence, SyncJob, get_plugin_manager
        from cidx_jobs_sqlite import SqliteOptions, SqliteStorage
        store = JobPersistence(SqliteStorage(SqliteOptions.parse(sys.argv[1], {})),
                               hooks=Hooks(get_plugin_manager(load_entrypoints=False)))
        store.save_job(SyncJob.create(id="as-service", user_id="u", project_id="p"))
        print(store.count_jobs())
        """
    )

    python = interpreter_for_nobody()
    result = subprocess.run(
        [python, "-c", script, str(path), str(importable_by_nobody(shared_folder))],
        preexec_fn=become_nobody,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=shared_folder,
        env={**os.environ, "HOME": str(shared_folder)},
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout) == report.jobs_kept + 1
    for suffix in ("-wal", "-shm"):
        companion = path.with_name(path.name + suffix)
        if companion.exists():
            assert companion.stat().st_uid == NOBODY


# -- 3: salvage keeps every row on an intact page ----------------------------------------------

JOBS = 9000


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9,000 jobs with a checkpoint each, one in 50 with metadata on overflow pages; built
    once and copied by each test."""

    path = tmp_path_factory.mktemp("big") / "jobs.db"
    store = open_sqlite(path)
    try:
        with store.transaction():
            for n in range(JOBS):
                pad = "o" * 9000 if n % 50 == 0 else "p" * 300
                store.save_job(
                    make_job(f"job-{n:05d}", created_at=minutes(n), metadata={"pad": pad})
                )
                store.save_checkpoint(f"job-{n:05d}", "git_pull", {"n": n})
    finally:
        store.close()
    return path


@pytest.fixture
def big(big_file: Path, db_path: Path) -> Path:
    shutil.copyfile(big_file, db_path)
    return db_path


def recover_after(
    open_store: OpenStore, path: Path, pages: list[int]
) -> tuple[RecoveryReport, JobPersistence]:
    damage(path, pages, page_size(path))
    store = open_store(path)
    report = storage_of(store).recovery
    assert report is not None
    return report, store


def expect_all_kept(report: RecoveryReport, store: JobPersistence) -> None:
    assert report.jobs_kept == JOBS
    assert report.checkpoints_kept == JOBS
    assert report.jobs_lost == []
    assert store.count_jobs() == JOBS
    job = store.load_job("job-00050")
    assert job is not None
    assert job.metadata == {"pad": "o" * 9000}
    checkpoint = store.load_checkpoint("job-08999", "git_pull")
    assert checkpoint == {"n": 8999}


def test_a_damaged_interior_page_loses_no_row_of_its_intact_leaves(
    open_store: OpenStore, big: Path
) -> None:
    interior = [p for p in pages_of(big, "sync_jobs") if p[2] == "internal" and p[1] != "/"]
    assert interior, "the table needs a second level of interior pages"
    report, store = recover_after(open_store, big, [interior[0][0]])
    expect_all_kept(report, store)
    assert report.rows_unreadable == 0
    # The page's contents could not be read: the report never claims more than it knows.
    assert report.complete is False


@pytest.mark.parametrize("which", ["header", "table root", "checkpoints root", "pk index root"])
def test_a_damaged_header_root_or_schema_page_loses_no_row(
    open_store: OpenStore, big: Path, which: str
) -> None:
    table = {"table root": "sync_jobs", "checkpoints root": "job_checkpoints"}.get(
        which, "sqlite_autoindex_sync_jobs_1"
    )
    page = 1 if which == "header" else next(p for p in pages_of(big, table) if p[1] == "/")[0]
    report, store = recover_after(open_store, big, [page])
    expect_all_kept(report, store)
    assert report.rows_unreadable == 0
    # An index page holds no row: losing one loses nothing.
    assert report.complete is (which == "pk index root")


def test_a_damaged_leaf_loses_exactly_its_own_rows(open_store: OpenStore, big: Path) -> None:
    leaves = [p for p in pages_of(big, "sync_jobs") if p[2] == "leaf"]
    page, _path, _kind, cells = leaves[len(leaves) // 2]
    with raw_connect(big) as conn:
        order = [row[0] for row in conn.execute("SELECT id FROM sync_jobs ORDER BY rowid")]
    conn.close()
    report, store = recover_after(open_store, big, [page])
    kept = job_ids(store)
    lost = sorted(set(order) - kept)
    assert len(lost) == cells
    assert report.jobs_lost == lost
    assert report.jobs_kept == JOBS - cells
    assert report.rows_unreadable == cells
    assert report.checkpoints_lost == cells
    # The rows either side of the damaged leaf (the last of the leaf before it, the
    # first of the one after) were kept.
    first, last = order.index(lost[0]), order.index(lost[-1])
    assert last - first + 1 == cells
    assert {order[first - 1], order[last + 1]} <= kept
    assert report.complete is False


def test_a_row_whose_overflow_page_is_damaged_is_counted_lost(
    open_store: OpenStore, big: Path
) -> None:
    overflow = [p for p in pages_of(big, "sync_jobs") if p[2] == "overflow"]
    report, store = recover_after(open_store, big, [overflow[len(overflow) // 2][0]])
    assert len(report.jobs_lost) == 1
    assert report.jobs_kept == JOBS - 1
    assert store.load_job(report.jobs_lost[0]) is None
    assert report.rows_unreadable == 1
    assert report.complete is False


def test_salvage_of_an_intact_file_reads_exactly_what_sqlite_reads(
    open_store: OpenStore, db_path: Path
) -> None:
    store = open_store()
    values = [0, 1, -1, 127, -129, 2**15, -(2**23), 2**31, -(2**47), 2**62, 0.5, -1e300]
    for n, value in enumerate(values):
        store.save_job(
            make_job(
                f"j{n}",
                created_at=minutes(n),
                metadata={"v": value, "s": "é\u2603" * n, "none": None, "nested": [n]},
                error_message=None if n % 2 else "x" * (n * 700),
                phase="indexing",
            )
        )
        store.save_checkpoint(f"j{n}", "p", {"v": value})
    store.close()
    with raw_connect(db_path) as conn:
        # The salvage drops the lease token (a salvaged job's holder must claim it again).
        columns = ", ".join(JOB_COLUMNS)
        expected_jobs = sorted(conn.execute(f"SELECT {columns} FROM sync_jobs").fetchall())
        expected_checkpoints = sorted(conn.execute("SELECT * FROM job_checkpoints").fetchall())
    conn.close()
    report = RecoveryReport(moved_to=db_path, problem="test")
    jobs, checkpoints = _recovery._salvage(db_path, report)
    assert sorted(jobs) == expected_jobs
    assert sorted(checkpoints) == expected_checkpoints
    assert report.complete is True
    assert report.rows_unreadable == 0


@pytest.mark.parametrize(
    "hit", ["interior page", "header", "free-list trunk", "header and pk root"]
)
def test_a_deleted_job_on_a_free_page_does_not_come_back(
    open_store: OpenStore, db_path: Path, hit: str
) -> None:
    fill(open_store, db_path, 2000)
    with raw_connect(db_path) as conn:
        # As secure_delete=FAST does for whole pages: the freed leaves keep their rows.
        conn.execute("PRAGMA secure_delete = OFF")
        conn.execute("DELETE FROM sync_jobs WHERE id < 'job-01000'")
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    conn.close()
    assert free > 0
    with db_path.open("rb") as file:
        trunk = int.from_bytes(file.read(100)[32:36], "big")
    interior = next(p for p in pages_of(db_path, "sync_jobs") if p[2] == "internal")[0]
    pk_root = next(p for p in pages_of(db_path, "sqlite_autoindex_sync_jobs_1") if p[1] == "/")[0]
    pages = {
        "interior page": [interior],
        "header": [1],
        "free-list trunk": [trunk, interior],
        "header and pk root": [1, pk_root],
    }[hit]
    report, store = recover_after(open_store, db_path, pages)
    assert report.jobs_kept == 1000
    assert min(job_ids(store)) == "job-01000"
    assert all(job_id >= "job-01000" for job_id in report.jobs_lost)


def test_the_report_of_a_file_with_no_readable_page_is_incomplete(
    open_store: OpenStore, db_path: Path
) -> None:
    fill(open_store, db_path, 50)
    size = page_size(db_path)
    damage(db_path, list(range(1, db_path.stat().st_size // size + 1)), size)
    # Nothing in it looks like SQLite any more: it is refused, not moved.
    with pytest.raises(StorageCorruptError, match="not an SQLite database"):
        open_store()


def test_recovery_is_logged_with_what_was_lost(
    open_store: OpenStore, big: Path, caplog: pytest.LogCaptureFixture
) -> None:
    leaves = [p for p in pages_of(big, "sync_jobs") if p[2] == "leaf"]
    with caplog.at_level("ERROR", logger="cidx_jobs"):
        report, _store = recover_after(open_store, big, [leaves[3][0]])
    assert f"Lost {leaves[3][3]} jobs known by id" in caplog.text
    assert "incomplete" in caplog.text
    assert str(report.moved_to) in caplog.text


def test_a_job_written_before_the_text_limits_is_salvaged_with_its_text_cut(
    open_store: OpenStore, big: Path
) -> None:
    # Releases before 0.2 stored a phase or error message of any length; core refuses such
    # a job now, so the salvage keeps the job and cuts the text at the limit.
    with raw_connect(big) as conn:
        conn.execute(
            "UPDATE sync_jobs SET phase = ?, error_message = ? WHERE id = 'job-00010'",
            ("p" * 1000, "é" * 50_000),
        )
    conn.close()
    leaves = [p for p in pages_of(big, "job_checkpoints") if p[2] == "leaf"]
    report, store = recover_after(open_store, big, [leaves[-1][0]])
    job = store.load_job("job-00010")
    assert job is not None
    assert job.phase == "p" * 256
    assert job.error_message is not None
    assert len(job.error_message.encode("utf-8")) <= 64 * 1024
    assert job.error_message == "é" * (64 * 1024 // 2)
    assert "job-00010" not in report.jobs_lost
