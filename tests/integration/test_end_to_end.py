"""The example app under a real `celery worker`, a Pulse-restricted user and real messages.

Given a Pulse-like vhost where the app's user has exactly Guardian's permissions,
when a few hundred real-shaped Taskcluster events are published on the two bound exchanges,
then each one invokes the task exactly once with its payload and Pulse metadata, and the
Pulse queue ends with nothing ready and nothing unacknowledged, for both ack policies and
for the prefork, threads and solo pools.
"""

from __future__ import annotations

from collections import Counter

import pytest

from pulse_celery.testing import publish, taskcluster_message

from .conftest import TASK_COMPLETED, TASK_FAILED
from .harness import ROOT, Worker, read_records, user_connections_tls, wait_until

EXAMPLE = ROOT / "examples" / "taskcluster_builds"
N_EACH = 150  # per exchange; plus events the bindings must not take


@pytest.mark.rabbitmq
@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
@pytest.mark.parametrize("policy", ["enqueue", "complete"])
@pytest.mark.parametrize("pulse", ["plain", "tls"], indirect=True)
def test_every_event_invokes_the_task_exactly_once_and_the_queue_ends_empty(
    pulse, celery_broker, tmp_path, pool, policy
):
    records = tmp_path / "resolved.jsonl"
    worker = Worker(
        "app",
        cwd=EXAMPLE,
        env={
            **pulse.env,
            "CELERY_BROKER_URL": celery_broker.url,
            "BUILDS_ACK_POLICY": policy,
            "BUILDS_LOG": str(records),
        },
        log_path=tmp_path / "worker.log",
        pool=pool,
    ).start()
    try:
        # The app's connections are TLS exactly when the test says so (the broker's own view).
        assert set(user_connections_tls(pulse.user)) == {pulse.tls}
        expected = {}
        with pulse.admin_connection() as conn:
            for i in range(N_EACH):
                key, body = taskcluster_message("completed")
                route = f"route.tc-treeherder.v2.autoland.{i:040x}.{i}"
                publish(conn, TASK_COMPLETED, key, body, routes=[route])
                expected[body["status"]["taskId"]] = (TASK_COMPLETED, key, [route], "completed")
                key, body = taskcluster_message("failed", run_id=1)
                publish(conn, TASK_FAILED, key, body)
                expected[body["status"]["taskId"]] = (TASK_FAILED, key, [], "failed")
                # Another worker type: neither binding takes these.
                key, body = taskcluster_message("completed", worker_type="gecko-t-win10-64")
                publish(conn, TASK_COMPLETED, key, body)

        wait_until(lambda: len(read_records(records)) >= len(expected), timeout=120)
        queue = "queue/" + pulse.user + "/builds"
        assert wait_until(lambda: pulse.queue_counts(queue) == (0, 0), timeout=30), pulse.queue_counts(queue)
        assert worker.alive
    finally:
        worker.stop()

    got = read_records(records)
    counts = Counter(r["taskId"] for r in got)
    assert sorted(counts) == sorted(expected), "some events were lost or unexpected ones handled"
    assert set(counts.values()) == {1}, f"duplicates: {[t for t, n in counts.items() if n > 1][:5]}"
    for r in got:
        exchange, key, routes, state = expected[r["taskId"]]
        assert (r["exchange"], r["routingKey"], r["routes"], r["state"]) == (exchange, key, routes, state)
        assert r["redelivered"] is False
        assert r["workerType"] == "gecko-t-linux"
    log = worker.full_log()
    assert pulse.password not in log
    assert "Traceback" not in log
