"""One queue's channel on one connection: its acks, its deliveries in flight; dead once closed or lost.

Each consumed queue has a channel of its own, so its prefetch is its own and an error the
broker raises on it (a refused declare, an ack timeout) closes only that channel. A channel
the broker closed and py-amqp reopened numbers its deliveries from 1 again, so a delivery
is settled through the :class:`Lane` it came on, never through the channel object: once a
lane is dead, settling a delivery of it is a no-op, and the broker redelivers the message.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import partial
from typing import Any

from .acks import Acker
from .stats import QueueStats
from .wire import LoopConnection

_consumer_tags = itertools.count(1)


class Lane:
    """One channel of one queue, from its opening to its close or loss."""

    def __init__(
        self,
        channel: Any,
        wire: LoopConnection | None,
        stats: QueueStats,
        ticks: set[Callable[[], Any]] | None,
    ) -> None:
        """``ticks``: the hub's callbacks run once per turn of the loop (acks wait for them), or None."""
        self.channel = channel
        self.wire = wire
        self.stats = stats
        #: consumer tag while the queue is consumed on this channel
        self.consumer_tag: str | None = None
        #: the queue was declared on this connection (an anonymous queue must be, again, after a pause)
        self.declared = False
        #: deliveries received on this channel and not yet settled
        self.in_flight = 0
        self._open = True
        #: sends this channel's acks, several in one frame where it can (see acks.py)
        self._ticks = ticks if wire is not None else None
        self.acker = Acker(
            lambda tag, multiple: self.guard(channel.basic_ack, tag, multiple), self._ticks is not None
        )
        if self._ticks is not None:
            self._ticks.add(self.acker.flush)

    @property
    def alive(self) -> bool:
        if not self._open:
            return False
        return self.wire.alive if self.wire is not None else True

    @property
    def channel_id(self) -> int | None:
        return getattr(self.channel, "channel_id", None)

    def guard(self, fun: Callable[..., Any], *args: Any) -> Any:
        """Call ``fun`` on this lane's connection; an error there never raises (see LoopConnection.guard)."""
        if not self.alive:
            return None
        if self.wire is not None:
            return self.wire.guard(fun, *args)
        return fun(*args)

    def consume(
        self,
        queue: str,
        prefetch: int | None,
        callback: Callable[[Any], None],
        on_cancel: Callable[[str], None],
    ) -> str:
        """Start a consumer of ``queue`` on this channel; return its tag (the caller keeps it).

        ``prefetch`` None: no acks (auto_ack), so no limit is set.
        """
        if prefetch is not None:
            # With global=False the limit applies to each consumer started after it.
            self.guard(self.channel.basic_qos, 0, prefetch, False)
        tag = f"pulse-celery.{next(_consumer_tags)}.{queue}"
        self.guard(
            partial(
                self.channel.basic_consume,
                queue=queue,
                no_ack=prefetch is None,
                callback=callback,
                consumer_tag=tag,
                on_cancel=on_cancel,
            )
        )
        return tag

    def cancel(self) -> bool:
        """Cancel the consumer on this channel, if any (deliveries in flight still settle here)."""
        tag, self.consumer_tag = self.consumer_tag, None
        if tag is None:
            return False
        self.guard(self.channel.basic_cancel, tag)
        return True

    def delivered(self, delivery_tag: int, redelivered: bool) -> None:
        """Count one delivery on this channel."""
        self.acker.delivered(delivery_tag)
        self.in_flight += 1
        self.stats.delivered += 1
        if redelivered:
            self.stats.redelivered += 1

    def ack(self, delivery_tag: int) -> None:
        self.acker.ack(delivery_tag)  # sent with the other acks of this turn of the loop
        self._settled("ack")

    def reject(self, delivery_tag: int, requeue: bool) -> None:
        self.guard(self.channel.basic_reject, delivery_tag, requeue)
        self.acker.rejected(delivery_tag)
        self._settled("requeue" if requeue else "reject")

    def _settled(self, what: str) -> None:
        self.in_flight -= 1
        self.stats.settled(what)

    def unbatch(self) -> None:
        """From now on send each ack at once (the loop may not turn again: warm shutdown)."""
        self.acker.batched = False
        self.acker.flush()
        self._stop_ticking()

    def _stop_ticking(self) -> None:
        if self._ticks is not None:
            self._ticks.discard(self.acker.flush)
            self._ticks = None

    def kill(self) -> None:
        """The channel is gone (closed by the broker, or with its connection): settle nothing more."""
        self._open = False
        self.consumer_tag = None
        self._stop_ticking()

    def close(self) -> None:
        """Send the acks already decided on, then close the channel (its unsettled deliveries return)."""
        if not self._open:
            return
        self.acker.flush()
        self._open = False
        self.consumer_tag = None
        self._stop_ticking()
        if self.wire is not None:
            if self.wire.alive:
                self.wire.guard(self.channel.close)
        else:
            try:
                self.channel.close()
            except Exception:
                pass
