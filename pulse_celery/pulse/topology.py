"""Pulse-shaped queues and exchanges: queues under ``queue/<user>/``, foreign exchanges passive.

Named queues are durable (quorum by default, classic on request) and outlive the
connection; anonymous queues are exclusive and die with it. Other users' exchanges are
declared passively, since Pulse Guardian lets a user configure only ``exchange/<user>/...``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kombu import Exchange, Queue, binding

from ..errors import BindingError, ConfigError
from .bindings import Binding
from .config import PulseConfig
from .records import prune_and_record, record_queue_name


@dataclass(frozen=True)
class QueueSpec:
    """One Pulse queue and its bindings, as it is declared."""

    #: Full name on the broker, ``queue/<user>/<suffix>``.
    name: str
    bindings: tuple[Binding, ...]
    anonymous: bool
    queue_type: str
    #: x-max-length of this queue, or None for the app-wide ``queue_max_length``
    max_length: int | None = None
    #: seconds unused before the broker deletes the queue (x-expires), or None: never
    expires: float | None = None

    def exchanges(self) -> list[str]:
        return sorted({b.exchange for b in self.bindings})


def validate_queue_suffix(queue: str) -> str:
    """Return ``queue`` if it can name a Pulse queue (``queue/<user>/<queue>``), else raise."""
    if not isinstance(queue, str) or not queue.strip():
        raise BindingError("queue must be a non-empty name such as 'builds' (or None for an anonymous queue)")
    if any(ch.isspace() or ord(ch) < 32 for ch in queue):
        raise BindingError(f"queue {queue!r} contains white space or control characters")
    if len(queue.encode()) > 200:
        raise BindingError(f"queue {queue[:40]!r}... is too long: RabbitMQ allows 255 bytes with the prefix")
    return queue


def queue_name(user: str, suffix: str) -> str:
    """Return the Pulse name of queue ``suffix`` for ``user``; refuse another user's prefix."""
    own = f"queue/{user}/"
    if suffix.startswith("queue/"):
        if not suffix.startswith(own) or suffix == own:
            raise ConfigError(
                f"queue {suffix!r} is outside {own!r}; Pulse lets user {user!r} create only queues "
                f"named {own}<name>: write queue={suffix.rsplit('/', 1)[-1]!r}"
            )
        return suffix
    return own + suffix


def anonymous_queue_name(user: str, task_name: str) -> str:
    """Return a fresh name for an anonymous queue, still under ``queue/<user>/``."""
    short = task_name.rsplit(".", 1)[-1][:60]
    return f"queue/{user}/anonymous.{short}.{uuid.uuid4().hex[:12]}"


def owns_exchange(user: str, exchange: str) -> bool:
    """Return True when Pulse lets ``user`` declare ``exchange`` (``exchange/<user>/...``)."""
    return exchange.startswith(f"exchange/{user}/")


def kombu_exchange(config: PulseConfig, name: str) -> Exchange:
    """Return the exchange entity: declared for real only when the user owns it."""
    if owns_exchange(config.user, name):
        return Exchange(name, type="topic", durable=True)
    return Exchange(name, type="topic", passive=True)


def kombu_queue(config: PulseConfig, plan: QueueSpec) -> Queue:
    """Return the kombu Queue for ``plan``, with all its bindings."""
    exchanges = {name: kombu_exchange(config, name) for name in plan.exchanges()}
    bindings: Sequence[binding] = [
        binding(exchanges[b.exchange], routing_key=b.routing_key) for b in plan.bindings
    ]
    if plan.anonymous:
        return Queue(plan.name, bindings=bindings, exclusive=True, auto_delete=True, durable=False)
    return Queue(
        plan.name,
        bindings=bindings,
        durable=True,
        auto_delete=False,
        queue_arguments=queue_arguments(config, plan),
    )


def queue_arguments(config: PulseConfig, spec: QueueSpec) -> dict[str, object]:
    """The x-arguments of a named queue: its type, max length and expiry."""
    arguments: dict[str, object] = {"x-queue-type": "quorum"} if spec.queue_type == "quorum" else {}
    max_length = spec.max_length if spec.max_length is not None else config.queue_max_length
    if max_length is not None:
        arguments["x-max-length"] = int(max_length)
    if spec.expires is not None:
        arguments["x-expires"] = int(spec.expires * 1000)
    return arguments


def declare(channel: Any, config: PulseConfig, spec: QueueSpec) -> None:
    """Declare ``spec``'s queue, its exchanges (passively unless the user owns them) and bindings.

    Then, for a named queue, remove the bindings an earlier declaration recorded and this one
    no longer has (see :mod:`~pulse_celery.pulse.records`).
    """
    kombu_queue(config, spec).bind(channel).declare()
    if not spec.anonymous and not config.is_memory:
        pairs = [(b.exchange, b.routing_key) for b in spec.bindings]
        prune_and_record(channel.connection, config.user, spec.name, pairs, spec.expires)


def unbind_and_delete(channel: Any, spec: QueueSpec) -> int:
    """Remove ``spec``'s bindings, its queue and its bindings record; return the ready messages dropped."""
    for b in spec.bindings:
        channel.queue_unbind(queue=spec.name, exchange=b.exchange, routing_key=b.routing_key)
    dropped = int(channel.queue_delete(spec.name) or 0)
    if not spec.anonymous:
        channel.queue_delete(record_queue_name(spec.name))
    return dropped
