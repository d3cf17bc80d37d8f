"""The reference docs keep up with the code: every hook, public name and error is documented.

In the manner of datasette's test_docs.py: a hookspec, export or exception added to the code
without a docs entry fails here, and so does a docs entry for something that no longer exists.
Two kinds of docs are checked: the hand-written pages (a section per hook, method and error),
and the API pages under docs/api/, which mkdocstrings generates from the docstrings: every public
name must be rendered by a ``::: name`` directive there and have a docstring to render.
The docs live at the repository root, so these tests skip where only the distribution is
installed (an sdist of cidx-jobs-core has no docs folder).
"""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
import re
import typing
from pathlib import Path
from types import ModuleType

import pytest

import cidx_jobs
from cidx_jobs import JobPersistence, backend, errors, hookspecs
from cidx_jobs.backend import Storage

DOCS = Path(__file__).resolve().parents[2] / "docs"
API = DOCS / "api"

pytestmark = pytest.mark.skipif(
    not DOCS.is_dir(),
    reason=f"the docs live at the repository root ({DOCS}), which this installation lacks",
)

_HEADING = re.compile(r"^(#{1,6})[ \t]+`?([^`\n]+?)`?[ \t]*#*[ \t]*$", re.MULTILINE)
_FENCE = re.compile(r"^```[^\n]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
_CODE_SPAN = re.compile(r"`([^`\n]+)`")
_BUILTINS_TOO_BROAD = {object, BaseException, Exception}


def read(page: str) -> str:
    return (DOCS / page).read_text(encoding="utf-8")


def sections(page: str) -> dict[str, str]:
    """Each heading's text mapped to its section: the text up to the next heading of any level."""
    raw = read(page)
    # Blank out code blocks, keeping every offset, so that '# comments' are not headings.
    text = _FENCE.sub(lambda m: re.sub(r"[^\n]", " ", m.group(0)), raw)
    found: dict[str, str] = {}
    matches = list(_HEADING.finditer(text))
    for match, following in zip(matches, [*matches[1:], None], strict=True):
        end = following.start() if following is not None else len(raw)
        found[match.group(2).strip()] = raw[match.end() : end]
    return found


def code_text(page: str) -> str:
    """Everything a page shows as code: fenced blocks, inline code spans and headings."""
    text = read(page)
    fenced = [m.group(1) for m in _FENCE.finditer(text)]
    prose = _FENCE.sub("", text)
    spans = [m.group(1) for m in _CODE_SPAN.finditer(prose)]
    headings = [m.group(2) for m in _HEADING.finditer(prose)]
    return "\n".join([*fenced, *spans, *headings])


def hookspec_names() -> list[str]:
    marker = f"{hookspecs.PROJECT_NAME}_spec"
    return sorted(
        name
        for name, value in vars(hookspecs).items()
        if name.startswith("cidx_jobs_") and hasattr(value, marker)
    )


def documented_hooks() -> dict[str, str]:
    return {
        name: body for name, body in sections("hooks.md").items() if name.startswith("cidx_jobs_")
    }


def _squash(text: str) -> str:
    """A signature without whitespace or trailing commas, for comparing layouts."""
    return re.sub(r",\)", ")", re.sub(r"\s+", "", text))


def rendered_signature(name: str) -> str:
    """``def name(arg: annotation, ...) -> result`` as the hookspec declares it."""
    signature = inspect.signature(getattr(hookspecs, name))
    params = ", ".join(f"{p.name}: {p.annotation}" for p in signature.parameters.values())
    return f"def {name}({params}) -> {signature.return_annotation}"


def test_hookspecs_exist() -> None:
    assert len(hookspec_names()) >= 7, "hookspec discovery found too few hooks"


@pytest.mark.parametrize("hook", hookspec_names())
def test_every_hookspec_is_documented(hook: str) -> None:
    assert hook in documented_hooks(), f"docs/hooks.md has no section (heading) for {hook}"


def test_every_documented_hook_exists() -> None:
    stale = sorted(set(documented_hooks()) - set(hookspec_names()))
    assert not stale, f"docs/hooks.md documents hooks that no longer exist: {stale}"


@pytest.mark.parametrize("hook", hookspec_names())
def test_hook_section_shows_the_exact_signature(hook: str) -> None:
    body = documented_hooks().get(hook, "")
    blocks = [_squash(m.group(1)) for m in _FENCE.finditer(body)]
    expected = _squash(rendered_signature(hook))
    assert expected in blocks, (
        f"the {hook} section of docs/hooks.md must show its signature in a code block:\n"
        f"{rendered_signature(hook)}"
    )


@pytest.mark.parametrize("hook", hookspec_names())
def test_hook_section_states_its_kind(hook: str) -> None:
    body = documented_hooks().get(hook, "")
    kind = re.search(r"^\*\*Kind:\*\*(.*)$", body, re.MULTILINE)
    assert kind is not None, f"the {hook} section of docs/hooks.md needs a '**Kind:**' line"
    firstresult = getattr(getattr(hookspecs, hook), f"{hookspecs.PROJECT_NAME}_spec")["firstresult"]
    says_firstresult = "firstresult" in kind.group(1) and "not `firstresult`" not in kind.group(1)
    assert says_firstresult == firstresult, (
        f"the '**Kind:**' line of {hook} must say whether it is firstresult ({firstresult})"
    )


@pytest.mark.parametrize("hook", hookspec_names())
def test_hook_section_has_an_example_plugin(hook: str) -> None:
    body = documented_hooks().get(hook, "")
    assert re.search(rf"@hookimpl[^\n]*\n\s*def {hook}\(", body), (
        f"the {hook} section of docs/hooks.md needs an example @hookimpl implementation"
    )


@pytest.mark.parametrize("name", sorted(cidx_jobs.__all__))
def test_every_export_is_in_the_reference(name: str) -> None:
    assert re.search(rf"(?<!\w){re.escape(name)}(?!\w)", code_text("reference.md")), (
        f"cidx_jobs.{name} is exported but docs/reference.md never shows it as code"
    )


@pytest.mark.parametrize("method", sorted(n for n in vars(JobPersistence) if n[0] != "_"))
def test_every_public_method_has_a_reference_section(method: str) -> None:
    assert method in sections("reference.md"), (
        f"JobPersistence.{method} has no section (heading) in docs/reference.md"
    )


@pytest.mark.parametrize("method", sorted(n for n in vars(Storage) if n[0] != "_"))
def test_every_storage_method_is_in_writing_a_backend(method: str) -> None:
    assert method in sections("writing-a-backend.md"), (
        f"the storage method Storage.{method} has no section in docs/writing-a-backend.md"
    )


@pytest.mark.parametrize("name", sorted(backend.__all__))
def test_every_backend_export_is_in_writing_a_backend(name: str) -> None:
    assert re.search(rf"(?<!\w){re.escape(name)}(?!\w)", code_text("writing-a-backend.md")), (
        f"cidx_jobs.backend.{name} is exported but docs/writing-a-backend.md never shows it"
    )


@pytest.mark.parametrize("name", sorted(errors.__all__))
def test_every_error_is_documented_with_its_builtin_bases(name: str) -> None:
    error = getattr(errors, name)
    body = sections("reference.md").get(name)
    assert body is not None, f"cidx_jobs.errors.{name} has no section in docs/reference.md"
    builtins = [
        base.__name__
        for base in error.__mro__
        if base.__module__ == "builtins" and base not in _BUILTINS_TOO_BROAD
    ]
    missing = [b for b in builtins if not re.search(rf"`{b}`", body)]
    assert not missing, (
        f"the {name} section of docs/reference.md must say it is also a {', '.join(missing)}"
    )


def test_every_documented_error_exists() -> None:
    documented = {
        heading for heading in sections("reference.md") if re.fullmatch(r"[A-Z]\w*Error", heading)
    }
    stale = sorted(documented - set(errors.__all__))
    assert not stale, f"docs/reference.md documents errors that no longer exist: {stale}"


# -- the generated API pages ---------------------------------------------------------------

_DIRECTIVE = re.compile(
    r"^::: *(?P<name>[\w.]+)[ \t]*\n(?P<options>(?:[ \t]+\S[^\n]*\n)*)", re.MULTILINE
)
#: Every module whose public names the API pages render, and how to list those names.
_API_MODULES = ("cidx_jobs", "cidx_jobs.backend", "cidx_jobs.errors", "cidx_jobs.hookspecs")


def api_directives() -> dict[str, str]:
    """Each ``::: identifier`` of the API pages, mapped to its indented options."""
    found: dict[str, str] = {}
    for page in sorted(API.glob("*.md")):
        for match in _DIRECTIVE.finditer(page.read_text(encoding="utf-8")):
            found[match["name"]] = match["options"]
    return found


def public_names() -> list[str]:
    """The dotted path of every public name the API pages must render."""
    names: list[str] = []
    for module_name in (*_API_MODULES, "cidx_jobs_contract"):
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if not isinstance(getattr(module, name), ModuleType):
                names.append(f"{module_name}.{name}")
    return sorted(names)


def rendered(path: str, directives: dict[str, str]) -> bool:
    """Whether a directive renders ``path``: its own, or its module's without a member list."""
    if path in directives:
        return True
    module = path.rpartition(".")[0]
    return module in directives and "members:" not in directives[module]


def defining_module(module: ModuleType, name: str) -> ModuleType:
    """The module whose source assigns ``name``, following ``from .x import name``."""
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and any(a.name == name for a in node.names):
            package = module.__name__ if hasattr(module, "__path__") else module.__package__
            source = importlib.import_module("." * node.level + (node.module or ""), package)
            return defining_module(source, name)
    return module


def attribute_has_docstring(module: ModuleType, name: str) -> bool:
    """Whether the assignment of ``name`` has a ``#:`` comment above it or a string after it
    (what the API pages render as its docstring)."""
    module = defining_module(module, name)
    source = inspect.getsource(module)
    lines = source.splitlines()
    body = ast.parse(source).body
    for index, node in enumerate(body):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets):
            comment = lines[node.lineno - 2].lstrip().startswith("#:") if node.lineno > 1 else False
            following = body[index + 1] if index + 1 < len(body) else None
            string = (
                isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            )
            return comment or string
    raise AssertionError(f"{module.__name__} never assigns {name}")


