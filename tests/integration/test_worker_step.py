"""The Pulse step inside a real worker: Pulse trouble stays on the Pulse side; --no-pulse."""

from __future__ import annotations

import time
from collections import Counter
from urllib.parse import quote

import pytest
from celery import Celery
from kombu import Exchange

from pulse_celery.testing import _rabbitmqctl

from .harness import wait_until
from .test_acks import done_ids, faults_worker, publish_ids

MISSING = "exchange/taskcluster-queue/v1/not-created-yet"


def send_celery_task(celery_broker, payload):
    """Send a task the ordinary Celery way, to show the worker's own consumer is working."""
    app = Celery("client", broker=celery_broker.url, set_as_current=False)
    with app.connection_for_write() as conn:
        app.send_task("faults_app.handle", args=(payload,), connection=conn)


@pytest.mark.rabbitmq
def test_missing_exchange_is_reported_and_retried_while_the_worker_keeps_working(
    pulse, celery_broker, tmp_path
):
    # Given a binding to an exchange that does not exist (yet)
    worker = faults_worker(pulse, celery_broker, tmp_path, EXCHANGE=MISSING).start(wait_for=None)
    try:
        # Then the worker says what is wrong, with the fix, and keeps running
        assert worker.wait_for_log("Cannot consume Pulse queue", timeout=30), worker.log()
        assert "does not exist" in worker.log()
        # and Celery's own consumer works meanwhile
        send_celery_task(celery_broker, {"id": 1})
        assert wait_until(lambda: done_ids(tmp_path) == Counter({1: 1}), timeout=30), worker.log()

        # When the publisher creates the exchange
        with pulse.admin_connection() as conn:
            Exchange(MISSING, type="topic", durable=True).declare(channel=conn.default_channel)

        # Then the queue's retry declares it by itself, and it consumes (the retries back off
        # up to 60 s; what is published before the bind is not in the queue, so keep publishing)
        def consumed() -> bool:
            publish_ids(pulse, [2], exchange=MISSING)
            return wait_until(lambda: 2 in done_ids(tmp_path), timeout=2)

        assert wait_until(consumed, timeout=90), worker.log()
        assert worker.alive
    finally:
        worker.stop()
    assert "Traceback" not in worker.log()


@pytest.mark.rabbitmq
def test_no_pulse_worker_only_executes_tasks(pulse, celery_broker, tmp_path):
    worker = faults_worker(pulse, celery_broker, tmp_path)
    worker.extra_args = ("--no-pulse",)
    worker.start(wait_for="ready.")
    try:
        send_celery_task(celery_broker, {"id": 3})
        assert wait_until(lambda: done_ids(tmp_path) == Counter({3: 1}), timeout=30), worker.log()
        assert pulse.queue_counts(f"queue/{pulse.user}/faults") is None
    finally:
        worker.stop()
    assert "Pulse" not in worker.log()


@pytest.mark.rabbitmq
def test_pulse_down_at_start_does_not_stop_the_worker(pulse, celery_broker, tmp_path):
    worker = faults_worker(pulse, celery_broker, tmp_path)
    worker.env["PULSE_URL"] = "amqp://alice:secret@127.0.0.1:9/nowhere"  # nothing listens on port 9
    worker.start(wait_for="ready.")
    try:
        assert worker.wait_for_log("Cannot connect to Pulse", timeout=30), worker.log()
        send_celery_task(celery_broker, {"id": 4})
        assert wait_until(lambda: done_ids(tmp_path) == Counter({4: 1}), timeout=30), worker.log()
        assert worker.wait_for_log("Cannot connect to Pulse", timeout=30, count=2)  # retried
        assert worker.alive
    finally:
        worker.stop()
    assert "secret" not in worker.log()


