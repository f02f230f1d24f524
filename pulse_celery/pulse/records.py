"""The bindings record of a named queue: what was declared last time, so that what is gone can be unbound.

AMQP cannot list a queue's bindings, so a binding removed from the code would stay on a
named queue for ever, and its messages would pile up there. Each declaration of a named
queue therefore leaves a record on Pulse itself, beside the queue, where every worker of
the deployment (on any machine, in any container) finds it:

* the record queue ``<queue>.bindings-record`` (``queue/alice/builds.bindings-record``), a
  durable classic queue holding one message (``x-max-length`` 1), with the queue's own
  ``x-expires`` if it has one;
* fed through the exchange ``exchange/<user>/pulse-celery.bindings-records``, which the user
  owns (Pulse lets nobody publish to the default exchange);
* the message is JSON: ``{"queue": ..., "bindings": [[exchange, routing key], ...], "at": ...}``.

At each declaration the record is read, every binding it lists that the queue no longer
declares is removed (one INFO line each), and the new record replaces it. Bindings made by
hand, or by another program, were never recorded and are left alone. The record's
problems (a refused permission, say) are logged and never stop the queue from being consumed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from amqp import Message
from amqp.exceptions import ChannelError

logger = logging.getLogger(__name__)

SUFFIX = ".bindings-record"


def record_queue_name(queue: str) -> str:
    """The record queue of named queue ``queue``."""
    return queue + SUFFIX


def records_exchange(user: str) -> str:
    return f"exchange/{user}/pulse-celery.bindings-records"


def _routing_key(queue: str) -> str:
    # A digest: a queue name may hold '*' or '#', which a topic binding would read as wildcards.
    return hashlib.sha1(queue.encode()).hexdigest()


def prune_and_record(
    connection: Any,
    user: str,
    queue: str,
    bindings: Iterable[tuple[str, str]],
    expires: float | None = None,
) -> list[tuple[str, str]]:
    """Unbind from ``queue`` what its record lists and ``bindings`` lacks; record ``bindings``.

    Runs on a channel of its own on ``connection`` (a py-amqp connection); returns the
    bindings removed. A broker refusal is logged, and the old record kept for next time.
    """
    wanted = sorted(set(bindings))
    channel = connection.channel()
    try:
        return _prune_and_record(channel, user, queue, wanted, expires)
    except ChannelError as exc:
        logger.warning(
            "Pulse queue %s: its bindings record could not be read or written (%s); bindings "
            "removed from the code since the last start stay on the queue until it works",
            queue,
            exc,
        )
        return []
    finally:
        if getattr(channel, "is_open", False):
            try:
                channel.close()
            except Exception:
                pass


def _prune_and_record(
    channel: Any, user: str, queue: str, wanted: list[tuple[str, str]], expires: float | None
) -> list[tuple[str, str]]:
    exchange, record = records_exchange(user), record_queue_name(queue)
    arguments: dict[str, Any] = {"x-max-length": 1}
    if expires is not None:
        arguments["x-expires"] = int(expires * 1000)
    channel.exchange_declare(exchange, "topic", durable=True, auto_delete=False)
    channel.queue_declare(record, durable=True, auto_delete=False, arguments=arguments)
    channel.queue_bind(record, exchange, _routing_key(queue))
    recorded, last_tag = _read(channel, record)
    removed = [b for b in sorted(recorded) if b not in set(wanted)]
    for ex, key in removed:
        channel.queue_unbind(queue=queue, exchange=ex, routing_key=key)
        logger.info(
            "Pulse queue %s: removed the binding %s %s, which an earlier version of this app "
            "declared and this one does not; its messages no longer reach the queue",
            queue,
            ex,
            key,
        )
    if removed or recorded != set(wanted) or last_tag is None:
        body = json.dumps({"queue": queue, "bindings": wanted, "at": time.time()})
        channel.basic_publish(
            Message(body, content_type="application/json", delivery_mode=2),
            exchange=exchange,
            routing_key=_routing_key(queue),
        )
        if last_tag is not None:
            channel.basic_ack(last_tag, multiple=True)  # the new record replaces them
    elif last_tag is not None:
        channel.basic_reject(last_tag, requeue=True)  # unchanged: keep it
    return removed


def _read(channel: Any, record: str) -> tuple[set[tuple[str, str]], int | None]:
    """The bindings of the newest record in ``record`` (unacked, for the caller), and its last tag."""
    newest: tuple[float, set[tuple[str, str]]] | None = None
    last_tag = None
    for _ in range(10):  # normally one; more after a crash between publish and ack
        message = channel.basic_get(record, no_ack=False)
        if message is None:
            break
        last_tag = message.delivery_tag
        try:
            data = json.loads(message.body)
            found = (float(data["at"]), {(str(e), str(k)) for e, k in data["bindings"]})
        except (ValueError, KeyError, TypeError):
            continue  # not ours: replaced by the new record
        if newest is None or found[0] >= newest[0]:
            newest = found
    return (newest[1] if newest else set()), last_tag
