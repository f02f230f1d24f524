"""Give a task its payload as a typed object: a pydantic (v2) model or a dataclass.

``@pulse_binding(..., payload=TaskCompleted)`` does two things:

* at ingest, the Pulse worker checks each decoded payload against the type; one that does
  not fit is bad input (:class:`~pulse_celery.errors.PayloadMismatch`): dead-lettered, never
  sent to the task. The task message on the Celery broker still carries the JSON object.
* when the task runs, its first argument is converted from that JSON object to the type
  (the task's ``run`` is wrapped, under both ack policies); an argument that already is an
  instance is passed as it is, so ``task(instance)`` and ``task.apply((instance,))`` work.

Dataclasses are filled by field name. Keys the dataclass does not name are ignored, so a
Taskcluster schema that grows a field does not dead-letter every message; a missing field
without a default, or a value of the wrong JSON type, does not fit. Field types checked:
``str``, ``int``, ``float``, ``bool``, ``None``, ``Any``, nested dataclasses and pydantic
models, ``list[...]``, ``tuple[...]``, ``dict[str, ...]``, ``Optional``/unions and
``Literal``; other types take the JSON value as it is. ``__post_init__`` may refuse a payload
by raising ``ValueError`` or ``TypeError``. Pydantic models are validated by pydantic, with
the model's own configuration (extra keys are ignored unless the model says otherwise).
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Union

from ..errors import BindingError, PayloadMismatch

_MAX_SHOWN = 60  # characters of a value quoted in a mismatch


def _pydantic_base() -> type | None:
    try:
        from pydantic import BaseModel
    except ImportError:
        return None
    return BaseModel


def is_pydantic_model(model: Any) -> bool:
    base = _pydantic_base()
    return base is not None and isinstance(model, type) and issubclass(model, base)


def check_payload_type(model: Any) -> type:
    """Return ``model`` if a binding can deliver payloads as it, else raise :class:`BindingError`."""
    if isinstance(model, type) and (dataclasses.is_dataclass(model) or is_pydantic_model(model)):
        _resolve(model, set())  # every field type, nested ones too: a mistake shows at decoration
        return model
    hint = ""
    if isinstance(model, type) and hasattr(model, "parse_obj") and not hasattr(model, "model_validate"):
        hint = " (a pydantic v1 model: pulse_celery needs pydantic v2's BaseModel)"
    raise BindingError(
        f"payload={model!r} is neither a dataclass nor a pydantic model{hint}; pass the class, e.g. "
        "payload=TaskCompleted with @dataclass class TaskCompleted: ..."
    )


def to_payload_type(model: type, data: Any) -> Any:
    """Return ``data`` (decoded JSON) as an instance of ``model``; raise :class:`PayloadMismatch`."""
    return converter(model)(data)


def check_payload(model: type, data: Any) -> None:
    """Raise :class:`PayloadMismatch` if ``data`` does not fit ``model``; never anything else."""
    try:
        converter(model)(data)
    except PayloadMismatch:
        raise
    except Exception as exc:  # a validator or __post_init__ failing its own way: still bad input
        raise PayloadMismatch(f"{model.__name__} refused it: {_show(exc)}") from None


@functools.cache
def converter(model: type) -> Callable[[Any], Any]:
    """Return the function that turns decoded JSON into a ``model`` instance (or raises PayloadMismatch)."""
    if is_pydantic_model(model):
        return functools.partial(_pydantic, model, "payload")
    _resolve(model, set())
    return functools.partial(_dataclass, model, "payload")


def _resolve(tp: Any, seen: set[Any]) -> None:
    """Resolve the field types of every dataclass reachable from ``tp``, or raise BindingError."""
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if tp in seen:
            return
        seen.add(tp)
        for hint in _hints(tp).values():
            _resolve(hint, seen)
    else:
        for arg in typing.get_args(tp):
            _resolve(arg, seen)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _pydantic(model: Any, path: str, value: Any) -> Any:
    from pydantic import ValidationError

    try:
        return model.model_validate(value)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in (path, *error['loc']))}: {error['msg']}"
            for error in exc.errors()[:3]
        ]
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise PayloadMismatch(f"does not fit {model.__name__}: {'; '.join(problems)}{more}") from None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as exc:
        # Typically a class defined inside a function, named in a string annotation (as
        # ``from __future__ import annotations`` makes them all): only module globals resolve.
        raise BindingError(
            f"cannot resolve the field types of payload dataclass {cls.__qualname__} ({exc}); define "
            "the classes its fields name at module level"
        ) from None


def _dataclass(cls: Any, path: str, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise PayloadMismatch(f"{path} is {_json_type(value)}, not an object for {cls.__name__}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        if field.name in value:
            item = value[field.name]
            kwargs[field.name] = _convert(hints.get(field.name, Any), item, f"{path}.{field.name}")
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise PayloadMismatch(f"{path}.{field.name} is missing ({cls.__name__} requires it)")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PayloadMismatch(f"{path} refused by {cls.__name__}: {exc}") from None


def _mismatch(path: str, value: Any, expected: str) -> PayloadMismatch:
    return PayloadMismatch(f"{path} is {_json_type(value)} ({_show(value)}), not {expected}")


def _convert(tp: Any, value: Any, path: str) -> Any:
    if tp is Any or tp is object:
        return value
    if tp is None or tp is type(None):
        if value is None:
            return None
        raise _mismatch(path, value, "null")
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        for arm in args:
            try:
                return _convert(arm, value, path)
            except PayloadMismatch:
                continue
        names = " or ".join(getattr(arm, "__name__", str(arm)) for arm in args)
        raise _mismatch(path, value, names.replace("NoneType", "null"))
    if origin is Literal:
        if value in args:
            return value
        raise _mismatch(path, value, f"one of {list(args)}")
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass(tp, path, value)
    if is_pydantic_model(tp):
        return _pydantic(tp, path, value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _mismatch(path, value, "a boolean")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _mismatch(path, value, "an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _mismatch(path, value, "a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise _mismatch(path, value, "a string")
    container = origin or tp
    if container in (list, tuple, Sequence):
        if not isinstance(value, list):
            raise _mismatch(path, value, "an array")
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise _mismatch(path, value, f"an array of {len(args)}")
            return tuple(
                _convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
            )
        item = args[0] if args else Any
        items = [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if container is tuple else items
    if container in (dict, Mapping):
        if not isinstance(value, dict):
            raise _mismatch(path, value, "an object")
        item = args[1] if len(args) == 2 else Any
        return {k: _convert(item, v, f"{path}.{k}") for k, v in value.items()}
    return value  # a type this checker does not know: the JSON value as it is
