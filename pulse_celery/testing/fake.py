"""An in-process stand-in for :class:`~pulse_celery.PulseConnection`: no broker, the same callbacks.

Like taskcluster-lib-pulse's ``FakeClient``: your code consumes as it would from Pulse, and
your test publishes into it::

    from pulse_celery.testing import FakePulseConnection

    conn = FakePulseConnection(user="alice")
    seen = []
    builds = conn.consume("builds", lambda payload, delivery: seen.append(payload),
                          bindings=[("exchange/taskcluster-queue/v1/task-completed", "primary.#")])
    conn.publish("exchange/taskcluster-queue/v1/task-completed", "primary.abc.0", {"status": {}})
    assert seen == [{"status": {}}] and builds.acked == 1

Messages are routed by the bindings as RabbitMQ would (topic patterns, CC routes) and
delivered at once, in the publishing thread, through the real callback runner: the same
decoding, auto-ack on return, requeue when the callback raises (redelivered at once, with
``redelivered=True``) up to ``max_deliveries``, then ``on_failure``. Pause keeps messages
waiting until resume; close and delete stop a queue for good.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

from ..errors import PulseCeleryError
from ..pulse.bindings import Binding
from ..pulse.config import PulseConfig
from ..pulse.connection import connection_config, subscription
from ..pulse.delivery import Delivery
from ..pulse.handler import Callback, CallbackRunner, OnFailure
from ..pulse.lane import Lane
from ..pulse.message import PulseMessage, RawDelivery, cc_routes
from ..pulse.stats import QueueStats


class _RecordingChannel:
    """What a Lane sends acks and rejects to: here, a record of them."""

    def __init__(self, queue: FakeQueue) -> None:
        self.queue = queue

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.queue._settle(delivery_tag, "acked", multiple)

    def basic_reject(self, delivery_tag: int, requeue: bool) -> None:
        self.queue._settle(delivery_tag, "requeued" if requeue else "rejected", False)


class FakeQueue:
    """One queue of a :class:`FakePulseConnection`, with what happened to its messages."""

    def __init__(
        self, name: str, bindings: tuple[Binding, ...], runner: CallbackRunner, label: str, prefetch: int
    ) -> None:
        self.name = name
        self.prefetch = prefetch
        self.bindings = bindings
        self.state = "consuming"
        self.stats = QueueStats(name, label)
        self._runner = runner
        self._lane = Lane(_RecordingChannel(self), None, self.stats, ticks=None)
        self._tags = itertools.count(1)
        #: messages waiting (published while paused, or requeued): (raw body, properties, info)
        self.ready: deque[tuple[bytes, dict[str, Any], dict[str, Any]]] = deque()
        self._unsettled: dict[int, tuple[bytes, dict[str, Any], dict[str, Any]]] = {}

    # the figures a test asserts on
    @property
    def acked(self) -> int:
        return self.stats.acked

    @property
    def rejected(self) -> int:
        return self.stats.rejected

    @property
    def requeued(self) -> int:
        return self.stats.requeued

    @property
    def delivered(self) -> int:
        return self.stats.delivered

    def matches(self, exchange: str, routing_keys: Sequence[str]) -> bool:
        return any(b.matches(exchange, routing_keys) for b in self.bindings)

    # the PulseQueue API
    def pause(self) -> int:
        if self.state == "consuming":
            self.state = "paused"
        return len(self._unsettled)

    def resume(self) -> None:
        if self.state == "paused":
            self.state = "consuming"
            self._pump()

    def close(self) -> None:
        self.state = "closed"

    def delete(self) -> str:
        dropped = len(self.ready)
        self.ready.clear()
        self.state = "deleted"
        return f"{dropped} ready messages dropped with it"

    def wait_consuming(self, timeout: float | None = None) -> str | None:
        return None if self.state == "consuming" else f"the queue is {self.state}"

    def status(self) -> dict[str, Any]:
        """This queue's figures, as :meth:`PulseQueue.status` gives them."""
        return self.stats.snapshot(state=self.state, prefetch=self.prefetch, in_flight=len(self._unsettled))

    # delivering
    def _put(self, body: bytes, properties: dict[str, Any], info: dict[str, Any]) -> None:
        if self.state in ("closed", "deleted"):
            return
        self.ready.append((body, properties, info))
        self._pump()

    def _pump(self) -> None:
        while self.state == "consuming" and self.ready:
            body, properties, info = self.ready.popleft()
            tag = next(self._tags)
            self._unsettled[tag] = (body, properties, info)
            headers = properties.get("application_headers") or {}
            raw = RawDelivery(
                body,
                properties.get("content_type"),
                properties.get("content_encoding"),
                headers,
                {**info, "delivery_tag": tag},
                tag,
                properties,
            )
            meta = PulseMessage(
                info["exchange"],
                info["routing_key"],
                cc_routes(headers),
                bool(info.get("redelivered")),
                self.name,
            )
            self._lane.delivered(tag, meta.redelivered)
            self._runner(Delivery(raw, meta, self._lane))

    def _settle(self, tag: int, outcome: str, multiple: bool) -> None:
        tags = [t for t in self._unsettled if t <= tag] if multiple else [tag]
        for each in tags:
            message = self._unsettled.pop(each, None)
            if message is not None and outcome == "requeued":
                body, properties, info = message
                self.ready.appendleft((body, properties, {**info, "redelivered": True}))


