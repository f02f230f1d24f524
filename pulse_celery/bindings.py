"""The ``@pulse_binding`` decorator, :class:`Binding`, and the bindings an app declares.

A binding says: deliver messages published to *exchange* whose routing key (or one of whose
CC routes) matches *routing_key* into the Pulse queue *queue*, and run *task* for each.
Bindings live on the task object (``task.pulse_bindings``), so the app's task registry is
the registry of bindings: :func:`app_bindings` reads them back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from celery import Celery, Task
from celery.local import PromiseProxy

from .config import ACK_POLICIES
from .errors import BindingError
from .payloads import check_payload, check_payload_type
from .payloads import install as install_payload_type
from .routing_keys import topic_matches, validate_pattern

#: Attribute that holds the bindings on a task (or on a plain function under ``@app.task``).
BINDINGS_ATTRIBUTE = "pulse_bindings"

_T = TypeVar("_T")


@dataclass(frozen=True)
class Binding:
    """One exchange and routing-key pattern feeding one task through one Pulse queue."""

    exchange: str
    routing_key: str
    #: Queue suffix (``queue/<user>/<queue>``), or None for an anonymous queue.
    queue: str | None
    #: Ack policy, or None for the app-wide default (``pulse_ack_policy``).
    ack: str | None = None
    #: Name of the bound task; filled in when the app's bindings are read.
    task_name: str = ""
    #: Type the task receives instead of the JSON object (a dataclass or pydantic model), or None.
    payload: type | None = None

    def matches(self, exchange: str, routing_keys: Iterable[str]) -> bool:
        """Return True when a message from ``exchange`` with any of ``routing_keys`` fits."""
        return exchange == self.exchange and any(topic_matches(self.routing_key, key) for key in routing_keys)

    def check_payload(self, data: Any) -> None:
        """Raise :class:`~pulse_celery.errors.PayloadMismatch` if ``data`` does not fit ``payload``."""
        if self.payload is not None:
            check_payload(self.payload, data)


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
    """Turn any accepted way of naming a binding into ``(exchange name, routing-key pattern)``.

    Accepted: a name and a pattern; a Taskcluster client reference
    (``{"exchange": ..., "routingKeyPattern": ...}``); or an object with ``exchange_name`` and
    ``routing_key`` (the Go client's ``Binding`` interface), as attributes or methods.
    """
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
        name = _attr(exchange, "exchange_name", "exchange")
        key = _attr(exchange, "routing_key", "routing_key_pattern")
        if name is None or key is None:
            raise BindingError(
                f"{exchange!r} provides no exchange name and routing key; pass "
                "pulse_binding('exchange/...', 'routing.key.#', queue=...)"
            )
        return _exchange_name(name), key
    if routing_key is None:
        raise BindingError(
            f"pulse_binding({exchange!r}) needs a routing-key pattern, e.g. 'primary.#' for every "
            "Taskcluster task"
        )
    return _exchange_name(exchange), routing_key


def validate_queue_suffix(queue: str) -> str:
    """Return ``queue`` if it can name a Pulse queue (``queue/<user>/<queue>``), else raise."""
    if not isinstance(queue, str) or not queue.strip():
        raise BindingError("queue must be a non-empty name such as 'builds' (or None for an anonymous queue)")
    if any(ch.isspace() or ord(ch) < 32 for ch in queue):
        raise BindingError(f"queue {queue!r} contains white space or control characters")
    if len(queue.encode()) > 200:
        raise BindingError(f"queue {queue[:40]!r}... is too long: RabbitMQ allows 255 bytes with the prefix")
    return queue


def pulse_binding(
    exchange: Any,
    routing_key: str | None = None,
    *,
    queue: str | None,
    ack: str | None = None,
    all_messages: bool = False,
    payload: type | None = None,
) -> Callable[[_T], _T]:
    """Bind the decorated Celery task to a Pulse exchange and routing-key pattern.

    Stack the decorator to add bindings; bindings that name the same ``queue`` share one
    Pulse queue. ``queue=None`` gives an anonymous queue that lives as long as the worker's
    connection. ``ack`` is ``"enqueue"`` (ack once the task message is confirmed by the
    Celery broker) or ``"complete"`` (run the task in this worker and ack when it finishes);
    the default is ``app.conf.pulse_ack_policy``. A pattern of only ``#`` must be asked for
    with ``all_messages=True``.

    ``payload`` (a dataclass or pydantic v2 model) makes the task receive an instance of it
    instead of the JSON object; a message whose payload does not fit it is dead-lettered as
    bad input (``payload-mismatch``) and never reaches the task. Every binding of one task
    names the same ``payload`` (see :mod:`pulse_celery.payloads`).
    """
    name, pattern = normalize_reference(exchange, routing_key)
    validate_pattern(pattern, allow_all=all_messages)
    if queue is not None:
        validate_queue_suffix(queue)
    if ack is not None and ack not in ACK_POLICIES:
        raise BindingError(f"ack={ack!r} is not one of {ACK_POLICIES}")
    if payload is not None:
        check_payload_type(payload)
    binding = Binding(exchange=name, routing_key=pattern, queue=queue, ack=ack, payload=payload)

    def decorate(target: _T) -> _T:
        _attach(target, binding)
        return target

    return decorate


def _owning_app(target: Any) -> Celery:
    if isinstance(target, PromiseProxy) and not target.__evaluated__():
        # ``@app.task`` on an app not finalized yet returns a proxy of app._task_from_fun;
        # reading the app from it avoids forcing the app to load its configuration now.
        factory = object.__getattribute__(target, "_Proxy__local")
        return factory.__self__
    if isinstance(target, Task):
        return target.app
    raise BindingError(f"@pulse_binding decorates a Celery task: put it above @app.task, not on {target!r}")


def _attach(target: Any, binding: Binding) -> None:
    from .bootstep import install

    def add(obj: Any) -> None:
        existing = tuple(getattr(obj, BINDINGS_ATTRIBUTE, ()))
        # One conversion when the task runs, whichever binding the message came through.
        others = {b.payload for b in existing} - {binding.payload}
        if others:
            named = sorted(getattr(t, "__name__", "None") for t in {binding.payload, *others})
            raise BindingError(
                f"the bindings of task {obj.name} name different payload types ({', '.join(named)}); "
                "give every @pulse_binding of one task the same payload="
            )
        # Decorators apply bottom-up: prepend to keep the order they are written in.
        setattr(obj, BINDINGS_ATTRIBUTE, (binding, *existing))
        if binding.payload is not None:
            install_payload_type(obj, binding.payload)

    install(_owning_app(target))
    if isinstance(target, PromiseProxy) and not target.__evaluated__():
        target.__then__(add, target)
    else:
        add(target)


def task_bindings(task: Task) -> tuple[Binding, ...]:
    """Return the bindings declared on ``task``."""
    return tuple(getattr(task, BINDINGS_ATTRIBUTE, ()))


def app_bindings(app: Celery) -> list[Binding]:
    """Return every binding of ``app``'s tasks, each with its task name, in a stable order."""
    found: list[Binding] = []
    for name in sorted(app.tasks):
        for binding in task_bindings(app.tasks[name]):
            found.append(replace(binding, task_name=name))
    return found


def complete_without_acks_late(app: Celery, default_policy: str, bindings: Iterable[Binding]) -> list[str]:
    """Say, per binding, why ``ack='complete'`` cannot hold for its task (acks_late is off)."""
    problems = []
    for binding in bindings:
        if (binding.ack or default_policy) == "complete" and not app.tasks[binding.task_name].acks_late:
            problems.append(
                f"task {binding.task_name} has a Pulse binding with ack='complete' but acks_late is "
                "off, so Celery would ack the Pulse message when the task starts; declare it with "
                "@app.task(acks_late=True)"
            )
    return problems
