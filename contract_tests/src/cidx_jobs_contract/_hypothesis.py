"""Hypothesis settings of the contract suite, chosen by the ``HYPOTHESIS_PROFILE`` variable.

Two profiles matter: ``ci`` (the default: the same examples every run, nothing
written to disk) and ``dev`` (more, random examples). Hypothesis ships a
``ci`` profile of its own; this module registers ``ci`` and ``dev`` only where
no profile of that name exists, so neither Hypothesis' nor a project's own
profiles are ever replaced. The size of the stateful run (examples and steps)
is the contract's own choice per profile, so the suite stays quick on a
backend that writes to disk.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import InvalidArgument

PROFILE_ENV_VAR = "HYPOTHESIS_PROFILE"
#: Set to 1 to skip shrinking: a failure is reported at once, with the example as found
#: (unshrunk, so longer), instead of after minutes of minimising on a slow backend.
NO_SHRINK_ENV_VAR = "CIDX_JOBS_CONTRACT_NO_SHRINK"
DEFAULT_PROFILE = "ci"

_PROFILES: dict[str, dict[str, Any]] = {
    "ci": {"derandomize": True, "database": None, "deadline": None, "print_blob": True},
    "dev": {"deadline": None},
}
#: (examples, steps) of the stateful test under each profile.
_STATEFUL_BUDGET: dict[str, tuple[int, int]] = {"ci": (40, 30), "dev": (300, 50)}


def register_profiles() -> None:
    """Register the ``ci`` and ``dev`` profiles, except under names already registered."""
    for name, values in _PROFILES.items():
        try:
            settings.get_profile(name)
        except InvalidArgument:
            settings.register_profile(name, **values)


def contract_settings() -> settings:
    """The settings of the stateful contract test.

    The profile named by ``HYPOTHESIS_PROFILE`` (``ci`` when unset or unknown),
    with the contract's budget of examples and steps for ``ci`` and ``dev``;
    any other registered profile is used as it is. With
    ``CIDX_JOBS_CONTRACT_NO_SHRINK=1`` (or the command line's ``--no-shrink``),
    a failing example is reported without shrinking.
    """
    register_profiles()
    name = os.environ.get(PROFILE_ENV_VAR) or DEFAULT_PROFILE
    try:
        parent = settings.get_profile(name)
    except InvalidArgument:
        name = DEFAULT_PROFILE
        parent = settings.get_profile(name)
    examples, steps = _STATEFUL_BUDGET.get(name, (parent.max_examples, parent.stateful_step_count))
    phases = tuple(parent.phases)
    if os.environ.get(NO_SHRINK_ENV_VAR, "").strip() not in ("", "0"):
        phases = tuple(phase for phase in phases if phase is not Phase.shrink)
    # A backend on a slow disk must not fail for being slow: timing is a benchmark's job.
    return settings(
        parent,
        deadline=None,
        suppress_health_check=[*parent.suppress_health_check, HealthCheck.too_slow],
        max_examples=examples,
        stateful_step_count=steps,
        phases=phases,
    )


register_profiles()
