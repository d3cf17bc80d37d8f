"""Failures that need control of a whole server, on a private cluster these tests start
themselves (``initdb`` and ``pg_ctl`` in a temporary folder, on a free port), never on the
shared one: a server restart, a read-only server, a denied permission, a wrong password, and a
real full disk (a tablespace on a 1 MiB tmpfs).

The server programs are found through ``pg_config --bindir``, on PATH, or in
``/usr/lib/postgresql/*/bin`` (Debian's layout, which puts neither on PATH). Where they are
missing the tests skip, saying why; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from cidx_jobs import SyncJob, open_persistence
from cidx_jobs.errors import (
    StorageBusyError,
    StorageFullError,
    StoragePermissionError,
    StorageUnavailableError,
)

#: Each test starts a cluster of its own (initdb, pg_ctl): seconds each.
pytestmark = pytest.mark.slow
#: Few, so that a test can take every slot (the other tests need fewer than 10).
MAX_CONNECTIONS = 15


def _has_programs(folder: Path) -> bool:
    return (folder / "initdb").is_file() and (folder / "pg_ctl").is_file()


def _version(path: str) -> tuple[int, ...]:
    # /usr/lib/postgresql/15/bin/initdb: the newest major version wins (16 after 9.6).
    part = Path(path).parent.parent.name
    return tuple(int(n) for n in part.split(".") if n.isdigit())


def _bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config:
        found = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if found.returncode == 0 and _has_programs(Path(found.stdout.strip())):
            return Path(found.stdout.strip())
    initdb = shutil.which("initdb")
    if initdb and _has_programs(Path(initdb).resolve().parent):
        return Path(initdb).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version)
    candidates = [path for path in candidates if _has_programs(Path(path).parent)]
    return Path(candidates[-1]).parent if candidates else None


def _unavailable(reason: str) -> None:
    """Skip, or with ``CI=true`` fail: CI must run the server-control tests."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, so the private-cluster tests must run, but {reason}")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """A PostgreSQL cluster of its own, in a temporary folder."""

    def __init__(self, bindir: Path, folder: Path) -> None:
        self.bindir = bindir
        self.folder = folder
        self.data = folder / "data"
        self.port = _free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        # PostgreSQL refuses to run as root: run its programs as the postgres user then.
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    def _run(self, *args: str) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                  "-A", "trust", "--no-sync")  # fmt: skip
        with open(self.data / "pg_hba.conf", "w") as hba:
            hba.write(
                "local all all trust\n"
                "host all cidx_pw 127.0.0.1/32 scram-sha-256\n"
                "host all all 127.0.0.1/32 trust\n"
            )

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c unix_socket_directories={self.folder} -c max_connections={MAX_CONNECTIONS}"
        )
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", options,
                  "-l", str(self.folder / "log"), "-w", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def sql(self, statement: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(statement)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    bindir = _bindir()
    if bindir is None:
        _unavailable(
            "PostgreSQL's server programs (initdb, pg_ctl) are not installed: none in "
            "pg_config --bindir, on PATH or in /usr/lib/postgresql/*/bin (install the "
            "postgresql server package)"
        )
        return
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        _unavailable("running as root without runuser: cannot start a private cluster")
        return
    folder = Path(tempfile.mkdtemp(prefix="cidx-pg-"))
    os.chmod(folder, 0o777)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    server = Cluster(bindir, folder)
    try:
        server.init()
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):
            server.stop("immediate")
        shutil.rmtree(folder, ignore_errors=True)


def job(job_id: str) -> SyncJob:
    return SyncJob(id=job_id, user_id="alice", project_id="repo")


