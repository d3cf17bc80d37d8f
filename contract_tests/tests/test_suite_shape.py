"""The shape of the suite: its public names, its mixins, and tests that all check something."""

from __future__ import annotations

import ast
import inspect
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import settings

import cidx_jobs_contract
from cidx_jobs_contract import JobStoreContract, StoreFixtures
from cidx_jobs_contract._hypothesis import contract_settings

MIXINS = [
    getattr(cidx_jobs_contract, name)
    for name in cidx_jobs_contract.__all__
    if name.endswith("Contract") and name != "JobStoreContract"
]


def test_every_public_name_resolves_and_has_a_docstring() -> None:
    for name in cidx_jobs_contract.__all__:
        value = getattr(cidx_jobs_contract, name)
        assert inspect.getdoc(value), f"{name} has no docstring"
    assert set(cidx_jobs_contract.__all__) <= set(dir(cidx_jobs_contract))
    with pytest.raises(AttributeError):
        cidx_jobs_contract.NoSuchThing  # noqa: B018


def test_the_contract_combines_every_mixin_and_none_is_collected_alone() -> None:
    assert len(MIXINS) == 20
    for mixin in MIXINS:
        assert issubclass(JobStoreContract, mixin)
        assert issubclass(mixin, StoreFixtures)
        assert not mixin.__name__.startswith("Test")
    assert not JobStoreContract.__name__.startswith("Test")


def test_no_test_name_is_defined_by_two_mixins() -> None:
    # A name defined twice would silently hide one of the tests.
    seen: dict[str, str] = {}
    for mixin in MIXINS:
        for name in vars(mixin):
            if name.startswith("test_"):
                assert name not in seen, f"{name} is in both {seen[name]} and {mixin.__name__}"
                seen[name] = mixin.__name__
    assert len(seen) == len([n for n in dir(JobStoreContract) if n.startswith("test_")])


def _checks_something(function: object) -> bool:
    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))  # type: ignore[arg-type]
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name in {"pytest.raises", "pytest.fail", "run_state_machine_as_test"} or (
                name.startswith("_assert") or name.endswith("assert_outcomes")
            ):
                return True
    return False


def test_every_contract_test_checks_something() -> None:
    for name in dir(JobStoreContract):
        if name.startswith("test_"):
            assert _checks_something(getattr(JobStoreContract, name)), f"{name} asserts nothing"


def test_every_module_with_asserts_is_marked_for_rewriting() -> None:
    package = Path(cidx_jobs_contract.__file__).parent
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        if any(isinstance(node, ast.Assert) for node in ast.walk(tree)):
            module = f"cidx_jobs_contract.{path.stem}"
            assert module in cidx_jobs_contract.ASSERTING_MODULES, module


def test_hypothesis_profiles(monkeypatch: pytest.MonkeyPatch) -> None:
    settings.get_profile("ci")
    settings.get_profile("dev")
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "ci")
    ci = contract_settings()
    assert (ci.derandomize, ci.database, ci.deadline) == (True, None, None)
    assert ci.max_examples <= 50
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "dev")
    assert contract_settings().max_examples > ci.max_examples
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "no-such-profile")
    assert contract_settings().max_examples == ci.max_examples
    monkeypatch.delenv("HYPOTHESIS_PROFILE")
    assert contract_settings().derandomize is True
    assert os.environ.get("HYPOTHESIS_PROFILE") is None