def own_docstring(value: object) -> str | None:
    """The docstring ``value`` itself has (a class's, not one inherited from a base)."""
    if isinstance(value, type):
        doc = vars(value).get("__doc__")
        return doc if isinstance(doc, str) else None
    if isinstance(value, property):
        value = value.fget
    doc = getattr(value, "__doc__", None)
    return doc if isinstance(doc, str) else None


def test_the_api_pages_exist() -> None:
    assert len(api_directives()) >= 10, "docs/api/ has too few ::: directives"


@pytest.mark.parametrize("path", public_names())
def test_every_public_name_is_in_the_api_pages(path: str) -> None:
    assert rendered(path, api_directives()), (
        f"{path} is public but no '::: {path}' directive (or one for its module) in docs/api/ "
        "renders it"
    )


@pytest.mark.parametrize("path", sorted(api_directives()))
def test_every_api_directive_names_something_that_exists(path: str) -> None:
    module_name, _, name = path.rpartition(".")
    try:
        importlib.import_module(path)
        return
    except ImportError:
        pass
    module = importlib.import_module(module_name)
    assert hasattr(module, name), f"docs/api/ renders {path}, which does not exist"


@pytest.mark.parametrize("path", public_names())
def test_every_public_name_has_a_docstring(path: str) -> None:
    module_name, _, name = path.rpartition(".")
    module = importlib.import_module(module_name)
    value = getattr(module, name)
    # On Python 3.10 a subscripted alias such as Callable[[X], Y] passes inspect.isclass();
    # it is a type alias, documented by a '#:' comment like any other assignment.
    is_alias = typing.get_origin(value) is not None
    if (inspect.isclass(value) or inspect.isfunction(value)) and not is_alias:
        assert (own_docstring(value) or "").strip(), f"{path} has no docstring"
    else:
        assert attribute_has_docstring(module, name), (
            f"{path} has no docstring: write a '#:' comment above its assignment, or a string "
            "after it"
        )


