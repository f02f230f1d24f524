"""Poison messages never loop and are never silently lost; dead letters can be listed and replayed."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pulse_celery.testing import _rabbitmqctl, publish
from pulse_celery.worker.deadletters import list_dead_letters

from .conftest import TASK_COMPLETED
from .harness import APPS, ROOT, cli, read_records, wait_until
from .test_acks import done_ids, faults_worker, publish_ids, store_app


@pytest.mark.rabbitmq
def test_message_that_kills_the_worker_each_time_is_dead_lettered_after_the_delivery_limit(
    pulse, celery_broker, tmp_path
):
    # Given the complete policy and a message whose task kills its pool process every time
    worker = faults_worker(pulse, celery_broker, tmp_path, ACK_POLICY="complete").start()
    queue = f"queue/{pulse.user}/faults"
    try:
        with pulse.admin_connection() as conn:
            publish(conn, TASK_COMPLETED, "primary.poison.0", {"id": 1, "crash": True})
        publish_ids(pulse, [2])
        # Then after pulse_max_deliveries (5) tries it is kept in the dead-letter store, not run again
        assert worker.wait_for_log("too-many-deliveries", timeout=120), worker.log()[-3000:]
        assert wait_until(lambda: pulse.queue_counts(queue) == (0, 0), timeout=30)
        assert done_ids(tmp_path) == Counter({2: 1})
        assert worker.alive
    finally:
        worker.stop()
    starts = [r for r in read_records(tmp_path / "records.jsonl") if r["id"] == 1]
    assert len(starts) == 5
    [letter] = list_dead_letters(store_app(celery_broker))
    assert (letter.reason, letter.routing_key, json.loads(letter.body)) == (
        "too-many-deliveries",
        "primary.poison.0",
        {"id": 1, "crash": True},
    )
    assert letter.headers["x-delivery-count"] == 5


@pytest.mark.rabbitmq
def test_dead_letters_are_listed_shown_replayed_and_dropped_from_the_command_line(
    pulse, celery_broker, tmp_path
):
    # Given two dead letters: one whose task raised and was rejected, one undecodable
    worker = faults_worker(pulse, celery_broker, tmp_path, ACK_POLICY="complete").start()
    try:
        with pulse.admin_connection() as conn:
            publish(conn, TASK_COMPLETED, "primary.broken.0", b"{not json")
            publish(conn, TASK_COMPLETED, "primary.poison.0", {"id": 7, "crash": True})
        assert wait_until(lambda: len(list_dead_letters(store_app(celery_broker))) == 2, timeout=120)
    finally:
        worker.stop()
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": f"{APPS}:{ROOT}",
        "CELERY_BROKER_URL": celery_broker.url,
        "PULSE_URL": pulse.url,
        "RECORD": str(tmp_path / "records.jsonl"),
    }
    listed = cli("dead-letters", "list", "-A", "faults_app", env=env)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert len(lines) == 2 and "2 dead letter(s)" in listed.stderr
    ids = {line.split()[-1]: line.split()[0] for line in lines}  # routing key -> id
    assert set(ids) == {"primary.broken.0", "primary.poison.0"}

    shown = cli("dead-letters", "show", "-A", "faults_app", ids["primary.broken.0"], env=env)
    assert shown.returncode == 0 and json.loads(shown.stdout)["body"] == "{not json"

    # When the poison one is replayed (say the bug is fixed), its payload runs through Celery
    replayed = cli("dead-letters", "replay", "-A", "faults_app", ids["primary.poison.0"], env=env)
    assert replayed.returncode == 0 and "replayed 1" in replayed.stdout, replayed.stderr
    from celery import Celery

    app = Celery("client", broker=celery_broker.url, set_as_current=False)
    with app.connection_for_write() as conn:
        message = conn.default_channel.basic_get("celery", no_ack=True)
    assert message is not None and json.loads(message.body)[0] == [{"id": 7, "crash": True}]
    assert message.headers["pulse"]["redelivered"] is True

    # An undecodable one cannot be replayed; it can be dropped
    refused = cli("dead-letters", "replay", "-A", "faults_app", ids["primary.broken.0"], env=env)
    assert refused.returncode != 0 and "not replayed" in refused.stderr
    dropped = cli("dead-letters", "drop", "-A", "faults_app", ids["primary.broken.0"], env=env)
    assert dropped.returncode == 0 and "dropped 1" in dropped.stdout
    assert list_dead_letters(store_app(celery_broker)) == []

    missing = cli("dead-letters", "list", "-A", "no_such_module", env=env)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr


@pytest.mark.rabbitmq
def test_delivery_unacked_past_the_brokers_consumer_timeout_does_not_crash_the_worker(
    pulse, celery_broker, tmp_path
):
    # Given a broker whose consumer_timeout (normally 30 min) is 3 s, and a task that runs longer
    _rabbitmqctl("eval", "application:set_env(rabbit, consumer_timeout, 3000).")
    worker = faults_worker(
        pulse, celery_broker, tmp_path, ACK_POLICY="complete", TASK_SECONDS=300, PULSE_MAX_DELIVERIES=1
    )
    try:
        worker.start()
        publish_ids(pulse, [1])
        # When RabbitMQ closes the channel of the delivery it waited too long for (it checks
        # about once a minute), the worker consumes that queue again instead of crashing
        assert worker.wait_for_log("PRECONDITION_FAILED", timeout=150), worker.log()[-3000:]
        # and the message, now redelivered, is kept rather than run again past the limit
        assert worker.wait_for_log("too-many-deliveries", timeout=60), worker.log()[-3000:]
        assert worker.alive
    finally:
        _rabbitmqctl("eval", "application:set_env(rabbit, consumer_timeout, 1800000).")
        worker.kill()
    [letter] = list_dead_letters(store_app(celery_broker))
    assert letter.routing_key == "primary.task1.0"
