"""Read one Pulse delivery as it came, and decode its body only if it is plain JSON.

:class:`PulseMessage` is where a message came from (exchange, routing key, CC routes,
redelivered, queue); under Celery it travels with the task as the ``pulse`` header
(:func:`pulse_celery.pulse_message`). Bodies that are not JSON, are compressed or are too
large are refused before a byte of them is decoded (:func:`check_content`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from amqp import Message as AmqpMessage

from ..errors import ContentRefused, UndecodableBody
from .taskcluster import TaskclusterKey, routing_fields

#: Content types taken as JSON; anything else (pickle, YAML, msgpack, ...) is refused unread.
JSON_CONTENT_TYPES = frozenset({"application/json", "text/json", ""})
#: Content encodings that mean "plain text"; anything else (gzip, zlib, ...) is refused.
PLAIN_ENCODINGS = frozenset({"utf-8", "utf8", "", "binary"})


@dataclass(frozen=True)
class PulseMessage:
    """Where a Pulse message came from: what a task needs beside its payload."""

    exchange: str
    routing_key: str
    #: CC routes (Taskcluster task routes come as ``route.<route>``).
    routes: tuple[str, ...]
    redelivered: bool
    #: The Pulse queue it was consumed from.
    queue: str

    @property
    def routing_keys(self) -> tuple[str, ...]:
        """The primary routing key followed by the CC routes: every key the message carries."""
        return (self.routing_key, *self.routes)

    @property
    def taskcluster(self) -> TaskclusterKey | None:
        """The Taskcluster routing key by name and the task's routes; None off Taskcluster's exchanges.

        ``msg.taskcluster["taskId"]``, ``msg.taskcluster.routes`` (CC routes without ``route.``);
        see :func:`pulse_celery.taskcluster.routing_fields`.
        """
        return routing_fields(self)

    def as_header(self) -> dict[str, Any]:
        # Built by hand: dataclasses.asdict deep-copies, and this runs once per message.
        return {
            "exchange": self.exchange,
            "routing_key": self.routing_key,
            "routes": list(self.routes),
            "redelivered": self.redelivered,
            "queue": self.queue,
        }

    def describe(self) -> str:
        """A short stand-in for the payload in Celery's logs and events (``argsrepr``)."""
        return f"(<Pulse message from {self.exchange} {self.routing_key}>,)"

    @classmethod
    def from_header(cls, header: dict[str, Any]) -> PulseMessage:
        return cls(
            exchange=header["exchange"],
            routing_key=header["routing_key"],
            routes=tuple(header.get("routes") or ()),
            redelivered=bool(header.get("redelivered")),
            queue=header.get("queue", ""),
        )


@dataclass(frozen=True)
class RawDelivery:
    """The parts of one delivery, read without decoding or decompressing anything."""

    body: bytes
    content_type: str | None
    content_encoding: str | None
    headers: dict[str, Any]
    delivery_info: dict[str, Any]
    delivery_tag: int
    #: Every AMQP property as the broker sent it (headers included, as ``application_headers``).
    properties: dict[str, Any] = field(default_factory=dict)


def raw_delivery(message: Any) -> RawDelivery:
    """Read a py-amqp message (or, on the in-memory transport, a kombu one) as is.

    Pulse deliveries are consumed with py-amqp's own ``basic_consume`` rather than through
    ``kombu.Consumer``: kombu's ``Message`` expands a body with a ``compression`` header as
    soon as it is built, before anything could refuse it.
    """
    info = dict(message.delivery_info)
    if isinstance(message, AmqpMessage):
        properties = message.properties
        content_type = properties.get("content_type")
        content_encoding = properties.get("content_encoding")
        headers = properties.get("application_headers") or {}
        delivery_tag = info["delivery_tag"]
    else:  # kombu.Message from the in-memory transport
        content_type, content_encoding = message.content_type, message.content_encoding
        headers = message.headers or {}
        delivery_tag = message.delivery_tag
        properties = {**message.properties, "application_headers": headers}
    body = message.body
    return RawDelivery(
        body=body.encode() if isinstance(body, str) else bytes(body),
        content_type=content_type,
        content_encoding=content_encoding,
        headers=headers,
        delivery_info=info,
        delivery_tag=delivery_tag,
        properties=properties,
    )


def cc_routes(headers: dict[str, Any] | None) -> tuple[str, ...]:
    """Return the CC routing keys of a delivery (the ``CC`` header RabbitMQ leaves in place)."""
    cc = (headers or {}).get("CC") or (headers or {}).get("cc") or ()
    if isinstance(cc, (str, bytes)):
        cc = [cc]
    return tuple(c.decode("utf-8", "replace") if isinstance(c, bytes) else str(c) for c in cc)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def check_content(
    content_type: str | None,
    content_encoding: str | None,
    headers: dict[str, Any] | None,
    size: int,
    max_size: int,
) -> None:
    """Refuse, before reading a byte of it, a body that is not plain JSON or is too large."""
    if size > max_size:
        raise ContentRefused(f"body of {size} bytes is over the {max_size}-byte limit (pulse_max_body_size)")
    media = _media_type(content_type)
    if media not in JSON_CONTENT_TYPES:
        raise ContentRefused(f"content type {content_type!r} is not JSON; it is never decoded")
    encoding = (content_encoding or "").strip().lower()
    if encoding not in PLAIN_ENCODINGS or (headers or {}).get("compression"):
        what = (headers or {}).get("compression") or content_encoding
        raise ContentRefused(f"compressed body ({what}) is refused before expansion")


def decode_body(body: bytes | str) -> Any:
    """Parse a JSON body; raise :class:`UndecodableBody` for anything that does not parse."""
    try:
        text = body.decode("utf-8") if isinstance(body, (bytes, bytearray, memoryview)) else body
    except UnicodeDecodeError as exc:
        raise UndecodableBody(f"body is not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise UndecodableBody("JSON nested too deeply to decode") from None
    except ValueError as exc:  # JSONDecodeError, and ints over sys.get_int_max_str_digits()
        raise UndecodableBody(f"body is not valid JSON ({str(exc)[:120]})") from None


def delivery_count(headers: dict[str, Any]) -> int:
    """How many times the broker delivered this message before (quorum queues count them)."""
    try:
        return int(headers.get("x-delivery-count") or 0)
    except (TypeError, ValueError):
        return 0
