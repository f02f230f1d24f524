"""Turn an app's bindings into Pulse-shaped kombu entities: queues under ``queue/<user>/``.

Named queues are durable (quorum by default, classic on request) and outlive the
connection; anonymous queues are exclusive and die with it. Other users' exchanges are
declared passively, since Pulse Guardian lets a user configure only ``exchange/<user>/...``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kombu import Exchange, Queue, binding

from .bindings import Binding
from .config import PulseConfig
from .errors import ConfigError


@dataclass(frozen=True)
class QueuePlan:
    """One Pulse queue, its bindings, and the task they feed."""

    #: Full name on the broker, ``queue/<user>/<suffix>``.
    name: str
    bindings: tuple[Binding, ...]
    anonymous: bool
    queue_type: str

    @property
    def task_name(self) -> str:
        return self.bindings[0].task_name

    def exchanges(self) -> list[str]:
        return sorted({b.exchange for b in self.bindings})


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


def plan_queues(config: PulseConfig, bindings: Iterable[Binding]) -> list[QueuePlan]:
    """Group bindings into queues, checking each against what Pulse permits for the user."""
    named: dict[str, list[Binding]] = {}
    anonymous: dict[str, list[Binding]] = {}
    for b in bindings:
        if b.queue is None:
            anonymous.setdefault(b.task_name, []).append(b)
        else:
            named.setdefault(queue_name(config.user, b.queue), []).append(b)
    plans: list[QueuePlan] = []
    for name, group in named.items():
        tasks = sorted({b.task_name for b in group})
        if len(tasks) > 1:
            raise ConfigError(
                f"queue {name!r} is bound to tasks {', '.join(tasks)}; a Pulse queue delivers each "
                "message once, so give each task its own queue=..."
            )
        plans.append(QueuePlan(name, tuple(group), anonymous=False, queue_type=config.queue_type))
    for task_name, group in anonymous.items():
        plans.append(
            QueuePlan(
                anonymous_queue_name(config.user, task_name),
                tuple(group),
                anonymous=True,
                queue_type="classic",
            )
        )
    return plans


def kombu_exchange(config: PulseConfig, name: str) -> Exchange:
    """Return the exchange entity: declared for real only when the user owns it."""
    if owns_exchange(config.user, name):
        return Exchange(name, type="topic", durable=True)
    return Exchange(name, type="topic", passive=True)


def kombu_queue(config: PulseConfig, plan: QueuePlan) -> Queue:
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
