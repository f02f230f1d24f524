"""Remote-control commands for the Pulse consumer, and the Python calls that send them.

Registered in Celery's command registry when pulse_celery is imported, which happens in the
worker and in ``celery -A app control`` alike (the app module imports pulse_celery), so::

    celery -A app control pulse_pause builds      # one queue; no name: every queue
    celery -A app control pulse_resume builds
    celery -A app inspect pulse_status            # per worker: the connection, each queue
    celery -A app control pulse_delete builds     # cancel, unbind, delete on Pulse

A queue is named by the name given to ``@pulse_binding`` (``builds``), its full name
(``queue/alice/builds``), or, for an anonymous queue, its task's name. Each worker answers
for itself; ``-d worker@host`` picks one. Workers without Pulse consumption (``--no-pulse``)
answer with an error that says so.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.worker.control import control_command, inspect_command

NO_PULSE = "Pulse consumption is off in this worker (started with --no-pulse, or its app binds no task)"


def _consumer(state: Any) -> Any:
    return getattr(state.consumer, "pulse", None)


def _run(state: Any, verb: str, queue: str | None) -> dict[str, Any]:
    pulse = _consumer(state)
    if pulse is None:
        return {"error": NO_PULSE}
    try:
        return {"ok": getattr(pulse, verb)(queue)}
    except (LookupError, RuntimeError) as exc:
        return {"error": str(exc)}


@control_command(args=[("queue", str)], signature="[queue]")
def pulse_pause(state: Any, queue: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Stop Pulse deliveries from a queue (all when none is named); in-flight ones are still acked."""
    return _run(state, "pause", queue)


@control_command(args=[("queue", str)], signature="[queue]")
def pulse_resume(state: Any, queue: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Consume a paused Pulse queue again (all when none is named)."""
    return _run(state, "resume", queue)


@control_command(args=[("queue", str)], signature="<queue>")
def pulse_delete(state: Any, queue: str | None = None, **kwargs: Any) -> dict[str, Any]:
    """Cancel, unbind and delete a Pulse queue; declared again only when the worker restarts."""
    if not queue:
        return {"error": "name the queue to delete: pulse_delete <queue>"}
    return _run(state, "delete", queue)


@inspect_command()
def pulse_status(state: Any, **kwargs: Any) -> dict[str, Any]:
    """Pulse connection state, and per queue: state, prefetch, in flight, counters, last error."""
    pulse = _consumer(state)
    if pulse is None:
        return {"error": NO_PULSE}
    status: dict[str, Any] = pulse.status()
    return status


# -- the same from Python ---------------------------------------------------------------
# Each waits ``timeout`` seconds for replies, or until ``limit`` workers have replied.


def _by_node(replies: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {node: reply for item in replies or () for node, reply in item.items()}


def _broadcast(
    app: Celery,
    command: str,
    queue: str | None,
    destination: list[str] | None,
    timeout: float,
    limit: int | None,
) -> dict[str, Any]:
    arguments = {"queue": queue} if queue else {}
    replies = app.control.broadcast(
        command, arguments=arguments, destination=destination, reply=True, timeout=timeout, limit=limit
    )
    return _by_node(replies)


def pause(
    app: Celery,
    queue: str | None = None,
    *,
    destination: list[str] | None = None,
    timeout: float = 5.0,
    limit: int | None = None,
) -> dict[str, Any]:
    """Send ``pulse_pause``; return each worker's reply by node name."""
    return _broadcast(app, "pulse_pause", queue, destination, timeout, limit)


def resume(
    app: Celery,
    queue: str | None = None,
    *,
    destination: list[str] | None = None,
    timeout: float = 5.0,
    limit: int | None = None,
) -> dict[str, Any]:
    """Send ``pulse_resume``; return each worker's reply by node name."""
    return _broadcast(app, "pulse_resume", queue, destination, timeout, limit)


def delete(
    app: Celery,
    queue: str,
    *,
    destination: list[str] | None = None,
    timeout: float = 5.0,
    limit: int | None = None,
) -> dict[str, Any]:
    """Send ``pulse_delete``; return each worker's reply by node name."""
    return _broadcast(app, "pulse_delete", queue, destination, timeout, limit)


def status(
    app: Celery,
    *,
    destination: list[str] | None = None,
    timeout: float = 5.0,
    limit: int | None = None,
) -> dict[str, Any]:
    """Ask ``pulse_status``; return each worker's status by node name."""
    return _broadcast(app, "pulse_status", None, destination, timeout, limit)
