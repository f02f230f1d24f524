"""A binding: messages of one exchange whose routing key (or a CC route) matches one pattern.

:func:`as_binding` accepts every way users name one: ``(exchange, pattern)``, a Taskcluster
client reference (``{"exchange": ..., "routingKeyPattern": ...}``), an object with
``exchange_name``/``routing_key`` attributes or methods, or the Go client's ``Binding``
interface (``ExchangeName()`` and ``RoutingKey()`` methods).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import BindingError
from .routing_keys import topic_matches, validate_pattern


@dataclass(frozen=True)
class Binding:
    """One exchange and routing-key pattern feeding a queue."""

    #: Name of the exchange (``exchange/taskcluster-queue/v1/task-completed``).
    exchange: str
    #: Topic pattern matched against the routing key and each CC route (``primary.#``).
    routing_key: str

    def matches(self, exchange: str, routing_keys: Iterable[str]) -> bool:
        """Return True when a message from ``exchange`` with any of ``routing_keys`` fits."""
        return exchange == self.exchange and any(topic_matches(self.routing_key, key) for key in routing_keys)


def _exchange_name(value: Any) -> str:
    name = getattr(value, "name", value)  # a kombu Exchange, or a str
    if not isinstance(name, str) or not name:
        raise BindingError(f"exchange must be a non-empty name, not {value!r}")
    return name


def _attr(obj: Any, *names: str) -> Any:
    for name in names:
        value = getattr(obj, name, None)
        if value is not None:
            return value() if callable(value) and not isinstance(value, str) else value
    return None


def normalize_reference(exchange: Any, routing_key: str | None) -> tuple[str, str]:
    """Turn any accepted way of naming a binding into ``(exchange name, routing-key pattern)``."""
    if isinstance(exchange, Binding) and routing_key is None:
        return exchange.exchange, exchange.routing_key
    if isinstance(exchange, Mapping):
        if routing_key is not None:
            raise BindingError("give the routing key inside the Taskcluster reference, not beside it")
        try:
            return _exchange_name(exchange["exchange"]), exchange["routingKeyPattern"]
        except KeyError as exc:
            raise BindingError(
                f"a Taskcluster reference needs 'exchange' and 'routingKeyPattern'; got {dict(exchange)!r}"
            ) from exc
    if not isinstance(exchange, str) and routing_key is None:
        name = _attr(exchange, "exchange_name", "ExchangeName", "exchange")
        key = _attr(exchange, "routing_key", "RoutingKey", "routing_key_pattern")
        if name is None or key is None:
            raise BindingError(
                f"{exchange!r} provides no exchange name and routing key; give "
                "('exchange/...', 'routing.key.#'), a Taskcluster reference, or an object with "
                "ExchangeName() and RoutingKey()"
            )
        return _exchange_name(name), key
    if routing_key is None:
        raise BindingError(
            f"binding {exchange!r} needs a routing-key pattern, e.g. 'primary.#' for every Taskcluster task"
        )
    return _exchange_name(exchange), routing_key


def as_binding(value: Any, *, all_messages: bool = False) -> Binding:
    """Return the checked :class:`Binding` that ``value`` names (a pair, a reference, an object).

    A pattern of only ``#`` takes every message of the exchange and must be asked for with
    ``all_messages=True``.
    """
    if isinstance(value, tuple) and len(value) == 2:
        exchange, pattern = normalize_reference(value[0], value[1])
    else:
        exchange, pattern = normalize_reference(value, None)
    validate_pattern(pattern, allow_all=all_messages)
    return Binding(exchange, pattern)
