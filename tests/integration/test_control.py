"""Remote control of the Pulse consumer in real workers: pause, resume, status, delete.

Each test runs `celery worker` processes on the local RabbitMQ and drives them the way an
operator would, with `celery control` / `celery inspect` or ``app.control.broadcast``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter

import pytest
from celery import Celery

from pulse_celery import control
from pulse_celery.testing import _rabbitmqctl, publish

from .conftest import TASK_COMPLETED
from .harness import Worker, app_worker, read_records, wait_until

pytestmark = pytest.mark.rabbitmq


def control_worker(pulse, celery_broker, tmp_path, concurrency=2, **env) -> Worker:
    return app_worker("control_app", pulse, celery_broker, tmp_path, concurrency=concurrency, **env)


def celery_cli(worker: Worker, *args: str) -> subprocess.CompletedProcess[str]:
    """Run `celery -A control_app ARGS` as an operator would, next to the worker."""
    env = {k: v for k, v in worker.env.items() if k != "RECORD"}  # a client writes nothing
    return subprocess.run(
        # One worker: --limit is not an option of `celery control`, so it waits the timeout.
        [sys.executable, "-m", "celery", "-A", "control_app", *args, "--timeout", "3"],
        cwd=worker.cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


_clients: list[Celery] = []


def client(celery_broker) -> Celery:
    app = Celery("client", broker=celery_broker.url, set_as_current=False)
    _clients.append(app)
    return app


@pytest.fixture(autouse=True)
def _close_clients():
    """Close each test's client app (its own pools; conftest closes kombu's shared ones)."""
    yield
    while _clients:
        _clients.pop().close()


# One worker per test: stop waiting for replies once it has answered.
ONE = {"limit": 1, "timeout": 10.0}


def publish_to(pulse, kind, ids):
    with pulse.admin_connection() as conn:
        for i in ids:
            publish(conn, TASK_COMPLETED, f"primary.{kind}.{i}", {"id": i})


def records(tmp_path, event, queue):
    lines = read_records(tmp_path / "records.jsonl")
    return [r["id"] for r in lines if (r["event"], r["queue"]) == (event, queue)]


def done(tmp_path, queue):
    return Counter(records(tmp_path, "done", queue))


def started(tmp_path, queue):
    return set(records(tmp_path, "start", queue))


def queue_info(vhost, name):
    """(ready, unacked, consumers) of queue ``name``, or None when it does not exist."""
    out = _rabbitmqctl(
        "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged", "consumers"
    )
    for line in out.splitlines():
        parts = line.split("\t")
        if parts[0] == name:
            return int(parts[1]), int(parts[2]), int(parts[3])
    return None


def only_reply(replies):
    assert len(replies) == 1, replies
    return next(iter(replies.values()))


def close_pulse_connections(pulse):
    """Close the worker's Pulse connection (only the test user's), as a broker restart would."""
    out = _rabbitmqctl("list_connections", "-p", pulse.vhost, "user", "pid")
    closed = 0
    for line in out.splitlines():
        user, pid = line.split("\t")
        if user == pulse.user:
            _rabbitmqctl("close_connection", pid, "test: Pulse connection closed")
            closed += 1
    assert closed, out


def test_pause_from_the_command_line_stops_one_queue_and_resume_picks_up_its_backlog(
    pulse, celery_broker, tmp_path
):
    worker = control_worker(pulse, celery_broker, tmp_path).start()
    builds, tests = f"queue/{pulse.user}/builds", f"queue/{pulse.user}/tests"
    try:
        # Given a worker consuming both queues
        assert wait_until(lambda: queue_info(pulse.vhost, builds) == (0, 0, 1), timeout=15)

        # When the operator pauses "builds" from the shell
        out = celery_cli(worker, "control", "pulse_pause", "builds")
        assert out.returncode == 0, out.stderr
        assert f"{builds}: paused" in out.stdout

        # Then messages for it wait on Pulse, while "tests" goes on
        publish_to(pulse, "build", range(5))
        publish_to(pulse, "test", range(3))
        assert wait_until(lambda: done(tmp_path, "tests") == Counter(range(3)), timeout=30), worker.log()
        assert wait_until(lambda: queue_info(pulse.vhost, builds) == (5, 0, 0), timeout=15)
        time.sleep(1)
        assert done(tmp_path, "builds") == Counter()
        status = json.loads(celery_cli(worker, "inspect", "pulse_status", "--json").stdout)
        queues = only_reply(status)["queues"]
        assert queues[builds]["state"] == "paused"
        assert queues[tests]["state"] == "consuming"
        assert "paused by remote control" in worker.log()

        # When it is resumed
        out = celery_cli(worker, "control", "pulse_resume", "builds")
        assert out.returncode == 0, out.stderr
        assert f"{builds}: resumed" in out.stdout

        # Then the backlog is handled, once each, and the status adds up
        assert wait_until(lambda: done(tmp_path, "builds") == Counter(range(5)), timeout=30), worker.log()
        assert wait_until(lambda: queue_info(pulse.vhost, builds) == (0, 0, 1), timeout=15)
        queues = only_reply(control.status(client(celery_broker), **ONE))["queues"]
        for name, count in ((builds, 5), (tests, 3)):
            q = queues[name]
            assert q["state"] == "consuming"
            assert (q["delivered"], q["acked"], q["in_flight"]) == (count, count, 0), q
            assert (q["rejected"], q["requeued"], q["dead_lettered"], q["redelivered"]) == (0, 0, 0, 0), q
        assert "resumed by remote control" in worker.log()
    finally:
        worker.stop()
    assert "Traceback" not in worker.log()


def test_deliveries_in_flight_when_paused_still_run_and_are_acked(pulse, celery_broker, tmp_path):
    # Given slow tasks acked on completion, several delivered and not finished
    worker = control_worker(pulse, celery_broker, tmp_path, ACK_POLICY="complete", TASK_SECONDS=5).start()
    builds = f"queue/{pulse.user}/builds"
    app = client(celery_broker)
    try:
        publish_to(pulse, "build", range(4))
        assert wait_until(lambda: len(started(tmp_path, "builds")) == 2, timeout=30), worker.log()

        # When the queue is paused
        reply = only_reply(control.pause(app, "builds", **ONE))
        assert reply == {"ok": [f"{builds}: paused; 4 deliveries in flight are still acked"]}
        publish_to(pulse, "build", range(10, 13))

        # Then the four run to the end and are acked on Pulse; the new three wait
        assert wait_until(lambda: done(tmp_path, "builds") == Counter(range(4)), timeout=60), worker.log()
        assert wait_until(lambda: queue_info(pulse.vhost, builds) == (3, 0, 0), timeout=15)
        q = only_reply(control.status(app, **ONE))["queues"][builds]
        assert (q["state"], q["delivered"], q["acked"], q["in_flight"]) == ("paused", 4, 4, 0), q
        assert not started(tmp_path, "builds") & {10, 11, 12}
    finally:
        worker.stop()
    assert "Traceback" not in worker.log()


def test_pause_survives_a_pulse_reconnect(pulse, celery_broker, tmp_path):
    worker = control_worker(pulse, celery_broker, tmp_path).start()
    builds, tests = f"queue/{pulse.user}/builds", f"queue/{pulse.user}/tests"
    app = client(celery_broker)
    try:
        # Given "builds" paused
        assert "ok" in only_reply(control.pause(app, "builds", **ONE))

        # When the Pulse connection is lost and comes back
        close_pulse_connections(pulse)
        assert worker.wait_for_log("Pulse connection lost", timeout=30), worker.log()
        assert worker.wait_for_log("Connected to Pulse", timeout=30, count=2), worker.log()
        assert f"{builds} -> control_app.on_build (paused by remote control)" in worker.log()

        # Then "builds" is still not consumed, "tests" is
        publish_to(pulse, "build", range(3))
        publish_to(pulse, "test", range(2))
        assert wait_until(lambda: done(tmp_path, "tests") == Counter(range(2)), timeout=30), worker.log()
        assert wait_until(lambda: queue_info(pulse.vhost, builds) == (3, 0, 0), timeout=15)
        status = only_reply(control.status(app, **ONE))
        assert status["connection"]["connects"] == 2
        assert status["connection"]["losses"] == 1
        assert "CONNECTION_FORCED" in status["connection"]["last_error"]
        assert status["queues"][builds]["state"] == "paused"
        assert status["queues"][tests]["state"] == "consuming"

        # and resuming after the reconnect picks up the backlog
        assert "ok" in only_reply(control.resume(app, "builds", **ONE))
        assert wait_until(lambda: done(tmp_path, "builds") == Counter(range(3)), timeout=30), worker.log()
    finally:
        worker.stop()
    assert "Traceback" not in worker.log()


def test_pause_with_no_queue_named_pauses_every_queue_and_the_state_says_so(pulse, celery_broker, tmp_path):
    worker = control_worker(pulse, celery_broker, tmp_path).start()
    app = client(celery_broker)
    try:
        reply = only_reply(control.pause(app, **ONE))
        assert len(reply["ok"]) == 2, reply
        status = only_reply(control.status(app, **ONE))
        assert status["connection"]["state"] == "connected"
        assert {q["state"] for q in status["queues"].values()} == {"paused"}
        publish_to(pulse, "build", [1])
        publish_to(pulse, "test", [2])
        for name in ("builds", "tests"):
            queue = f"queue/{pulse.user}/{name}"
            assert wait_until(lambda q=queue: queue_info(pulse.vhost, q) == (1, 0, 0), timeout=15)

        only_reply(control.resume(app, **ONE))
        assert wait_until(lambda: done(tmp_path, "tests") == Counter([2]), timeout=30), worker.log()
        assert wait_until(lambda: done(tmp_path, "builds") == Counter([1]), timeout=30), worker.log()
        assert only_reply(control.status(app, **ONE))["connection"]["state"] == "consuming"
    finally:
        worker.stop()


def test_delete_removes_the_queue_on_pulse_and_this_worker_does_not_declare_it_again(
    pulse, celery_broker, tmp_path
):
    # Given quorum queues, as in production, and messages waiting in "builds"
    worker = control_worker(pulse, celery_broker, tmp_path, PULSE_QUEUE_TYPE="quorum").start()
    builds, tests = f"queue/{pulse.user}/builds", f"queue/{pulse.user}/tests"
    app = client(celery_broker)
    try:
        only_reply(control.pause(app, "builds", **ONE))
        publish_to(pulse, "build", range(2))

        # When the operator deletes it from the shell
        out = celery_cli(worker, "control", "pulse_delete", "builds")

        # Then the reply says what happened and that a restart brings it back
        assert out.returncode == 0, out.stderr
        assert f"{builds}: deleted (2 ready messages dropped with it)" in out.stdout
        assert "a restart of the worker declares it again" in out.stdout
        assert queue_info(pulse.vhost, builds) is None
        assert queue_info(pulse.vhost, tests) is not None
        status = only_reply(control.status(app, **ONE))
        assert status["queues"][builds]["state"] == "deleted"
        assert "deleted by remote control" in worker.log()

        # and a reconnect does not declare it again, while "tests" is consumed as before
        close_pulse_connections(pulse)
        assert worker.wait_for_log("Connected to Pulse", timeout=30, count=2), worker.log()
        publish_to(pulse, "test", [7])
        assert wait_until(lambda: done(tmp_path, "tests") == Counter([7]), timeout=30), worker.log()
        assert queue_info(pulse.vhost, builds) is None
        reply = only_reply(control.resume(app, "builds", **ONE))
        assert reply == {
            "ok": [f"{builds}: deleted by remote control; a restart of the worker declares it again"]
        }
        assert queue_info(pulse.vhost, builds) is None
    finally:
        worker.stop()
    assert "Traceback" not in worker.log()

    # When the worker restarts, the queue is declared again: its bindings are in the code
    worker.start()
    try:
        assert wait_until(lambda: queue_info(pulse.vhost, builds) == (0, 0, 1), timeout=15)
    finally:
        worker.stop()


def test_commands_name_unknown_queues_and_need_a_queue_to_delete(pulse, celery_broker, tmp_path):
    worker = control_worker(pulse, celery_broker, tmp_path).start()
    app = client(celery_broker)
    try:
        reply = only_reply(control.pause(app, "nope", **ONE))
        assert "no Pulse queue 'nope'" in reply["error"]
        assert f"queue/{pulse.user}/builds" in reply["error"]
        out = celery_cli(worker, "control", "pulse_delete")
        assert "name the queue to delete" in out.stdout
        assert queue_info(pulse.vhost, f"queue/{pulse.user}/builds") is not None
    finally:
        worker.stop()


def test_a_no_pulse_worker_answers_that_pulse_is_off(pulse, celery_broker, tmp_path):
    worker = control_worker(pulse, celery_broker, tmp_path)
    worker.extra_args = ("--no-pulse",)
    worker.start(wait_for="ready.")
    try:
        assert "--no-pulse" in only_reply(control.status(client(celery_broker), **ONE))["error"]
        assert "--no-pulse" in only_reply(control.pause(client(celery_broker), **ONE))["error"]
    finally:
        worker.stop()


@pytest.mark.rabbitmq
def test_a_complete_queue_takes_celerys_prefetch_and_an_enqueue_queue_the_pulse_one(
    pulse, celery_broker, tmp_path
):
    # Given a prefork worker with 3 processes and a multiplier of 2, both queues under complete
    worker = control_worker(pulse, celery_broker, tmp_path, concurrency=3, ACK_POLICY="complete")
    worker.env["PREFETCH_MULTIPLIER"] = "2"
    worker.start()
    try:
        queues = only_reply(control.status(client(celery_broker), **ONE))["queues"]
        # Then each Pulse queue's prefetch is Celery's own: 3 x 2, known once the pool has started
        assert {q["prefetch"] for q in queues.values()} == {6}
    finally:
        worker.stop()
    # Given the same under enqueue, the hand-off's window applies
    worker.env["ACK_POLICY"] = "enqueue"
    worker.start()
    try:
        queues = only_reply(control.status(client(celery_broker), **ONE))["queues"]
        assert {q["prefetch"] for q in queues.values()} == {200}
    finally:
        worker.stop()
