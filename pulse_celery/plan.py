"""An app's bindings grouped into Pulse queues: one queue per ``queue=`` name, one task per queue.

A named queue collects every binding that names it; a task's bindings with ``queue=None``
share one anonymous queue. Pulse delivers each message of a queue once, so a named queue
bound to two tasks is refused here, at start-up, with the fix.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .bindings import Binding
from .errors import ConfigError
from .pulse.config import PulseConfig
from .pulse.topology import QueueSpec, anonymous_queue_name, queue_name


@dataclass(frozen=True)
class QueuePlan(QueueSpec):
    """One Pulse queue of the app, its bindings, and the task they feed."""

    bindings: tuple[Binding, ...]

    @property
    def task_name(self) -> str:
        return self.bindings[0].task_name

    @property
    def key(self) -> str:
        """Name the queue across reconnects: its full name, or its task's for an anonymous queue."""
        return self.task_name if self.anonymous else self.name

    def policies(self, default: str) -> set[str]:
        """The ack policies of this queue's bindings."""
        return {b.policy(default) for b in self.bindings}


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
