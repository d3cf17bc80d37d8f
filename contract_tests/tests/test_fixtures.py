"""How a backend plugs into the suite: the fixtures it overrides and the capabilities it declares."""

from __future__ import annotations

import pytest

# Imported before pytester's snapshot of sys.modules, so that inner runs reuse them
# instead of importing (and assertion-rewriting) them again.
import cidx_jobs_memory  # noqa: F401
from cidx_jobs import Hooks
from cidx_jobs.backend import Capability
from cidx_jobs_contract import Capabilities, CrudContract, JobStoreContract, requires
from cidx_jobs_contract._capabilities import required_by, skip_reason

pytest_plugins = ["pytester"]

_HEADER = """
import contextlib
import pytest
from cidx_jobs.backend import Backend
from cidx_jobs_memory import MemoryStorage
from cidx_jobs_contract import Capabilities, CrudContract, JobStoreContract, PersistenceContract


def memory_factory(config):
    return MemoryStorage.from_config(config)

"""


def _run(pytester: pytest.Pytester, body: str, *arguments: str) -> pytest.RunResult:
    pytester.makepyfile(test_backend=_HEADER + body)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rs", *arguments)


def test_a_subclass_that_does_not_name_its_backend_is_told_how(pytester: pytest.Pytester) -> None:
    assert "test_load_of_an_unknown_id_returns_none" in dir(JobStoreContract)
    result = _run(
        pytester,
        "class TestNoBackend(JobStoreContract):\n    pass\n",
        "-k",
        "test_load_of_an_unknown_id",
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*TestNoBackend must override the `base_config` fixture*"])


def test_only_the_subclass_is_collected(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
class TestCrudOnly(CrudContract):
    @pytest.fixture
    def base_config(self):
        return "memory://"
""",
    )
    # the imported mixins themselves are not collected: only the subclass's tests run
    names = [name for name in dir(CrudContract) if name.startswith("test_")]
    result.assert_outcomes(passed=len(names))


def test_the_capabilities_come_from_the_registration() -> None:
    memory = Hooks().backends()["memory"]
    assert memory.capabilities == {Capability.CONCURRENT_THREADS}
    assert Capabilities.from_declared(memory.capabilities) == Capabilities(concurrent_threads=True)
    assert Capabilities.from_declared(["persistent", Capability.FAULT_INJECTION]) == Capabilities(
        persistent=True, fault_injection=True
    )


def test_declared_capabilities_run_their_tests_without_an_override(
    pytester: pytest.Pytester,
) -> None:
    result = _run(
        pytester,
        """
class TestMemory(JobStoreContract):
    @pytest.fixture
    def base_config(self):
        return "memory://"
""",
        "-k",
        "test_compare_and_set_has_exactly_one_winner or survives_close",
    )
    # concurrent_threads is declared by the memory backend, persistent is not
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED*needs capability 'persistent'*"])


def test_a_missing_capability_skips_visibly_naming_it(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
class TestSingleThreaded(JobStoreContract):
    @pytest.fixture
    def base_config(self):
        return "memory://"

    @pytest.fixture
    def capabilities(self):
        return Capabilities(concurrent_threads=False)
""",
        "-k",
        "threads or test_compare_and_set_has_exactly_one_winner",
    )
    outcomes = result.parseoutcomes()
    assert outcomes["skipped"] >= 3
    assert "passed" not in outcomes
    result.stdout.fnmatch_lines(["SKIPPED*needs capability 'concurrent_threads'*"])


def test_a_backend_without_a_scratch_factory_is_told_how(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
class TestNoScratch(CrudContract):
    @pytest.fixture
    def base_config(self):
        return "memory://"

    @pytest.fixture
    def backend(self):
        return Backend(name="memory", plugin="test-plugin", factory=memory_factory)
""",
        "-k",
        "test_load_of_an_unknown_id",
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*backend 'memory' (plugin 'test-plugin') registered no scratch*"])


def test_a_scratch_factory_that_leaves_files_behind_fails(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
@contextlib.contextmanager
def leaky_scratch(base, workdir):
    (workdir / "left-over.db").write_text("")
    yield "memory://"


class TestLeaky(CrudContract):
    @pytest.fixture
    def base_config(self):
        return "memory://"

    @pytest.fixture
    def backend(self):
        return Backend(
            name="memory", plugin="test-plugin", factory=memory_factory, scratch=leaky_scratch
        )
""",
        "-k",
        "test_load_of_an_unknown_id",
    )
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*scratch factory of backend 'memory' left*left-over.db*behind*"])


_INVENTORIED = """
#: The "tables" of a pretend database server: what the inventory lists.
TABLES = {"team_a_jobs"}  # there before the test run, and none of its business
MADE = []


@contextlib.contextmanager
def table_scratch(base, workdir):
    table = f"scratch_{len(MADE)}_jobs"
    MADE.append(table)
    TABLES.add(table)
    try:
        yield "memory://"
    finally:
        if DROPS:
            TABLES.discard(table)


def inventory(base):
    assert base == "memory://"
    return sorted(TABLES)


class TestTables(CrudContract):
    @pytest.fixture
    def base_config(self):
        return "memory://"

    @pytest.fixture
    def backend(self):
        return Backend(
            name="memory",
            plugin="test-plugin",
            factory=memory_factory,
            scratch=table_scratch,
            inventory=inventory,
        )
"""


def test_a_scratch_factory_that_leaves_a_listed_storage_behind_fails(
    pytester: pytest.Pytester,
) -> None:
    result = _run(pytester, "DROPS = False\n" + _INVENTORIED, "-k", "test_load_of_an_unknown_id")
    # The test itself passed; its teardown found the scratch table still there.
    result.assert_outcomes(passed=1, errors=1)
    assert (
        "the scratch factory of backend 'memory' left ['scratch_0_jobs'] behind (as its "
        "inventory lists them)" in result.stdout.str()
    )
    assert "team_a_jobs" not in result.stdout.str(), "what was there before is not blamed"


def test_a_scratch_factory_that_removes_what_it_made_passes_the_inventory_check(
    pytester: pytest.Pytester,
) -> None:
    result = _run(
        pytester,
        "DROPS = True\n" + _INVENTORIED,
        "-k",
        "test_load_of_an_unknown_id or test_save_then_load_returns",
    )
    result.assert_outcomes(passed=2)


def test_declaring_persistent_on_a_backend_that_forgets_fails(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
class TestClaimsPersistence(PersistenceContract):
    @pytest.fixture
    def base_config(self):
        return "memory://"

    @pytest.fixture
    def capabilities(self):
        return Capabilities(persistent=True)
""",
        "-k",
        "survives",
    )
    result.assert_outcomes(failed=1)


def test_a_capabilities_fixture_of_the_wrong_type_is_an_error(pytester: pytest.Pytester) -> None:
    result = _run(
        pytester,
        """
class TestWrongCapabilities(CrudContract):
    @pytest.fixture
    def base_config(self):
        return "memory://"

    @pytest.fixture
    def capabilities(self):
        return {"persistent": True}
""",
        "-k",
        "test_load_of_an_unknown_id",
    )
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*return a cidx_jobs_contract.Capabilities*"])


def test_capabilities_name_and_describe_every_flag() -> None:
    assert Capabilities.names() == (
        "persistent",
        "concurrent_threads",
        "multi_process",
        "fault_injection",
    )
    assert set(Capabilities.names()) == {capability.value for capability in Capability}
    for name in Capabilities.names():
        assert Capabilities.describe(name)
    with pytest.raises(ValueError, match="flying"):
        Capabilities.describe("flying")
    assert Capabilities().missing(["persistent", "concurrent_threads"]) == [
        "persistent",
        "concurrent_threads",
    ]
    assert Capabilities(persistent=True, concurrent_threads=False).missing(
        ["persistent", "concurrent_threads"]
    ) == ["concurrent_threads"]


def test_requires_marks_tests_and_refuses_unknown_flags() -> None:
    @requires("persistent")
    @requires("multi_process")
    def test_something() -> None:
        """A marked test."""

    assert set(required_by(test_something)) == {"persistent", "multi_process"}
    assert required_by(lambda: None) == ()
    with pytest.raises(ValueError, match="flying"):
        requires("flying")
    reason = skip_reason(["persistent", "multi_process"])
    assert "'persistent'" in reason
    assert "'multi_process'" in reason
