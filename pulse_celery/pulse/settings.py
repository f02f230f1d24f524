"""Settings defined once: a field's name, type, default and doc; read from any source as users write them.

A settings class is a frozen dataclass whose fields are made with :func:`setting`: the
annotation is the type, the default is the default, and the metadata holds the one-line doc
and an optional check. :func:`read_settings` fills such a class from sources in order of
precedence (an app's ``conf``, keyword arguments, the environment), parsing strings as a
user means them (``"false"`` is False, ``"20"`` is 20, ``""`` is unset) and refusing a bad
value with a :class:`~pulse_celery.errors.ConfigError` that names the setting. The reference
documentation of the settings is generated from the same fields.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import importlib
import json
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal, Union

from ..errors import ConfigError

#: A check returns None when the value is fine, else what is wrong and the fix.
Check = Callable[[Any], "str | None"]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def setting(
    default: Any,
    doc: str,
    *,
    check: Check | None = None,
    secret: bool = False,
    default_doc: str | None = None,
) -> Any:
    """Declare one setting of a settings dataclass.

    ``default_doc`` is what the reference documentation shows as the default when the
    field's default is not the whole story (``"the URL's path, else '/'"``).
    """
    metadata = {"doc": doc, "check": check, "default_doc": default_doc}
    return dataclasses.field(default=default, repr=not secret, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class SettingInfo:
    """What the reference documentation and the parser know of one setting."""

    name: str
    type: Any
    default: Any
    doc: str
    check: Check | None
    #: The default as the docs show it, when the field's own default does not say it all.
    default_doc: str | None = None


@functools.cache
def describe(cls: type) -> tuple[SettingInfo, ...]:
    """Return every setting of the settings class ``cls``, in declaration order."""
    hints = typing.get_type_hints(cls)
    return tuple(
        SettingInfo(
            name=f.name,
            type=hints[f.name],
            default=f.default,
            doc=f.metadata.get("doc", ""),
            check=f.metadata.get("check"),
            default_doc=f.metadata.get("default_doc"),
        )
        for f in dataclasses.fields(cls)
        if "doc" in f.metadata
    )


def type_name(tp: Any) -> str:
    """The type of a setting as the docs show it: ``int``, ``float | None``, ``"quorum" | "classic"``."""
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(choice) for choice in typing.get_args(tp))
    if _is_union(tp):
        return " | ".join(type_name(arg) for arg in typing.get_args(tp))
    if typing.get_origin(tp) is collections.abc.Callable:
        return "callable | 'module:name'"
    if typing.get_origin(tp) is dict:
        return "dict"
    return "None" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (Union, types.UnionType)


def parse(option: str, tp: Any, value: Any, check: Check | None = None) -> Any:
    """Return ``value`` as type ``tp``; raise ConfigError naming ``option`` if it is not one.

    A value that does not parse is described by ``check`` when it has words for it (a port
    that is not a port), else by what was expected.
    """
    try:
        return _parse(tp, value)
    except (TypeError, ValueError) as exc:
        problem = check(value) if check is not None else None
        raise ConfigError(f"{option} {value!r} {problem or f'is not valid: {exc}'}") from None


def _parse(tp: Any, value: Any) -> Any:
    if _is_union(tp):
        args = typing.get_args(tp)
        unset = value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null"))
        if unset and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _parse(arg, value)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if typing.get_origin(tp) is Literal:
        choices = typing.get_args(tp)
        text = value.strip() if isinstance(value, str) else value
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(repr(c) for c in choices)}")
        return text
    if typing.get_origin(tp) is collections.abc.Callable:
        return _callable(value)
    if typing.get_origin(tp) is dict:
        if isinstance(value, str):
            value = json.loads(value)  # from the environment: PULSE_QUEUES='{"builds": {...}}'
        if not isinstance(value, Mapping):
            raise ValueError("expected a dict")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
        raise ValueError("expected true or false")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError("expected a whole number")
        return int(value.strip()) if isinstance(value, str) else int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ValueError("expected a number")
        return float(value.strip()) if isinstance(value, str) else float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError("expected text")
        return value
    raise TypeError(f"settings of type {tp!r} are not supported")  # a programming error


def _callable(value: Any) -> Any:
    """A callable, or the one a dotted path names (``"myapp.secrets:pulse_credentials"``)."""
    if callable(value):
        return value
    if not isinstance(value, str):
        raise ValueError("expected a callable or the dotted path of one")
    module_name, _, attribute = value.strip().replace(":", ".").rpartition(".")
    if not module_name:
        raise ValueError("expected a dotted path such as 'myapp.secrets:pulse_credentials'")
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import it ({exc})") from None
    if not callable(found):
        raise ValueError(f"{value} is not callable")
    return found


def read_settings(
    cls: type,
    sources: list[Mapping[str, Any]],
    *,
    option: Callable[[str], str],
    skip: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """Return the keyword arguments of ``cls`` read from ``sources`` (first source that has a value wins).

    ``option(name)`` is how users spell the setting in the messages (``pulse_heartbeat``).
    A source holding None for a setting does not set it. Settings in ``skip`` are left to
    the caller. Each value is parsed to its field's type, then its check runs.
    """
    values: dict[str, Any] = {}
    for info in describe(cls):
        if info.name in skip:
            continue
        raw = next((source[info.name] for source in sources if _given(source.get(info.name))), None)
        if raw is None:
            continue
        value = parse(option(info.name), info.type, raw, _safe(info.check))
        problem = info.check(value) if info.check is not None and value is not None else None
        if problem:
            raise ConfigError(f"{option(info.name)} {raw!r} {problem}")
        values[info.name] = value
    return values


def _given(value: Any) -> bool:
    """None and blank text (``PULSE_HEARTBEAT=``) leave a setting unset."""
    return value is not None and not (isinstance(value, str) and not value.strip())


def read_one(cls: type, name: str, sources: list[Mapping[str, Any]], *, option: Callable[[str], str]) -> Any:
    """Read one setting of ``cls`` (its default when no source sets it), without the others."""
    info = next(i for i in describe(cls) if i.name == name)
    values = read_settings(
        cls, sources, option=option, skip=frozenset(i.name for i in describe(cls)) - {name}
    )
    return values.get(name, info.default)


def _safe(check: Check | None) -> Check | None:
    """``check`` applied to a raw value it may not understand: no words rather than an error."""
    if check is None:
        return None

    def safe(value: Any) -> str | None:
        try:
            return check(value)
        except Exception:
            return None

    return safe


def prefixed(conf: Mapping[str, Any], prefix: str) -> Mapping[str, Any]:
    """A view of ``conf`` by setting name: ``prefixed(app.conf, "pulse_")["heartbeat"]``."""
    return _Prefixed(conf, prefix)


class _Prefixed(Mapping[str, Any]):
    def __init__(self, conf: Mapping[str, Any], prefix: str) -> None:
        self.conf, self.prefix = conf, prefix

    def __getitem__(self, name: str) -> Any:
        key = self.prefix + name
        if key not in self.conf:
            raise KeyError(name)
        return self.conf[key]

    def get(self, name: str, default: Any = None) -> Any:
        return self.conf.get(self.prefix + name, default)

    def __iter__(self) -> Iterator[str]:
        return (key[len(self.prefix) :] for key in self.conf if str(key).startswith(self.prefix))

    def __len__(self) -> int:
        return sum(1 for _ in self)


def environment(environ: Mapping[str, str], names: Mapping[str, str]) -> dict[str, str]:
    """The settings given in ``environ``: ``PULSE_<NAME>`` for each, or the name in ``names``."""
    found = {}
    for key, value in environ.items():
        if not key.startswith("PULSE_"):
            continue
        name = names.get(key, key[len("PULSE_") :].lower())
        found[name] = value
    return found


# Checks shared by several settings -------------------------------------------------------


def at_least(minimum: float, what: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value >= minimum else f"must be at least {minimum:g} {what}"

    return check
