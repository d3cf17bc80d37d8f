"""``python -m cidx_jobs_stress``: run the stress scenarios and print the summary table."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ._config import StressConfig
from ._known import KNOWN_DEFECTS
from ._report import ScenarioResult, format_table
from ._runner import SCENARIOS, run_scenarios

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cidx_jobs_stress",
        description="Try to break the cidx-jobs stores: crashes, faults, concurrency, bad input, "
        "isolation. Exits 1 if any check failed.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="the short version of every scenario (CI)"
    )
    parser.add_argument(
        "--seconds", type=float, help="how long the concurrency workers run (default 30, quick 3)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="the seed of every random choice (default 0)"
    )
    parser.add_argument(
        "--kills", type=int, help="how many times to kill the writer (default 300, quick 24)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(SCENARIOS),
        help="run only this scenario (repeatable)",
    )
    parser.add_argument("--workdir", type=Path, help="keep the databases in this folder")
    parser.add_argument(
        "--strict", action="store_true", help="count failures of known, unfixed defects as failures"
    )
    return parser


def _details(result: ScenarioResult) -> None:
    print(f"\n## {result.name}", flush=True)
    for name, count in sorted(result.outcomes.items()):
        print(f"  {name}: {count}")
    for reason in result.skipped:
        print(f"  SKIPPED {reason}")
    for name, count in sorted(result.known.items()):
        print(f"  KNOWN DEFECT {name} x{count}: {result.known_examples[name][:300]}")
    for message in result.messages:
        print(f"  FAILED {message[:1000]}")
    if result.failures > len(result.messages):
        print(f"  ... and {result.failures - len(result.messages)} more failures")


def main(argv: list[str] | None = None) -> int:
    """Run the scenarios; 0 when no check failed, 1 otherwise."""
    args = _parser().parse_args(argv)
    config = StressConfig(
        quick=args.quick,
        seed=args.seed,
        seconds=args.seconds,
        kills=args.kills,
        workdir=args.workdir,
    )
    started = time.monotonic()
    results = run_scenarios(config, args.only, strict=args.strict, progress=_details)
    print(f"\n{format_table(results)}\n")
    known = sorted({name for result in results for name in result.known})
    if known:
        print(
            "Known defects (each has an xfail regression test in stress/tests/test_regressions.py):"
        )
        for defect in KNOWN_DEFECTS:
            if defect.name in known:
                print(f"  - {defect.name}: {defect.test}")
    skipped = [reason for result in results for reason in result.skipped]
    if skipped:
        print("Skipped here: " + "; ".join(skipped))
    failures = sum(result.failures for result in results)
    print(
        f"{'FAILED' if failures else 'OK'}: {failures} failures in {time.monotonic() - started:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
