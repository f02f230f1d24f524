"""The worker step: Celery's consumer blueprint runs the Pulse side of the worker beside its own consumer.

The step lives in the consumer blueprint (``app.steps['consumer']``), added by name when a
task is decorated (:func:`pulse_celery.bindings.install`), so Celery restarts it with its own
consumer: on such a restart the Pulse connection is closed, which returns to Pulse every
delivery whose task Celery forgot. On warm shutdown the Pulse consumers are cancelled first
and the connection stays open until the pool has finished, so the acks of finishing tasks
still reach Pulse; then it is closed.

Pulse trouble stays on the Pulse side: connection errors are logged and the connection is
re-established with backoff, while Celery's own consumer goes on untouched.
"""

from __future__ import annotations

from typing import Any

from celery import bootsteps

from .. import control as _control  # noqa: F401  (registers the pulse_* remote-control commands)
from ..bindings import app_bindings
from ..config import load_config
from .pulse_worker import PulseWorker


class PulseStep(bootsteps.StartStopStep):
    """Consumer-blueprint step that runs :class:`PulseWorker` beside Celery's own consumer."""

    label = "Pulse"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, pulse: bool = True, **kwargs: Any) -> None:
        self.enabled = pulse
        c.pulse = None
        super().__init__(c, **kwargs)

    def include_if(self, c: Any) -> bool:
        return bool(self.enabled and app_bindings(c.app))

    def create(self, c: Any) -> PulseWorker:
        c.pulse = PulseWorker(c, c.app, load_config(c.app.conf))
        return c.pulse

    def shutdown(self, c: Any) -> None:
        if self.obj is not None:
            self.obj.shutdown()
