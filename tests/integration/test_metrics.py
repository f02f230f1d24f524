"""The pulse_status figures outside the worker: a Prometheus endpoint, or Celery events."""

from __future__ import annotations

import socket
import threading
import urllib.request
from collections import Counter
from typing import Any

import pytest
from celery import Celery

from pulse_celery import control
from pulse_celery.testing import _rabbitmqctl
from pulse_celery.worker.metrics import EVENT_TYPE

from .harness import wait_until
from .test_control import ONE, client, control_worker, done, publish_to

pytestmark = pytest.mark.rabbitmq


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Return every sample on /metrics as {(name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples, name, **labels) -> float | None:
    for (n, ls), value in samples.items():
        if n == name and set(labels.items()) <= ls:
            return value
    return None


def test_metrics_endpoint_shows_the_counters_and_states_of_each_queue(pulse, celery_broker, tmp_path):
    pytest.importorskip("prometheus_client")
    port = free_port()
    worker = control_worker(pulse, celery_broker, tmp_path, PULSE_METRICS_PORT=port).start()
    builds, tests = f"queue/{pulse.user}/builds", f"queue/{pulse.user}/tests"
    try:
        assert worker.wait_for_log(f"Serving Pulse metrics at http://0.0.0.0:{port}/metrics", timeout=10)
        # Given 5 builds and 2 tests handled
        publish_to(pulse, "build", range(5))
        publish_to(pulse, "test", range(2))
        assert wait_until(lambda: done(tmp_path, "builds") == Counter(range(5)), timeout=30), worker.log()
        assert wait_until(lambda: done(tmp_path, "tests") == Counter(range(2)), timeout=30), worker.log()

        # Then /metrics counts them, per queue and outcome
        def acked(queue: str) -> float | None:
            return sample(scrape(port), "pulse_celery_messages_total", queue=queue, outcome="acked")

        assert wait_until(lambda: acked(builds) == 5.0, timeout=10), scrape(port)
        samples = scrape(port)
        assert acked(tests) == 2.0
        assert sample(samples, "pulse_celery_deliveries_total", queue=builds) == 5.0
        assert sample(samples, "pulse_celery_messages_total", queue=builds, outcome="requeued") == 0.0
        assert sample(samples, "pulse_celery_in_flight", queue=builds) == 0.0
        assert sample(samples, "pulse_celery_prefetch", queue=builds) == 200.0
        assert sample(samples, "pulse_celery_queue_state", queue=builds, state="consuming") == 1.0
        assert sample(samples, "pulse_celery_connection_state", state="consuming") == 1.0
        assert sample(samples, "pulse_celery_connects_total") == 1.0

        # When a queue is paused, the gauge says so
        only = next(iter(control.pause(client(celery_broker), "builds", **ONE).values()))
        assert "ok" in only
        samples = scrape(port)
        assert sample(samples, "pulse_celery_queue_state", queue=builds, state="paused") == 1.0
        assert sample(samples, "pulse_celery_queue_state", queue=builds, state="consuming") == 0.0
        assert sample(samples, "pulse_celery_queue_state", queue=tests, state="consuming") == 1.0
    finally:
        worker.stop()
    assert "Traceback" not in worker.log()


class EventCollector:
    """Receive the Celery events of one broker in a thread, as `celery events` would."""

    def __init__(self, broker_url: str) -> None:
        self.app = Celery("monitor", broker=broker_url, set_as_current=False)
        self.events: list[dict[str, Any]] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with self.app.connection() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={EVENT_TYPE: self.events.append})
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def start(self, vhost: str) -> EventCollector:
        self._thread.start()

        def listening() -> bool:
            out = _rabbitmqctl("list_queues", "-p", vhost, "name")
            return any(line.startswith("celeryev.") for line in out.splitlines())

        assert wait_until(listening, timeout=15)
        return self

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=10)
        self.app.close()  # its connection pool, or the sockets outlive the test

    def states(self) -> list[str]:
        return [e["connection"]["state"] for e in self.events]


def test_status_events_are_sent_on_each_state_change_without_a_metrics_port(pulse, celery_broker, tmp_path):
    # Given a monitor listening to the worker's events, and a worker without a metrics port
    collector = EventCollector(celery_broker.url).start(celery_broker.name)
    worker = control_worker(pulse, celery_broker, tmp_path).start()
    builds = f"queue/{pulse.user}/builds"
    try:
        # Then its status comes as worker-pulse-status events: connecting, then consuming
        assert wait_until(lambda: "consuming" in collector.states(), timeout=30), collector.events
        assert collector.states()[0] == "connecting"
        first = next(e for e in collector.events if e["connection"]["state"] == "consuming")
        assert first["hostname"].startswith("test-")
        assert first["reason"] == "state-change"
        assert first["queues"][builds]["state"] == "consuming"

        # When messages are handled and every queue is paused
        publish_to(pulse, "build", range(3))
        assert wait_until(lambda: done(tmp_path, "builds") == Counter(range(3)), timeout=30), worker.log()
        control.pause(client(celery_broker), **ONE)

        # Then an event says so, with the figures
        def paused_event() -> dict[str, Any] | None:
            return next((e for e in collector.events if e["connection"]["state"] == "connected"), None)

        event = wait_until(paused_event, timeout=15)
        assert event, collector.events
        assert event["queues"][builds]["state"] == "paused"
        assert (event["queues"][builds]["delivered"], event["queues"][builds]["acked"]) == (3, 3)
    finally:
        worker.stop()
        collector.stop()
