"""One Pulse delivery as a consumer sees it: where it came from, its body, and ack or reject, once.

A :class:`Delivery` is settled (acked or rejected) exactly once. If the channel it came on
is gone, settling is a logged no-op: the broker has already put the message back in the
queue and will deliver it again.
"""

from __future__ import annotations

import logging
from typing import Any

from ..errors import BadMessage
from .identity import message_id
from .lane import Lane
from .message import PulseMessage, RawDelivery, cc_routes, raw_delivery

logger = logging.getLogger(__name__)


class Delivery:
    """One unacknowledged Pulse message: metadata, raw body, and :meth:`ack` / :meth:`reject`."""

    __slots__ = ("lane", "meta", "problem", "raw", "settled")

    def __init__(
        self, raw: RawDelivery, meta: PulseMessage, lane: Lane, problem: BadMessage | None = None
    ) -> None:
        self.raw = raw
        #: exchange, routing key, CC routes, redelivered, queue
        self.meta = meta
        self.lane = lane
        #: why the delivery cannot be read as a Pulse message (an unreadable CC header), or None
        self.problem = problem
        self.settled = False

    @classmethod
    def received(cls, message: Any, lane: Lane, queue: str) -> Delivery:
        """Read what py-amqp delivered on ``lane`` from ``queue``, decoding nothing."""
        raw = raw_delivery(message)
        info = raw.delivery_info
        problem = None
        try:
            routes = cc_routes(raw.headers)
        except Exception as exc:  # a header py-amqp could not read as routes
            routes, problem = (), BadMessage(f"unreadable CC header ({exc!r})")
        meta = PulseMessage(
            exchange=str(info.get("exchange", "")),
            routing_key=str(info.get("routing_key", "")),
            routes=routes,
            redelivered=bool(info.get("redelivered")),
            queue=queue,
        )
        return cls(raw, meta, lane, problem)

    # -- what it is ----------------------------------------------------------------------

    @property
    def exchange(self) -> str:
        return self.meta.exchange

    @property
    def routing_key(self) -> str:
        return self.meta.routing_key

    @property
    def routes(self) -> tuple[str, ...]:
        """The CC routing keys (Taskcluster task routes come as ``route.<route>``)."""
        return self.meta.routes

    @property
    def redelivered(self) -> bool:
        return self.meta.redelivered

    @property
    def queue(self) -> str:
        return self.meta.queue

    @property
    def body(self) -> bytes:
        """The body as it came, never decoded here."""
        return self.raw.body

    @property
    def headers(self) -> dict[str, Any]:
        return self.raw.headers

    @property
    def properties(self) -> dict[str, Any]:
        """Every AMQP property of the message (content type, headers, ...)."""
        return self.raw.properties

    @property
    def message_id(self) -> str:
        """The message's stable id: the same on every redelivery and in every process.

        :func:`~pulse_celery.pulse.identity.message_id` of the exchange, routing key and body,
        with no handler name: the key to record what a callback has done, in a store of your
        own, so that a redelivery after a fault is recognised. Computed on each read.
        """
        return message_id(self.meta.exchange, self.meta.routing_key, self.raw.body)

    @property
    def delivery_tag(self) -> int:
        return self.raw.delivery_tag

    def __repr__(self) -> str:
        return f"<Delivery from {self.exchange} {self.routing_key} on {self.queue}>"

    # -- settling -------------------------------------------------------------------------

    def ack(self) -> None:
        """Acknowledge the message: the broker forgets it."""
        if self._begin("ack"):
            self.lane.ack(self.raw.delivery_tag)

    def reject(self, requeue: bool = False) -> None:
        """Give the message back to the queue (``requeue=True``) or drop it."""
        if self._begin("requeue" if requeue else "reject"):
            self.lane.reject(self.raw.delivery_tag, requeue)

    def _begin(self, what: str) -> bool:
        if self.settled:
            return False
        self.settled = True
        if not self.lane.alive:
            logger.info(
                "Pulse %s of a message from %s (%s) not sent: its channel is gone; the broker will "
                "deliver it again",
                what,
                self.meta.exchange,
                self.meta.routing_key,
            )
            return False
        return True
