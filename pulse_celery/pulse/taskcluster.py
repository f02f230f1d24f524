"""Read a Taskcluster message's routing key as named fields, and its task routes as a list.

Taskcluster names each word of an exchange's routing key in the exchange's reference
(``primary.<taskId>.<runId>.<workerGroup>...``) and CCs a task's routes as ``route.<route>``.
The names and their order come from the ``taskcluster`` client's own references when it is
installed (every ``*Events`` class it ships), so a new exchange or a new routing-key entry
arrives with a client upgrade; without the client, a built-in copy of them is used.

Inside a task::

    key = pulse_message().taskcluster  # None for an exchange that is not Taskcluster's
    key["taskId"], key["runId"], key["workerType"], key.routes
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: What Taskcluster writes in a routing key for a value that is absent (e.g. no run yet).
ABSENT = "_"
#: Prefix Taskcluster puts before each of a task's routes when it CCs the message.
ROUTE_PREFIX = "route."


@dataclass(frozen=True)
class KeyEntry:
    """One entry of a Taskcluster exchange's routing key, as its reference describes it."""

    name: str
    #: The fixed word this entry always is (``primary`` for ``routingKeyKind``), if any.
    constant: str | None = None
    #: True for an entry that takes any number of words (``reserved``, bound with ``#``).
    multiple_words: bool = False


#: The routing-key entries of one exchange, in order.
Shape = tuple[KeyEntry, ...]


def _shape(*names: str) -> Shape:
    """``routingKeyKind`` (``primary``), the named single words, then ``reserved`` (``#``)."""
    return (
        KeyEntry("routingKeyKind", constant="primary"),
        *(KeyEntry(name) for name in names),
        KeyEntry("reserved", multiple_words=True),
    )


_TASK = _shape(
    "taskId", "runId", "workerGroup", "workerId", "provisionerId", "workerType", "schedulerId", "taskGroupId"
)
_TASK_GROUP = _shape("taskGroupId", "schedulerId")
_WORKER = _shape("providerId", "provisionerId", "workerType", "workerGroup", "workerId", "launchConfigId")
_GITHUB = (KeyEntry("routingKeyKind", constant="primary"), KeyEntry("organization"), KeyEntry("repository"))
_RESERVED_ONLY = (KeyEntry("reserved", multiple_words=True),)


def _exchanges(prefix: str, shape: Shape, *names: str) -> dict[str, Shape]:
    return {f"exchange/{prefix}/{name}": shape for name in names}


#: Used only when the ``taskcluster`` client is not installed: its references (client 113).
FALLBACK_REFERENCES: Mapping[str, Shape] = MappingProxyType(
    {
        **_exchanges(
            "taskcluster-queue/v1",
            _TASK,
            "task-defined",
            "task-pending",
            "task-running",
            "artifact-created",
            "task-completed",
            "task-failed",
            "task-exception",
            "task-priority-changed",
        ),
        **_exchanges(
            "taskcluster-queue/v1",
            _TASK_GROUP,
            "task-group-resolved",
            "task-group-sealed",
            "task-group-priority-changed",
        ),
        **_exchanges(
            "taskcluster-worker-manager/v1",
            _WORKER,
            "worker-pool-created",
            "worker-pool-updated",
            "worker-pool-error",
            "worker-requested",
            "worker-running",
            "worker-stopped",
            "worker-removed",
            "launch-config-created",
            "launch-config-updated",
            "launch-config-archived",
        ),
        **_exchanges(
            "taskcluster-github/v1",
            _GITHUB,
            "push",
            "taskcluster-yml-update",
            "release",
            "rerun",
            "task-group-creation-requested",
        ),
        "exchange/taskcluster-github/v1/pull-request": (*_GITHUB, KeyEntry("action")),
        "exchange/taskcluster-notify/v1/notification": (
            KeyEntry("routingKeyKind", constant="primary"),
            KeyEntry("topic", multiple_words=True),
        ),
        **_exchanges("taskcluster-hooks/v1", _RESERVED_ONLY, "hook-created", "hook-updated", "hook-deleted"),
        **_exchanges(
            "taskcluster-auth/v1",
            _RESERVED_ONLY,
            "client-created",
            "client-updated",
            "client-deleted",
            "role-created",
            "role-updated",
            "role-deleted",
        ),
    }
)


