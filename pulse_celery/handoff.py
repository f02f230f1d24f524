"""Put task messages on the Celery broker and report, per message, once the broker has them.

Under the ``enqueue`` ack policy a Pulse message is acked only after its task message is
confirmed here. On RabbitMQ the channel is in publisher-confirm mode and the confirms are
collected as they arrive on the worker's event loop, so publishing never waits for one;
messages go out with ``mandatory`` so an unroutable one comes back (``basic.return``) and
counts as failed instead of being confirmed and lost. Other brokers (Redis, the in-memory
transport) have no confirms: a publish that returns without error counts as confirmed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from amqp import Message as AmqpMessage
from celery import Celery
from kombu import Connection, Producer, Queue
from kombu.asynchronous import Hub

from .errors import HandoffFailed
from .eventloop import LoopConnection, backoff_delays, connect_in_background

logger = logging.getLogger(__name__)

OnConfirmed = Callable[[], None]
OnFailed = Callable[[BaseException], None]


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


@dataclass(frozen=True)
class TaskMessage:
    """A task message ready to publish: protocol-2 headers, properties and encoded body."""

    task_id: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes
    content_type: str
    content_encoding: str


class Handoff:
    """Publish task messages to the Celery broker from the event loop, reporting each outcome."""

    def __init__(self, app: Celery, hub: Hub | None, on_ready_changed: Callable[[bool], None]) -> None:
        self.app = app
        self.hub = hub
        self._on_ready_changed = on_ready_changed
        self._loop_connection: LoopConnection | None = None
        self._connection: Connection | None = None
        self._producer: Producer | None = None
        self._channel: Any = None
        self._confirms = False
        self._seq = 0
        #: publish sequence number -> (task id, on_confirmed, on_failed)
        self._unconfirmed: dict[int, tuple[str, OnConfirmed, OnFailed]] = {}
        self._returned: set[str] = set()
        self._declared: set[str] = set()
        self._next_delay = backoff_delays()
        self._generation = 0
        self._closed = False

    # -- lifecycle ------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._connection is not None

    @property
    def in_flight(self) -> int:
        return len(self._unconfirmed)

    def start(self) -> None:
        """Connect to the Celery broker (in the background when there is an event loop)."""
        self._closed = False
        self._generation += 1
        if self.hub is None:
            self._on_connected((self._generation, self._connect()))
            return
        generation = self._generation
        connect_in_background(
            self.hub,
            lambda: (generation, self._connect()),
            self._on_connected,
            self._on_connect_failed,
            name="pulse-celery-handoff-connect",
        )

    def _connect(self) -> tuple[Connection, Any]:
        connection = self.app.connection_for_write()
        connection.ensure_connection(max_retries=1)
        channel = None
        if connection.transport.driver_type == "amqp":
            channel = connection.channel()
            channel.confirm_select()
        return connection, channel

    def _on_connected(self, result: tuple[int, tuple[Connection, Any]]) -> None:
        generation, (connection, channel) = result
        if generation != self._generation or self._closed:
            connection.release()
            return
        self._connection = connection
        self._declared.clear()
        self._next_delay = backoff_delays()
        if connection.transport.driver_type == "amqp":
            self._confirms = True
            self._channel = channel
            self._channel.events["basic_ack"].add(self._on_basic_ack)
            self._channel.events["basic_nack"].add(self._on_basic_nack)
            self._channel.events["basic_return"].add(self._on_basic_return)
            self._seq = 0
            if self.hub is not None:
                self._loop_connection = LoopConnection(
                    connection, self.hub, self._on_lost, "Celery broker (hand-off)"
                )
                self._loop_connection.attach()
        else:
            self._confirms = False
            self._producer = Producer(connection.default_channel)
        logger.info("Hand-off connection to the Celery broker %s is up", connection.as_uri())
        self._on_ready_changed(True)

    def _on_connect_failed(self, exc: BaseException) -> None:
        if self._closed:
            return
        delay = self._next_delay()
        logger.warning(
            "Cannot reach the Celery broker for hand-off (%r); Pulse consumption waits; retrying in %.1f s",
            exc,
            delay,
        )
        assert self.hub is not None
        self.hub.call_later(delay, self.start)

    def _on_lost(self, exc: BaseException) -> None:
        unconfirmed, self._unconfirmed = self._unconfirmed, {}
        self._connection = None
        self._loop_connection = None
        self._producer = None
        self._channel = None
        logger.warning(
            "Hand-off connection to the Celery broker lost (%r); %d unconfirmed task messages: their "
            "Pulse messages go back to the queue and will be handled again; reconnecting",
            exc,
            len(unconfirmed),
        )
        self._on_ready_changed(False)
        failure = HandoffFailed(f"Celery broker connection lost: {exc!r}")
        for _task_id, _ok, on_failed in unconfirmed.values():
            on_failed(failure)
        if not self._closed and self.hub is not None:
            self.hub.call_later(self._next_delay(), self.start)

    def flush(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for outstanding confirms (shutdown, no event loop)."""
        import time

        deadline = time.monotonic() + timeout
        while self._unconfirmed and self._loop_connection is not None and time.monotonic() < deadline:
            self._loop_connection.drain(timeout=max(0.05, deadline - time.monotonic()))

    def close(self) -> None:
        """Close the hand-off connection; unconfirmed messages are reported as failed."""
        self._closed = True
        self._generation += 1
        loop_connection, connection = self._loop_connection, self._connection
        if loop_connection is not None or connection is not None:
            self._on_lost_quietly()
        if loop_connection is not None:
            loop_connection.close()
        elif connection is not None:
            connection.release()

    def _on_lost_quietly(self) -> None:
        unconfirmed, self._unconfirmed = self._unconfirmed, {}
        self._connection = self._loop_connection = self._producer = self._channel = None
        failure = HandoffFailed("hand-off closed before the Celery broker confirmed")
        for _task_id, _ok, on_failed in unconfirmed.values():
            on_failed(failure)

    # -- publishing -----------------------------------------------------------------

    def publish(
        self, message: TaskMessage, route: Route, on_confirmed: OnConfirmed, on_failed: OnFailed
    ) -> None:
        """Publish ``message``; exactly one of the callbacks runs later, on the loop's thread."""
        if self._connection is None:
            on_failed(HandoffFailed("no connection to the Celery broker"))
            return
        if self._confirms:
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
        assert self._loop_connection is not None
        lc = self._loop_connection
        channel = self._channel

        def send() -> None:
            self._declare(route, channel)
            channel.basic_publish(
                AmqpMessage(
                    message.body,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    application_headers=message.headers,
                    delivery_mode=2,
                    **message.properties,
                ),
                exchange=route.exchange,
                routing_key=route.routing_key,
                mandatory=True,
            )
            self._seq += 1
            self._unconfirmed[self._seq] = (message.task_id, on_confirmed, on_failed)

        lc.guard(send)
        if not lc.alive and self._seq not in self._unconfirmed:
            on_failed(HandoffFailed("Celery broker connection lost while publishing"))

    def _publish_plain(
        self, message: TaskMessage, route: Route, on_confirmed: OnConfirmed, on_failed: OnFailed
    ) -> None:
        assert self._producer is not None
        try:
            self._producer.publish(
                message.body,
                exchange=route.exchange,
                routing_key=route.routing_key,
                headers=message.headers,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
                delivery_mode=2,
                declare=[route.queue],
                retry=False,
                **message.properties,
            )
        except Exception as exc:
            on_failed(HandoffFailed(f"publish to the Celery broker failed: {exc!r}"))
            if self._connection is not None and exc.__class__ in self._connection.connection_errors:
                self._on_lost(exc)
            return
        on_confirmed()

    # -- confirms (called while frames are read on the loop) --------------------------

    def _settle(self, delivery_tag: int, multiple: bool, nacked: bool) -> None:
        tags = [t for t in self._unconfirmed if t <= delivery_tag] if multiple else [delivery_tag]
        for tag in sorted(tags):
            entry = self._unconfirmed.pop(tag, None)
            if entry is None:
                continue
            task_id, on_confirmed, on_failed = entry
            if task_id in self._returned:
                self._returned.discard(task_id)
                on_failed(HandoffFailed("the Celery broker could not route the task message (basic.return)"))
            elif nacked:
                on_failed(HandoffFailed("the Celery broker refused the task message (basic.nack)"))
            else:
                on_confirmed()

    def _on_basic_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, nacked=False)

    def _on_basic_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._settle(delivery_tag, multiple, nacked=True)

    def _on_basic_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        task_id = message.properties.get("correlation_id")
        logger.warning(
            "Celery broker returned task message %s (exchange %r, routing key %r): %s",
            task_id,
            exchange,
            routing_key,
            exc,
        )
        if task_id:
            self._returned.add(task_id)
