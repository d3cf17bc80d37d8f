"""Several worker processes on one database, with real faults: workers SIGKILLed mid-job, a
worker stalled past its lease (SIGSTOP, SIGCONT once a sibling resumed its job), and a worker
partitioned from the server by a TCP proxy that the test cuts and heals (issue 11, item 5).

Six processes (``_multihost_worker.py``), each with its own store, pool and owner id, share
one throwaway schema. Each creates one job and works it through fenced writes (a checkpoint
and a progress per step), heartbeating through the library's ``LeaseRunner`` with a 2.5 s
lease; two of them (the *sweepers*) also run its recovery sweeps and resume what they
recover. Every acknowledged write is in the worker's fsynced event log before it goes on.
Once every worker has written a few steps, two are SIGKILLed, one is SIGSTOPped and the
proxy in front of the fourth is cut, all at once. When a sweeper has resumed each of their
four jobs (and written to it), the stalled worker is continued and the partition healed.

The partition is silent (see ``_proxy``): the partitioned worker sees no error, its calls
just wait, and what it sent into the partition reaches the server after the heal, that is
after its job was taken over. That is the case fencing exists for.

The database keeps its own history: the test adds an audit trigger to the schema's two
tables, so every committed change of a job (other than a bare heartbeat) and every stored
checkpoint is one row of ``mh_audit``, in commit order per job (a row lock orders them). That
history, not the workers' word, is what the assertions mostly read: which owner held each job
when, each take-over, and every write that was stored, found by the unique tag each write
carries. The checks are the ``History.check_*`` methods.

Marked slow (it starts processes), like the other process tests: py311 runs it, with the
whole suite; it takes about 10 s.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from cidx_jobs import JobStatus, SyncJob, open_persistence

from ._proxy import TcpProxy

WORKER = Path(__file__).with_name("_multihost_worker.py")
#: The lease: short, so that the test is fast; the heartbeat and sweep intervals are well
#: inside it, so that a live, scheduled worker never loses its job to a sibling.
LEASE_TIMEOUT = 2.5
HEARTBEAT_INTERVAL = 0.4
SWEEP_INTERVAL = 0.4
#: The faulted workers' jobs: 60 steps of 50 ms (3 s), cut off after a few steps; the
#: sweepers resume them at 20 ms a step. The sweepers' own jobs run until told to finish.
FAULT_STEPS = 60
OWN_STEPS = 1000
STEP_DELAY = 0.05
RESUME_DELAY = 0.02
#: Bounds on each wait: generous for a loaded 2-CPU machine, never unbounded.
START_TIMEOUT = 60.0
PHASE_TIMEOUT = 30.0

SWEEPERS = ("sweep1", "sweep2")
KILLED = ("kill1", "kill2")
STALLED = "stall"
PARTITIONED = "part"
FAULTED = (*KILLED, STALLED, PARTITIONED)
NAMES = (*SWEEPERS, *FAULTED)


def _job(name: str) -> str:
    return f"job-{name}"


AUDIT_SQL = """
CREATE TABLE {s}.mh_audit (
    n           bigserial PRIMARY KEY,
    tbl         text NOT NULL,
    job_id      text NOT NULL,
    status      text,
    old_status  text,
    owner_id    text,
    old_owner   text,
    lease_token text,
    progress    integer,
    phase       text,
    old_phase   text,
    cp_phase    text,
    data        text
);
CREATE FUNCTION {s}.mh_audit_job() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO {s}.mh_audit
        (tbl, job_id, status, old_status, owner_id, old_owner, lease_token, progress, phase,
         old_phase)
    VALUES ('job', NEW.id, NEW.status,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.owner_id,
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.owner_id END, NEW.lease_token,
            NEW.progress, NEW.phase, CASE WHEN TG_OP = 'UPDATE' THEN OLD.phase END);
    RETURN NULL;
END $$;
CREATE FUNCTION {s}.mh_audit_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- The job row is locked by the checkpoint statement (FOR SHARE / FOR KEY SHARE): its
    -- owner and token are the ones the write was checked against.
    INSERT INTO {s}.mh_audit (tbl, job_id, status, owner_id, lease_token, cp_phase, data)
    SELECT 'checkpoint', NEW.job_id, j.status, j.owner_id, j.lease_token, NEW.phase, NEW.data
    FROM {s}.sync_jobs AS j WHERE j.id = NEW.job_id;
    RETURN NULL;
