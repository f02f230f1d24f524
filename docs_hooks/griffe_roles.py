"""Griffe extension: Sphinx roles in docstrings (``:class:`~pulse_celery.errors.ConfigError```) as Markdown.

The package's docstrings cross-reference with Sphinx roles, which Markdown would show as
``:class:`` followed by code. A role whose target is an object the docs site documents (a
name of ``pulse_celery.__all__``, ``pulse_celery.testing.__all__`` or an exception class)
becomes a link to it; any other becomes inline code. ``~`` shows only the last name, as in
Sphinx. Wired in mkdocs.yml under mkdocstrings' ``extensions``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const):`(~?)(\.?[\w.]+)(\(\))?`")


@functools.cache
def documented() -> dict[int, str]:
    """id() of each object the site documents -> its identifier (the anchor mkdocstrings gives it)."""
    import pulse_celery
    import pulse_celery.errors
    import pulse_celery.testing
    from pulse_celery.worker.step import PulseStep

    found: dict[int, str] = {}
    for name in pulse_celery.__all__:
        if name not in ("PulseStep", "__version__") and not hasattr(pulse_celery.errors, name):
            found[id(getattr(pulse_celery, name))] = f"pulse_celery.{name}"
    for name in pulse_celery.testing.__all__:
        found[id(getattr(pulse_celery.testing, name))] = f"pulse_celery.testing.{name}"
    for name, value in vars(pulse_celery.errors).items():
        if isinstance(value, type) and value.__module__ == pulse_celery.errors.__name__:
            found[id(value)] = f"pulse_celery.errors.{name}"
    found[id(PulseStep)] = "pulse_celery.worker.step.PulseStep"
    return found


def resolve(target: str, module: str, package: str) -> Any:
    """The object ``target`` names, read from ``module`` when it is a bare name; None if unknown."""
    if target.startswith("."):
        target = importlib.util.resolve_name(target, package)
    parts = target.split(".")
    candidates = [(module, parts)] if len(parts) == 1 else []
    candidates += [(".".join(parts[:i]), parts[i:]) for i in range(len(parts), 0, -1)]
    for module_name, attributes in candidates:
        try:
            value: Any = importlib.import_module(module_name)
            for attribute in attributes:
                value = getattr(value, attribute)
        except (ImportError, AttributeError, ValueError, TypeError):
            continue
        return value
    return None


def markdown(text: str, module: str, package: str) -> str:
    def replace(match: re.Match[str]) -> str:
        short, target, call = match.groups()
        shown = (target.rsplit(".", 1)[-1] if short else target.lstrip(".")) + (call or "")
        identifier = documented().get(id(resolve(target, module, package)))
        return f"[`{shown}`][{identifier}]" if identifier else f"`{shown}`"

    return ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            module = obj.module
            package = module.path if module.is_package else module.path.rpartition(".")[0]
            obj.docstring.value = markdown(obj.docstring.value, module.path, package)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member, seen)  # type: ignore[arg-type]
