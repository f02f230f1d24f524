"""Replace a Pulse connection that is up with a fresh one (``pulse_recycle_interval``), losing nothing.

Every ``recycle_interval`` seconds of a connection's life the :class:`Recycler` opens a new
connection beside it (in a thread: credentials are asked again, every queue is declared on
its channel), and once it is up, on the loop:

1. each queue consumes on the new connection (an anonymous queue is a new queue there);
2. the old connection's consumers are cancelled: the broker sends them nothing more;
3. the old connection stays open while deliveries taken on it are settled, each on the
   channel it came on (a :class:`~pulse_celery.pulse.delivery.Delivery` holds its lane);
4. a :class:`Retirement` closes it once nothing is in flight on it, or after
   :data:`RETIRE_TIMEOUT` at the latest (what is still unsettled then goes back to its queue).

The link reports only the new connection's loss: a loss of the old one during its retirement
is its own (its unsettled messages are redelivered; nothing reconnects). A failed attempt
keeps the old connection, which consumes on, and is tried again later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from kombu import Connection
from kombu.asynchronous import Hub

from .config import PulseConfig
from .consumer import QueueConsumer
from .consumers import Consumers
from .diagnose import describe_error
from .lane import Lane
from .link import Link, Up
from .loop import Timers
from .session import Session, opener
from .stats import ConnectionStats
from .topology import QueueSpec

logger = logging.getLogger(__name__)

#: Seconds a retired connection may keep unsettled deliveries before it is closed anyway.
#: RabbitMQ's own consumer_timeout is 30 minutes; a task that holds a message longer than
#: this is redelivered when its old connection closes.
RETIRE_TIMEOUT = 1800.0

#: Seconds between two looks at a retired connection's in-flight deliveries.
RETIRE_POLL = 0.1

#: A failed recycle is tried again after this many seconds (or the interval, if shorter).
RETRY_AFTER = 60.0


class Retirement:
    """One replaced connection: no consumers, its deliveries settling; closed once they are."""

    def __init__(self, up: Up, lanes: list[Lane], timers: Timers, deadline: float) -> None:
        self.up = up
        self.lanes = lanes
        self.timers = timers
        self.deadline = deadline
        self.done = False
        self.anonymous = 0
        if up.wire is not None:
            up.wire.route_channel_errors(self._channel_error)
        self.timers.later(RETIRE_POLL, self.check)

    @property
    def in_flight(self) -> int:
        return sum(lane.in_flight for lane in self.lanes if lane.alive)

    @property
    def wire(self) -> Any:
        return self.up.wire

    def _channel_error(self, channel_id: int, exc: BaseException) -> None:
        for lane in self.lanes:
            if lane.channel_id == channel_id:
                lane.kill()  # its unsettled deliveries are redelivered by the broker

    def check(self) -> None:
        """Close the connection once nothing is in flight on it, or at the deadline."""
        if self.done:
            return
        wire = self.up.wire
        if wire is None or not wire.alive:
            unsettled = sum(lane.in_flight for lane in self.lanes)
            for lane in self.lanes:
                lane.kill()
            self.done = True
            if unsettled:
                logger.warning(
                    "The retired Pulse connection was lost with %d unacknowledged messages; the "
                    "broker delivers them again (the new connection consumes on)",
                    unsettled,
                )
            return
        in_flight = self.in_flight
        if in_flight and time.monotonic() < self.deadline:
            self.timers.later(RETIRE_POLL, self.check)
            return
        if in_flight:
            logger.warning(
                "Closing the retired Pulse connection after %.0f s with %d messages still "
                "unacknowledged; they go back to their queues and are delivered again (those of "
                "anonymous queues are dropped with the queue)",
                RETIRE_TIMEOUT,
                in_flight,
            )
        else:
            logger.debug("Closing the retired Pulse connection: every delivery taken on it was settled")
        self.close()

    def drain(self) -> None:
        """Warm shutdown: send each ack at once, stop reading (heartbeats go on)."""
        for lane in self.lanes:
            lane.unbatch()
        if self.up.wire is not None and self.up.wire.alive:
            self.up.wire.stop_reading()

    def close(self) -> None:
        """Send the acks decided on, then close (unsettled deliveries go back to their queues)."""
        self.done = True
        for lane in self.lanes:
            lane.close()
        if self.up.wire is not None:
            self.up.wire.close()


class Engine(Protocol):
    """What the recycler needs of the :class:`~pulse_celery.pulse.engine.Engine` (which imports it)."""

    config: PulseConfig
    hub: Hub | None
    host: int
    draining: bool
    isolate: bool
    link: Link
    consumers: Consumers
    stats: ConnectionStats
    session: Session | None
    timers: Timers
    connect_once: Callable[[], Connection]

    def open_session(self, up: Up) -> Session: ...

    def connected(self, up: Up, recycled: bool = False) -> None: ...


class Recycler:
    """Recycle the engine's connection every ``recycle_interval`` seconds of its life."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.interval = engine.config.recycle_interval
        self.timers = Timers(engine.hub)
        self.retirements: list[Retirement] = []
        #: what each recycle attempt declares, by key: the consumer and the spec it declared
        self._planned: dict[str, tuple[Any, QueueSpec]] = {}

    @property
    def enabled(self) -> bool:
        return bool(self.interval) and self.engine.hub is not None and not self.engine.config.is_memory

    def schedule(self, delay: float | None = None) -> None:
        """The connection came up (or a recycle failed): recycle it after ``delay`` (the interval)."""
        self.timers.cancel_all()
        if self.enabled and self.interval is not None:
            self.timers.later(self.interval if delay is None else delay, self.recycle)

    def cancel(self) -> None:
        """No more recycles (lost, draining or closing); retirements go on."""
        self.timers.cancel_all()

    def in_flight(self) -> int:
        self.retirements = [r for r in self.retirements if not r.done]
        return sum(r.in_flight for r in self.retirements)

    def wires(self) -> list[Any]:
        self.retirements = [r for r in self.retirements if not r.done]
        return [r.wire for r in self.retirements]

    def recycle(self) -> None:
        """Open the new connection (in a thread); :meth:`_swap` takes over once it is up."""
        engine = self.engine
        if engine.draining or engine.link.state != "up":
            return
        self._planned = {}
        wanted = []
        for key, consumer in engine.consumers.items():
            if consumer.wants_declared():
                spec = consumer.renewed()
                self._planned[key] = (consumer, spec)
                wanted.append((key, spec))
        logger.info(
            "Recycling the Pulse connection to %s: opening a new one", engine.config.safe_url(engine.host)
        )
        work = opener(engine.connect_once, engine.config, wanted, engine.isolate, False)
        if not engine.link.recycle(work, self._swap, self._failed):
            self.schedule(RETRY_AFTER)

    def _failed(self, exc: BaseException) -> None:
        engine = self.engine
        why = describe_error(exc, engine.config, max(engine.host, 0))
        engine.stats.error(why)
        delay = min(self.interval or RETRY_AFTER, RETRY_AFTER)
        logger.warning(
            "Recycling the Pulse connection failed (%s); the current connection consumes on and "
            "nothing is lost; trying again in %.0f s",
            why,
            delay,
        )
        self.schedule(delay)

    def _swap(self, old: Up, new: Up) -> None:
        """On the loop: consume on ``new``, cancel ``old``'s consumers, retire ``old``."""
        engine = self.engine
        old_session = engine.session
        session = engine.open_session(new)
        declared: dict[str, tuple[QueueSpec, Any]] = new.extra
        planned, self._planned = self._planned, {}
        lanes = []
        for key, consumer in list(engine.consumers.items()):
            spec, channel = declared.get(key, (None, None))
            if key in planned and planned[key][0] is not consumer:  # replaced meanwhile
                session.close_channel(channel)  # (a no-op for an error or None)
                spec, channel = None, None
            previous = consumer.lane
            try:
                lane = hand_over(consumer, spec, channel)
            except Exception:
                logger.exception("Error moving Pulse queue %s to the new connection", consumer.name)
                lane = previous if previous is not None and previous is not consumer.lane else None
            if lane is not None:
                lanes.append(lane)
        if old_session is not None:
            old_session.end()
        retirement = Retirement(old, lanes, engine.timers, time.monotonic() + RETIRE_TIMEOUT)
        self.retirements.append(retirement)
        engine.stats.recycles += 1
        logger.info(
            "Pulse connection recycled: consuming on a new connection to %s; the old one takes no "
            "new deliveries and closes once its %d unacknowledged messages are settled",
            engine.config.safe_url(engine.host),
            retirement.in_flight,
        )
        engine.connected(new, recycled=True)
        self.schedule()

    def drain(self) -> None:
        self.cancel()
        for retirement in self.retirements:
            retirement.drain()

    def close(self) -> None:
        self.cancel()
        retirements, self.retirements = self.retirements, []
        for retirement in retirements:
            if not retirement.done:
                retirement.close()


def hand_over(consumer: QueueConsumer, spec: QueueSpec | None, channel: Any) -> Lane | None:
    """Move ``consumer`` to the engine's new session (a recycle); return the old lane, still open.

    The new lane consumes first, then the old consumer is cancelled: the queue is never
    without a consumer, and each delivery of the old lane still settles on its channel.
    ``spec`` is what the new connection declared (None: nothing was; an anonymous queue
    then gets a fresh name, declared when it consumes again).
    """
    old, consumer.lane = consumer.lane, None
    if spec is not None:
        consumer.adopt(spec)
    elif consumer.spec.anonymous:
        consumer.renew()
    consumer.connected(channel)
    if old is None or not old.alive:
        return None
    old.cancel()
    return old