END $$;
CREATE TRIGGER mh_audit_job_insert AFTER INSERT ON {s}.sync_jobs
    FOR EACH ROW EXECUTE FUNCTION {s}.mh_audit_job();
-- A bare heartbeat (only heartbeat_at changes) is left out: hundreds of rows, no information.
CREATE TRIGGER mh_audit_job_update AFTER UPDATE ON {s}.sync_jobs FOR EACH ROW
    WHEN ((OLD.status, OLD.progress, OLD.phase, OLD.owner_id, OLD.lease_token)
          IS DISTINCT FROM (NEW.status, NEW.progress, NEW.phase, NEW.owner_id, NEW.lease_token))
    EXECUTE FUNCTION {s}.mh_audit_job();
CREATE TRIGGER mh_audit_checkpoint AFTER INSERT OR UPDATE ON {s}.job_checkpoints
    FOR EACH ROW EXECUTE FUNCTION {s}.mh_audit_checkpoint();
"""


def _schema(url: str) -> str:
    return url.rsplit("schema=", 1)[1].split("&", 1)[0]


def _with_options(url: str, **options: object) -> str:
    extra = "&".join(f"{key}={value}" for key, value in options.items())
    return f"{url}{'&' if '?' in url else '?'}{extra}"


def _through(url: str, port: int) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{port}"))


def read_events(path: Path) -> list[dict[str, Any]]:
    """A worker's event log; a last line cut short by a SIGKILL is skipped."""
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # only the last line of a killed worker can be partial
    return events


class Workers:
    """The worker processes, their logs and the means to control them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.procs: dict[str, subprocess.Popen[str]] = {}
        self.stopped: set[str] = set()

    def log_path(self, name: str) -> Path:
        return self.folder / f"{name}.jsonl"

    def events(self, name: str) -> list[dict[str, Any]]:
        return read_events(self.log_path(name))

    def all_events(self) -> dict[str, list[dict[str, Any]]]:
        return {name: self.events(name) for name in self.procs}

    def spawn(self, name: str, url: str, *, sweeper: bool) -> None:
        config = {
            "name": name,
            "url": url,
            "log": str(self.log_path(name)),
            "own_job": _job(name),
            "own_steps": OWN_STEPS if sweeper else FAULT_STEPS,
            "step_delay": STEP_DELAY,
            "resume_delay": RESUME_DELAY,
            "sweeper": sweeper,
            "heartbeat_interval": HEARTBEAT_INTERVAL,
            "lease_timeout": LEASE_TIMEOUT,
            "sweep_interval": SWEEP_INTERVAL,
        }
        stderr = open(self.folder / f"{name}.stderr", "w", encoding="utf-8")  # noqa: SIM115
        try:
            self.procs[name] = subprocess.Popen(
                [sys.executable, str(WORKER), json.dumps(config)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                text=True,
            )
        finally:
            stderr.close()  # the child has its own copy

    def send(self, name: str, command: str) -> None:
        proc = self.procs[name]
        assert proc.stdin is not None
        proc.stdin.write(command + "\n")
        proc.stdin.flush()

    def signal(self, name: str, signum: int) -> None:
        self.procs[name].send_signal(signum)
        if signum == signal.SIGSTOP:
            self.stopped.add(name)
        elif signum == signal.SIGCONT:
            self.stopped.discard(name)

    def stderr(self, name: str) -> str:
        path = self.folder / f"{name}.stderr"
        return path.read_text(encoding="utf-8", errors="replace") if path.exists() else ""

    def diagnosis(self) -> str:
        """What the workers said, for a failure message."""
        parts = []
        for name, proc in self.procs.items():
            tail = self.events(name)[-6:]
            parts.append(
                f"--- {name} (exit {proc.poll()}): last events {json.dumps(tail)}\n"
                f"stderr: {self.stderr(name)[-1500:]}"
            )
        return "\n".join(parts)

    def kill_all(self) -> None:
        """Kill every worker still running (a stopped one is continued first, so that the
        kill is delivered at once) and reap it."""
        for name, proc in self.procs.items():
            if proc.poll() is None:
                if name in self.stopped:
                    proc.send_signal(signal.SIGCONT)
                proc.kill()
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)  # a SIGKILL is not refused: this only bounds the wait
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()


def wait_for(
    what: str, condition: Callable[[], bool], workers: Workers, timeout: float = PHASE_TIMEOUT
) -> float:
    """Poll ``condition`` until it holds; returns when (``time.time()``). Fails the test,
    with what the workers said, after ``timeout`` seconds or when a worker crashed."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return time.time()
        for name in workers.procs:
            crashed = [event for event in workers.events(name) if event["ev"] == "crash"]
            if crashed:
                pytest.fail(f"worker {name} crashed: {crashed[0]['error']}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}\n{workers.diagnosis()}")
        time.sleep(0.05)


