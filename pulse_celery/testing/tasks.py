"""Run a bound Celery task in process, as the worker would for a Pulse message: no broker at all.

``pulse_message()`` and typed payloads work inside the task, because the Pulse metadata
travels in the same ``pulse`` header the worker sets::

    from pulse_celery.testing import deliver

    result = deliver(app, "exchange/taskcluster-queue/v1/task-completed", key, body, routes=[...])
    assert result.successful()

:func:`deliver` finds the task the way the worker does (the app's bindings, topic patterns,
CC routes) and checks a typed payload as ingest does; :func:`apply_task` runs a task you name.
Both return Celery's ``EagerResult``; exceptions propagate unless ``throw=False``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from celery import Celery, Task
from celery.result import EagerResult

from ..bindings import app_bindings
from ..config import load_config
from ..errors import NoMatchingBinding
from ..pulse.message import PulseMessage
from ..request import HEADER
from ..sources import plan_sources


def apply_task(
    task: Task,
    payload: Any,
    *,
    exchange: str,
    routing_key: str,
    routes: Sequence[str] = (),
    redelivered: bool = False,
    queue: str = "",
    throw: bool = True,
) -> EagerResult:
    """Run ``task(payload)`` here with this Pulse metadata (``pulse_message()`` sees it)."""
    meta = PulseMessage(exchange, routing_key, tuple(routes), redelivered, queue)
    return task.apply(args=(payload,), headers={HEADER: meta.as_header()}, throw=throw)


def deliver(
    app: Celery,
    exchange: str,
    routing_key: str,
    payload: Any,
    *,
    routes: Sequence[str] = (),
    redelivered: bool = False,
    throw: bool = True,
    source: str | None = None,
) -> EagerResult:
    """Run the task of ``app`` whose binding takes this message, as the worker would.

    ``source`` limits the search to the bindings of one Pulse source (``pulse_sources``);
    by default every source's bindings are looked at.

    Raises :class:`~pulse_celery.errors.NoMatchingBinding` when no binding takes it, and
    :class:`~pulse_celery.errors.PayloadMismatch` when the payload does not fit the
    binding's ``payload=`` type (the worker would dead-letter it).
    """
    keys = (routing_key, *routes)
    plans = [
        plan
        for found in plan_sources(load_config(app.conf), app_bindings(app))
        if source is None or found.name == source
        for plan in found.plans
    ]
    for plan in plans:
        for binding in plan.bindings:
            if binding.matches(exchange, keys):
                binding.check_payload(payload)
                return apply_task(
                    app.tasks[binding.task_name],
                    payload,
                    exchange=exchange,
                    routing_key=routing_key,
                    routes=routes,
                    redelivered=redelivered,
                    queue=plan.name,
                    throw=throw,
                )
    raise NoMatchingBinding(f"no binding of app {app.main!r} takes {exchange} {routing_key}")
