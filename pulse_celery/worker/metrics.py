"""Publish the ``pulse_status`` figures: Prometheus metrics, or Celery events without a port.

With ``pulse_metrics_port`` set (and ``prometheus-client`` installed: ``pip install
pulse-celery[metrics]``), the worker's main process serves ``/metrics`` on that port. The Pulse
consumer runs in the main process only, so there is no multiprocess collection to set up; the
figures are read when Prometheus scrapes, never counted twice per message.

Without a port, the worker sends a ``worker-pulse-status`` Celery event (the same dict as
``pulse_status``, plus ``reason``) on each change of the connection's state and every
:data:`EVENT_INTERVAL` seconds, for ``celery events``, Flower or an ``app.events.Receiver``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

from ..config import AppConfig
from ..errors import ConfigError
from ..pulse.loop import Timers
from ..pulse.stats import CONNECTION_STATES, QUEUE_STATES

logger = logging.getLogger(__name__)

#: Type of the Celery event; its group is ``worker``, which a worker sends unless started
#: with both ``--without-heartbeat`` and ``--without-gossip`` (and no ``-E``).
EVENT_TYPE = "worker-pulse-status"

#: Seconds between two periodic status events.
EVENT_INTERVAL = 30.0

#: Counters of each queue: (status key, outcome label of pulse_celery_messages_total).
OUTCOMES = (
    ("acked", "acked"),
    ("rejected", "rejected"),
    ("requeued", "requeued"),
    ("dead_lettered", "dead_lettered"),
    ("deduplicated", "deduplicated"),  # acked without running again (dedupe): also in acked
)

Status = Callable[[], dict[str, Any]]


def require_prometheus() -> Any:
    """Import prometheus_client, or fail the worker start with the fix."""
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError(
            "pulse_metrics_port is set but prometheus-client is not installed; "
            "pip install 'pulse-celery[metrics]', or unset pulse_metrics_port to get Celery events"
        ) from None
    return prometheus_client


class StatusCollector:
    """A Prometheus collector that reads the consumer's status at each scrape."""

    def __init__(self, status: Status, worker: str) -> None:
        self.status = status
        self.worker = worker

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self.status()
        queues: dict[str, dict[str, Any]] = status["queues"]
        sources: dict[str, dict[str, Any]] = status.get("sources") or {"default": status["connection"]}
        w = self.worker
        labels = ["worker", "source", "queue"]

        delivered = CounterMetricFamily(
            "pulse_celery_deliveries", "Deliveries received from a Pulse queue", labels=labels
        )
        redelivered = CounterMetricFamily(
            "pulse_celery_redeliveries",
            "Deliveries the broker flagged as redelivered",
            labels=labels,
        )
        messages = CounterMetricFamily(
            "pulse_celery_messages",
            "Pulse deliveries settled, by outcome (dead-lettered and deduplicated ones are also acked)",
            labels=[*labels, "outcome"],
        )
        in_flight = GaugeMetricFamily(
            "pulse_celery_in_flight", "Deliveries received and not yet acked or rejected", labels=labels
        )
        prefetch = GaugeMetricFamily(
            "pulse_celery_prefetch", "Prefetch of the queue's consumer", labels=labels
        )
        queue_state = GaugeMetricFamily(
            "pulse_celery_queue_state",
            "1 for the queue's current state ('failing': the broker refused it; see pulse_status)",
            labels=[*labels, "state"],
        )
        for key, q in queues.items():
            source = q.get("source", "default")
            name = key.split(":", 1)[1] if source != "default" and key.startswith(f"{source}:") else key
            at = [w, source, name]
            delivered.add_metric(at, q["delivered"])
            redelivered.add_metric(at, q["redelivered"])
            for field, outcome in OUTCOMES:
                messages.add_metric([*at, outcome], q[field])
            in_flight.add_metric(at, q["in_flight"])
            prefetch.add_metric(at, q["prefetch"])
            for state in QUEUE_STATES:
                queue_state.add_metric([*at, state], 1.0 if q["state"] == state else 0.0)

        connection_state = GaugeMetricFamily(
            "pulse_celery_connection_state",
            "1 for the Pulse connection's current state",
            labels=["worker", "source", "state"],
        )
        connects = CounterMetricFamily(
            "pulse_celery_connects", "Pulse connections established", labels=["worker", "source"]
        )
        losses = CounterMetricFamily(
            "pulse_celery_connection_losses", "Pulse connections lost", labels=["worker", "source"]
        )
        for source, connection in sources.items():
            for state in CONNECTION_STATES:
                connection_state.add_metric([w, source, state], 1.0 if connection["state"] == state else 0.0)
            connects.add_metric([w, source], connection["connects"])
            losses.add_metric([w, source], connection["losses"])
        yield from (
            delivered,
            redelivered,
            messages,
            in_flight,
            prefetch,
            queue_state,
            connection_state,
            connects,
            losses,
        )


class StatusReporter:
    """Make the consumer's status visible: a /metrics endpoint, or Celery events."""

    def __init__(self, c: Any, config: AppConfig, status: Status) -> None:
        self.c = c
        self.config = config
        self.status = status
        self.worker = str(getattr(c, "hostname", None) or "worker")
        self.port = config.metrics_port
        self.prometheus = require_prometheus() if self.port is not None else None
        self.server: Any = None
        self._timers: Timers | None = None

    @property
    def sends_events(self) -> bool:
        return self.prometheus is None

    def start(self, timers: Timers) -> None:
        """Serve /metrics (once per process), or start the periodic events."""
        if self.prometheus is not None:
            if self.server is None:
                self._serve()
            return
        self._timers = timers
        timers.later(EVENT_INTERVAL, self._periodic)

    def _serve(self) -> None:
        prometheus = self.prometheus
        assert prometheus is not None
        registry = prometheus.CollectorRegistry(auto_describe=False)
        registry.register(StatusCollector(self.status, self.worker))
        try:
            self.server = prometheus.start_http_server(self.port, registry=registry)
        except OSError as exc:
            # A busy port must not stop the worker: consumption matters more than its metrics.
            logger.error(
                "Cannot serve Pulse metrics on port %s (%s); consuming without them; set "
                "pulse_metrics_port to a free port (one per worker on a host)",
                self.port,
                exc,
            )
            self.server = False
            return
        logger.info("Serving Pulse metrics at http://0.0.0.0:%s/metrics", self.port)

    def _periodic(self) -> None:
        self.send("periodic")
        if self._timers is not None:
            self._timers.later(EVENT_INTERVAL, self._periodic)

    def changed(self) -> None:
        """The connection's state changed."""
        if self.sends_events:
            self.send("state-change")

    def send(self, reason: str) -> None:
        """Send one ``worker-pulse-status`` event; never raises."""
        dispatcher = getattr(self.c, "event_dispatcher", None)
        if dispatcher is None or not dispatcher.enabled:
            return
        try:
            dispatcher.send(EVENT_TYPE, reason=reason, **self.status())
        except Exception as exc:  # the Celery broker's trouble is handled by Celery's consumer
            logger.debug("Pulse status event not sent: %r", exc)
