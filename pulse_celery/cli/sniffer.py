"""Watch, send and play back Pulse messages from a shell, one JSON line per message.

``listen`` writes, and ``replay`` reads, lines of this shape::

    {"exchange": "exchange/taskcluster-queue/v1/task-completed",
     "routing_key": "primary.fGaRaxC3QBm2xHbyiwDRhg.0.mdc2...", "routes": ["route.tc-treeherder..."],
     "redelivered": false, "body": {"version": 1, ...}}

``routes`` are the message's CC routing keys. A body that is not JSON (another content type,
compressed, bad UTF-8, bad syntax) is never decoded: instead of ``body`` the line has
``body_text`` (when the bytes are UTF-8) or ``body_base64``, plus ``content_type``,
``content_encoding`` and ``body_error`` (why it was not decoded), so replay sends the same bytes.
"""

from __future__ import annotations

import base64
import json
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

from kombu import Connection, Exchange

from ..errors import BadMessage, PulseCeleryError
from ..pulse.config import PulseConfig
from ..pulse.connection import PulseConnection
from ..pulse.delivery import Delivery
from ..pulse.message import RawDelivery, cc_routes, check_content, decode_body
from ..pulse.publish import publish as publish_pulse_shaped
from ..pulse.topology import owns_exchange
from .client import BROKER_ERRORS, broker_failure, open_connection

_UNDECODED: Any = object()

#: Keys of a line whose body is not JSON; a line has exactly one of them, or ``body``.
RAW_BODY_KEYS = ("body_text", "body_base64")


# -- the line format ------------------------------------------------------------------------


def delivery_record(delivery: RawDelivery, body: Any = _UNDECODED) -> dict[str, Any]:
    """Return the JSON-able line ``listen`` prints for one delivery (``body``: already decoded)."""
    info = delivery.delivery_info
    record: dict[str, Any] = {
        "exchange": info.get("exchange", ""),
        "routing_key": info.get("routing_key", ""),
        "routes": list(cc_routes(delivery.headers)),
        "redelivered": bool(info.get("redelivered")),
    }
    if body is not _UNDECODED:
        record["body"] = body
        return record
    try:
        check_content(
            delivery.content_type,
            delivery.content_encoding,
            delivery.headers,
            len(delivery.body),
            sys.maxsize,  # no size limit: listen prints bodies, it runs no task on them
        )
        record["body"] = decode_body(delivery.body)
        return record
    except BadMessage as exc:
        reason = str(exc)
    try:
        record["body_text"] = delivery.body.decode("utf-8")
    except UnicodeDecodeError:
        record["body_base64"] = base64.b64encode(delivery.body).decode("ascii")
    record["content_type"] = delivery.content_type
    record["content_encoding"] = delivery.content_encoding
    record["body_error"] = reason
    return record


@dataclass(frozen=True)
class Outgoing:
    """One message to publish the way Pulse publishers do (persistent, CC routes)."""

    exchange: str
    routing_key: str
    #: A JSON-able payload, or the exact bytes of a body that is not JSON.
    body: Any
    routes: tuple[str, ...] = ()
    content_type: str = "application/json"
    content_encoding: str = "utf-8"

    @classmethod
    def from_record(cls, record: Any, *, exchange: str | None = None) -> Outgoing:
        """Read back a line ``listen`` wrote; ``exchange`` overrides the recorded one."""
        if not isinstance(record, dict):
            raise PulseCeleryError(f"expected a JSON object as listen writes it, got {type(record).__name__}")
        exchange = exchange or record.get("exchange")
        routing_key = record.get("routing_key")
        if not isinstance(exchange, str) or not exchange:
            raise PulseCeleryError("no 'exchange' in the line (or give --exchange)")
        if not isinstance(routing_key, str):
            raise PulseCeleryError("no 'routing_key' in the line")
        routes = record.get("routes") or []
        if not isinstance(routes, list) or not all(isinstance(r, str) for r in routes):
            raise PulseCeleryError("'routes' must be a list of strings")
        if "body" in record:
            return cls(exchange, routing_key, record["body"], tuple(routes))
        if "body_text" in record:
            body = str(record["body_text"]).encode("utf-8")
        elif "body_base64" in record:
            try:
                body = base64.b64decode(str(record["body_base64"]), validate=True)
            except ValueError:
                raise PulseCeleryError("'body_base64' is not valid base64") from None
        else:
            raise PulseCeleryError("no 'body', 'body_text' or 'body_base64' in the line")
        return cls(
            exchange,
            routing_key,
            body,
            tuple(routes),
            # A delivery without a content type is sent back as opaque bytes.
            content_type=record.get("content_type") or "application/octet-stream",
            content_encoding=record.get("content_encoding") or "binary",
        )


