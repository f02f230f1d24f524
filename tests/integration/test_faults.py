"""Real broker faults while messages flow: nothing is lost and the worker stays up.

Each scenario publishes a known set of messages (the publisher retries until the broker
confirms each one, as a real Pulse publisher does), injects the fault, and checks at the end:
every message ran its task at least once, duplicates stay within what the fault can cause
(the deliveries in flight at that moment), the Pulse queue holds 0 ready and 0 unacked, and
the worker process is still alive.
"""

from __future__ import annotations

import random
import time

import pytest

from pulse_celery.testing import _rabbitmqctl

from .harness import RetryingPublisher, wait_until
from .proxy import TcpProxy
from .test_acks import done_ids, faults_worker, publish_ids

PREFETCH = 200  # pulse_prefetch_count default: the most a single fault can put back in flight


def assert_nothing_lost(tmp_path, pulse, worker, n: int, faults: int) -> None:
    queue = f"queue/{pulse.user}/faults"
    assert wait_until(lambda: set(done_ids(tmp_path)) >= set(range(n)), timeout=180), (
        sorted(set(range(n)) - set(done_ids(tmp_path)))[:20],
        worker.log()[-3000:],
    )
    assert wait_until(lambda: pulse.queue_counts(queue) == (0, 0), timeout=60), pulse.queue_counts(queue)
    assert worker.alive
    duplicates = sum(count - 1 for count in done_ids(tmp_path).values())
    assert duplicates <= faults * PREFETCH, duplicates


def restart_broker() -> None:
    _rabbitmqctl("stop_app")
    time.sleep(3)
    _rabbitmqctl("start_app")
    _rabbitmqctl("await_startup")


@pytest.mark.rabbitmq
@pytest.mark.parametrize("policy", ["enqueue", "complete"])
@pytest.mark.parametrize("pulse", ["plain", "tls"], indirect=True)
def test_broker_restart_mid_stream_loses_nothing(pulse, celery_broker, tmp_path, policy):
    # Given a worker consuming a steady stream
    worker = faults_worker(pulse, celery_broker, tmp_path, ACK_POLICY=policy, PULSE_HEARTBEAT=5).start()
    publisher = RetryingPublisher(pulse, 600, pace=0.005)
    publisher.start()
    try:
        assert wait_until(lambda: len(done_ids(tmp_path)) >= 100, timeout=60), worker.log()
        # When the broker (Pulse and Celery's, here the same node) stops and starts again
        restart_broker()
        publisher.join(timeout=180)
        # Then every message is handled, the queue ends empty and the worker is alive
        assert_nothing_lost(tmp_path, pulse, worker, 600, faults=1)
        assert "Unrecoverable error" not in worker.log()
    finally:
        worker.stop(timeout=120)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("pulse", ["plain", "tls"], indirect=True)
def test_connections_closed_ten_times_during_a_thousand_messages_loses_nothing(
    pulse, celery_broker, tmp_path
):
    worker = faults_worker(pulse, celery_broker, tmp_path, PULSE_HEARTBEAT=5).start()
    publisher = RetryingPublisher(pulse, 1000, pace=0.002)
    publisher.start()
    rng = random.Random(20261128)
    try:
        for _ in range(10):
            time.sleep(rng.uniform(0.2, 1.5))
            # Every connection on the node: Pulse's, Celery's, the hand-off's, the publisher's.
            _rabbitmqctl("close_all_connections", "--global", "fault injected by test")
        publisher.join(timeout=180)
        assert_nothing_lost(tmp_path, pulse, worker, 1000, faults=10)
        assert worker.log().count("Connected to Pulse") >= 2
    finally:
        worker.stop(timeout=120)


@pytest.fixture
def proxy():
    p = TcpProxy()
    yield p
    p.close()


@pytest.fixture
def pulse_proxy(pulse):
    """A proxy to ``pulse``'s listener: 5671 under TLS, 5672 otherwise."""
    p = TcpProxy(target=("127.0.0.1", pulse.tls_port if pulse.tls else pulse.port))
    yield p
    p.close()


