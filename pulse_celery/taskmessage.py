"""Build the Celery task message (protocol 2) that invokes a bound task with a Pulse payload.

:class:`TaskTemplate` is the hot path: the headers and properties that are the same for every
message of one task are computed once, through Celery's own ``as_task_v2``, and the Pulse
body, already checked to be JSON, is spliced into the message body as it came instead of
being encoded again. :func:`build_task_message` is the general path (dead-letter replay),
for a payload that is a Python object.
"""

from __future__ import annotations

import json
from typing import Any

from celery import Celery
from celery.utils import gen_unique_id
from kombu.serialization import dumps

from .handoff import TaskMessage
from .message import HEADER, PulseMessage


def build_task_message(
    app: Celery, task_name: str, payload: Any, meta: PulseMessage, origin: str
) -> TaskMessage:
    """Return the task message that invokes ``task_name(payload)``, carrying ``meta`` as a header."""
    task_id = gen_unique_id()
    # argsrepr given: Celery's default is a saferepr of the whole payload, a third of the
    # hand-off's CPU time per message in the benchmark's profile.
    headers, properties, body, _ = app.amqp.as_task_v2(
        task_id,
        task_name,
        args=(payload,),
        kwargs={},
        origin=origin,
        argsrepr=meta.describe(),
        kwargsrepr="{}",
    )
    headers[HEADER] = meta.as_header()
    content_type, content_encoding, data = dumps(body, serializer="json")
    if isinstance(data, str):
        data = data.encode(content_encoding or "utf-8")
    return TaskMessage(task_id, headers, properties, data, content_type, content_encoding)


class TaskTemplate:
    """The messages of one bound task: built once, then filled in per Pulse message."""

    def __init__(self, app: Celery, task_name: str, origin: str) -> None:
        headers, properties, body, _ = app.amqp.as_task_v2(
            "template", task_name, args=(None,), kwargs={}, origin=origin, argsrepr="", kwargsrepr="{}"
        )
        self.headers = headers
        self.properties = properties
        _args, kwargs, embed = body
        # The body is ``[[payload], kwargs, embed]``: everything after the payload is fixed.
        self._tail = b"]," + json.dumps([kwargs, embed], separators=(",", ":"))[1:].encode()

    def build(self, json_body: bytes, meta: PulseMessage) -> TaskMessage:
        """Return the task message for a Pulse body that :func:`~.message.decode_body` accepted.

        ``json_body`` must be UTF-8 JSON: it goes into the message body byte for byte.
        """
        task_id = gen_unique_id()
        headers = {
            **self.headers,
            "id": task_id,
            "root_id": task_id,
            "timelimit": list(self.headers["timelimit"]),
            "stamps": {},
            "argsrepr": meta.describe(),
            HEADER: meta.as_header(),
        }
        properties = {**self.properties, "correlation_id": task_id}
        body = b"[[" + json_body + self._tail
        return TaskMessage(task_id, headers, properties, body, "application/json", "utf-8")
