"""Put task messages on the Celery broker and report, per message, once the broker has them.

Under the ``enqueue`` ack policy a Pulse message is acked only after its task message is
confirmed here. On RabbitMQ the channel is in publisher-confirm mode and the confirms are
collected as they arrive on the worker's event loop, so publishing never waits for one;
messages go out with ``mandatory`` so an unroutable one comes back (``basic.return``) and
counts as failed instead of being confirmed and lost. Other brokers (Redis, the in-memory
transport) have no confirms: a publish that returns without error counts as confirmed.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu import Connection, Producer, Queue
from kombu.asynchronous import Hub

from .. import _compat
from ..errors import HandoffFailed
from ..pulse.link import Link, Up
from .confirms import Confirms, OnConfirmed, OnFailed
from .taskmessage import TaskMessage, amqp_message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    """Where a task's messages go on the Celery broker."""

    exchange: str
    routing_key: str
    queue: Queue


def resolve_route(app: Celery, task_name: str) -> Route:
    """Route ``task_name`` as ``apply_async`` would, with the app's ``task_routes``."""
    options = app.amqp.router.route({}, task_name, (), {})
    queue = options.get("queue") or app.amqp.default_queue
    if isinstance(queue, str):
        queue = app.amqp.queues[queue]
    exchange = options.get("exchange")
    routing_key = options.get("routing_key")
    exchange = getattr(exchange, "name", exchange)
    exchange_type = getattr(queue.exchange, "type", "direct") if queue.exchange else "direct"
    if (not exchange or not routing_key) and exchange_type == "direct":
        exchange, routing_key = "", queue.name
    elif exchange is None:
        exchange = queue.exchange.name
        routing_key = routing_key or queue.routing_key
    return Route(exchange=exchange, routing_key=routing_key or "", queue=queue)


def publish_with_producer(producer: Producer, message: TaskMessage, route: Route, retry: bool) -> None:
    """Publish ``message`` through a kombu producer; confirmed when it returns on a confirm channel."""
    producer.publish(
        message.body,
        exchange=route.exchange,
        routing_key=route.routing_key,
        headers=message.headers,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        delivery_mode=2,
        declare=[route.queue],
        retry=retry,
        **message.properties,
    )


def connect_from_host(connection: Connection, attempt: int) -> None:
    """Connect ``connection``, starting at host ``attempt`` of a failover URL and trying each once.

    With a failover broker_url (``amqp://h1;amqp://h2``) kombu tries the next host only on a
    retry, and every attempt makes a new connection that starts at the first host, so with
    a single try the hand-off would never leave a dead first host: each attempt starts at
    the next host (round robin).
    """
    hosts = max(len(connection.alt), 1)
    for _ in range(attempt % hosts):
        connection.maybe_switch_next()
    connection.ensure_connection(max_retries=hosts - 1)


