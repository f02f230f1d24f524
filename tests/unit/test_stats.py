"""Per-queue figures, the connection's state, the metrics setting and the Prometheus exposition."""

from __future__ import annotations

import sys

import pytest

from pulse_celery import ConfigError, load_config
from pulse_celery.pulse.stats import CONNECTION_STATES, ConnectionStats, QueueStats
from pulse_celery.worker.metrics import StatusCollector, require_prometheus

BASE = {"pulse_url": "amqp://alice:pw@127.0.0.1:5672"}


def test_settled_outcomes_feed_their_own_counters():
    stats = QueueStats("queue/alice/builds", "tasks.on_build")
    for what in ("ack", "ack", "reject", "requeue"):
        stats.settled(what)
    snap = stats.snapshot(state="consuming", prefetch=200, in_flight=3)
    assert (snap["acked"], snap["rejected"], snap["requeued"]) == (2, 1, 1)
    assert (snap["state"], snap["prefetch"], snap["in_flight"], snap["task"]) == (
        "consuming",
        200,
        3,
        "tasks.on_build",
    )


def test_an_unknown_outcome_is_a_bug_not_a_silent_miscount():
    with pytest.raises(KeyError):
        QueueStats("q", "t").settled("acked")


def test_last_error_keeps_the_latest_text_and_when():
    stats = QueueStats("q", "t")
    stats.error(ValueError("first"))
    stats.error("second")
    assert stats.last_error == "second"
    assert stats.last_error_at is not None


def test_connection_state_reports_only_changes_and_refuses_unknown_states():
    conn = ConnectionStats()
    assert conn.state == "stopped"
    assert conn.enter("connecting") is True
    assert conn.enter("connecting") is False
    assert conn.enter("consuming") is True
    assert conn.snapshot()["state"] == "consuming"
    with pytest.raises(ValueError):
        conn.enter("sleeping")


def test_metrics_port_comes_from_the_setting_or_the_environment():
    assert load_config(BASE, environ={}).metrics_port is None
    assert load_config({**BASE, "pulse_metrics_port": 9808}, environ={}).metrics_port == 9808
    assert load_config(BASE, environ={"PULSE_METRICS_PORT": "9809"}).metrics_port == 9809


@pytest.mark.parametrize("bad", [0, 70000, "http"])
def test_a_metrics_port_that_is_not_a_port_is_refused_with_the_fix(bad):
    with pytest.raises(ConfigError, match=r"pulse_metrics_port .* is not a TCP port"):
        load_config({**BASE, "pulse_metrics_port": bad}, environ={})


def test_a_metrics_port_without_prometheus_client_fails_with_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=r"pulse-celery\[metrics\]"):
        require_prometheus()


def test_collector_exposes_the_status_as_prometheus_samples_with_a_source_label():
    prometheus_client = pytest.importorskip("prometheus_client")
    builds = QueueStats("queue/alice/builds", "tasks.on_build", delivered=7, acked=5, dead_lettered=1)
    builds.redelivered = 2
    community = QueueStats("queue/alice/builds", "tasks.on_community", delivered=3)
    default_connection = ConnectionStats(state="consuming", connects=2, losses=1).snapshot()
    status = {
        "connection": default_connection,
        "sources": {"default": default_connection, "community": ConnectionStats(state="lost").snapshot()},
        "queues": {
            builds.name: {**builds.snapshot(state="paused", prefetch=8, in_flight=2), "source": "default"},
            f"community:{community.name}": {
                **community.snapshot(state="waiting", prefetch=200, in_flight=0),
                "source": "community",
            },
        },
    }
    registry = prometheus_client.CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: status, "w1@host"))

    def value(name, source="default", **labels):
        return registry.get_sample_value(name, {"worker": "w1@host", "source": source, **labels})

    q = {"queue": builds.name}
    assert value("pulse_celery_deliveries_total", **q) == 7
    assert value("pulse_celery_redeliveries_total", **q) == 2
    assert value("pulse_celery_messages_total", outcome="acked", **q) == 5
    assert value("pulse_celery_messages_total", outcome="dead_lettered", **q) == 1
    assert value("pulse_celery_messages_total", outcome="rejected", **q) == 0
    assert value("pulse_celery_in_flight", **q) == 2
    assert value("pulse_celery_prefetch", **q) == 8
    assert value("pulse_celery_queue_state", state="paused", **q) == 1
    assert value("pulse_celery_queue_state", state="consuming", **q) == 0
    assert value("pulse_celery_connects_total") == 2
    assert value("pulse_celery_connection_losses_total") == 1
    # the same queue name on another source is its own series
    assert value("pulse_celery_deliveries_total", source="community", **q) == 3
    assert value("pulse_celery_queue_state", source="community", state="waiting", **q) == 1
    assert value("pulse_celery_connection_state", source="community", state="lost") == 1
    states = {s: value("pulse_celery_connection_state", state=s) for s in CONNECTION_STATES}
    assert states == {s: (1.0 if s == "consuming" else 0.0) for s in CONNECTION_STATES}
