"""The dead-letter store: Pulse messages that cannot or must not run again, kept for you.

A dead letter is a durable message in the queue ``pulse_dead_letter_queue``
(``pulse_celery.dead_letters``) on the **Celery broker**, which you own and where Pulse
Guardian's size limits do not apply. It keeps the original body untouched (base64), its
exchange, routing key, CC routes and headers, the Pulse queue and bound task, and why it was
stored. The Pulse message is acked only once the broker has confirmed the dead letter.

List, inspect and replay them with ``pulse-celery dead-letters ...`` or the functions here;
replaying sends the payload to the bound task through the Celery broker, with its Pulse
metadata, and removes the dead letter.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from celery import Celery
from kombu import Connection, Producer, Queue

from ..config import app_setting
from ..pulse.message import PulseMessage, decode_body
from .handoff import Route
from .taskmessage import TaskMessage


@dataclass(frozen=True)
class DeadLetter:
    """One stored Pulse message and why it was stored."""

    id: str
    reason: str
    detail: str
    exchange: str
    routing_key: str
    routes: list[str]
    queue: str
    task: str
    redelivered: bool
    headers: dict[str, Any]
    content_type: str | None
    content_encoding: str | None
    #: The body as Pulse delivered it, base64-encoded (cut to ``max_body`` bytes if larger).
    body_base64: str
    #: Size of the delivered body; more than the kept one when ``truncated``.
    body_size: int = 0
    truncated: bool = False
    stored_at: float = field(default_factory=time.time)

    @property
    def body(self) -> bytes:
        return base64.b64decode(self.body_base64)

    def as_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: bytes | str) -> DeadLetter:
        return cls(**json.loads(text))


def _json_safe(value: Any) -> Any:
    """Headers as JSON can carry them: bytes become text, anything odd its repr."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def make_dead_letter(
    *,
    reason: str,
    detail: str,
    meta: PulseMessage,
    task: str,
    headers: dict[str, Any],
    content_type: str | None,
    content_encoding: str | None,
    body: bytes,
    max_body: int,
) -> DeadLetter:
    """Describe a delivery for the store; a body over ``max_body`` bytes is kept only in part."""
    return DeadLetter(
        id=uuid.uuid4().hex,
        reason=reason,
        detail=detail,
        exchange=meta.exchange,
        routing_key=meta.routing_key,
        routes=list(meta.routes),
        queue=meta.queue,
        task=task,
        redelivered=meta.redelivered,
        headers=_json_safe(headers),
        content_type=content_type,
        content_encoding=content_encoding,
        body_base64=base64.b64encode(body[:max_body]).decode(),
        body_size=len(body),
        truncated=len(body) > max_body,
    )


def queue_name(app: Celery) -> str:
    """The dead-letter queue's name: ``pulse_dead_letter_queue``."""
    name: str = app_setting(app.conf, "dead_letter_queue")
    return name


def dead_letter_route(app: Celery) -> Route:
    name = queue_name(app)
    return Route(exchange="", routing_key=name, queue=Queue(name, durable=True, auto_delete=False))


def as_task_message(letter: DeadLetter) -> TaskMessage:
    """The dead letter as a message the hand-off publishes (and confirms) like a task message."""
    return TaskMessage(
        task_id=letter.id,
        headers={"pulse_dead_letter": letter.reason},
        properties={"correlation_id": letter.id},
        body=letter.as_json().encode(),
        content_type="application/json",
        content_encoding="utf-8",
    )


@contextmanager
def _store(app: Celery) -> Iterator[tuple[Connection, Any, str]]:
    name = queue_name(app)
    with app.connection_for_write() as conn:
        channel = conn.channel()
        Queue(name, durable=True, auto_delete=False).bind(channel).declare()
        try:
            yield conn, channel, name
        finally:
            channel.close()  # anything fetched and not acked goes back to the queue


def _each(channel: Any, name: str) -> Iterator[tuple[Any, DeadLetter]]:
    while True:
        message = channel.basic_get(name, no_ack=False)
        if message is None:
            return
        yield message, DeadLetter.from_json(message.body)


def list_dead_letters(app: Celery, limit: int | None = None) -> list[DeadLetter]:
    """Return the stored dead letters, oldest first, leaving them in the store."""
    found: list[DeadLetter] = []
    with _store(app) as (_conn, channel, name):
        for _message, letter in _each(channel, name):
            found.append(letter)
            if limit is not None and len(found) >= limit:
                break
    return found


def _take(app: Celery, select: Callable[[DeadLetter], bool], act: Callable[[DeadLetter], None]) -> int:
    """Run ``act`` on each selected dead letter, then remove it; leave the others."""
    done = 0
    with _store(app) as (_conn, channel, name):
        for message, letter in _each(channel, name):
            if select(letter):
                act(letter)
                channel.basic_ack(message.delivery_info["delivery_tag"])
                done += 1
    return done


def replay(app: Celery, ids: list[str] | None = None) -> int:
    """Send each selected dead letter's payload to its task again; return how many.

    The payload goes to the Celery broker as a task message (like the ``enqueue`` policy),
    with its Pulse metadata and ``redelivered`` set; the dead letter is removed only after.
    A dead letter whose body still does not decode stays in the store.
    """
    from .handoff import publish_with_producer, resolve_route
    from .taskmessage import build_task_message

    wanted = set(ids) if ids else None

    def select(letter: DeadLetter) -> bool:
        if wanted is not None and letter.id not in wanted:
            return False
        try:
            decode_body(letter.body)
        except Exception:
            return False
        return letter.task in app.tasks

    # Each publish waits for the broker's confirm before its dead letter is removed.
    with app.connection_for_write(transport_options={"confirm_publish": True}) as conn:
        producer = Producer(conn.channel())

        def send(letter: DeadLetter) -> None:
            meta = PulseMessage(
                exchange=letter.exchange,
                routing_key=letter.routing_key,
                routes=tuple(letter.routes),
                redelivered=True,
                queue=letter.queue,
            )
            message = build_task_message(
                app, letter.task, decode_body(letter.body), meta, "pulse-celery replay"
            )
            publish_with_producer(producer, message, resolve_route(app, letter.task), retry=True)

        return _take(app, select, send)


def drop(app: Celery, ids: list[str]) -> int:
    """Remove the dead letters with these ids; return how many were found."""
    wanted = set(ids)
    return _take(app, lambda letter: letter.id in wanted, lambda letter: None)
