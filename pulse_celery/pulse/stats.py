"""Per-queue counters and the connection's state: the figures behind ``pulse_status`` and metrics.

Counters are cumulative over the life of the worker process (they survive Pulse reconnects
and restarts of Celery's consumer); "in flight" belongs to the current Pulse channel and is
kept by the session. Everything here is updated on the worker's event-loop thread only;
readers on other threads (the Prometheus HTTP server) take a :meth:`snapshot`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

#: What ``Session.settled(what)`` is called with -> the counter it feeds.
SETTLED_COUNTERS = {"ack": "acked", "reject": "rejected", "requeue": "requeued"}

#: States of one queue in this worker.
QUEUE_STATES = ("consuming", "paused", "waiting", "failing", "deleted")

#: States of the worker's Pulse connection.
CONNECTION_STATES = (
    "connecting",  # a connect attempt runs
    "consuming",  # connected; deliveries flow on every queue not paused or deleted
    "connected",  # connected, but every queue is paused or deleted by remote control
    "paused-by-handoff",  # connected; no deliveries while the Celery broker refuses task messages
    "lost",  # waiting to reconnect after a failure
    "draining",  # warm shutdown: no new deliveries, acks of the ones in flight still go out
    "stopped",
)


def _error_text(error: BaseException | str) -> str:
    return error if isinstance(error, str) else (str(error) or repr(error))


@dataclass
class QueueStats:
    """What happened to the deliveries of one Pulse queue in this worker."""

    #: Full name on the broker (changes on each connect for an anonymous queue).
    name: str
    task: str
    #: Set by remote control; "waiting" is derived (connection or hand-off not ready).
    paused: bool = False
    deleted: bool = False
    delivered: int = 0
    acked: int = 0
    rejected: int = 0
    requeued: int = 0
    #: Deliveries the broker flagged as redelivered (seen before by some consumer).
    redelivered: int = 0
    #: Kept in the dead-letter store on the Celery broker (then acked: also counted in acked).
    dead_lettered: int = 0
    #: Acked without running (or enqueueing) again: the same message's task was already
    #: enqueued or succeeded (dedupe on), or is still running in this worker (complete).
    deduplicated: int = 0
    #: Handled without dedupe because the dedupe store could not be reached.
    dedupe_unavailable: int = 0
    last_error: str | None = None
    #: Unix time of ``last_error``.
    last_error_at: float | None = None

    def settled(self, what: str) -> None:
        counter = SETTLED_COUNTERS[what]
        setattr(self, counter, getattr(self, counter) + 1)

    def error(self, error: BaseException | str) -> None:
        self.last_error = _error_text(error)
        self.last_error_at = time.time()

    def snapshot(self, *, state: str, prefetch: int, in_flight: int) -> dict[str, Any]:
        """Return the figures as a JSON-ready dict, with the state and live figures given."""
        return {
            "state": state,
            "task": self.task,
            "prefetch": prefetch,
            "in_flight": in_flight,
            "delivered": self.delivered,
            "acked": self.acked,
            "rejected": self.rejected,
            "requeued": self.requeued,
            "redelivered": self.redelivered,
            "dead_lettered": self.dead_lettered,
            "deduplicated": self.deduplicated,
            "dedupe_unavailable": self.dedupe_unavailable,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }


@dataclass
class ConnectionStats:
    """The Pulse connection's state, since when, and how often it was established and lost."""

    state: str = "stopped"  # until the worker step starts
    #: Unix time the current state began.
    since: float = field(default_factory=time.time)
    #: connections established after none was up (the first, and each reconnect after a loss)
    connects: int = 0
    losses: int = 0
    #: connections replaced, while up, by a fresh one (``pulse_recycle_interval``)
    recycles: int = 0
    last_error: str | None = None
    last_error_at: float | None = None

    def enter(self, state: str) -> bool:
        """Move to ``state``; return True when that is a change."""
        if state not in CONNECTION_STATES:
            raise ValueError(f"unknown connection state {state!r}")
        if state == self.state:
            return False
        self.state = state
        self.since = time.time()
        return True

    def error(self, error: BaseException | str) -> None:
        self.last_error = _error_text(error)
        self.last_error_at = time.time()

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "since": self.since,
            "connects": self.connects,
            "losses": self.losses,
            "recycles": self.recycles,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }
