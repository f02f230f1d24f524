"""What each ack policy promises, shown with real faults on the real RabbitMQ.

- enqueue: a task message the Celery broker refuses leaves the Pulse message unacked, and
  it is handled once the broker takes task messages again;
- complete: a worker killed with SIGKILL mid-task leaves its messages to be redelivered.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from pulse_celery.testing import _rabbitmqctl, publish

from .conftest import TASK_COMPLETED
from .harness import Worker, app_worker, read_records, wait_until


def faults_worker(pulse, celery_broker, tmp_path, pool="prefork", concurrency=2, **env) -> Worker:
    return app_worker("faults_app", pulse, celery_broker, tmp_path, pool, concurrency, **env)


def store_app(celery_broker):
    """A client app on the test's Celery broker, to read the dead-letter store."""
    from celery import Celery

    return Celery("client", broker=celery_broker.url, set_as_current=False)


def publish_ids(pulse, ids, exchange=TASK_COMPLETED):
    with pulse.admin_connection() as conn:
        for i in ids:
            publish(conn, exchange, f"primary.task{i}.0", {"id": i})


def done_ids(tmp_path):
    return Counter(r["id"] for r in read_records(tmp_path / "records.jsonl") if r["event"] == "done")


@pytest.mark.rabbitmq
def test_refused_task_message_leaves_the_pulse_message_unacked_until_the_broker_takes_it(
    pulse, celery_broker, tmp_path
):
    # Given a Celery queue that refuses every publish (max-length 0, overflow reject-publish)
    policy = json.dumps({"max-length": 0, "overflow": "reject-publish"})
    _rabbitmqctl("set_policy", "-p", celery_broker.name, "refuse", "^celery$", policy, "--apply-to", "queues")
    worker = faults_worker(pulse, celery_broker, tmp_path, ACK_POLICY="enqueue").start()
    queue = f"queue/{pulse.user}/faults"
    try:
        # When a Pulse message arrives
        publish_ids(pulse, [1])
        assert worker.wait_for_log("not confirmed by the Celery broker", timeout=30), worker.log()
        # Then it is not acked: it stays in the Pulse queue, and no task ran
        # (quorum-queue figures reach rabbitmqctl with a delay of a few seconds)
        assert wait_until(lambda: sum(pulse.queue_counts(queue) or ()) == 1, timeout=15)
        assert not done_ids(tmp_path)
        assert worker.wait_for_log("Pulse consumption paused", timeout=10)

        # When the Celery broker takes task messages again
        _rabbitmqctl("clear_policy", "-p", celery_broker.name, "refuse")
        # Then the message is handled once and acked
        assert wait_until(lambda: done_ids(tmp_path) == Counter({1: 1}), timeout=90), worker.log()
        assert wait_until(lambda: pulse.queue_counts(queue) == (0, 0), timeout=30), pulse.queue_counts(queue)
        assert worker.alive
    finally:
        worker.stop()


@pytest.mark.rabbitmq
def test_unfinished_messages_are_redelivered_after_the_worker_is_killed(pulse, celery_broker, tmp_path):
    # Given a worker running slow tasks under the complete policy
    ids = list(range(12))
    worker = faults_worker(pulse, celery_broker, tmp_path, ACK_POLICY="complete", TASK_SECONDS=2).start()
    queue = f"queue/{pulse.user}/faults"
    publish_ids(pulse, ids)
    # When it is killed with SIGKILL while tasks are running
    started = lambda: [r for r in read_records(tmp_path / "records.jsonl") if r["event"] == "start"]  # noqa: E731
    assert wait_until(lambda: len(started()) >= 2, timeout=30), worker.log()
    worker.kill()
    killed_mid_task = {r["id"] for r in started()} - set(done_ids(tmp_path))
    assert killed_mid_task, "the kill came too late to catch a task mid-run"
    # The broker takes back every unacked message at once: nothing is left unacknowledged.
    remaining = (len(ids) - len(done_ids(tmp_path)), 0)
    assert wait_until(lambda: pulse.queue_counts(queue) == remaining, timeout=30), pulse.queue_counts(queue)

    # Then a new worker gets every unfinished message again, flagged as redelivered
    worker.start()
    try:
        assert wait_until(lambda: set(done_ids(tmp_path)) == set(ids), timeout=120), worker.log()
        assert wait_until(lambda: pulse.queue_counts(queue) == (0, 0), timeout=30)
    finally:
        worker.stop()
    records = read_records(tmp_path / "records.jsonl")
    redelivered = {r["id"] for r in records if r["event"] == "start" and r["redelivered"]}
    assert killed_mid_task <= redelivered
    # Only the messages in flight at the kill can run twice.
    assert all(n == 1 for i, n in done_ids(tmp_path).items() if i not in killed_mid_task)


