"""Consume one Pulse queue on the engine's connection, on a channel of its own, and recover alone.

A :class:`QueueConsumer` holds what its owner asked for (consume, pause, close, delete),
which outlives connections, and the :class:`~pulse_celery.pulse.lane.Lane` it consumes on,
which does not. On each connection it declares the queue (passively binding other users'
exchanges), sets its prefetch and consumes. When the broker cancels it (Pulse Guardian
deleted the queue) it declares the queue and its bindings again. When the broker closes its
channel (a missing exchange, a refused permission, an ack that came too late), the engine
either lets it retry alone with its own backoff or treats the connection as lost (see
:class:`~pulse_celery.pulse.engine.Engine`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from .delivery import Delivery
from .host import Host
from .lane import Lane
from .recovery import Recovery
from .stats import QueueStats
from .topology import QueueSpec, anonymous_queue_name, declare, unbind_and_delete

logger = logging.getLogger(__name__)

#: What a consumer's owner asked for.
WANTS = ("consuming", "paused", "closed", "deleted")


class QueueConsumer:
    """One queue: what its owner wants of it, and the channel it is consumed on now."""

    def __init__(
        self,
        engine: Host,
        key: str,
        spec: QueueSpec,
        on_message: Callable[[Delivery], None],
        prefetch: int,
        *,
        label: str,
        auto_ack: bool = False,
    ) -> None:
        self.engine = engine
        #: names the queue across reconnects (an anonymous queue's name changes with each)
        self.key = key
        self.spec = spec
        self.on_message = on_message
        self.prefetch = prefetch
        self.auto_ack = auto_ack
        #: cumulative figures, for the life of the process
        self.stats = QueueStats(spec.name, label)
        self.wants = "consuming"
        #: who paused it, for the log lines (``remote control``, ``the application``)
        self.paused_by = ""
        self.lane: Lane | None = None
        #: how it recovers, alone, from what the broker does to it
        self.recovery = Recovery(self)
        self._activating = False

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def consuming(self) -> bool:
        return self.lane is not None and self.lane.alive and self.lane.consumer_tag is not None

    @property
    def in_flight(self) -> int:
        return self.lane.in_flight if self.lane is not None and self.lane.alive else 0

    def state(self) -> str:
        """consuming, paused, waiting (for the connection or the hand-off), failing (the broker
        refused its declare or closed its channel: retried alone, ``recovery.failure`` says
        why), closed or deleted."""
        if self.wants != "consuming":
            return self.wants
        if self.consuming:
            return "consuming"
        return "failing" if self.recovery.failure else "waiting"

    def describe(self) -> str:
        """``queue/alice/builds -> tasks.on_build``, and whether it is paused."""
        note = f" (paused by {self.paused_by})" if self.wants == "paused" else ""
        return f"{self.name} -> {self.stats.task}{note}"

    def wants_declared(self) -> bool:
        """Whether a new connection should declare this queue before consuming anything."""
        if self.wants in ("closed", "deleted"):
            return False
        return self.wants == "consuming" or not self.spec.anonymous

    def renew(self) -> None:
        """Before a new connection: an anonymous queue gets a fresh name (the old one is gone)."""
        self.adopt(self.renewed())

    def renewed(self) -> QueueSpec:
        """The spec to declare on a new connection: an anonymous queue's with a fresh name."""
        if not self.spec.anonymous:
            return self.spec
        return replace(self.spec, name=anonymous_queue_name(self.engine.config.user, self.stats.task))

    def adopt(self, spec: QueueSpec) -> None:
        self.spec = spec
        self.stats.name = spec.name

    # -- the connection comes and goes ------------------------------------------------------

    def connected(self, channel: Any) -> None:
        """The engine's connection is up; ``channel`` has the queue declared (or is an error, or None)."""
        self.recovery.cancel()
        if isinstance(channel, BaseException):
            self.recovery.failed(channel)
            return
        if channel is not None:
            session = self.engine.session
            if session is None or self.wants in ("closed", "deleted"):
                if session is not None:
                    session.close_channel(channel)
                return
            self.lane = session.lane(channel, self.stats)
            self.lane.declared = True
        self.activate()

    def disconnected(self) -> None:
        """The connection is gone: so is the lane, and its deliveries go back to the queue."""
        self.recovery.cancel()
        if self.lane is not None:
            self.lane.kill()
            self.lane = None

    # -- consuming -------------------------------------------------------------------------

    def may_consume(self) -> bool:
        """The owner wants it, and the connection, the hand-off and any retry allow it."""
        engine = self.engine
        return self.wants == "consuming" and engine.up and not engine.held and not self.recovery.pending

    def activate(self) -> None:
        """Consume, if :meth:`may_consume`.

        Its synchronous calls let other frames be handled while they wait: a callback may
        pause this queue, or the hand-off hold them all, meanwhile. So a nested call does
        nothing, and what may consume is asked again once the consumer exists.
        """
        if self._activating or not self.may_consume():
            return
        self._activating = True
        try:
            self._activate()
        finally:
            self._activating = False
        if self.consuming and not self.may_consume():
            self.deactivate()  # paused or held while the consumer was being set up

    def _activate(self) -> None:
        engine = self.engine
        lane = self._ensure_lane()
        if lane is None or lane.consumer_tag is not None:
            return
        if not lane.declared:
            lane.guard(declare, lane.channel, engine.config, self.spec)
            if self.lane is not lane or not lane.alive:
                return  # refused: recovery has taken over
            lane.declared = True
            self.recovery.declared()
        tag = lane.consume(
            self.name,
            None if self.auto_ack else self.prefetch,
            partial(self._on_delivery, lane),
            partial(self.recovery.queue_deleted, lane),
        )
        if self.lane is lane and lane.alive:
            lane.consumer_tag = tag
            self.recovery.succeeded()
            engine.changed(queues=True)

    def _ensure_lane(self) -> Lane | None:
        if self.lane is not None and self.lane.alive:
            return self.lane
        session = self.engine.session
        channel = session.open_channel() if session is not None else None
        if session is None or channel is None:
            return None
        self.lane = session.lane(channel, self.stats)
        return self.lane

    def deactivate(self) -> None:
        """Stop new deliveries; those in flight are still acked or rejected on the same channel."""
        lane = self.lane
        if lane is not None and lane.cancel() and self.spec.anonymous:
            lane.declared = False  # auto-delete: the broker deleted it with its last consumer

    def _on_delivery(self, lane: Lane, message: Any) -> None:
        """Called by py-amqp for each delivery on ``lane``'s channel; never raises."""
        delivery = Delivery.received(message, lane, self.name)
        if self.auto_ack:
            delivery.settled = True  # the broker counted it acked when it sent it
            self.stats.delivered += 1
        else:
            lane.delivered(delivery.delivery_tag, delivery.redelivered)
        self.engine.served()
        try:
            self.on_message(delivery)
        except Exception:
            logger.exception(
                "Unexpected error handling a Pulse message from %s (%s); it goes back to the queue",
                delivery.exchange,
                delivery.routing_key,
            )
            delivery.reject(requeue=True)

    # -- what the owner asks -----------------------------------------------------------------

    def pause(self, by: str) -> int:
        """Stop new deliveries (kept across reconnects); return how many are in flight."""
        self.wants, self.paused_by = "paused", by
        self.deactivate()
        in_flight = self.in_flight
        logger.info(
            "Pulse queue %s paused by %s: no new deliveries; the %d in flight are still acked; new "
            "messages wait in the queue on Pulse, where they count toward Pulse Guardian's limits",
            self.name,
            by,
            in_flight,
        )
        self.engine.changed(queues=True)
        return in_flight

    def resume(self, by: str) -> None:
        self.wants = "consuming"
        self.activate()
        if self.consuming:
            logger.info("Pulse queue %s resumed by %s; consuming", self.name, by)
        else:
            logger.info(
                "Pulse queue %s resumed by %s; consuming once the connection allows (now: %s)",
                self.name,
                by,
                self.engine.state(),
            )
        self.engine.changed(queues=True)

    def close(self) -> None:
        """Stop consuming and close the channel: unsettled deliveries go back to the queue."""
        self.wants = "closed"
        self.recovery.cancel()
        self.deactivate()
        if self.lane is not None:
            self.lane.close()
            self.lane = None

    def delete(self) -> str | BaseException:
        """Cancel, unbind and delete the queue; return what happened, or the broker's refusal.

        The unbind and delete run on a channel of their own: a refusal closes only that one,
        and the queue is consumed again as before.
        """
        before = self.wants
        self.wants = "deleted"  # first: the broker cancels a consumer of a queue it deletes
        self.recovery.cancel()
        self.deactivate()
        session = self.engine.session
        outcome = session.run_on_own_channel(_drop, self.spec) if session is not None else None
        if outcome is None or isinstance(outcome, BaseException):
            self.wants = before
            self.activate()
            return outcome or ConnectionError("the Pulse connection was lost")
        if self.lane is not None:
            self.lane.close()  # its in-flight deliveries went with the queue
            self.lane = None
        return outcome


def _drop(channel: Any, spec: QueueSpec) -> str:
    from amqp.exceptions import NotFound

    try:
        dropped = unbind_and_delete(channel, spec)
    except NotFound:
        return "it was already gone"
    return f"{dropped} ready messages dropped with it"