def _members(cls: type) -> list[str]:
    return sorted(
        name
        for name, value in vars(cls).items()
        if name[0] != "_"
        and (callable(value) or isinstance(value, (property, classmethod, staticmethod)))
    )


@pytest.mark.parametrize(
    ("cls", "member"),
    [
        (cls, member)
        for cls in (
            JobPersistence,
            Storage,
            cidx_jobs.Hooks,
            cidx_jobs.PluginManager,
            backend.StatusChange,
            backend.FaultInjector,
        )
        for member in _members(cls)
    ],
    ids=lambda value: value.__name__ if isinstance(value, type) else str(value),
)
def test_every_public_method_has_a_docstring(cls: type, member: str) -> None:
    value = vars(cls)[member]
    if isinstance(value, (classmethod, staticmethod)):
        value = value.__func__
    assert (own_docstring(value) or "").strip(), f"{cls.__name__}.{member} has no docstring"


@pytest.mark.parametrize(
    "member",
    [
        f"{cls.__name__}.{member.name}"
        for cls in (backend.Capability, backend.Fault)
        for member in cls
    ],
)
def test_every_backend_enum_member_has_a_docstring(member: str) -> None:
    class_name, _, name = member.partition(".")
    cls = getattr(backend, class_name)
    assert issubclass(cls, enum.Enum)
    lines = inspect.getsourcelines(cls)[0]
    assignment = next(
        index for index, line in enumerate(lines) if re.match(rf"\s+{name}\s*=", line)
    )
    assert lines[assignment - 1].lstrip().startswith("#:"), (
        f"cidx_jobs.backend.{member} has no '#:' comment above it"
    )
