"""A Griffe extension for the API pages: our docstrings are Sphinx-style, mkdocstrings renders Markdown.

Two things Griffe does not do for Sphinx-style sources, done here once a package is loaded:

* ``#:`` comments before an assignment become the attribute's docstring (the code documents
  constants, enum members and type aliases that way).
* An RST literal block (a paragraph ending in ``::`` and an indented block) keeps one colon:
  Markdown shows the indented block as code by itself.
* Inline roles (``:class:`~cidx_jobs.errors.StorageError```, ``:meth:`transaction```) become
  cross-references to the generated pages; a role naming an object of the package that does not
  exist is a warning, so ``mkdocs build --strict`` fails on a stale reference. Roles naming other
  projects' objects (``:class:`~datetime.timedelta```) become plain code.

It lives in ``docs/`` but is excluded from the site (``exclude_docs`` in mkdocs.yml).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

logger = griffe.get_logger("cidx_docstrings")

_LITERAL_BLOCK = re.compile(r"(?<=\S)::$", re.MULTILINE)
_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|data|attr|mod|exc|obj|const):`(?P<target>[^`]+)`")
_OUR_PACKAGES = ("cidx_jobs", "cidx_jobs_contract", "cidx_jobs_memory", "cidx_jobs_sqlite")


class CidxDocstrings(griffe.Extension):
    """Attribute comments as docstrings, and Sphinx roles as cross-references."""

    def __init__(self) -> None:
        super().__init__()
        self._sources: dict[Path, list[str]] = {}

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name not in _OUR_PACKAGES:
            return
        for obj in _walk(pkg):
            if obj.is_attribute and obj.docstring is None:
                self._comment_docstring(obj)
            if obj.docstring is not None:
                obj.docstring.value = _LITERAL_BLOCK.sub(":", obj.docstring.value)
                obj.docstring.value = _ROLE.sub(
                    lambda match, obj=obj: self._reference(obj, match["target"], loader),
                    obj.docstring.value,
                )

    def _comment_docstring(self, attribute: griffe.Object) -> None:
        path = attribute.filepath
        if not isinstance(path, Path) or attribute.lineno is None:
            return
        lines = self._sources.get(path)
        if lines is None:
            lines = self._sources[path] = path.read_text(encoding="utf-8").splitlines()
        found: list[str] = []
        number = attribute.lineno - 2  # the line above the assignment, 0-based
        while number >= 0 and lines[number].lstrip().startswith("#:"):
            found.insert(0, lines[number].lstrip()[2:].strip())
            number -= 1
        if found:
            attribute.docstring = griffe.Docstring(
                "\n".join(found), lineno=number + 2, parent=attribute
            )

    def _reference(self, owner: griffe.Object, target: str, loader: griffe.GriffeLoader) -> str:
        name = target.lstrip("~.").removesuffix("()")
        title = name.rsplit(".", 1)[-1] if target.startswith("~") else name
        path = _resolve(owner, name, loader)
        if path is _FOREIGN:
            return f"`{title}`"  # another project's object: there is no page of ours for it
        if path is None:
            line = owner.docstring.lineno if owner.docstring else owner.lineno
            logger.warning(
                f"{owner.relative_filepath}:{line}: the docstring of {owner.path} names "
                f"{target!r}, which does not exist"
            )
            return f"`{title}`"
        return f'<autoref identifier="{path}" optional><code>{title}</code></autoref>'


#: What _find returns for an object of a package that is not ours (not loaded).
_FOREIGN = "<foreign>"


def _walk(obj: griffe.Object) -> list[griffe.Object]:
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias:
            found.extend(_walk(member))  # type: ignore[arg-type]
    return found


def _find(path: str, loader: griffe.GriffeLoader, depth: int = 0) -> str | None:
    """The canonical path of the object at ``path``, following imports; ``_FOREIGN`` for
    another project's object; ``None`` when there is no such object."""
    parts = path.split(".")
    current: Any = loader.modules_collection.members.get(parts[0])
    if current is None:
        return None if parts[0] in _OUR_PACKAGES else _FOREIGN
    if depth > 10:
        return None
    for index, part in enumerate(parts[1:], start=1):
        if current.is_alias:
            target = _find(current.target_path, loader, depth + 1)
            if target is None or target is _FOREIGN:
                return target
            return _find(".".join([target, *parts[index:]]), loader, depth + 1)
        current = current.members.get(part)
        if current is None:
            return None
    if current.is_alias:
        return _find(current.target_path, loader, depth + 1)
    return str(current.path)


def _resolve(owner: griffe.Object, name: str, loader: griffe.GriffeLoader) -> str | None:
    """Resolve ``name`` as Sphinx does: as an absolute path, then from the owner outwards."""
    first = name.split(".", 1)[0]
    if first in _OUR_PACKAGES or ("." in name and first not in _names_in_scope(owner)):
        found = _find(name, loader)
        if found is None and first in _OUR_PACKAGES and first != owner.package.name:
            return name  # another of our packages, not loaded with this one: link by name
        return found
    scope: griffe.Object | None = owner
    while scope is not None:
        found = _find(f"{scope.path}.{name}", loader)
        if found is not None:
            return found
        scope = scope.parent
    return None


def _names_in_scope(owner: griffe.Object) -> set[str]:
    names: set[str] = set()
    scope: griffe.Object | None = owner
    while scope is not None:
        names.update(scope.members)
        scope = scope.parent
    return names