@pytest.mark.rabbitmq
def test_celery_broker_down_while_pulse_keeps_publishing_loses_nothing(pulse, celery_broker, tmp_path, proxy):
    # Given a worker whose Celery broker is reached through a proxy we can cut
    worker = faults_worker(pulse, celery_broker, tmp_path)
    worker.env["CELERY_BROKER_URL"] = proxy.url("guest", "guest", celery_broker.name)
    worker.start()
    queue = f"queue/{pulse.user}/faults"
    try:
        publish_ids(pulse, range(50))
        assert wait_until(lambda: len(done_ids(tmp_path)) == 50, timeout=60), worker.log()
        # When the Celery broker goes away while Pulse keeps publishing
        proxy.cut()
        publish_ids(pulse, range(50, 250))
        time.sleep(5)
        # Then the Pulse messages wait in their queue, unacked or ready, none run, none lost
        assert wait_until(lambda: sum(pulse.queue_counts(queue) or ()) == 200, timeout=20), (
            pulse.queue_counts(queue)
        )
        assert len(done_ids(tmp_path)) == 50
        assert worker.alive
        # And when it is back, every one of them runs
        proxy.restore()
        assert_nothing_lost(tmp_path, pulse, worker, 250, faults=1)
    finally:
        worker.stop(timeout=120)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("pulse", ["plain", "tls"], indirect=True)
def test_pulse_frozen_for_three_heartbeat_intervals_is_detected_and_nothing_is_lost(
    pulse, celery_broker, tmp_path, pulse_proxy
):
    proxy = pulse_proxy
    # Given a worker whose Pulse connection goes through a proxy, with 2 s heartbeats
    worker = faults_worker(pulse, celery_broker, tmp_path, PULSE_HEARTBEAT=2, PULSE_CONNECT_TIMEOUT=3)
    worker.env["PULSE_URL"] = proxy.pulse_url(pulse)
    worker.start()
    try:
        publish_ids(pulse, range(50))
        assert wait_until(lambda: len(done_ids(tmp_path)) == 50, timeout=60), worker.log()
        # When the path to Pulse silently drops everything for three heartbeat intervals
        proxy.freeze()
        publish_ids(pulse, range(50, 150))
        # Then the worker notices within two intervals (plus a tick), while frozen
        assert worker.wait_for_log("Pulse connection lost", timeout=8), worker.log()[-2000:]
        time.sleep(1)
        proxy.restore()
        # And reconnects, and every message runs
        assert_nothing_lost(tmp_path, pulse, worker, 150, faults=1)
        assert worker.log().count("Connected to Pulse") >= 2
    finally:
        worker.stop(timeout=120)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("pulse", ["plain", "tls"], indirect=True)
def test_sigkill_with_200_messages_in_flight_under_complete_loses_nothing(pulse, celery_broker, tmp_path):
    # Given 200 deliveries held by the worker at once (2 processes x prefetch multiplier 100)
    worker = faults_worker(
        pulse, celery_broker, tmp_path, ACK_POLICY="complete", TASK_SECONDS=0.05, PREFETCH_MULTIPLIER=100
    ).start()
    queue = f"queue/{pulse.user}/faults"
    publish_ids(pulse, range(600))
    assert wait_until(lambda: len(done_ids(tmp_path)) >= 50, timeout=60), worker.log()
    counts = pulse.queue_counts(queue)
    # When the worker and its pool are killed with SIGKILL
    worker.kill()
    # Then a new worker gets every unfinished message again
    worker.start()
    try:
        assert_nothing_lost(tmp_path, pulse, worker, 600, faults=1)
    finally:
        worker.stop(timeout=120)
    assert counts is not None and counts[1] <= 200, counts  # prefetch bounds what is held


@pytest.mark.rabbitmq
@pytest.mark.parametrize("policy", ["enqueue", "complete"])
def test_sigterm_with_work_in_flight_then_restart_loses_nothing(pulse, celery_broker, tmp_path, policy):
    worker = faults_worker(pulse, celery_broker, tmp_path, ACK_POLICY=policy, TASK_SECONDS=0.02).start()
    publisher = RetryingPublisher(pulse, 400, pace=0.002)
    publisher.start()
    assert wait_until(lambda: len(done_ids(tmp_path)) >= 50, timeout=60), worker.log()
    assert worker.stop(timeout=120) == 0  # warm shutdown mid-stream
    assert "not sent: its channel is gone" not in worker.log()
    worker.start()
    try:
        publisher.join(timeout=120)
        assert_nothing_lost(tmp_path, pulse, worker, 400, faults=1)
    finally:
        worker.stop(timeout=120)