def _references_of(events_class: type) -> Iterator[tuple[str, Shape]]:
    """Yield ``(exchange, shape)`` for each exchange method of a client ``*Events`` class.

    Each generated method builds its reference and hands it to ``_makeTopicExchange``; a
    subclass that returns the reference from there reads it without a client configuration
    (``rootUrl``) or any network.
    """

    class Capture(events_class):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:  # no options, no session: only the references are read
            pass

        def _makeTopicExchange(self, entry: Any, *args: Any, **kwargs: Any) -> Any:
            return entry

    prefix = str(getattr(events_class, "classOptions", {}).get("exchangePrefix", ""))
    capture = Capture()
    for name, member in vars(events_class).items():
        if name.startswith("_") or not callable(member):
            continue
        try:
            entry = getattr(capture, name)()
        except Exception:  # not an exchange method
            continue
        if not (isinstance(entry, dict) and "exchange" in entry and "routingKey" in entry):
            continue
        exchange = "{}/{}".format(prefix.rstrip("/"), str(entry["exchange"]).lstrip("/"))
        yield (
            exchange,
            tuple(
                KeyEntry(
                    name=str(item["name"]),
                    constant=item.get("constant"),
                    multiple_words=bool(item.get("multipleWords")),
                )
                for item in entry["routingKey"]
            ),
        )


def client_references() -> dict[str, Shape] | None:
    """Return every exchange's shape from the installed ``taskcluster`` client, or None without it."""
    try:
        import taskcluster
    except ImportError:
        return None
    found: dict[str, Shape] = {}
    for name in dir(taskcluster):
        events_class = getattr(taskcluster, name, None)
        if name.endswith("Events") and isinstance(events_class, type):
            found.update(_references_of(events_class))
    if not found:
        logger.warning(
            "The installed taskcluster client exposes no exchange references pulse_celery can read; "
            "using the built-in copy"
        )
        return None
    return found


@lru_cache(maxsize=1)
def exchange_references() -> Mapping[str, Shape]:
    """Return the routing-key shape of each Taskcluster exchange, by full exchange name."""
    found = client_references()
    return MappingProxyType(found) if found is not None else FALLBACK_REFERENCES


@dataclass(frozen=True)
class TaskclusterKey:
    """The routing key of one Taskcluster message, entry by entry, and the task's routes."""

    exchange: str
    #: Every routing-key entry by its Taskcluster name (``taskId``, ``runId``, ...), in the
    #: exchange's order, as text; an absent value (``_``) is None.
    fields: Mapping[str, str | None]
    #: The task's routes, from the CC routes ``route.<route>``, without the ``route.`` prefix.
    routes: tuple[str, ...]

    def __getitem__(self, name: str) -> str | None:
        return self.fields[name]

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return entry ``name``; ``default`` when the exchange has no such entry or it is absent."""
        value = self.fields.get(name)
        return default if value is None else value

    def __hash__(self) -> int:
        return hash((self.exchange, tuple(self.fields.items()), self.routes))


class HasRoutingKey(Protocol):
    """What :func:`routing_fields` reads: a PulseMessage, a DeadLetter, or your own record."""

    @property
    def exchange(self) -> str: ...

    @property
    def routing_key(self) -> str: ...

    @property
    def routes(self) -> Sequence[str]: ...


def parse_routing_key(shape: Shape, routing_key: str) -> dict[str, str | None] | None:
    """Split ``routing_key`` into ``shape``'s named entries; None if it does not have that shape."""
    words = routing_key.split(".")
    multi = [i for i, entry in enumerate(shape) if entry.multiple_words]
    if not multi:
        if len(words) != len(shape):
            return None
        values = words
    elif len(multi) == 1 and len(words) >= len(shape) - 1:
        # The one multi-word entry takes whatever the single-word entries around it leave.
        i = multi[0]
        end = len(words) - (len(shape) - i - 1)
        values = [*words[:i], ".".join(words[i:end]), *words[end:]]
    else:
        return None
    fields: dict[str, str | None] = {}
    for entry, value in zip(shape, values, strict=True):
        if entry.constant is not None and value != entry.constant:
            return None
        fields[entry.name] = None if value in (ABSENT, "") else value
    return fields


def routing_fields(message: HasRoutingKey) -> TaskclusterKey | None:
    """Return the Taskcluster routing key of ``message`` as named fields, with its task routes.

    None when the exchange is not a Taskcluster exchange, or the routing key does not have
    the exchange's shape.
    """
    shape = exchange_references().get(message.exchange)
    if shape is None:
        return None
    fields = parse_routing_key(shape, message.routing_key)
    if fields is None:
        return None
    routes = tuple(route[len(ROUTE_PREFIX) :] for route in message.routes if route.startswith(ROUTE_PREFIX))
    return TaskclusterKey(exchange=message.exchange, fields=MappingProxyType(fields), routes=routes)