@pytest.mark.rabbitmq
def test_gevent_pool_is_refused_with_the_fix_and_runs_with_no_pulse(pulse, celery_broker, tmp_path):
    worker = faults_worker(pulse, celery_broker, tmp_path, pool="gevent")
    worker.start(wait_for=None)
    assert worker.process.wait(timeout=60) != 0
    assert "Pulse consumption needs the worker's event loop" in worker.log()
    assert "--no-pulse" in worker.log()

    worker.extra_args = ("--no-pulse",)
    worker.start(wait_for="ready.")
    try:
        send_celery_task(celery_broker, {"id": 5})
        assert wait_until(lambda: done_ids(tmp_path) == Counter({5: 1}), timeout=30), worker.log()
    finally:
        worker.stop()


@pytest.mark.rabbitmq
def test_queue_deleted_under_the_consumer_is_declared_again_and_consumption_goes_on(
    pulse, celery_broker, tmp_path
):
    # Given a worker consuming its queue
    worker = faults_worker(pulse, celery_broker, tmp_path).start()
    queue = f"queue/{pulse.user}/faults"
    try:
        publish_ids(pulse, [1])
        assert wait_until(lambda: done_ids(tmp_path) == Counter({1: 1}), timeout=30)
        # When the queue is deleted, as Pulse Guardian deletes an overgrown queue
        with pulse.admin_connection() as conn:
            conn.default_channel.queue_delete(queue)
        # Then the worker says loudly what was lost, declares queue and bindings again
        assert worker.wait_for_log("was deleted under this worker", timeout=30), worker.log()
        assert worker.wait_for_log("declared again with its bindings", timeout=30), worker.log()
        # and messages published from then on are handled
        publish_ids(pulse, [2, 3])
        assert wait_until(lambda: done_ids(tmp_path) == Counter({1: 1, 2: 1, 3: 1}), timeout=30), worker.log()
        assert worker.alive
    finally:
        worker.stop()
    assert "Traceback" not in worker.log()


@pytest.mark.rabbitmq
def test_depth_warning_is_logged_once_when_the_queue_backs_up(pulse, celery_broker, tmp_path):
    # Given slow tasks run here, few at a time, and a low warning depth
    worker = faults_worker(
        pulse,
        celery_broker,
        tmp_path,
        ACK_POLICY="complete",
        TASK_SECONDS=1,
        PULSE_QUEUE_WARN_DEPTH=20,
        PULSE_DEPTH_CHECK_INTERVAL=1,
    ).start()
    try:
        # When 60 messages arrive at once
        publish_ids(pulse, range(60))
        # Then one warning names the queue and Guardian's thresholds
        assert worker.wait_for_log("Pulse Guardian warns at 2,000", timeout=30), worker.log()
        time.sleep(3)
        assert worker.log().count("Pulse Guardian warns at 2,000") == 1
    finally:
        worker.kill()


@pytest.mark.rabbitmq
def test_password_is_never_logged_even_at_debug_across_connect_and_reconnect(pulse, celery_broker, tmp_path):
    worker = faults_worker(pulse, celery_broker, tmp_path)
    worker.loglevel = "debug"
    worker.start()
    try:
        publish_ids(pulse, [1])
        assert wait_until(lambda: done_ids(tmp_path) == Counter({1: 1}), timeout=30)
        # Force a reconnect: close only the Pulse user's connections.
        out = _rabbitmqctl("list_connections", "user", "pid")
        for line in out.splitlines():
            if line.startswith(pulse.user + "\t"):
                _rabbitmqctl("close_connection", line.split("\t")[1], "test reconnect")
        assert worker.wait_for_log("Connected to Pulse", timeout=30, count=2), worker.log()[-2000:]
        publish_ids(pulse, [2])
        assert wait_until(lambda: done_ids(tmp_path) == Counter({1: 1, 2: 1}), timeout=30)
    finally:
        worker.stop()
    log = worker.full_log()
    assert "DEBUG" in log  # the check below means something only if debug lines were written
    for form in (pulse.password, quote(pulse.password, safe=""), quote(pulse.password)):
        assert form not in log, form
