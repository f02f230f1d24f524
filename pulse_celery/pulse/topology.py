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


@dataclass(frozen=True)
class QueueSpec:
    """One Pulse queue and its bindings, as it is declared."""

    #: Full name on the broker, ``queue/<user>/<suffix>``.
    name: str
    bindings: tuple[Binding, ...]
    anonymous: bool
    queue_type: str

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
    arguments: dict[str, object] = {"x-queue-type": "quorum"} if plan.queue_type == "quorum" else {}
    if config.queue_max_length is not None:
        arguments["x-max-length"] = int(config.queue_max_length)
    return Queue(plan.name, bindings=bindings, durable=True, auto_delete=False, queue_arguments=arguments)


def declare(channel: Any, config: PulseConfig, spec: QueueSpec) -> None:
    """Declare ``spec``'s queue, its exchanges (passively unless the user owns them) and bindings."""
    kombu_queue(config, spec).bind(channel).declare()


def unbind_and_delete(channel: Any, spec: QueueSpec) -> int:
    """Remove ``spec``'s bindings, then its queue; return the ready messages dropped with it."""
    for b in spec.bindings:
        channel.queue_unbind(queue=spec.name, exchange=b.exchange, routing_key=b.routing_key)
    return int(channel.queue_delete(spec.name) or 0)