Event = dict[str, Any]


def _acked(events: list[Event], job_id: str, kind: str | None = None) -> list[Event]:
    return [
        event
        for event in events
        if event["ev"] == "ack"
        and event["job"] == job_id
        and (kind is None or event["kind"] == kind)
    ]


def _claims(events: dict[str, list[Event]], job_id: str) -> list[tuple[str, Event]]:
    return [
        (name, event)
        for name, log in events.items()
        for event in log
        if event["ev"] == "claimed" and event["job"] == job_id and not event["own"]
    ]


def _tag_of(row: dict[str, Any]) -> str | None:
    """The tag of the write an audit row records, or ``None`` when the row is no progress
    or checkpoint write (a claim, a take-over, a completion keep the last write's phase)."""
    if row["tbl"] == "checkpoint":
        return str(json.loads(row["data"])["tag"])
    phase = row["phase"]
    if phase == row["old_phase"] or not phase or "/" not in phase:
        return None
    return str(phase.split("/", 1)[1])


def _step_of(row: dict[str, Any]) -> int:
    return int(json.loads(row["data"])["step"])


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(tmp_path)
    try:
        yield pool
    finally:
        pool.kill_all()


@pytest.fixture
def proxy(postgres_url: str) -> Iterator[TcpProxy]:
    parts = urlsplit(postgres_url)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as forwarder:
        yield forwarder


class Moments:
    """When the test changed the world (``time.time()``, the clock the workers log with),
    each taken on the side that makes the comparisons safe."""

    fault: float  # just after the kills, the SIGSTOP and the cut
    resumed: float  # every faulted job resumed by a sweeper
    cont: float  # just before the SIGCONT
    heal: float  # just before the heal