@pytest.mark.rabbitmq
def test_anonymous_queue_is_exclusive_and_dies_with_the_worker(pulse, celery_broker, tmp_path):
    worker = faults_worker(pulse, celery_broker, tmp_path, ANONYMOUS=1).start()
    try:
        out = _rabbitmqctl("list_queues", "-p", pulse.vhost, "name", "exclusive", "durable")
        rows = [line.split("\t") for line in out.splitlines() if line.startswith(f"queue/{pulse.user}/")]
        assert len(rows) == 1 and rows[0][1:] == ["true", "false"], rows
        publish_ids(pulse, [7])
        assert wait_until(lambda: done_ids(tmp_path) == Counter({7: 1}), timeout=30)
    finally:
        worker.stop()
    out = _rabbitmqctl("list_queues", "-p", pulse.vhost, "name")
    assert f"queue/{pulse.user}/" not in out


@pytest.mark.rabbitmq
def test_enqueue_acks_even_when_the_app_turns_on_blocking_publish_confirms(pulse, celery_broker, tmp_path):
    # broker_transport_options={'confirm_publish': True} makes py-amqp wait for each confirm;
    # the hand-off must not inherit it, or its own confirm tracking never sees the acks.
    worker = faults_worker(pulse, celery_broker, tmp_path, BROKER_CONFIRM_PUBLISH=1).start()
    queue = f"queue/{pulse.user}/faults"
    try:
        publish_ids(pulse, range(20))
        assert wait_until(lambda: set(done_ids(tmp_path)) == set(range(20)), timeout=60), worker.log()
        assert wait_until(lambda: pulse.queue_counts(queue) == (0, 0), timeout=30), pulse.queue_counts(queue)
    finally:
        worker.stop()


@pytest.mark.rabbitmq
def test_warm_shutdown_acks_tasks_that_finish_after_it_began_even_past_two_heartbeats(
    pulse, celery_broker, tmp_path
):
    # Given tasks that outlast two Pulse heartbeat intervals (2 s), under complete
    worker = faults_worker(
        pulse, celery_broker, tmp_path, ACK_POLICY="complete", TASK_SECONDS=6, PULSE_HEARTBEAT=2
    ).start()
    queue = f"queue/{pulse.user}/faults"
    publish_ids(pulse, range(6))
    started = lambda: {r["id"] for r in read_records(tmp_path / "records.jsonl") if r["event"] == "start"}  # noqa: E731
    assert wait_until(lambda: len(started()) >= 2, timeout=30), worker.log()
    # When the worker gets SIGTERM while they run
    assert worker.stop(timeout=120) == 0
    # Then the tasks it finished were acked (not returned to the queue), and the rest wait there
    done = set(done_ids(tmp_path))
    assert started() <= done, "warm shutdown must let running tasks finish"
    remaining = 6 - len(done)
    assert wait_until(lambda: pulse.queue_counts(queue) == (remaining, 0), timeout=30), (
        pulse.queue_counts(queue),
        done,
        worker.log()[-3000:],
    )
    assert "not sent: its channel is gone" not in worker.log()
