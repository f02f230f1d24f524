"""What a running task knows about its Pulse message: :func:`pulse_message`.

The worker puts the message's :class:`~pulse_celery.pulse.message.PulseMessage` in the task
message's ``pulse`` header, so a task reads it from its request::

    @app.task(bind=True)
    def on_task_completed(self, payload):
        msg = pulse_message(self.request)
        msg.exchange, msg.routing_key, msg.routes, msg.redelivered
        msg.taskcluster["taskId"]  # Taskcluster exchanges: the routing key by name
"""

from __future__ import annotations

from typing import Any

from .pulse.message import PulseMessage

#: Name of the task-message header that carries :class:`PulseMessage`.
HEADER = "pulse"


def pulse_message(request: Any = None) -> PulseMessage | None:
    """Return the Pulse metadata of the running task (``self.request``), or None if it has none.

    The header is read where the worker puts it (``request.pulse``) and where an eager
    ``task.apply(headers=...)`` does (``request.headers``), so :mod:`pulse_celery.testing`
    can run a bound task in-process with its Pulse metadata.
    """
    if request is None:
        from celery import current_task

        request = current_task.request if current_task else None
    if request is None:
        return None
    header = getattr(request, HEADER, None)
    if header is None:
        headers = getattr(request, "headers", None)
        header = headers.get(HEADER) if isinstance(headers, dict) else None
    return PulseMessage.from_header(header) if isinstance(header, dict) else None
