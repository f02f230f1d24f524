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
from dataclasses import dataclass
from typing import Any, Literal

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


#: The labels of the per-queue families, and of the per-connection ones.
QUEUE_LABELS = ("worker", "source", "queue")
SOURCE_LABELS = ("worker", "source")


@dataclass(frozen=True)
class Family:
    """One metric family as Prometheus shows it; the reference documentation is made from these."""

    #: Name without the ``_total`` suffix Prometheus adds to a counter.
    name: str
    kind: Literal["counter", "gauge"]
    help: str
    labels: tuple[str, ...]
    #: The values of the last label, when it takes a fixed set (``outcome``, ``state``).
    values: tuple[str, ...] = ()

    @property
    def exposed_name(self) -> str:
        """The name a scrape shows: ``pulse_celery_deliveries_total`` for a counter."""
        return f"{self.name}_total" if self.kind == "counter" else self.name


#: Every family the /metrics endpoint serves, in the order a scrape lists them.
FAMILIES = (
    Family("pulse_celery_deliveries", "counter", "Deliveries received from a Pulse queue", QUEUE_LABELS),
    Family(
        "pulse_celery_redeliveries",
        "counter",
        "Deliveries the broker flagged as redelivered",
        QUEUE_LABELS,
    ),
    Family(
        "pulse_celery_messages",
        "counter",
        "Pulse deliveries settled, by outcome (dead-lettered and deduplicated ones are also acked)",
        (*QUEUE_LABELS, "outcome"),
        tuple(outcome for _, outcome in OUTCOMES),
    ),
    Family(
        "pulse_celery_in_flight",
        "gauge",
        "Deliveries received and not yet acked or rejected",
        QUEUE_LABELS,
    ),
    Family("pulse_celery_prefetch", "gauge", "Prefetch of the queue's consumer", QUEUE_LABELS),
    Family(
        "pulse_celery_queue_state",
        "gauge",
        "1 for the queue's current state ('failing': the broker refused it; see pulse_status)",
        (*QUEUE_LABELS, "state"),
        tuple(QUEUE_STATES),
    ),
    Family(
        "pulse_celery_connection_state",
        "gauge",
        "1 for the Pulse connection's current state",
        (*SOURCE_LABELS, "state"),
        tuple(CONNECTION_STATES),
    ),
    Family("pulse_celery_connects", "counter", "Pulse connections established", SOURCE_LABELS),
    Family("pulse_celery_connection_losses", "counter", "Pulse connections lost", SOURCE_LABELS),
)


class StatusCollector:
    """A Prometheus collector that reads the consumer's status at each scrape."""

    def __init__(self, status: Status, worker: str) -> None:
        self.status = status
        self.worker = worker

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        kinds = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily}
        family = {f.name: kinds[f.kind](f.name, f.help, labels=list(f.labels)) for f in FAMILIES}
        status = self.status()
        queues: dict[str, dict[str, Any]] = status["queues"]
        sources: dict[str, dict[str, Any]] = status.get("sources") or {"default": status["connection"]}
        w = self.worker

        for key, q in queues.items():
            source = q.get("source", "default")
            name = key.split(":", 1)[1] if source != "default" and key.startswith(f"{source}:") else key
            at = [w, source, name]
            family["pulse_celery_deliveries"].add_metric(at, q["delivered"])
            family["pulse_celery_redeliveries"].add_metric(at, q["redelivered"])
            for field, outcome in OUTCOMES:
                family["pulse_celery_messages"].add_metric([*at, outcome], q[field])
            family["pulse_celery_in_flight"].add_metric(at, q["in_flight"])
            family["pulse_celery_prefetch"].add_metric(at, q["prefetch"])
            queue_state = family["pulse_celery_queue_state"]
            for state in QUEUE_STATES:
                queue_state.add_metric([*at, state], 1.0 if q["state"] == state else 0.0)

        for source, connection in sources.items():
            for state in CONNECTION_STATES:
                family["pulse_celery_connection_state"].add_metric(
                    [w, source, state], 1.0 if connection["state"] == state else 0.0
                )
            family["pulse_celery_connects"].add_metric([w, source], connection["connects"])
            family["pulse_celery_connection_losses"].add_metric([w, source], connection["losses"])
        yield from family.values()


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
