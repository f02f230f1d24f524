"""A task bound with payload=<dataclass> gets an instance and the routing key by name.

Given a worker whose task takes task-completed payloads as a dataclass,
when a real-shaped Taskcluster event arrives, then the task receives a dataclass instance
(nested dataclasses too) and reads the routing key by name and the routes without
``route.``, under both ack policies; when a payload does not fit the dataclass, it is
dead-lettered with reason ``payload-mismatch`` and never reaches the task, and the next
good one still does.
"""

from __future__ import annotations

import json

import pytest

from pulse_celery.testing import publish, taskcluster_message
from pulse_celery.worker.deadletters import list_dead_letters

from .conftest import TASK_COMPLETED
from .harness import ROOT, Worker, read_records, wait_until
from .test_acks import store_app

pytestmark = pytest.mark.rabbitmq

APPS = ROOT / "tests" / "integration" / "apps"
ROUTES = ["route.tc-treeherder.v2.try.918d7c84da371bda26460fb4b50f161d32107880.88554", "route.index.x.latest"]


def typed_worker(pulse, celery_broker, tmp_path, policy) -> Worker:
    return Worker(
        "typed_app",
        cwd=APPS,
        env={
            "PULSE_URL": pulse.url,
            "CELERY_BROKER_URL": celery_broker.url,
            "RECORD": str(tmp_path / "records.jsonl"),
            "ACK_POLICY": policy,
        },
        log_path=tmp_path / "worker.log",
    )


def records(tmp_path):
    return read_records(tmp_path / "records.jsonl")


@pytest.mark.parametrize("policy", ["enqueue", "complete"])
def test_task_receives_a_dataclass_instance_and_the_routing_key_fields(
    pulse, celery_broker, tmp_path, policy
):
    worker = typed_worker(pulse, celery_broker, tmp_path, policy).start()
    key, body = taskcluster_message(
        task_id="B3EheQ-IQ5aPzw34KS_a6g", run_id=1, worker_group="mdc2", worker_type="gecko-t-osx-1014"
    )
    try:
        with pulse.admin_connection() as conn:
            publish(conn, TASK_COMPLETED, key, body, routes=ROUTES)
        assert wait_until(lambda: records(tmp_path), timeout=30), worker.log()
        queue = f"queue/{pulse.user}/typed"
        assert wait_until(lambda: pulse.queue_counts(queue) == (0, 0), timeout=30), pulse.queue_counts(queue)
    finally:
        worker.stop()

    [record] = records(tmp_path)
    assert record == {
        "type": "TaskCompleted",
        "is_instance": True,
        "run_type": "Run",
        "taskId": "B3EheQ-IQ5aPzw34KS_a6g",
        "runId": 1,
        "fields": {
            "routingKeyKind": "primary",
            "taskId": "B3EheQ-IQ5aPzw34KS_a6g",
            "runId": "1",
            "workerGroup": "mdc2",
            "workerId": "t-linux-1",
            "provisionerId": "releng-hardware",
            "workerType": "gecko-t-osx-1014",
            "schedulerId": "gecko-level-3",
            "taskGroupId": "EJAo7mQyRqS-jmzebhceFA",
            "reserved": None,
        },
        "routes": [route.removeprefix("route.") for route in ROUTES],
    }


@pytest.mark.parametrize("policy", ["enqueue", "complete"])
def test_payload_that_does_not_fit_is_dead_lettered_and_never_reaches_the_task(
    pulse, celery_broker, tmp_path, policy
):
    worker = typed_worker(pulse, celery_broker, tmp_path, policy).start()
    bad_key, bad = taskcluster_message(task_id="badRunIdAAAAAAAAAAAAAA")
    bad["runId"] = "zero"
    missing_key, missing = taskcluster_message(task_id="noStatusAAAAAAAAAAAAAA")
    del missing["status"]
    good_key, good = taskcluster_message(task_id="goodAAAAAAAAAAAAAAAAAA")
    queue = f"queue/{pulse.user}/typed"
    try:
        with pulse.admin_connection() as conn:
            publish(conn, TASK_COMPLETED, bad_key, bad)
            publish(conn, TASK_COMPLETED, missing_key, missing)
            publish(conn, TASK_COMPLETED, good_key, good)
        assert wait_until(lambda: records(tmp_path), timeout=30), worker.log()
        assert wait_until(lambda: pulse.queue_counts(queue) == (0, 0), timeout=30), pulse.queue_counts(queue)
        assert worker.alive
    finally:
        worker.stop()

    assert [r["taskId"] for r in records(tmp_path)] == ["goodAAAAAAAAAAAAAAAAAA"]
    letters = {letter.routing_key: letter for letter in list_dead_letters(store_app(celery_broker))}
    assert sorted(letters) == sorted([bad_key, missing_key])
    for routing_key, body, detail in [
        (bad_key, bad, "payload.runId is a string ('zero'), not an integer"),
        (missing_key, missing, "payload.status is missing"),
    ]:
        letter = letters[routing_key]
        assert (letter.reason, letter.exchange, letter.queue) == ("payload-mismatch", TASK_COMPLETED, queue)
        assert detail in letter.detail
        assert json.loads(letter.body) == body
        assert letter.task == "typed_app.handle"
    log = worker.log()
    assert log.count("Dead-lettered Pulse message") == 2
    assert "Traceback" not in log
