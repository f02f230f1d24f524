"""An app's bindings grouped into Pulse queues: one queue per ``queue=`` name, one task per queue.

A named queue collects every binding that names it; a task's bindings with ``queue=None``
share one anonymous queue. Pulse delivers each message of a queue once, so a named queue
bound to two tasks is refused here, at start-up, with the fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from .bindings import Binding
from .errors import ConfigError
from .pulse.config import PulseConfig
from .pulse.settings import at_least, read_settings, setting
from .pulse.topology import QueueSpec, anonymous_queue_name, queue_name, validate_queue_suffix


@dataclass(frozen=True)
class QueueOptions:
    """One queue's own settings (``pulse_queues = {"builds": {...}}``); None: the app-wide one."""

    prefetch: int | None = setting(
        None, "Deliveries the queue may hold unacknowledged", check=at_least(1, "delivery")
    )
    max_length: int | None = setting(None, "The queue's x-max-length", check=at_least(1, "message"))
    expires: float | None = setting(
        None,
        "Seconds the queue may go unused (no consumer) before the broker deletes it (x-expires)",
        check=at_least(1, "second"),
    )


def queue_options(queues: Mapping[str, Any] | None, user: str) -> dict[str, QueueOptions]:
    """``pulse_queues`` by full queue name, checked (ConfigError with the fix); ``user``'s queues only."""
    found: dict[str, QueueOptions] = {}
    for suffix, given in (queues or {}).items():
        if suffix.startswith("queue/") and not suffix.startswith(f"queue/{user}/"):
            continue  # another user's: another source's queue, or named by no binding
        option = f"pulse_queues[{suffix!r}]"
        if not isinstance(given, Mapping):
            raise ConfigError(f"{option} is {given!r}; give a dict such as {{'prefetch': 50}}")
        unknown = set(given) - set(QueueOptions.__dataclass_fields__)
        if unknown:
            raise ConfigError(
                f"{option} has unknown keys {', '.join(sorted(map(str, unknown)))}; the keys are "
                f"{', '.join(QueueOptions.__dataclass_fields__)}"
            )
        values = read_settings(QueueOptions, [given], option=partial("{}[{!r}]".format, option))
        found[queue_name(user, validate_queue_suffix(suffix))] = QueueOptions(**values)
    return found


@dataclass(frozen=True)
class QueuePlan(QueueSpec):
    """One Pulse queue of the app, its bindings, and the task they feed."""

    bindings: tuple[Binding, ...]
    #: the queue's own prefetch (``pulse_queues``), or None for the ack policy's
    prefetch: int | None = None

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


def plan_queues(
    config: PulseConfig,
    bindings: Iterable[Binding],
    queues: Mapping[str, Any] | None = None,
    *,
    check_unused: bool = True,
) -> list[QueuePlan]:
    """Group bindings into queues, checking each against what Pulse permits for the user.

    ``queues`` is ``pulse_queues``: each named queue's own prefetch, max length and expiry.
    Naming a queue no binding uses is refused (a typo would otherwise go unnoticed), unless
    ``check_unused`` is False (several sources: the caller checks across them).
    """
    options = queue_options(queues, config.user)
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
        own = options.pop(name, QueueOptions())
        plans.append(
            QueuePlan(
                name,
                tuple(group),
                anonymous=False,
                queue_type=config.queue_type,
                max_length=own.max_length,
                expires=own.expires,
                prefetch=own.prefetch,
            )
        )
    if options and check_unused:
        raise ConfigError(
            f"pulse_queues names {', '.join(sorted(options))}, which no @pulse_binding(queue=...) "
            f"of this app uses; the app's named queues are: {', '.join(sorted(named)) or 'none'}"
        )
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