class Handoff:
    """Publish task messages to the Celery broker from the event loop, reporting each outcome.

    The connection is a :class:`~pulse_celery.pulse.link.Link`: made in a thread, read on
    the loop, re-made with backoff when lost. Every message unconfirmed when it is lost is
    reported as failed, exactly once, so its Pulse message goes back to its queue.
    """

    def __init__(self, app: Celery, hub: Hub | None, on_ready_changed: Callable[[bool], None]) -> None:
        self.app = app
        self.hub = hub
        self._on_ready_changed = on_ready_changed
        self.link = Link(hub, "Celery broker (hand-off)", lambda: self._connect, self._on_up, self._on_down)
        self._producer: Producer | None = None
        self._channel: Any = None
        #: the channel's confirm callbacks, or None: publish and wait for each confirm
        self._events: Any = None
        #: the task messages published and not confirmed yet
        self.confirms = Confirms()
        #: called after each batch of confirms has been reported (dedupe writes its entries then)
        self.after_confirms = self.confirms.after
        self._declared: set[str] = set()
        self._attempts = itertools.count()  # each starts at the next host of a failover broker_url

    # -- lifecycle ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self.link.state == "up"

    @property
    def in_flight(self) -> int:
        return len(self.confirms)

    def start(self) -> None:
        """Connect to the Celery broker (in the background when there is an event loop)."""
        self.link.start()

    def _connect(self) -> tuple[Connection, Any]:
        # Confirms are collected asynchronously here; py-amqp's confirm_publish (which a
        # user may set in broker_transport_options) would wait for each one instead.
        connection = self.app.connection_for_write(transport_options={"confirm_publish": False})
        try:
            connect_from_host(connection, next(self._attempts))  # the link's backoff retries
            channel = None
            if connection.transport.driver_type == "amqp":
                channel = connection.channel()
                channel.confirm_select()
        except Exception:
            connection.collect()
            raise
        return connection, channel

    def _on_up(self, up: Up) -> None:
        self._declared.clear()
        self.confirms.new_channel()
        self.link.healthy()
        channel = up.extra
        if channel is not None:
            self._channel = channel
            self._events = _compat.confirm_events(channel)
            if self._events is not None:
                self._events["basic_ack"].add(self._on_basic_ack)
                self._events["basic_nack"].add(self._on_basic_nack)
                self._events["basic_return"].add(self._on_basic_return)
        else:
            self._producer = Producer(up.connection.default_channel)
        logger.info("Hand-off connection to the Celery broker %s is up", up.connection.as_uri())
        self._on_ready_changed(True)

    def _on_down(self, exc: BaseException, delay: float, was_up: bool) -> None:
        if not was_up:
            logger.warning(
                "Cannot reach the Celery broker for hand-off (%r); Pulse consumption waits; "
                "retrying in %.1f s",
                exc,
                delay,
            )
            return
        count = len(self.confirms)
        self._forget(HandoffFailed(f"Celery broker connection lost: {exc!r}"))
        logger.warning(
            "Hand-off connection to the Celery broker lost (%r); %d unconfirmed task messages: their "
            "Pulse messages go back to the queue and will be handled again; reconnecting",
            exc,
            count,
        )
        self._on_ready_changed(False)

    def _forget(self, failure: HandoffFailed) -> None:
        """Drop the connection's state; every unconfirmed message is reported as failed."""
        self._producer = self._channel = self._events = None
        self.confirms.fail_all(failure)

    def stop_reading(self) -> None:
        """Warm shutdown: no more reading on the loop; :meth:`flush` collects the last confirms."""
        self.link.timers.cancel_all()
        if self.link.wire is not None:
            self.link.wire.stop_reading()

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for outstanding confirms (shutdown, no event loop)."""
        deadline = time.monotonic() + timeout
        while self.confirms and self.link.wire is not None and time.monotonic() < deadline:
            self.link.wire.drain(timeout=max(0.05, deadline - time.monotonic()))

    def close(self) -> None:
        """Close the hand-off connection; unconfirmed messages are reported as failed."""
        up = self.link.stop()
        self._forget(HandoffFailed("hand-off closed before the Celery broker confirmed"))
        if up is not None:
            if up.wire is not None:
                up.wire.close()
            else:
                up.connection.release()

    # -- publishing -----------------------------------------------------------------

    def publish(
        self, message: TaskMessage, route: Route, on_confirmed: OnConfirmed, on_failed: OnFailed
    ) -> None:
        """Publish ``message``; exactly one of the callbacks runs later, on the loop's thread."""
        if not self.ready:
            on_failed(HandoffFailed("no connection to the Celery broker"))
        elif self._channel is not None:
            self._publish_confirmed(message, route, on_confirmed, on_failed)
        else:
            self._publish_plain(message, route, on_confirmed, on_failed)

    def _declare(self, route: Route, channel: Any) -> None:
        if route.queue.name not in self._declared:
            route.queue.bind(channel).declare()
            self._declared.add(route.queue.name)

    def _publish_confirmed(
        self, message: TaskMessage, route: Route, on_confirmed: OnConfirmed, on_failed: OnFailed
    ) -> None:
        wire, channel = self.link.wire, self._channel
        if wire is None or not wire.alive:
            on_failed(HandoffFailed("no connection to the Celery broker"))
            return
        if self._events is None:
            self._publish_and_wait(wire, channel, message, route, on_confirmed, on_failed)
            return

        def send() -> None:
            self._declare(route, channel)
            channel.basic_publish(
                amqp_message(message), exchange=route.exchange, routing_key=route.routing_key, mandatory=True
            )

        # Registered before publishing: the confirm may be read while the publish is written.
        # A connection error inside reports it through the link's loss -> _forget, exactly once.
        seq = self.confirms.expect(message.task_id, on_confirmed, on_failed)
        try:
            wire.guard(send)
        except Exception:
            # Not a connection error: nothing reached the broker, so its count did not move.
            self.confirms.withdraw(seq)
            raise

    def _publish_and_wait(
        self,
        wire: Any,
        channel: Any,
        message: TaskMessage,
        route: Route,
        on_confirmed: OnConfirmed,
        on_failed: OnFailed,
    ) -> None:
        """Without py-amqp's confirm callbacks: publish, then wait for this message's confirm."""
        from amqp.exceptions import MessageNacked

        def send() -> bool:
            self._declare(route, channel)
            try:
                channel.basic_publish_confirm(
                    amqp_message(message),
                    exchange=route.exchange,
                    routing_key=route.routing_key,
                    mandatory=True,
                )
            except MessageNacked:
                return False
            return True

        outcome = wire.guard(send)
        if outcome:
            on_confirmed()
        else:
            on_failed(HandoffFailed("the Celery broker did not confirm the task message"))

    def _publish_plain(
        self, message: TaskMessage, route: Route, on_confirmed: OnConfirmed, on_failed: OnFailed
    ) -> None:
        assert self._producer is not None
        try:
            publish_with_producer(self._producer, message, route, retry=False)
        except Exception as exc:
            on_failed(HandoffFailed(f"publish to the Celery broker failed: {exc!r}"))
            up = self.link.up
            if up is not None and isinstance(exc, up.connection.connection_errors):
                self.link.lose(exc)
            return
        on_confirmed()

    # -- confirms (called while frames are read on the loop) --------------------------

    def _on_basic_ack(self, delivery_tag: int, multiple: bool) -> None:
        self.confirms.settle(delivery_tag, multiple, nacked=False)

    def _on_basic_nack(self, delivery_tag: int, multiple: bool) -> None:
        self.confirms.settle(delivery_tag, multiple, nacked=True)

    def _on_basic_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        task_id = message.properties.get("correlation_id")
        logger.warning(
            "Celery broker returned task message %s (exchange %r, routing key %r): %s; its queue "
            "will be declared again",
            task_id,
            exchange,
            routing_key,
            exc,
        )
        self._declared.clear()  # the queue may have been deleted: declare it before the next publish
        if task_id:
            self.confirms.returned(task_id)
