"""What the remote-control commands do in one worker, and the lines they reply with.

Called on the worker's event-loop thread (Celery runs remote-control commands there),
except :meth:`RemoteControl.status`, which the Prometheus exporter also calls from its HTTP
thread: it only reads. A pause survives reconnects; a deleted queue is not declared again
by this worker until it restarts (its bindings are in the code, so a restart does).
"""

from __future__ import annotations

import logging
from typing import Any

from ..config import AppConfig
from ..pulse.consumer import QueueConsumer
from ..pulse.diagnose import describe_error
from ..pulse.engine import Engine

logger = logging.getLogger(__name__)

BY = "remote control"


class RemoteControl:
    """``pulse_pause``, ``pulse_resume``, ``pulse_delete`` and ``pulse_status`` for one worker."""

    def __init__(self, engine: Engine, config: AppConfig) -> None:
        self.engine = engine
        self.config = config

    @property
    def consumers(self) -> dict[str, QueueConsumer]:
        return self.engine.consumers

    def select(self, queue: str | None) -> list[QueueConsumer]:
        """Return the queues ``queue`` names (all when None); LookupError if none.

        A queue is named by its full name (``queue/alice/builds``), by the name given to
        ``@pulse_binding`` (``builds``), or by its task's name (for anonymous queues).
        """
        if not queue:
            return list(self.consumers.values())
        own = f"queue/{self.config.user}/"
        found = [
            c
            for key, c in self.consumers.items()
            if queue in (c.name, key, c.stats.task) or own + queue == c.name
        ]
        if not found:
            known = ", ".join(c.name for c in self.consumers.values()) or "none"
            raise LookupError(f"no Pulse queue {queue!r} in this worker; its queues: {known}")
        return found

    def pause(self, queue: str | None = None) -> list[str]:
        """Cancel the consumer of ``queue`` (every queue when None); in-flight deliveries are still acked."""
        lines = []
        for consumer in self.select(queue):
            if consumer.wants == "deleted":
                lines.append(f"{consumer.name}: deleted by remote control; nothing to pause")
            elif consumer.wants == "paused":
                lines.append(f"{consumer.name}: already paused")
            else:
                in_flight = consumer.pause(BY)
                lines.append(f"{consumer.name}: paused; {in_flight} deliveries in flight are still acked")
        return lines

    def resume(self, queue: str | None = None) -> list[str]:
        """Consume ``queue`` (every queue when None) again after :meth:`pause`."""
        lines = []
        for consumer in self.select(queue):
            if consumer.wants == "deleted":
                lines.append(
                    f"{consumer.name}: deleted by remote control; a restart of the worker declares it again"
                )
            elif consumer.wants != "paused":
                lines.append(f"{consumer.name}: not paused")
            else:
                consumer.resume(BY)
                lines.append(f"{consumer.name}: resumed")
        return lines

    def delete(self, queue: str) -> list[str]:
        """Cancel, unbind and delete ``queue`` on Pulse; refused while there is no Pulse connection."""
        consumers = self.select(queue)
        engine = self.engine
        if not engine.up:
            raise RuntimeError(
                f"not connected to Pulse (state: {engine.state()}); nothing was deleted; try again "
                "once pulse_status shows the connection up"
            )
        lines = []
        for consumer in consumers:
            if consumer.wants == "deleted":
                lines.append(f"{consumer.name}: already deleted")
                continue
            in_flight = consumer.in_flight
            outcome = consumer.delete()
            if isinstance(outcome, BaseException):
                why = describe_error(outcome, self.config)
                consumer.stats.error(f"pulse_delete failed: {why}")
                logger.error("Pulse queue %s NOT deleted by remote control: %s", consumer.name, why)
                lines.append(f"{consumer.name}: NOT deleted: {why}")
                continue
            logger.warning(
                "Pulse queue %s deleted by remote control (%s); its bindings are gone and messages "
                "published to them are not kept for this worker; the %d deliveries in flight are "
                "still acked; this worker will not declare it again, but a restart does",
                consumer.name,
                outcome,
                in_flight,
            )
            lines.append(
                f"{consumer.name}: deleted ({outcome}); {in_flight} deliveries in flight are still "
                "acked; not declared again by this worker, but a restart of the worker declares it "
                "again (its bindings are in the code)"
            )
        engine.changed(queues=True)
        return lines

    def status(self) -> dict[str, Any]:
        """Return what ``pulse_status`` replies: the connection, then each queue's figures."""
        return self.engine.status()
