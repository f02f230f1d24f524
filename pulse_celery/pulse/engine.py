"""The Pulse engine: one connection kept up, and the queues consumed on it, on any kombu Hub.

Both hosts run this: :class:`~pulse_celery.pulse.connection.PulseConnection` on a loop of
its own, and the Celery worker step on the worker's hub. The engine connects in a thread
(which also declares the queues known then, so the loop never waits on those round trips),
attaches the connection to the loop, and hands each queue its channel
(:class:`~pulse_celery.pulse.consumer.QueueConsumer`). It logs what each connection event
means for the messages, keeps the connection's figures, and answers ``state()``.

``isolate`` chooses what a queue's own failure (a declare refused, its channel closed by
the broker) does: with True the queue retries alone with its own backoff and the others
consume on; with False the connection is treated as lost (at connect: the attempt fails),
so every queue waits for the same reconnect.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from kombu import Connection
from kombu.asynchronous import Hub

from .. import _compat
from .config import PulseConfig
from .consumer import QueueConsumer
from .consumers import Consumers
from .credentials import current as current_credentials
from .delivery import Delivery
from .depth import DepthMonitor
from .diagnose import describe_error
from .events import Connected
from .link import Link, Opener, Up
from .loop import Timers, guarded
from .recycle import Recycler
from .session import Session, opener
from .stats import ConnectionStats
from .topology import QueueSpec
from .wire import LoopConnection

logger = logging.getLogger(__name__)


def open_connection(config: PulseConfig, host: int = 0, **options: Any) -> Connection:
    """Connect to Pulse host ``host`` once (the link's backoff decides when to try again).

    With ``pulse_credentials`` the provider is asked first, here (a connect thread, or a
    one-off command): its failure is this attempt's failure.
    """
    kwargs = config.connection_kwargs(host)
    if config.credentials is not None and not config.is_memory:
        kwargs["userid"], kwargs["password"] = current_credentials(
            config.user, config.password, config.credentials
        )
    connection = Connection(**kwargs, **options)
    try:
        connection.ensure_connection(max_retries=0)
    except Exception:
        connection.collect()
        raise
    return connection


def open_any_host(config: PulseConfig, first: int = 0, **options: Any) -> Connection:
    """Connect to the first host that answers, trying each once from host ``first`` on.

    For one-off connections (a command, a delete while the engine is down): with a failover
    ``pulse_url`` a dead node is skipped. Raises the last host's error if none answers.
    """
    count = len(config.hosts)
    for n in range(count):
        try:
            return open_connection(config, (first + n) % count, **options)
        except Exception:
            if n == count - 1:
                raise
    raise AssertionError("unreachable: a config has at least one host")


class Engine:
    """One Pulse connection and its queues; every method runs on the loop's thread."""

    def __init__(
        self,
        config: PulseConfig,
        hub: Hub | None,
        *,
        isolate: bool = True,
        connect: Callable[[], Connection] | None = None,
        on_changed: Callable[[], None] | None = None,
        on_connected: Callable[[Connected], None] | None = None,
        source: str = "default",
    ) -> None:
        self.config = config
        #: the Pulse source's name, for the log lines and :class:`Connected`
        self.source = source
        self.hub = hub
        self.isolate = isolate
        #: kombu's in-memory transport shares the Celery app's connection: never close it
        self._shared = connect is not None and config.is_memory
        #: the host of the current (or last) connect attempt: an index into ``config.hosts``
        self.host = -1
        #: connects once to host ``self.host`` (read in the connect thread)
        self.connect_once = connect or (lambda: open_connection(config, self.host))
        self._on_changed = on_changed
        self._on_connected = on_connected
        self.link = Link(hub, "Pulse", self._prepare, self._on_up, self._on_down)
        self.timers = Timers(hub)
        self.consumers = Consumers()
        self.stats = ConnectionStats()
        #: the state shown while held (no consumer active), or None
        self.held: str | None = None
        self.draining = False
        #: the live connection's channels, while it is up
        self.session: Session | None = None
        self.depth = DepthMonitor(self.timers, config, lambda: list(self.consumers.values()), self._live)
        self.ticks = _compat.tick_callbacks(hub) if hub is not None else None
        #: replaces the connection every ``recycle_interval`` seconds, and retires the old ones
        self.recycler = Recycler(self)

    # -- queues ------------------------------------------------------------------------------

    def add(
        self,
        key: str,
        spec: QueueSpec,
        on_message: Callable[[Delivery], None],
        prefetch: int,
        *,
        label: str,
        auto_ack: bool = False,
    ) -> QueueConsumer:
        """Consume ``spec``'s queue from now on (declared at once if the connection is up)."""
        consumer = QueueConsumer(self, key, spec, on_message, prefetch, label=label, auto_ack=auto_ack)
        self.consumers.put(consumer)
        if self.up:
            consumer.renew()
            consumer.activate()
        self.changed()
        return consumer

    def _live(self) -> Session | None:
        return self.session if self.up else None

    @property
    def up(self) -> bool:
        return self.session is not None and self.session.alive and not self.draining

    def in_flight(self) -> int:
        """Unsettled deliveries, on the live connection and on those being retired (a recycle)."""
        return self.consumers.in_flight() + self.recycler.in_flight()

    def wires(self) -> list[LoopConnection | None]:
        """The live connection's driver, then those of connections being retired (a recycle)."""
        return [self.link.wire, *self.recycler.wires()]

    # -- connecting ---------------------------------------------------------------------------

    def start(self) -> None:
        self.draining = False
        self.link.start()
        self.changed()

    def _prepare(self) -> Opener:
        """On the loop: pick the host, fix what the connect thread declares, then hand it the work.

        Every attempt goes to the next host of a failover list (round robin): after a loss,
        the node that was lost is the last one tried again.
        """
        self.host = (self.host + 1) % len(self.config.hosts)
        wanted = []
        for consumer in self.consumers.values():
            if consumer.wants_declared():
                consumer.renew()
                wanted.append((consumer.key, consumer.spec))
        if not self.config.is_memory:
            logger.info("Connecting to Pulse at %s", self.config.safe_url(self.host))
        return opener(self.connect_once, self.config, wanted, self.isolate, self._shared)

    def _on_up(self, up: Up) -> None:
        session = self.open_session(up)
        self.stats.connects += 1
        again = "" if up.down_for is None else f" again, {up.down_for:.1f} s after it was lost"
        self.consumers.connected(session, up.extra)
        url, queues = self.config.safe_url(self.host), self.consumers.describe()
        logger.info("Connected to Pulse at %s%s; queues: %s", url, again, queues)
        self.depth.start()
        self.recycler.schedule()
        self.connected(up)

    def open_session(self, up: Up) -> Session:
        """Make ``up`` the live connection; with ``isolate`` a channel it closes fails only its queue."""
        self.session = Session(up, self.ticks)
        if up.wire is not None and self.isolate:
            up.wire.route_channel_errors(self.on_channel_error)
        return self.session

    def connected(self, up: Up, recycled: bool = False) -> None:
        """Tell the host a connection is up: the first, a reconnect, or (``recycled``) a replacement."""
        if self._on_connected is not None:
            event = Connected(
                source=self.source,
                queues=self.consumers.connected_queues(),
                first=self.stats.connects == 1 and not recycled,
                recycled=recycled,
                down_for=up.down_for,
            )
            guarded(self._on_connected, "the on-connect hook")(event)
        self.changed()

    def _on_down(self, exc: BaseException, delay: float, was_up: bool) -> None:
        why = describe_error(exc, self.config, max(self.host, 0))
        self.stats.error(why)
        self.recycler.cancel()
        if was_up:
            self.stats.losses += 1
            in_flight = self.consumers.in_flight()  # the retired connections' stay
            self._disconnect()
            _log_lost(why, in_flight, delay)
        else:
            _log_refused(self.config.safe_url(self.host), why, delay)
        self.changed()

    def _disconnect(self) -> None:
        self.depth.stop()
        if self.session is not None:
            self.session.end()
            self.session = None
        self.consumers.disconnected()

    def on_channel_error(self, channel_id: int, exc: BaseException) -> None:
        consumer = self.consumers.on_channel(channel_id)
        if consumer is not None:
            consumer.recovery.channel_closed(exc)
            return
        logger.warning(
            "Pulse channel %s closed by the broker (%s)", channel_id, describe_error(exc, self.config)
        )

    # -- what consumers use --------------------------------------------------------------------

    def served(self) -> None:
        """A queue got a delivery: the connection works, so a later loss reconnects without a long backoff.

        (A connection that never delivers, lost again and again, backs off up to 30 s; one that
        was closed while messages flowed comes back at once.)
        """
        if self.link.backoff.attempt:
            self.link.healthy()

    def soon(self, fun: Callable[[], Any]) -> None:
        if self.hub is not None:
            self.hub.call_soon(guarded(fun, "a Pulse queue"))
        else:
            fun()

    # -- holding, draining, closing ------------------------------------------------------------

    def hold(self, state: str) -> None:
        """Stop every queue's deliveries (in-flight ones still settle) and show ``state`` meanwhile."""
        self.held = state
        self.consumers.deactivate()
        self.changed()

    def release(self) -> None:
        self.held = None
        self.consumers.activate()
        self.changed()

    def drain(self) -> None:
        """Take no new deliveries, send acks at once, stop reading; the connection stays open.

        For a warm shutdown: the acks of deliveries still being handled keep going out.
        """
        self.draining = True
        self.depth.stop()
        self.recycler.drain()
        self.link.timers.cancel_all()  # no reconnect during a warm shutdown
        self.consumers.deactivate(unbatch=True)
        up = self.link.up
        if up is not None and up.wire is not None:
            up.wire.stop_reading()
        self.changed()

    def close(self, why: str) -> int:
        """Close the connection; return how many unsettled deliveries go back to their queues."""
        self.draining = False
        in_flight = self.in_flight()
        up = self.link.stop()
        self.depth.stop()
        self.consumers.flush_acks()
        self._disconnect()
        self.recycler.close()
        if up is not None:
            if up.wire is not None:
                up.wire.close()
            elif not self._shared:
                up.connection.release()
        self.changed()
        return in_flight

    # -- state -------------------------------------------------------------------------------

    def state(self) -> str:
        """The connection's state, one of :data:`pulse_celery.pulse.stats.CONNECTION_STATES`."""
        if self.draining:
            return "draining"
        link = self.link.state
        if link in ("stopped", "idle"):
            return "stopped"
        if link != "up":
            return link  # connecting, lost
        if self.held:
            return self.held
        return "consuming" if self.consumers.consuming() else "connected"

    def status(self) -> dict[str, Any]:
        """The connection's figures, then each queue's (what ``pulse_status`` replies).

        It only reads: the Prometheus exporter calls it from its own thread.
        """
        return {
            "connection": {**self.stats.snapshot(), "url": self.config.safe_url()},
            "queues": self.consumers.snapshot(),
        }

    def changed(self, queues: bool = False) -> None:
        """Record the state; tell the owner when it (or, with ``queues``, a queue's) changed."""
        if (self.stats.enter(self.state()) or queues) and self._on_changed is not None:
            self._on_changed()


def _log_lost(why: str, in_flight: int, delay: float) -> None:
    logger.warning(
        "Pulse connection lost (%s); %d unacknowledged messages will be redelivered by the broker; "
        "reconnecting in %.1f s",
        why,
        in_flight,
        delay,
    )


def _log_refused(url: str, why: str, delay: float) -> None:
    logger.error(
        "Cannot connect to Pulse at %s: %s; nothing is consumed until it works; retrying in %.1f s",
        url,
        why,
        delay,
    )
