"""Publish a message the way Pulse publishers do: persistent JSON, CC routes in the ``CC`` header."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from kombu import Connection, Exchange, Producer


def publish(
    connection: Connection,
    exchange: str,
    routing_key: str,
    body: Any,
    *,
    routes: Sequence[str] = (),
    content_type: str = "application/json",
    content_encoding: str = "utf-8",
    headers: dict[str, Any] | None = None,
) -> None:
    """Publish ``body`` as Pulse publishers do; ``routes`` go in the ``CC`` header.

    ``body`` is JSON-encoded unless it is already ``bytes`` (to send bad input on purpose).
    On a connection made with ``transport_options={"confirm_publish": True}`` (as
    :meth:`PulseLikeBroker.admin_connection` makes it) this returns once the broker has the
    message.
    """
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = dict(headers or {})
    if routes:
        all_headers["CC"] = list(routes)
    producer = Producer(connection.default_channel)
    producer.publish(
        data,
        exchange=Exchange(exchange, type="topic", passive=True),
        routing_key=routing_key,
        content_type=content_type,
        content_encoding=content_encoding,
        headers=all_headers,
        delivery_mode=2,
        declare=[],
        retry=False,
    )
