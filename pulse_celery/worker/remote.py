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
from ..sources import DEFAULT

logger = logging.getLogger(__name__)

BY = "remote control"


class RemoteControl:
    """``pulse_pause``, ``pulse_resume``, ``pulse_delete`` and ``pulse_status`` for one worker."""

    def __init__(self, engines: dict[str, Engine], config: AppConfig) -> None:
        #: one engine per Pulse source, by the source's name
        self.engines = engines
        self.config = config

    def _all(self) -> list[tuple[Engine, str, QueueConsumer]]:
        return [(e, key, c) for e in self.engines.values() for key, c in list(e.consumers.items())]

    def select(self, queue: str | None) -> list[QueueConsumer]:
        """Return the queues ``queue`` names (all when None); LookupError if none.

        A queue is named by its full name (``queue/alice/builds``), by the name given to
        ``@pulse_binding`` (``builds``), or by its task's name (for anonymous queues); with
        several sources, ``<source>:<name>`` names it on one source only.
        """
        if not queue:
            return [c for _, _, c in self._all()]
        source, _, name = queue.partition(":")
        if not name or source not in self.engines:
            source, name = "", queue  # no source named: look in every one
        found = [
            c
            for engine, key, c in self._all()
            if (not source or engine.source == source)
            and (name in (c.name, key, c.stats.task) or f"queue/{engine.config.user}/{name}" == c.name)
        ]
        if not found:
            known = ", ".join(label(e, c) for e, _, c in self._all()) or "none"
            raise LookupError(f"no Pulse queue {queue!r} in this worker; its queues: {known}")
        return found

    def _engine_of(self, consumer: QueueConsumer) -> Engine:
        return next(e for e, _, c in self._all() if c is consumer)

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
        for engine in {id(e): e for e in map(self._engine_of, consumers)}.values():
            if not engine.up:
                raise RuntimeError(
                    f"not connected to Pulse source {engine.source!r} (state: {engine.state()}); "
                    "nothing was deleted; try again once pulse_status shows the connection up"
                )
        lines = []
        for consumer in consumers:
            engine = self._engine_of(consumer)
            if consumer.wants == "deleted":
                lines.append(f"{consumer.name}: already deleted")
                continue
            in_flight = consumer.in_flight
            outcome = consumer.delete()
            engine.changed(queues=True)
            if isinstance(outcome, BaseException):
                why = describe_error(outcome, engine.config)
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
        return lines

    def status(self) -> dict[str, Any]:
        """Return what ``pulse_status`` replies: each source's connection, and each queue's figures.

        ``connection`` is the first source's (the default source's, if it has bindings);
        ``sources`` has every source's; each queue says its ``source``, and a queue of a source
        other than ``default`` is keyed ``<source>:<queue name>``.
        """
        sources: dict[str, Any] = {}
        queues: dict[str, Any] = {}
        for name, engine in self.engines.items():
            status = engine.status()
            sources[name] = status["connection"]
            for queue, figures in status["queues"].items():
                queues[queue if name == DEFAULT else f"{name}:{queue}"] = {**figures, "source": name}
        first = next(iter(sources.values()), {"state": "stopped"})
        return {"connection": first, "sources": sources, "queues": queues}


def label(engine: Engine, consumer: QueueConsumer) -> str:
    """A queue's name as remote control takes it: ``<source>:`` before it, but for the default source."""
    return consumer.name if engine.source == DEFAULT else f"{engine.source}:{consumer.name}"