class FakePulseConnection:
    """:class:`~pulse_celery.PulseConnection`'s API, in process; :meth:`publish` delivers."""

    def __init__(self, user: str = "", password: str = "", url: str = "", **settings: Any) -> None:
        self._setup(connection_config(user, password, url, settings))

    @classmethod
    def from_config(cls, config: PulseConfig) -> FakePulseConnection:
        connection = cls.__new__(cls)
        connection._setup(config)
        return connection

    def _setup(self, config: PulseConfig) -> None:
        self.config = config
        self.queues: list[FakeQueue] = []
        self.closed = False

    @property
    def state(self) -> str:
        """consuming while open (there is no connection to lose), then stopped."""
        return "stopped" if self.closed else "consuming"

    def status(self) -> dict[str, Any]:
        """The figures of each queue, shaped as :meth:`PulseConnection.status` shapes them."""
        return {
            "connection": {"state": self.state, "url": self.config.safe_url()},
            "queues": {queue.name: queue.status() for queue in self.queues},
        }

    def consume(
        self,
        queue: str | None,
        callback: Callback,
        prefetch: int | None = None,
        auto_ack: bool = False,
        bindings: Iterable[Any] = (),
        *,
        on_failure: OnFailure | None = None,
        payload: type | None = None,
        all_messages: bool = False,
    ) -> FakeQueue:
        """Consume as :meth:`PulseConnection.consume` does (``prefetch`` has no effect here)."""
        if self.closed:
            raise PulseCeleryError("this fake Pulse connection is closed; make a new one")
        sub = subscription(
            self.config, queue, callback, prefetch, auto_ack, bindings, on_failure, payload, all_messages
        )
        fake = FakeQueue(sub.spec.name, sub.spec.bindings, sub.runner, sub.label, sub.prefetch)
        self.queues.append(fake)
        return fake

    def publish(
        self,
        exchange: str,
        routing_key: str,
        payload: Any = None,
        *,
        routes: Sequence[str] = (),
        body: bytes | None = None,
        content_type: str = "application/json",
        content_encoding: str = "utf-8",
        headers: dict[str, Any] | None = None,
    ) -> int:
        """Deliver a message to every queue it matches, as Pulse would; return how many took it.

        ``payload`` is sent as JSON; ``body`` sends bytes as they are (bad input on purpose).
        ``routes`` are CC routes (Taskcluster's ``route.<route>``).
        """
        if self.closed:
            raise PulseCeleryError("this fake Pulse connection is closed")
        data = body if body is not None else json.dumps(payload).encode()
        all_headers = dict(headers or {})
        if routes:
            all_headers["CC"] = list(routes)
        properties = {
            "content_type": content_type,
            "content_encoding": content_encoding,
            "application_headers": all_headers,
            "delivery_mode": 2,
        }
        keys = (routing_key, *routes)
        info = {"exchange": exchange, "routing_key": routing_key, "redelivered": False}
        taken = 0
        for queue in self.queues:  # a queue takes a message once, however many bindings match
            if queue.state not in ("closed", "deleted") and queue.matches(exchange, keys):
                queue._put(data, properties, info)
                taken += 1
        return taken

    # the rest of PulseConnection's API: nothing to run, nothing to wait for
    def run(self) -> None:
        pass

    def start(self) -> FakePulseConnection:
        return self

    def close(self, timeout: float = 30.0) -> None:
        self.closed = True
        for queue in self.queues:
            queue.close()

    def __enter__(self) -> FakePulseConnection:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()
