"""The ```python examples of the user docs run against the real API, so they cannot rot.

The blocks of one page run in order in one namespace, as a reader pastes them, in a fresh
working directory with ``CIDX_JOBS_URL=memory://``. Signatures and declarations, which are not
runnable, are fenced as ```py instead and not run. An HTML comment just before a block changes
how it is run:

* ``<!-- docs-example: requires MODULE ... -->``: the block needs modules that are not
  dependencies of the core (FastAPI, say). It is always compiled, and run on its own where the
  modules import.
* ``<!-- docs-example: compile-only -->``: the block illustrates code for software that does not
  exist here (a fictional database driver); it is only compiled.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import CodeType

import attrs
import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = (
    "index.md",
    "getting-started.md",
    "configuration.md",
    "reference.md",
    "hooks.md",
    "writing-a-backend.md",
    "lifecycle.md",
    "sqlite.md",
    "postgresql.md",
    "operations.md",
)

pytestmark = pytest.mark.skipif(
    not DOCS.is_dir(),
    reason=f"the docs live at the repository root ({DOCS}), which this installation lacks",
)

_BLOCK = re.compile(
    r"^(?:<!-- docs-example: (?P<directive>[^>]*?) -->\n)?```python\n(?P<code>.*?)^```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


@attrs.frozen
class Example:
    page: str
    line: int  # of the block's first line of code, 1-based
    code: str
    requires: tuple[str, ...] = ()
    compile_only: bool = False

    @property
    def runs_in_page(self) -> bool:
        return not self.requires and not self.compile_only

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"

    def compile(self) -> CodeType:
        # Padding with newlines makes tracebacks point at the line in the Markdown file.
        return compile("\n" * (self.line - 1) + self.code, str(DOCS / self.page), "exec")


def examples(page: str) -> list[Example]:
    text = (DOCS / page).read_text(encoding="utf-8")
    found = []
    for match in _BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        words = (match["directive"] or "").split()
        if not words:
            found.append(Example(page, line, match["code"]))
        elif words == ["compile-only"]:
            found.append(Example(page, line, match["code"], compile_only=True))
        elif words[0] == "requires" and len(words) > 1:
            found.append(Example(page, line, match["code"], requires=tuple(words[1:])))
        else:
            raise AssertionError(f"{page}:{line}: unknown docs-example directive {words!r}")
    return found


def _run(example: Example, namespace: dict[str, object]) -> None:
    try:
        exec(example.compile(), namespace)
    except Exception as error:
        raise AssertionError(f"the example at {example.name} failed: {error!r}") from error


@pytest.fixture
def docs_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIDX_JOBS_URL", "memory://")
    monkeypatch.delenv("CIDX_JOBS_BLOCK_PLUGINS", raising=False)


@pytest.mark.parametrize("page", PAGES)
def test_every_python_block_is_found(page: str) -> None:
    text = (DOCS / page).read_text(encoding="utf-8")
    found = examples(page)
    assert found, f"{page} has no ```python examples"
    assert len(found) == text.count("```python"), f"{page}: a ```python block was not parsed"


@pytest.mark.usefixtures("docs_env")
@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run_in_order(page: str) -> None:
    namespace: dict[str, object] = {"__name__": f"docs_{page.removesuffix('.md')}"}
    for example in examples(page):
        if example.runs_in_page:
            _run(example, namespace)
        else:
            example.compile()  # a syntax error fails even where the block cannot run


_OPTIONAL = [example for page in PAGES if DOCS.is_dir() for example in examples(page)]


@pytest.mark.usefixtures("docs_env")
@pytest.mark.parametrize(
    "example",
    [pytest.param(e, id=e.name) for e in _OPTIONAL if e.requires]
    or [pytest.param(None, id="none")],
)
def test_examples_with_optional_dependencies(example: Example | None) -> None:
    if example is None:
        pytest.skip("no example needs an optional dependency")
    for module in example.requires:
        pytest.importorskip(module, reason=f"the example at {example.name} needs {module}")
    _run(example, {"__name__": "docs_optional_example"})
