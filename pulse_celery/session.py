"""One open Pulse connection and channel, the consumers on it, and what went through it.

A :class:`Session` lives from a successful connect to the connection's loss or close; the
worker step (bootstep.py) makes a new one on each reconnect. Deliveries settled on it are
counted here, per queue, into the worker's figures (stats.py), and its acks go out through
an :class:`~pulse_celery.acks.Acker` once per turn of the event loop.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from kombu import Connection

from .acks import Acker
from .eventloop import LoopConnection
from .stats import QueueStats
from .topology import QueuePlan


class Session:
    """One open Pulse connection and channel, and the consumers on it; dead once lost."""

    def __init__(
        self,
        connection: Connection,
        channel: Any,
        plans: list[QueuePlan],
        loop_connection: LoopConnection | None,
        stats: dict[str, QueueStats] | None = None,
    ) -> None:
        self.connection = connection
        self.channel = channel
        self.plans = plans
        self.loop_connection = loop_connection
        #: consumer tag of each queue being consumed, by queue name
        self.consumers: dict[str, str] = {}
        #: deliveries received, and acks, rejects and requeues sent, on this session's channel
        self.counts: Counter[str] = Counter()
        #: deliveries received on this channel and not yet settled, by queue name
        self.in_flight: Counter[str] = Counter()
        #: the worker's cumulative figures of each queue, by queue name
        self.stats: dict[str, QueueStats] = stats if stats is not None else {}
        self.opened_at = time.monotonic()
        #: queues currently over the depth warning
        self.deep_queues: set[str] = set()
        self._closed = False
        #: sends this channel's acks, several in one frame where it can (see acks.py)
        self.acker = Acker(
            lambda tag, multiple: self.guard(channel.basic_ack, tag, multiple),
            batched=loop_connection is not None,
        )
        if loop_connection is not None:
            # Before each poll: acks made in ready callbacks (Celery's, under ``complete``)
            # and in timers go out in the same turn of the loop.
            loop_connection.hub.on_tick.add(self.acker.flush)

    @property
    def alive(self) -> bool:
        if self._closed:
            return False
        return self.loop_connection.alive if self.loop_connection is not None else True

    @property
    def consuming(self) -> bool:
        return bool(self.consumers)

    def guard(self, fun: Any, *args: Any) -> Any:
        """Call ``fun`` on this session; a connection error marks it lost instead of raising."""
        if self.loop_connection is not None:
            return self.loop_connection.guard(fun, *args)
        if self.alive:
            return fun(*args)
        return None

    def delivered(self, queue: str, redelivered: bool) -> None:
        """Count one delivery from ``queue``."""
        self.counts["delivered"] += 1
        self.in_flight[queue] += 1
        stats = self.stats.get(queue)
        if stats is not None:
            stats.delivered += 1
            if redelivered:
                stats.redelivered += 1

    def settled(self, what: str, queue: str | None = None) -> None:
        """Count one ack, reject or requeue (``what``) sent for a delivery from ``queue``."""
        self.counts[what] += 1
        if queue is None:
            return
        self.in_flight[queue] -= 1
        stats = self.stats.get(queue)
        if stats is not None:
            stats.settled(what)

    def dead_lettered(self, queue: str, why: str) -> None:
        """Count one delivery from ``queue`` kept in the dead-letter store."""
        stats = self.stats.get(queue)
        if stats is not None:
            stats.dead_lettered += 1
            stats.error(why)

    def release(self) -> None:
        """Stop sending acks on this session's turn of the loop (it is closed or lost)."""
        if self.loop_connection is not None:
            self.loop_connection.hub.on_tick.discard(self.acker.flush)

    def close(self) -> None:
        self._closed = True
        self.release()
        if self.loop_connection is not None:
            self.loop_connection.close()
        else:
            try:
                self.channel.close()
            except Exception:
                pass