def test_calls_fail_typed_while_the_server_restarts_and_work_afterwards(
    cluster: Cluster,
) -> None:
    url = f"{cluster.url}?schema=restart&pool_min=2&pool_max=2&connect_timeout=1"
    with open_persistence(url) as store:
        store.save_job(job("job-1"))
        cluster.stop()
        try:
            for attempt in range(3):
                if attempt == 2:
                    # As when the pool's back-off has put its next attempt far off: its last
                    # failure to connect is long past, and the server is still down.
                    runner = store.storage._runner  # type: ignore[attr-defined]
                    failed_at, error = runner._connect_error
                    runner._connect_error = (failed_at - 600, error)
                started = time.monotonic()
                with pytest.raises(StorageUnavailableError) as raised:
                    store.load_job("job-1")
                assert not isinstance(raised.value, StorageBusyError), raised.value
                assert "pool_max" not in str(raised.value)
                assert "unreachable" in str(raised.value) or "cannot connect" in str(
                    raised.value
                ), raised.value
                assert time.monotonic() - started < 10
        finally:
            cluster.start()
        deadline = time.monotonic() + 30
        while True:
            try:
                loaded = store.load_job("job-1")
                break
            except StorageUnavailableError:
                assert time.monotonic() < deadline, "the store did not reconnect"
                time.sleep(0.2)
        assert loaded is not None
        assert store.save_job(job("job-2"))


def test_no_connection_slot_left_names_max_connections(cluster: Cluster) -> None:
    url = (
        f"{cluster.url}?schema=slots&pool_min=0&pool_max=2&connect_timeout=1"
        "&application_name=cidx-slots"
    )
    with open_persistence(url) as store:
        hogs: list[psycopg.Connection[tuple[object, ...]]] = []
        try:
            # Take every slot, then end the store's own session so that it needs a new one;
            # twice, for the slots that exiting sessions (its own, earlier tests') free.
            for _ in range(2):
                with pytest.raises(psycopg.OperationalError, match="too many clients"):
                    for _ in range(MAX_CONNECTIONS + 5):
                        hogs.append(psycopg.connect(cluster.url, connect_timeout=3))
                hogs[0].execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = 'cidx-slots'"
                )
                time.sleep(0.3)
            with pytest.raises(StorageBusyError) as raised:
                store.load_job("job-1")
            message = str(raised.value)
            assert "max_connections" in message, message
            assert "pool_max" in message, message
            assert "cannot connect" not in message
        finally:
            for hog in hogs:
                hog.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                assert store.save_job(job("job-1"))
                break
            except StorageBusyError:
                assert time.monotonic() < deadline, "the store did not reconnect"
                time.sleep(0.2)


def test_a_read_only_server_is_typed_and_its_sessions_are_dropped(cluster: Cluster) -> None:
    with open_persistence(f"{cluster.url}?schema=readonly&pool_max=2") as store:
        store.save_job(job("job-1"))
        cluster.sql("ALTER SYSTEM SET default_transaction_read_only = on")
        cluster.sql("SELECT pg_reload_conf()")
        try:
            time.sleep(0.5)
            with pytest.raises(StorageUnavailableError, match="read-only"):
                store.save_job(job("job-2"))
            assert store.load_job("job-1") is not None  # reads still work
        finally:
            cluster.sql("ALTER SYSTEM RESET default_transaction_read_only")
            cluster.sql("SELECT pg_reload_conf()")
        time.sleep(0.5)
        assert store.save_job(job("job-2"))


def test_a_denied_permission_is_typed(cluster: Cluster) -> None:
    open_persistence(f"{cluster.url}?schema=guarded").close()
    cluster.sql("CREATE ROLE cidx_limited LOGIN")
    cluster.sql("GRANT USAGE ON SCHEMA guarded TO cidx_limited")
    cluster.sql("GRANT SELECT ON ALL TABLES IN SCHEMA guarded TO cidx_limited")
    limited = cluster.url.replace("postgres@", "cidx_limited@")
    with open_persistence(f"{limited}?schema=guarded") as store:
        assert store.count_jobs() == 0
        with pytest.raises(StoragePermissionError, match="permission denied"):
            store.save_job(job("job-1"))
        assert store.count_jobs() == 0


def test_a_wrong_password_says_what_to_do(cluster: Cluster) -> None:
    cluster.sql("CREATE ROLE cidx_pw LOGIN PASSWORD 'right'")
    wrong = cluster.url.replace("postgres@", "cidx_pw:wrong@")
    with pytest.raises(StoragePermissionError, match="refused the password") as raised:
        open_persistence(f"{wrong}?schema=pw")
    assert "wrong" not in str(raised.value)  # never the password itself
    right = cluster.url.replace("postgres@", "cidx_pw:right@")
    cluster.sql("GRANT CREATE ON DATABASE postgres TO cidx_pw")
    with open_persistence(f"{right}?schema=pw") as store:
        assert store.save_job(job("job-1"))


