"""The reference docs keep up with the code: every hook, public name and error is documented.

In the manner of datasette's test_docs.py: a hookspec, export or exception added to the code
without a docs entry fails here, and so does a docs entry for something that no longer exists.
The docs live at the repository root, so these tests skip where only the distribution is
installed (an sdist of cidx-jobs-core has no docs folder).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import cidx_jobs
from cidx_jobs import JobPersistence, errors, hookspecs

DOCS = Path(__file__).resolve().parents[2] / "docs"

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


@pytest.mark.parametrize("primitive", sorted(JobPersistence.__abstractmethods__))
def test_every_storage_primitive_is_in_writing_a_backend(primitive: str) -> None:
    assert primitive in sections("writing-a-backend.md"), (
        f"the storage primitive JobPersistence.{primitive} has no section in "
        "docs/writing-a-backend.md"
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