class History:
    """What happened: the database's history (``mh_audit``), the final store, and the
    workers' event logs."""

    def __init__(
        self,
        events: dict[str, list[dict[str, Any]]],
        audit: list[dict[str, Any]],
        owners: dict[str, str],
        final: dict[str, SyncJob | None],
        checkpoints: dict[str, dict[str, dict[str, Any]]],
    ) -> None:
        self.events = events
        self.audit = audit
        self.owners = owners
        self.final = final
        self.checkpoints = checkpoints
        self.by_job: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in audit:
            self.by_job[row["job_id"]].append(row)
        self.name_of = {owner: name for name, owner in owners.items()}
        self.stored_tags = {tag for row in audit if (tag := _tag_of(row)) is not None}

    @classmethod
    def read(
        cls,
        url: str,
        admin: psycopg.Connection[tuple[object, ...]],
        workers: Workers,
        owners: dict[str, str],
    ) -> History:
        cursor = admin.execute(f'SELECT * FROM "{_schema(url)}".mh_audit ORDER BY n')
        columns = [column.name for column in cursor.description or ()]
        audit = [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
        with open_persistence(url) as store:
            final = {name: store.load_job(_job(name)) for name in NAMES}
            checkpoints = {
                name: {cp.phase: cp.data for cp in store.list_checkpoints(_job(name))}
                for name in NAMES
            }
        return cls(workers.all_events(), audit, owners, final, checkpoints)

    def summary(self, moments: Moments) -> dict[str, Any]:
        return {
            "faulted jobs resumed after the faults (s)": round(moments.resumed - moments.fault, 2),
            "audit rows": len(self.audit),
            "events": {
                name: dict(Counter(e["ev"] for e in log))
                for name, log in sorted(self.events.items())
            },
        }

    def takeovers(self, name: str) -> list[dict[str, Any]]:
        """The history's rows of the job of ``name`` in which its owner changed."""
        return [
            row
            for row in self.by_job[_job(name)]
            if row["old_owner"] not in (None, row["owner_id"])
        ]

    def outcomes(self, name: str) -> list[dict[str, Any]]:
        """The outcomes of the writes ``name`` made to its own job."""
        kinds = ("ack", "lost", "error", "unknown", "missing")
        return [e for e in self.events[name] if e["ev"] in kinds and e["job"] == _job(name)]

    def taker(self, name: str) -> str:
        """The sweeper that resumed the job of ``name``."""
        ((taker, _),) = _claims(self.events, _job(name))
        return taker

    def check_completed(self) -> None:
        """Every job is completed, its progress 100, by its legitimate owner: its creator,
        or the sweeper that resumed a faulted worker's job."""
        for name in NAMES:
            job = self.final[name]
            assert job is not None, name
            assert job.status is JobStatus.COMPLETED, (name, job)
            assert job.progress == 100, (name, job)
            owner = name if name in SWEEPERS else self.taker(name)
            assert job.owner_id == self.owners[owner], (name, job)

    def check_taken_over_once(self) -> None:
        """Each faulted worker's job was taken over exactly once, by a sweeper, from
        running to interrupted, and went to no one else: its owners were its creator, then
        that sweeper, never the creator again. The sweeper's report held it once and its
        claim resumed it once. A sweeper's own job (its owner alive and heartbeating all
        along) was never taken from it."""
        for name in NAMES:
            history = [self.name_of.get(row["owner_id"]) for row in self.by_job[_job(name)]]
            distinct = [
                owner for n, owner in enumerate(history) if n == 0 or history[n - 1] != owner
            ]
            takeovers = self.takeovers(name)
            if name in SWEEPERS:
                assert takeovers == [], (name, takeovers)
                assert distinct == [name]
                continue
            assert len(takeovers) == 1, (name, takeovers)
            (takeover,) = takeovers
            assert takeover["old_owner"] == self.owners[name]
            assert (takeover["old_status"], takeover["status"]) == ("running", "interrupted")
            assert distinct == [name, self.taker(name)], distinct
            assert self.taker(name) in SWEEPERS
            recovered = [
                sweeper
                for sweeper, log in self.events.items()
                for e in log
                if e["ev"] == "recovered" and e["job"] == _job(name)
            ]
            assert recovered == [self.taker(name)], (name, recovered)
        assert not [e for log in self.events.values() for e in log if e["ev"] == "requeue"]

    def check_acknowledged_writes_kept(self) -> None:
        """Every acknowledged write was stored (its tag is in the history), and the final
        store holds it or a later value of the legitimate owner: no checkpoint or progress
        ever went backwards, and each sweeper resumed from at least the last step the old
        owner had acknowledged, and read at least its last acknowledged progress."""
        for log in self.events.values():
            for ack in (e for e in log if e["ev"] == "ack" and e["kind"] != "status"):
                assert ack["tag"] in self.stored_tags, f"acknowledged but never stored: {ack}"
                owner_name = ack["job"].removeprefix("job-")
                if ack["kind"] == "checkpoint":
                    kept = self.checkpoints[owner_name][ack["value"]]
                    assert kept["step"] >= ack["step"], (ack, kept)
                else:
                    job = self.final[owner_name]
                    assert job is not None
                    assert job.progress >= ack["value"], (ack, job)
        for job_id, rows in self.by_job.items():
            progress = [row["progress"] for row in rows if row["tbl"] == "job"]
            assert progress == sorted(progress), f"{job_id}: progress went backwards: {progress}"
            steps: dict[str, list[int]] = defaultdict(list)
            for row in rows:
                if row["tbl"] == "checkpoint":
                    steps[row["cp_phase"]].append(_step_of(row))
            for phase, values in steps.items():
                assert values == sorted(values), f"{job_id}/{phase}: went backwards: {values}"
        for name in FAULTED:
            ((_, claim),) = _claims(self.events, _job(name))
            own = self.events[name]
            last_step = max(e["step"] for e in _acked(own, _job(name), "checkpoint"))
            last_progress = max(e["value"] for e in _acked(own, _job(name), "progress"))
            assert claim["start"] >= last_step + 1, (name, claim, last_step)
            assert claim["progress"] >= last_progress, (name, claim, last_progress)

    def check_only_lease_holders_stored(self) -> None:
        """Fencing, in the database: every stored write came from the holder of the job's
        lease at that moment (the tag's worker owned the job, under the token it had
        claimed), so nothing a faulted worker sent after its job was taken over was stored,
        wherever it was in flight."""
        tokens = {
            (name, e["job"]): e["token"]
            for name, log in self.events.items()
            for e in log
            if e["ev"] == "claimed"
        }
        for row in self.audit:
            tag = _tag_of(row)
            if tag is None:
                continue
            writer = tag.split(".", 1)[0]
            assert row["owner_id"] == self.owners[writer], f"stored under another owner: {row}"
            assert row["lease_token"] == tokens[(writer, row["job_id"])], f"stale lease: {row}"
        for name in FAULTED:
            (takeover,) = self.takeovers(name)
            late = [
                row
                for row in self.by_job[_job(name)]
                if row["n"] > takeover["n"] and (_tag_of(row) or "").startswith(f"{name}.")
            ]
            assert late == [], f"{name}'s writes stored after the take-over: {late}"

    def check_late_writes_refused(self, moments: Moments) -> None:
        """Fencing, as the stalled and the partitioned workers saw it: their next write
        after the wake-up (SIGCONT) or the heal raised LeaseLostError naming the sweeper
        that holds the job now, was not stored, and was their last. A write acknowledged to
        them after the faults was one sent before the faults (stored before the take-over,
        as the history shows)."""
        for name, wake in ((STALLED, moments.cont), (PARTITIONED, moments.heal)):
            mine = self.outcomes(name)
            lost = [e for e in mine if e["ev"] == "lost"]
            assert len(lost) == 1, (name, lost)
            assert lost[0]["t"] > wake, (name, lost, wake)
            assert lost[0]["owner"] == self.owners[self.taker(name)], lost
            assert lost[0]["status"] == "running", lost
            assert lost[0]["tag"] not in self.stored_tags
            assert all(e["t"] <= lost[0]["t"] for e in mine if e["ev"] == "ack")
            late_acks = [e for e in mine if e["ev"] == "ack" and e["t"] > moments.fault]
            assert all(e["t0"] < moments.fault for e in late_acks), (name, late_acks)
        # The partitioned worker had one write in flight across the partition: sent into
        # it, then refused (it reached the server after the take-over), or sent just before
        # the cut, then stored before the take-over and acknowledged after the heal.
        (spanning,) = [e for e in self.outcomes(PARTITIONED) if e["t0"] < moments.heal < e["t"]]
        if spanning["ev"] != "lost":
            assert spanning["ev"] == "ack", spanning
            assert spanning["t0"] < moments.fault, spanning
        print(f"the partitioned worker's write in flight across the partition: {spanning}")


@pytest.mark.slow
def test_killed_stalled_and_partitioned_workers(
    schema_url: str,
    admin: psycopg.Connection[tuple[object, ...]],
    workers: Workers,
    proxy: TcpProxy,
) -> None:
    schema = _schema(schema_url)
    # The store creates the schema; the audit trigger goes in before any worker starts.
    open_persistence(schema_url).close()
    admin.execute(AUDIT_SQL.format(s=f'"{schema}"'))
    moments = Moments()

    # Two connections each: one for the runner's heartbeats and sweeps, one for the job
    # writes, so that no write waits for a connection the partition holds.
    url = _with_options(schema_url, pool_min=2, pool_max=4)
    for name in NAMES:
        target = _through(url, proxy.port) if name == PARTITIONED else url
        workers.spawn(name, target, sweeper=name in SWEEPERS)
    wait_for(
        "every worker to start",
        lambda: all(any(e["ev"] == "ready" for e in workers.events(n)) for n in NAMES),
        workers,
        START_TIMEOUT,
    )
    owners = {n: next(e["owner"] for e in workers.events(n) if e["ev"] == "ready") for n in NAMES}
    assert proxy.accepted >= 1, "the partitioned worker talks to the server through the proxy"
    for name in NAMES:
        workers.send(name, "go")
    wait_for(
        "every worker to have three steps of its own job acknowledged",
        lambda: all(len(_acked(workers.events(n), _job(n), "progress")) >= 3 for n in NAMES),
        workers,
    )

    # The faults, all at once: two workers die, one stalls, one is partitioned.
    for name in KILLED:
        workers.signal(name, signal.SIGKILL)
    workers.signal(STALLED, signal.SIGSTOP)
    proxy.cut()
    moments.fault = time.time()
    for name in KILLED:
        assert workers.procs[name].wait(timeout=10) == -signal.SIGKILL
    assert not any(e["ev"] == "completed" for name in FAULTED for e in workers.events(name)), (
        "a faulted worker finished its job before the faults: the test ran too slowly"
    )

    # A sweeper takes each faulted worker's job once its lease expired, resumes it from the
    # last checkpoint and has written to it, while the stalled and the partitioned workers
    # still believe they hold theirs.
    def resumed(job_id: str) -> bool:
        events = workers.all_events()
        return any(_acked(events[name], job_id) for name, _ in _claims(events, job_id))

    moments.resumed = wait_for(
        "a sweeper to resume every faulted job",
        lambda: all(resumed(_job(name)) for name in FAULTED),
        workers,
    )
    assert proxy.is_cut
    assert workers.procs[STALLED].poll() is None

    # The stalled worker wakes up, the partition heals: their next writes must be refused.
    moments.cont = time.time()
    workers.signal(STALLED, signal.SIGCONT)
    moments.heal = time.time()
    proxy.heal()

    def refused(name: str) -> bool:
        return any(e["ev"] == "lost" and e["job"] == _job(name) for e in workers.events(name))

    def completed(names: tuple[str, ...], by: tuple[str, ...]) -> bool:
        return all(
            any(
                e["ev"] == "completed" and e["job"] == _job(name)
                for worker in by
                for e in workers.events(worker)
            )
            for name in names
        )

    wait_for(
        "the stalled and the partitioned worker to find their lease lost",
        lambda: refused(STALLED) and refused(PARTITIONED),
        workers,
    )
    wait_for(
        "the sweepers to complete every resumed job",
        lambda: completed(FAULTED, SWEEPERS),
        workers,
    )
    for name in SWEEPERS:
        workers.send(name, "finish")
    wait_for(
        "the sweepers to complete their own jobs", lambda: completed(SWEEPERS, SWEEPERS), workers
    )
    alive = (*SWEEPERS, STALLED, PARTITIONED)
    for name in alive:
        workers.send(name, "exit")
    for name in alive:
        try:
            code = workers.procs[name].wait(timeout=PHASE_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker {name} did not exit\n{workers.diagnosis()}")
        assert code == 0, f"worker {name} exited with {code}\n{workers.diagnosis()}"

    history = History.read(schema_url, admin, workers, owners)
    print(json.dumps(history.summary(moments), indent=1))
    history.check_completed()
    history.check_taken_over_once()
    history.check_acknowledged_writes_kept()
    history.check_only_lease_holders_stored()
    history.check_late_writes_refused(moments)


def _echo_server() -> tuple[socket.socket, int]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def echo(conn: socket.socket) -> None:
        with conn:
            try:
                while data := conn.recv(1024):
                    conn.sendall(data)
            except OSError:
                pass  # the proxy's reset

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=echo, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return listener, listener.getsockname()[1]


def test_proxy_cut_is_silent_heal_delivers_and_reset_aborts() -> None:
    """The proxy's partition is silence that keeps the connection and its bytes; a heal
    delivers them in order; a reset aborts the connections."""
    listener, port = _echo_server()
    try:
        with TcpProxy("127.0.0.1", port) as proxy:
            client = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            with client:
                client.sendall(b"one")
                assert client.recv(16) == b"one"
                proxy.cut()
                client.sendall(b"two")
                client.settimeout(0.3)
                with pytest.raises(TimeoutError):
                    client.recv(16)  # silence: no answer, and no end of the connection
                proxy.heal()
                client.settimeout(5)
                received = b""
                while len(received) < 3:
                    received += client.recv(16)
                assert received == b"two"
                assert proxy.reset() == 1
                client.settimeout(5)
                with contextlib.suppress(ConnectionResetError):
                    assert client.recv(16) == b""  # the end, or the RST itself
            # A client that connects during a partition gets through after the heal.
            proxy.cut()
            late = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            with late:
                late.sendall(b"three")
                late.settimeout(0.3)
                with pytest.raises(TimeoutError):
                    late.recv(16)
                proxy.heal()
                late.settimeout(5)
                received = b""
                while len(received) < 5:
                    received += late.recv(16)
                assert received == b"three"
    finally:
        listener.close()