@contextlib.contextmanager
def _small_tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``folder``, owned by the server's user; unmounted after."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        _unavailable("a real full disk needs a tmpfs mount, and mounting needs root")
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        _unavailable(f"cannot mount a tmpfs for the full-disk test: {mounted.stderr.strip()}")
    try:
        shutil.chown(folder, "postgres", "postgres")
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_full_disk_on_the_server_is_typed_keeps_what_was_acknowledged_and_recovers(
    cluster: Cluster,
) -> None:
    """The store's tables live in a tablespace on a 1 MiB tmpfs (the role's default), so the
    server really runs out of space: the write that hits it raises StorageFullError, every
    acknowledged job is still there, and once there is room again writes work, with no
    restart of the server or the store."""
    with _small_tmpfs(cluster.folder / "small", "1m") as small:
        cluster.sql(f"CREATE TABLESPACE small LOCATION '{small}'")
        cluster.sql("CREATE ROLE cidx_full LOGIN")
        cluster.sql("GRANT CREATE ON TABLESPACE small TO cidx_full")
        cluster.sql("GRANT CREATE ON DATABASE postgres TO cidx_full")
        cluster.sql("ALTER ROLE cidx_full SET default_tablespace = small")
        url = cluster.url.replace("postgres@", "cidx_full@") + "?schema=diskfull&pool_max=2"
        try:
            with open_persistence(url) as store:
                acknowledged: list[str] = []
                # Random hex does not compress: each job costs its own ~16 KB of TOAST pages.
                with pytest.raises(StorageFullError, match="space") as raised:
                    for n in range(1000):
                        metadata = {"blob": os.urandom(8192).hex()}
                        store.save_job(
                            SyncJob(id=f"job-{n}", user_id="u", project_id="p", metadata=metadata)
                        )
                        acknowledged.append(f"job-{n}")
                assert 0 < len(acknowledged) < 1000, "the disk was to fill midway"
                assert "No space left on device" in str(raised.value.__cause__ or raised.value)
                failed = f"job-{len(acknowledged)}"
                assert store.load_job(failed) is None, "the failed write stored nothing"
                for job_id in acknowledged:
                    assert store.load_job(job_id) is not None, job_id
                subprocess.run(
                    ["mount", "-o", "remount,size=16m", str(small)], check=True, capture_output=True
                )
                assert store.save_job(SyncJob(id=failed, user_id="u", project_id="p"))
                assert store.count_jobs() == len(acknowledged) + 1
        finally:
            # The tablespace must be empty before it can go, and gone before the unmount.
            cluster.sql("DROP SCHEMA IF EXISTS diskfull CASCADE")
            cluster.sql("DROP TABLESPACE IF EXISTS small")


def test_a_read_only_error_inside_a_block_drops_that_session(cluster: Cluster) -> None:
    url = f"{cluster.url}?schema=readonly_block&pool_min=1&pool_max=1&application_name=cidx-rob"

    def session() -> set[int]:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'cidx-rob'"
            ).fetchall()
        return {int(str(row[0])) for row in rows}

    with open_persistence(url) as store:
        store.save_job(job("job-1"))
        before = session()
        assert len(before) == 1
        cluster.sql("ALTER SYSTEM SET default_transaction_read_only = on")
        cluster.sql("SELECT pg_reload_conf()")
        try:
            time.sleep(0.5)
            with pytest.raises(StorageUnavailableError, match="read-only"):
                with store.transaction():
                    store.save_job(job("job-2"))
        finally:
            cluster.sql("ALTER SYSTEM RESET default_transaction_read_only")
            cluster.sql("SELECT pg_reload_conf()")
        time.sleep(0.5)
        with store.transaction():
            assert store.save_job(job("job-2"))
        assert session().isdisjoint(before), "the read-only session was dropped, as promised"
