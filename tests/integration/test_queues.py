"""Queues that fail alone, per-queue settings, bindings pruned between starts, pulse_connected.

One worker of ``queues_app`` (two named queues, ``builds`` and ``tests``, and an anonymous one)
on a Pulse-like vhost.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from kombu import Exchange

from pulse_celery.testing import _rabbitmqctl, publish

from .conftest import TASK_COMPLETED, TASK_FAILED
from .harness import app_worker, read_records, wait_until, worker_status

MISSING = "exchange/taskcluster-queue/v1/not-created-yet"
OTHER = "exchange/hgpushes/v1"


def queues_worker(pulse, celery_broker, tmp_path, **env):
    return app_worker("queues_app", pulse, celery_broker, tmp_path, concurrency=2, **env)


def done(tmp_path, queue):
    lines = read_records(tmp_path / "records.jsonl")
    return Counter(r["id"] for r in lines if r["event"] == "done" and r["queue"] == queue)


def connected_events(tmp_path):
    return [r for r in read_records(tmp_path / "records.jsonl") if r["event"] == "connected"]


def publish_to(pulse, exchange, kind, ids):
    with pulse.admin_connection() as conn:
        for i in ids:
            publish(conn, exchange, f"primary.{kind}.{i}", {"id": i})


def list_queues(vhost, *fields):
    out = _rabbitmqctl("list_queues", "-p", vhost, "name", *fields, "--formatter", "json")
    queues = {q["name"]: q for q in json.loads(out)}
    for q in queues.values():
        if "arguments" in q:  # [[name, type, value], ...]
            q["arguments"] = {name: value for name, _, value in q["arguments"]}
    return queues


def bindings_of(vhost, queue):
    out = _rabbitmqctl(
        "list_bindings", "-p", vhost, "source_name", "destination_name", "routing_key", "--formatter", "json"
    )
    return {(b["source_name"], b["routing_key"]) for b in json.loads(out) if b["destination_name"] == queue}


@pytest.mark.rabbitmq
def test_a_queue_bound_to_a_missing_exchange_fails_alone_and_catches_up_once_it_exists(
    pulse, celery_broker, tmp_path
):
    builds, tests = f"queue/{pulse.user}/builds", f"queue/{pulse.user}/tests"
    # Given a worker whose "builds" queue binds an exchange that does not exist yet
    worker = queues_worker(pulse, celery_broker, tmp_path, BUILDS_EXCHANGE=MISSING).start()
    try:
        # Then the other named queue consumes every message
        publish_to(pulse, TASK_COMPLETED, "test", range(200))
        assert wait_until(lambda: done(tmp_path, "tests") == Counter(range(200)), timeout=60), worker.log()
        # and pulse_status names the failing queue and why, while the rest consume
        status = worker_status(celery_broker)
        assert status["queues"][builds]["state"] == "failing", status
        assert "NOT_FOUND" in status["queues"][builds]["last_error"], status
        assert status["queues"][tests]["state"] == "consuming", status
        assert status["connection"]["state"] == "consuming", status
        assert status["connection"]["losses"] == 0, status

        # When the publisher creates the exchange
        with pulse.admin_connection() as conn:
            Exchange(MISSING, type="topic", durable=True).declare(channel=conn.default_channel)
        # Then "builds" is consumed within its backoff, and catches up
        assert wait_until(lambda: worker_status(celery_broker)["queues"][builds]["state"] == "consuming", 60)
        publish_to(pulse, MISSING, "build", range(100))
        assert wait_until(lambda: done(tmp_path, "builds") == Counter(range(100)), timeout=60), worker.log()
        assert done(tmp_path, "tests") == Counter(range(200))
        assert worker.alive
    finally:
        worker.stop()


@pytest.mark.rabbitmq
def test_per_queue_settings_show_in_the_queue_arguments_and_the_consumer_prefetch(
    pulse, celery_broker, tmp_path
):
    builds, tests = f"queue/{pulse.user}/builds", f"queue/{pulse.user}/tests"
    settings = {"builds": {"prefetch": 7, "max_length": 1000, "expires": 3600}}
    worker = queues_worker(pulse, celery_broker, tmp_path, PULSE_QUEUES=json.dumps(settings)).start()
    try:
        queues = list_queues(pulse.vhost, "arguments")
        assert queues[builds]["arguments"] == {"x-max-length": 1000, "x-expires": 3600000}, queues
        assert queues[tests]["arguments"] == {}, queues  # app-wide: no limit, no expiry
        out = _rabbitmqctl("list_consumers", "-p", pulse.vhost, "queue_name", "prefetch_count")
        prefetch = dict(line.split("\t") for line in out.splitlines())
        assert prefetch[builds] == "7" and prefetch[tests] == "200", prefetch
        # and the settings reach pulse_status too
        status = worker_status(celery_broker)
        assert status["queues"][builds]["prefetch"] == 7, status
    finally:
        worker.stop()


@pytest.mark.rabbitmq
def test_a_binding_dropped_between_two_starts_is_removed_and_its_messages_stop(
    pulse, celery_broker, tmp_path
):
    builds = f"queue/{pulse.user}/builds"
    with pulse.admin_connection() as conn:
        Exchange(OTHER, type="topic", durable=True).declare(channel=conn.default_channel)
    # Given a first version of the app that binds "builds" to two exchanges
    first = queues_worker(pulse, celery_broker, tmp_path, EXTRA_EXCHANGE=OTHER).start()
    try:
        assert (OTHER, "primary.#") in bindings_of(pulse.vhost, builds)
        publish_to(pulse, OTHER, "push", [1])
        assert wait_until(lambda: done(tmp_path, "builds") == Counter({1: 1}), timeout=30), first.log()
    finally:
        first.stop()

    # When the next version, without that binding, starts
    second = queues_worker(pulse, celery_broker, tmp_path).start()
    try:
        # Then the binding is gone from the queue, and that exchange's messages no longer arrive
        assert bindings_of(pulse.vhost, builds) == {("", builds), (TASK_COMPLETED, "primary.build.#")}
        publish_to(pulse, OTHER, "push", range(2, 12))
        publish_to(pulse, TASK_COMPLETED, "build", [100])
        assert wait_until(lambda: 100 in done(tmp_path, "builds"), timeout=30), second.log()
        assert done(tmp_path, "builds") == Counter({1: 1, 100: 1})
        assert list_queues(pulse.vhost, "messages")[builds]["messages"] == 0
        # and a third start, with nothing changed, removes nothing more
    finally:
        second.stop()
    third = queues_worker(pulse, celery_broker, tmp_path).start()
    try:
        assert bindings_of(pulse.vhost, builds) == {("", builds), (TASK_COMPLETED, "primary.build.#")}
    finally:
        third.stop()


@pytest.mark.rabbitmq
def test_pulse_connected_fires_on_the_first_connect_and_on_each_reconnect(pulse, celery_broker, tmp_path):
    worker = queues_worker(pulse, celery_broker, tmp_path).start()
    try:
        assert wait_until(lambda: len(connected_events(tmp_path)) == 1, timeout=30)
        [first] = connected_events(tmp_path)
        assert (first["source"], first["first"], first["reconnect"]) == ("default", True, False)
        names = {name: anonymous for name, anonymous in first["queues"]}
        assert names[f"queue/{pulse.user}/builds"] is False and names[f"queue/{pulse.user}/tests"] is False
        [anonymous] = [name for name, anon in names.items() if anon]

        # When the Pulse connection is closed by the broker
        for line in _rabbitmqctl("list_connections", "-p", pulse.vhost, "user", "pid").splitlines():
            user, pid = line.split("\t")
            if user == pulse.user:
                _rabbitmqctl("close_connection", pid, "test: Pulse connection closed")
        # Then the signal fires again, as a reconnect, with the anonymous queue's new name
        assert wait_until(lambda: len(connected_events(tmp_path)) == 2, timeout=60), worker.log()
        second = connected_events(tmp_path)[1]
        assert (second["first"], second["reconnect"]) == (False, True)
        renamed = [name for name, anon in second["queues"] if anon]
        assert len(renamed) == 1 and renamed != [anonymous]
        # and the anonymous queue consumes on the new connection
        publish_to(pulse, TASK_FAILED, "failed", [7])
        assert wait_until(lambda: done(tmp_path, "anonymous") == Counter({7: 1}), timeout=30), worker.log()
    finally:
        worker.stop()
