"""Running the scenarios in order, each in a folder of its own."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

from ._common import quiet_logging
from ._config import StressConfig
from ._report import ScenarioResult

__all__ = ["SCENARIOS", "run_scenarios"]

Scenario = Callable[[StressConfig, Path], ScenarioResult]


def _crash(config: StressConfig, workdir: Path) -> ScenarioResult:
    from . import crash

    return crash.run(config, workdir)


def _faults(config: StressConfig, workdir: Path) -> ScenarioResult:
    from . import faults

    return faults.run(config, workdir)


def _concurrency(config: StressConfig, workdir: Path) -> ScenarioResult:
    from . import concurrency

    return concurrency.run(config, workdir)


def _badinput(config: StressConfig, workdir: Path) -> ScenarioResult:
    from . import badinput

    return badinput.run(config, workdir)


def _isolation(config: StressConfig, workdir: Path) -> ScenarioResult:
    from . import isolation

    return isolation.run(config, workdir)


def _errors(config: StressConfig, workdir: Path) -> ScenarioResult:
    from . import errors_limits

    return errors_limits.run(config, workdir)


def _recovery_files(config: StressConfig, workdir: Path) -> ScenarioResult:
    from . import recovery_files

    return recovery_files.run(config, workdir)


def _fencing(config: StressConfig, workdir: Path) -> ScenarioResult:
    from . import fencing

    return fencing.run(config, workdir)


def _shm(config: StressConfig, workdir: Path) -> ScenarioResult:
    from . import shm_files

    return shm_files.run(config, workdir)


def _retention(config: StressConfig, workdir: Path) -> ScenarioResult:
    from . import retention

    return retention.run(config, workdir)


#: Every scenario by name, in the order a run goes through them.
SCENARIOS: dict[str, Scenario] = {
    "crash": _crash,
    "faults": _faults,
    "concurrency": _concurrency,
    "badinput": _badinput,
    "isolation": _isolation,
    "recovery": _recovery_files,
    "errors": _errors,
    "fencing": _fencing,
    "shm": _shm,
    "retention": _retention,
}


def run_scenarios(
    config: StressConfig,
    names: Sequence[str] | None = None,
    *,
    strict: bool = False,
    progress: Callable[[ScenarioResult], None] | None = None,
) -> list[ScenarioResult]:
    """Run the scenarios named (all by default) and return their results.

    Databases go to ``config.workdir`` (kept) or to a temporary folder (removed after).

    :param strict: count failures that a known defect explains as failures.
    :param progress: called with each result as soon as its scenario ends.
    :raises KeyError: a name is not a scenario.
    """
    chosen = list(SCENARIOS) if not names else list(names)
    for name in chosen:
        if name not in SCENARIOS:
            raise KeyError(f"no scenario {name!r} (scenarios: {', '.join(SCENARIOS)})")
    quiet_logging()
    owned = config.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="cidx-stress-")) if owned else Path(config.workdir)  # type: ignore[arg-type]
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for name in chosen:
            result = SCENARIOS[name](config, workdir)
            if strict:
                result.count_known_as_failures()
            results.append(result)
            if progress is not None:
                progress(result)
    finally:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
    return results
