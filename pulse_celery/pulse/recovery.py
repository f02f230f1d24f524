"""How one queue recovers, alone, from what the broker does to it.

* The broker cancels its consumer: the queue was deleted (Pulse Guardian deletes queues
  past its limit). The queue and its bindings are declared again and consumed.
* The broker refuses a declare or closes the queue's channel (a missing exchange, a refused
  permission, an ack that came too late): the queue is retried with its own backoff, while
  the other queues consume on. (With an engine that does not isolate queues, a refusal is
  a loss of the whole connection instead, and never reaches here.)
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from .diagnose import describe_error
from .host import Host
from .lane import Lane
from .loop import Backoff
from .stats import QueueStats

logger = logging.getLogger(__name__)


class Recoverable(Protocol):
    """What recovery needs of its queue (a :class:`~pulse_celery.pulse.consumer.QueueConsumer`)."""

    engine: Host
    stats: QueueStats
    wants: str
    lane: Lane | None

    @property
    def name(self) -> str: ...

    def activate(self) -> None: ...


class Recovery:
    """One queue's recovery: at most one retry scheduled, with a backoff of its own."""

    def __init__(self, consumer: Recoverable) -> None:
        self.consumer = consumer
        self.backoff = Backoff()
        self._timer: Any = None
        self._redeclaring = False
        #: why the queue cannot be consumed now (cleared once it is), or None
        self.failure: str | None = None

    @property
    def pending(self) -> bool:
        """A retry is scheduled: the queue waits for it rather than trying now."""
        return self._timer is not None

    def queue_deleted(self, lane: Lane, tag: str) -> None:
        """The broker cancelled the consumer ``tag`` on ``lane``: its queue was deleted."""
        consumer = self.consumer
        if lane.consumer_tag != tag:
            return
        lane.consumer_tag = None
        lane.declared = False
        if consumer.wants == "deleted":
            return  # deleted on purpose (by another process of ours): stays deleted
        consumer.stats.error("the queue was deleted under this worker (Pulse Guardian?); declared again")
        logger.error(
            "Pulse queue %s was deleted under this worker (Pulse Guardian deletes queues that grow "
            "past its limit): messages published to its exchanges while it was gone are LOST for "
            "this consumer, and unacknowledged ones it held are gone with it; declaring the queue "
            "and its bindings again",
            consumer.name,
        )
        self._redeclaring = True
        consumer.engine.soon(consumer.activate)
        consumer.engine.changed()

    def declared(self) -> None:
        """The queue was declared on the live connection."""
        if self._redeclaring:
            self._redeclaring = False
            logger.warning("Pulse queue %s declared again with its bindings; consuming", self.consumer.name)

    def succeeded(self) -> None:
        """The queue is consumed again: the next failure starts the backoff from the start."""
        self.backoff.reset()
        self.failure = None

    def channel_closed(self, exc: BaseException) -> None:
        """The broker closed the queue's channel: drop it, retry alone with backoff."""
        consumer = self.consumer
        lane = consumer.lane
        if lane is None:
            return
        in_flight = lane.in_flight
        lane.kill()
        consumer.lane = None
        session = consumer.engine.session
        if session is not None:
            session.close_channel(lane.channel)  # py-amqp reopened it: close it for good
        logger.warning(
            "Pulse queue %s: the broker closed its channel (%s); %d unacknowledged messages will be "
            "redelivered",
            consumer.name,
            describe_error(exc, consumer.engine.config),
            in_flight,
        )
        self.failed(exc)

    def failed(self, exc: BaseException) -> None:
        """A declare or the channel failed: say why, and try again after the backoff."""
        consumer = self.consumer
        why = describe_error(exc, consumer.engine.config)
        consumer.stats.error(why)
        self.failure = why
        delay = self.backoff.next()
        logger.error(
            "Cannot consume Pulse queue %s: %s; the other queues go on; retrying in %.1f s",
            consumer.name,
            why,
            delay,
        )
        self.cancel()
        self._timer = consumer.engine.timers.later(delay, self._retry)
        consumer.engine.changed(queues=True)

    def _retry(self) -> None:
        self._timer = None
        consumer = self.consumer
        if consumer.lane is not None and not consumer.lane.declared:
            consumer.lane = None  # a fresh channel for a fresh try
        consumer.activate()
        consumer.engine.changed()

    def cancel(self) -> None:
        if self._timer is not None:
            self.consumer.engine.timers.cancel(self._timer)
            self._timer = None
