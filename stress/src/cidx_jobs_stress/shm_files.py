"""The ``-shm`` removed or truncated under running processes (issue 10, items 4 and 12).

Each trial runs worker processes (``python -m cidx_jobs_stress.child store DB``) that each
have the store open and save jobs on command, one at a time, so that every acknowledged save
is known. Then one of:

``shm removed`` / ``wal and shm removed``
    two workers save 10 jobs each; the ``-shm`` (or the ``-wal`` and the ``-shm``) is removed;
    a third process opens the store (it must be refused: other processes still use the old
    ``-shm``); the two workers go on saving, then read (each read notices the removal once
    and closes the worker's connections, so that the last one to close writes the old
    ``-wal`` into the file); a third process opens again and every process saves. Every
    acknowledged save must be in the file, which must pass ``integrity_check``.
``shm truncated``
    three workers save 10 jobs each; the ``-shm`` is truncated to 0, 3 or 16,384 bytes; each
    worker's next call kills it with SIGBUS (nothing can prevent that, docs/sqlite.md); a new
    process then opens the store: every acknowledged save must be there.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ._config import StressConfig
from ._report import ScenarioResult

__all__ = ["run"]

_SAVES = 10


class _Worker:
    """One ``store`` child: a store open in its own process, driven one command at a time."""

    def __init__(self, db: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "cidx_jobs_stress.child", "store", str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.opened = self._reply()

    def _reply(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def call(self, command: str) -> str:
        """The child's one-line answer, or ``""`` if it died."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(command + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            return ""
        return self._reply()

    def stop(self) -> int:
        """End the child (it closes its store) and return its exit status."""
        self.call("q")
        try:
            self.process.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate()
        return self.process.returncode


class _Saves:
    def __init__(self) -> None:
        self.acked: list[str] = []
        self.n = 0

    def save(self, worker: _Worker, name: str) -> str:
        self.n += 1
        job_id = f"{name}-{self.n}"
        reply = worker.call(f"save {job_id}")
        if reply == "ok":
            self.acked.append(job_id)
        return reply


def _lost(db: Path, acked: list[str]) -> tuple[list[str], str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        have = {row[0] for row in conn.execute("SELECT id FROM sync_jobs")}
        integrity = str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()
    return [job_id for job_id in acked if job_id not in have], integrity


def _removed(result: ScenarioResult, folder: Path, suffixes: tuple[str, ...], label: str) -> None:
    db = folder / "jobs.db"
    saves = _Saves()
    workers = {"A": _Worker(db), "B": _Worker(db)}
    try:
        for _ in range(_SAVES):
            for name, worker in workers.items():
                saves.save(worker, name)
        for suffix in suffixes:
            os.remove(f"{db}{suffix}")
        result.faults += 1
        newcomer = _Worker(db)
        result.checked += 1
        if newcomer.opened == "open":
            result.fail(f"{label}: a new process opened beside the processes using the old -shm")
            workers["C"] = newcomer
        else:
            result.outcomes[f"{label}: new process refused"] += 1
            newcomer.stop()
        for _ in range(_SAVES):
            for name, worker in workers.items():
                saves.save(worker, name)
        for worker in workers.values():
            # The first read notices the removal and closes the worker's connections.
            for _ in range(2):
                worker.call("count")
        again = _Worker(db)
        if again.opened == "open":
            workers["C"] = again
            result.outcomes[f"{label}: opened again once the workers had let go"] += 1
        else:
            result.outcomes[f"{label}: still refused after the workers' reads"] += 1
            again.stop()
        for _ in range(_SAVES):
            for name, worker in workers.items():
                saves.save(worker, name)
    finally:
        for worker in workers.values():
            worker.stop()
    lost, integrity = _lost(db, saves.acked)
    result.checked += len(saves.acked) + 1
    if lost or integrity != "ok":
        result.fail(
            f"{label}: {len(lost)} of {len(saves.acked)} acknowledged saves lost "
            f"(first: {lost[:5]}), integrity {integrity}"
        )
    result.outcomes[f"{label}: acknowledged saves checked"] += len(saves.acked)


def _truncated(result: ScenarioResult, folder: Path, rng: random.Random) -> None:
    db = folder / "jobs.db"
    saves = _Saves()
    workers = [_Worker(db) for _ in range(3)]
    try:
        for _ in range(_SAVES):
            for k, worker in enumerate(workers):
                saves.save(worker, f"P{k}")
        os.truncate(f"{db}-shm", rng.choice([0, 3, 16384]))
        result.faults += 1
        for k, worker in enumerate(workers):
            saves.save(worker, f"P{k}")
    finally:
        codes = [worker.stop() for worker in workers]
    result.outcomes["shm truncated: workers killed by SIGBUS"] += codes.count(-signal.SIGBUS)
    newcomer = _Worker(db)
    try:
        result.checked += 1
        if newcomer.opened != "open":
            result.fail(f"shm truncated: the restart could not open the store: {newcomer.opened}")
            return
        if saves.save(newcomer, "N") != "ok":
            result.fail("shm truncated: the restarted process could not save")
    finally:
        newcomer.stop()
    lost, integrity = _lost(db, saves.acked)
    result.checked += len(saves.acked) + 1
    if lost or integrity != "ok":
        result.fail(
            f"shm truncated: {len(lost)} of {len(saves.acked)} acknowledged saves lost, "
            f"integrity {integrity}"
        )
    result.outcomes["shm truncated: acknowledged saves checked"] += len(saves.acked)


def run(config: StressConfig, workdir: Path) -> ScenarioResult:
    """Run the -shm trials in ``workdir``."""
    result = ScenarioResult("shm files")
    if not sys.platform.startswith("linux"):
        result.skipped.append("-shm checks: Linux only (they read /proc)")
        return result
    rng = random.Random(f"{config.seed}:shm")
    parts: dict[str, Callable[[Path], None]] = {
        "shm removed": lambda folder: _removed(result, folder, ("-shm",), "shm removed"),
        "wal and shm removed": lambda folder: _removed(
            result, folder, ("-wal", "-shm"), "wal and shm removed"
        ),
        "shm truncated": lambda folder: _truncated(result, folder, rng),
    }
    for trial in range(config.scaled(1, 5)):
        for name, part in parts.items():
            folder = workdir / f"{name.replace(' ', '-')}-{trial}"
            folder.mkdir(parents=True)
            result.trials += 1
            try:
                part(folder)
            except Exception as error:  # a crash of a trial is a failure
                result.fail(f"{name}: the trial crashed: {error!r}")
    return result