def parse_body(text: str) -> Any:
    """Return the JSON document ``text``; refuse anything else with the fix."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise PulseCeleryError(
            f"the body is not JSON ({exc}); Pulse bodies are JSON documents, e.g. '{{\"id\": 1}}'"
        ) from None


def read_records(lines: Iterable[str], *, exchange: str | None = None) -> Iterator[Outgoing]:
    """Yield the message of each line ``listen`` wrote; blank lines are skipped."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise PulseCeleryError(f"line {number} is not JSON ({exc})") from None
        try:
            yield Outgoing.from_record(record, exchange=exchange)
        except PulseCeleryError as exc:
            raise PulseCeleryError(f"line {number}: {exc}") from None


# -- listen ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ListenResult:
    received: int
    #: True when listening ended because ``timeout`` seconds passed without a message.
    timed_out: bool
    #: The anonymous queue listened on (gone once the connection closed).
    queue: str


def listen(
    config: PulseConfig,
    exchange: str,
    routing_keys: Iterable[str],
    write: Callable[[str], None],
    *,
    count: int | None = None,
    timeout: float | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> ListenResult:
    """Bind an anonymous queue to ``exchange`` and ``write`` one JSON line per message.

    Built on :class:`~pulse_celery.pulse.connection.PulseConnection`, so a lost connection is
    made again (with a new anonymous queue: messages published in between are not seen).
    Stops after ``count`` messages, or once ``timeout`` seconds pass without one. The queue
    is exclusive and auto-delete, named ``queue/<user>/anonymous.listen.<random>``: it and
    anything left in it disappear with the connection. ``on_ready`` is called with the queue
    name once it is bound, before any message is written.
    """
    received = 0
    activity = threading.Condition()
    last = time.monotonic()

    def take(record: dict[str, Any]) -> None:
        nonlocal received, last
        with activity:
            if count is not None and received >= count:
                return  # prefetched past --count: dropped with the queue
            write(json.dumps(record))
            received += 1
            last = time.monotonic()
            activity.notify_all()

    def listen(payload: Any, delivery: Delivery) -> None:
        take(delivery_record(delivery.raw, body=payload))

    def not_json(delivery: Delivery, exc: BaseException) -> None:
        take(delivery_record(delivery.raw))

    # No size limit: listen prints bodies, it runs nothing on them.
    with PulseConnection.from_config(replace(config, max_body_size=sys.maxsize)) as connection:
        queue = connection.consume(
            None,
            listen,
            prefetch=min(count or 100, 100),
            bindings=[(exchange, key) for key in routing_keys or ["#"]],
            on_failure=not_json,
            all_messages=True,
        )
        connection.start()
        problem = queue.wait_consuming(timeout=config.connect_timeout + 5)
        if problem:
            if problem.startswith("cannot connect"):
                raise PulseCeleryError(problem)
            raise PulseCeleryError(f"cannot listen to {exchange}: {problem}")
        if on_ready is not None:
            on_ready(queue.name)
        with activity:
            while count is None or received < count:
                idle = None if timeout is None else last + timeout - time.monotonic()
                if idle is not None and idle <= 0:
                    return ListenResult(received, timed_out=True, queue=queue.name)
                activity.wait(idle)
        return ListenResult(received, timed_out=False, queue=queue.name)


# -- publish and replay ---------------------------------------------------------------------


class Publisher:
    """Publish Pulse-shaped messages over one connection; each send returns once confirmed."""

    def __init__(self, config: PulseConfig, *, declare: bool = False) -> None:
        self.config = config
        #: Declare each topic exchange (durable) before its first message: for brokers you own.
        self.declare = declare
        self.sent = 0
        self._declared: set[str] = set()
        self._connection: Connection | None = None

    def __enter__(self) -> Publisher:
        self._connection = open_connection(self.config, confirm_publish=True)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        if self._connection is None:
            return
        if exc_info[0] is None:
            self._connection.release()
        else:  # the channel may be closed by the broker's error: do not wait on it
            self._connection.collect()
        self._connection = None

    def send(self, message: Outgoing) -> None:
        assert self._connection is not None, "use Publisher as a context manager"
        try:
            if self.declare and message.exchange not in self._declared:
                Exchange(message.exchange, type="topic", durable=True).declare(
                    channel=self._connection.default_channel
                )
                self._declared.add(message.exchange)
            publish_pulse_shaped(
                self._connection,
                message.exchange,
                message.routing_key,
                message.body if isinstance(message.body, bytes) else _json_bytes(message.body),
                routes=message.routes,
                content_type=message.content_type,
                content_encoding=message.content_encoding,
            )
        except BROKER_ERRORS as exc:
            if getattr(exc, "code", None) == 404 or "NOT_FOUND" in str(exc):
                raise PulseCeleryError(
                    f"exchange {message.exchange!r} does not exist on {self.config.safe_url()}; "
                    "check its name, or pass --declare to create it on a broker you own"
                ) from exc
            if getattr(exc, "code", None) == 403 and not owns_exchange(self.config.user, message.exchange):
                raise PulseCeleryError(
                    f"user {self.config.user!r} may not publish to {message.exchange!r}: Pulse lets a user "
                    f"write only to exchange/{self.config.user}/...; publish to a broker you own (--url)"
                ) from exc
            raise broker_failure(f"publishing to {message.exchange} failed", exc, self.config) from exc
        self.sent += 1


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload).encode("utf-8")
