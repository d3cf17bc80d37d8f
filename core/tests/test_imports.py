"""Core's modules import each other without a cycle, counting every import.

Imports under ``if TYPE_CHECKING:`` and inside functions count too: a cycle hidden
that way is still two modules that cannot be understood (or type-checked) apart.
"""

from __future__ import annotations

import ast
from pathlib import Path

import cidx_jobs

PACKAGE = Path(cidx_jobs.__file__).resolve().parent
NAME = "cidx_jobs"


def module_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE).with_suffix("")
    # A package's __init__ is the package itself (cidx_jobs._cli/__init__.py is cidx_jobs._cli).
    parts = list(relative.parent.parts) if relative.name == "__init__" else list(relative.parts)
    return ".".join([NAME, *parts])


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports_of(module: str) -> set[str]:
    """The modules of this package that ``module`` imports, anywhere in its body."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    is_package = MODULES[module].name == "__init__.py"
    base = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base.rsplit(".", node.level - 1)[0] if node.level > 1 else base
                target = f"{anchor}.{node.module}" if node.module else anchor
            else:
                target = node.module or ""
            for alias in node.names:
                # `from . import errors` imports the submodule; `from . import SyncJob`
                # needs the package's __init__ to have run.
                submodule = f"{target}.{alias.name}"
                found.add(submodule if submodule in MODULES else target)
    return {name for name in found if name in MODULES and name != module}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_module_list_is_complete() -> None:
    assert {
        "cidx_jobs",
        "cidx_jobs.backend",
        "cidx_jobs._persistence",
        "cidx_jobs._plugins",
    } <= set(MODULES)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_core_has_no_import_cycle() -> None:
    graph = {module: imports_of(module) for module in MODULES}
    # The package imports its modules to re-export them; a module importing the package
    # back (e.g. `from . import SyncJob`) would be a cycle, and is caught here.
    assert "cidx_jobs._persistence" in graph["cidx_jobs"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])
