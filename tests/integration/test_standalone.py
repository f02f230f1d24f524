"""The standalone PulseConnection against the real RabbitMQ: the Go client's API, with real faults."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
from collections import Counter
from typing import Any

import pytest
from kombu import Exchange

from pulse_celery import Delivery, PulseConnection
from pulse_celery.testing import publish, rabbitmqctl, taskcluster_message, wait_until

from .conftest import TASK_COMPLETED, TASK_FAILED
from .harness import ROOT, RetryingPublisher


def load_example() -> Any:
    """examples/standalone/watch.py, the README's standalone example, as a module."""
    spec = importlib.util.spec_from_file_location(
        "watch_example", ROOT / "examples" / "standalone" / "watch.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = load_example()

MISSING = "exchange/not-created-yet/v1/events"


class Collector:
    """What a callback saw, safe to read from the test's thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[Any] = []

    def __call__(self, item: Any) -> None:
        with self.lock:
            self.items.append(item)

    def __len__(self) -> int:
        with self.lock:
            return len(self.items)

    def snapshot(self) -> list[Any]:
        with self.lock:
            return list(self.items)


def events(exchanges: tuple[str, ...] = (TASK_COMPLETED, TASK_FAILED), first: int = 0) -> Any:
    """The i-th message: a task event for ``task<first + i>``, on the exchanges in turn."""

    def message(i: int) -> tuple[str, str, Any]:
        key, body = taskcluster_message(task_id=f"task{first + i:05d}")
        return exchanges[(first + i) % len(exchanges)], key, body

    return message


def publish_all(pulse: Any, ids: range, exchanges: tuple[str, ...] = (TASK_COMPLETED, TASK_FAILED)) -> None:
    publisher = RetryingPublisher(pulse, len(ids), message=events(exchanges, first=ids.start))
    publisher.start()
    publisher.join(120)
    assert publisher.sent == len(ids)


def task_ids(lines: list[str]) -> Counter[str]:
    return Counter(line.split()[0] for line in lines)


def connect(pulse: Any, **settings: Any) -> PulseConnection:
    settings.setdefault("heartbeat", 10)
    return PulseConnection(url=pulse.url, **settings)


@pytest.mark.rabbitmq
def test_readme_example_survives_a_broker_restart_pauses_and_is_not_blocked_by_a_missing_exchange(pulse):
    # Given the README's watcher on its named queue with two bindings, and a second queue on
    # the same connection bound to an exchange that does not exist yet
    lines, other = Collector(), Collector()
    with connect(pulse) as conn:
        resolved = example.watch(conn, out=lines)
        second = conn.consume(
            "second", lambda payload, delivery: other(payload), bindings=[(MISSING, "primary.#")]
        )
        conn.start()
        assert resolved.wait_consuming(30) is None
        # Then the second queue is refused and retried on its own, and says why
        assert "does not exist" in (second.wait_consuming(30) or "")
        assert second.state == "failing"

        # When 600 events flow and the broker restarts in the middle of them
        publisher = RetryingPublisher(pulse, 600, message=events())
        publisher.start()
        assert wait_until(lambda: len(lines) >= 150, timeout=60), len(lines)
        rabbitmqctl("stop_app")
        time.sleep(1)
        rabbitmqctl("start_app")
        rabbitmqctl("await_startup")
        publisher.join(180)
        assert publisher.sent == 600
        # Then every event is printed, and the queue ends empty
        assert wait_until(
            lambda: set(task_ids(lines.snapshot())) == {f"task{i:05d}" for i in range(600)}, 120
        )
        assert wait_until(lambda: pulse.queue_counts(resolved.name) == (0, 0), timeout=30)
        assert conn.status()["connection"]["losses"] >= 1

        # When the watcher is paused and 50 more events are published
        assert resolved.pause() == 0
        seen = len(lines)
        publish_all(pulse, range(600, 650))
        # Then none is delivered: they wait in the queue
        time.sleep(2)
        assert len(lines) == seen
        assert wait_until(lambda: pulse.queue_counts(resolved.name) == (50, 0), timeout=10)
        assert len(lines) == seen
        # and after resume they all come
        resolved.resume()
        assert wait_until(lambda: len(set(task_ids(lines.snapshot()))) == 650, timeout=60)

        # When the missing exchange is created, the second queue catches up
        with pulse.admin_connection() as admin:
            Exchange(MISSING, type="topic", durable=True).declare(channel=admin.default_channel)
        assert second.wait_consuming(60) is None or wait_until(lambda: second.state == "consuming", 60)
        publish_all(pulse, range(10), exchanges=(MISSING,))
        assert wait_until(lambda: len(other) == 10, timeout=30)
        duplicates = sum(task_ids(lines.snapshot()).values()) - 650
    # At most the prefetch (20) can come twice from one restart
    assert duplicates <= 20


@pytest.mark.rabbitmq
def test_pause_from_a_callback_stops_deliveries_and_the_message_in_flight_is_still_acked(pulse):
    seen = Collector()
    in_flight_at_pause: list[int] = []

    def on_message(payload: Any, delivery: Delivery) -> None:
        seen(payload["status"]["taskId"])
        if len(seen) == 5:
            in_flight_at_pause.append(queue.pause())

    with connect(pulse) as conn:
        queue = conn.consume("pausing", on_message, prefetch=10, bindings=[(TASK_COMPLETED, "primary.#")])
        conn.start()
        assert queue.wait_consuming(30) is None
        publish_all(pulse, range(40), exchanges=(TASK_COMPLETED,))
        assert wait_until(lambda: len(seen) >= 5, timeout=30)
        time.sleep(2)
        # Then nothing more was delivered; the fifth, in flight when paused, was acked; the
        # prefetched ones went back to the queue
        assert len(seen) == 5
        assert in_flight_at_pause == [1]
        assert queue.state == "paused"
        assert wait_until(lambda: pulse.queue_counts(queue.name) == (35, 0), timeout=10)
        queue.resume()
        assert wait_until(lambda: len(set(seen.snapshot())) == 40, timeout=30)
        assert wait_until(lambda: pulse.queue_counts(queue.name) == (0, 0), timeout=10)


@pytest.mark.rabbitmq
def test_close_stops_consuming_and_leaves_the_named_queue_with_its_messages(pulse):
    seen = Collector()
    with connect(pulse) as conn:
        queue = conn.consume("closing", lambda p, d: seen(p), bindings=[(TASK_COMPLETED, "primary.#")])
        conn.start()
        assert queue.wait_consuming(30) is None
        publish_all(pulse, range(5), exchanges=(TASK_COMPLETED,))
        assert wait_until(lambda: len(seen) == 5, timeout=30)
        queue.close()
        assert queue.state == "closed"
        publish_all(pulse, range(5, 12), exchanges=(TASK_COMPLETED,))
        time.sleep(1)
        assert len(seen) == 5
        assert wait_until(lambda: pulse.queue_counts(queue.name) == (7, 0), timeout=10)
        assert len(seen) == 5
        assert conn.state == "connected"  # the connection stays up for the other queues


@pytest.mark.rabbitmq
def test_delete_removes_the_queue_and_its_bindings(pulse):
    with connect(pulse) as conn:
        queue = conn.consume(
            "deleting",
            lambda p, d: None,
            bindings=[(TASK_COMPLETED, "primary.#"), (TASK_FAILED, "primary.#")],
        )
        conn.start()
        assert queue.wait_consuming(30) is None
        name = queue.name
        assert name in rabbitmqctl("list_bindings", "-p", pulse.vhost, "destination_name")
        queue.pause()
        publish_all(pulse, range(3), exchanges=(TASK_FAILED,))
        assert wait_until(lambda: pulse.queue_counts(name) == (3, 0), timeout=10)
        assert queue.delete() == "3 ready messages dropped with it"
        assert pulse.queue_counts(name) is None
        assert name not in rabbitmqctl("list_bindings", "-p", pulse.vhost, "destination_name")
        assert queue.state == "deleted"
        time.sleep(1)
        assert pulse.queue_counts(name) is None  # not declared again behind our back


@pytest.mark.rabbitmq
def test_a_message_that_fails_every_time_goes_to_on_failure_after_max_deliveries_and_others_go_on(pulse):
    attempts: Counter[str] = Counter()
    given_up = Collector()

    def on_message(payload: Any, delivery: Delivery) -> None:
        task_id = payload["status"]["taskId"]
        attempts[task_id] += 1
        if task_id == "task00003":
            raise RuntimeError("downstream says no")

    with connect(pulse, max_deliveries=4) as conn:
        queue = conn.consume(
            "failing",
            on_message,
            bindings=[(TASK_COMPLETED, "primary.#")],
            on_failure=lambda delivery, exc: given_up((delivery.routing_key, repr(exc))),
        )
        conn.start()
        assert queue.wait_consuming(30) is None
        publish_all(pulse, range(10), exchanges=(TASK_COMPLETED,))
        with pulse.admin_connection() as admin:  # bad input: never decoded, never retried
            publish(admin, TASK_COMPLETED, "primary.bad.0", b"<xml/>", content_type="application/xml")
        assert wait_until(lambda: len(given_up) == 2, timeout=30)
        assert wait_until(lambda: pulse.queue_counts(queue.name) == (0, 0), timeout=10)
        status = queue.status()
    assert attempts["task00003"] == 4
    assert all(attempts[f"task{i:05d}"] == 1 for i in range(10) if i != 3)
    assert sorted(key.split(".")[1] for key, _ in given_up.snapshot()) == ["bad", "task00003"]
    assert status["requeued"] == 3 and status["rejected"] == 2


@pytest.mark.rabbitmq
def test_go_style_bindings_and_an_anonymous_queue_that_dies_with_the_connection(pulse):
    class GoBinding:  # the Go client's Binding interface
        def ExchangeName(self) -> str:
            return TASK_COMPLETED

        def RoutingKey(self) -> str:
            return "primary.#"

    seen = Collector()
    with connect(pulse) as conn:
        queue = conn.consume("", lambda p, d: seen((p, d.redelivered, d.routes)), bindings=[GoBinding()])
        conn.start()
        assert queue.wait_consuming(30) is None
        name = queue.name
        assert name.startswith(f"queue/{pulse.user}/anonymous.")
        assert f"{name}\ttrue" in rabbitmqctl("list_queues", "-p", pulse.vhost, "name", "exclusive")
        key, body = taskcluster_message()
        with pulse.admin_connection() as admin:
            publish(admin, TASK_COMPLETED, key, body, routes=["route.index.x"])
        assert wait_until(lambda: len(seen) == 1, timeout=30)
    assert seen.snapshot() == [(body, False, ("route.index.x",))]
    assert wait_until(lambda: pulse.queue_counts(name) is None, timeout=10)


@pytest.mark.rabbitmq
def test_queue_deleted_by_guardian_is_declared_again_and_consumption_goes_on(pulse):
    seen = Collector()
    with connect(pulse) as conn:
        queue = conn.consume("guarded", lambda p, d: seen(p), bindings=[(TASK_COMPLETED, "primary.#")])
        conn.start()
        assert queue.wait_consuming(30) is None
        with pulse.admin_connection() as admin:
            admin.default_channel.queue_delete(queue.name)
        assert wait_until(
            lambda: pulse.queue_counts(queue.name) is not None and queue.state == "consuming", 30
        )
        publish_all(pulse, range(5), exchanges=(TASK_COMPLETED,))
        assert wait_until(lambda: len(seen) == 5, timeout=30)
        assert "deleted under" in (queue.status()["last_error"] or "")


@pytest.mark.rabbitmq
def test_bad_credentials_are_reported_by_wait_consuming_without_the_password(pulse):
    # The explicit password wins over the one in the URL (the Go client's rule)
    with PulseConnection(password="wrong-secret", url=pulse.url) as conn:
        queue = conn.consume("nope", lambda p, d: None, bindings=[(TASK_COMPLETED, "primary.#")])
        conn.start()
        problem = queue.wait_consuming(30) or ""
    assert "ACCESS_REFUSED" in problem and "wrong-secret" not in problem


@pytest.mark.rabbitmq
def test_a_queues_own_length_and_expiry_are_its_arguments_and_a_dropped_binding_is_removed(pulse):
    # Given a first run that binds "pruned" to two exchanges, with its own x-max-length and x-expires
    with connect(pulse) as conn:
        first = conn.consume(
            "pruned",
            lambda p, d: None,
            bindings=[(TASK_COMPLETED, "primary.#"), (TASK_FAILED, "primary.#")],
            max_length=500,
            expires=3600,
        )
        conn.start()
        assert first.wait_consuming(30) is None
        name = first.name
    out = rabbitmqctl("list_queues", "-p", pulse.vhost, "name", "arguments", "--formatter", "json")
    [arguments] = [q["arguments"] for q in json.loads(out) if q["name"] == name]
    assert {key: value for key, _, value in arguments} == {
        "x-queue-type": "quorum",
        "x-max-length": 500,
        "x-expires": 3600000,
    }

    # When the next run consumes it without the task-failed binding
    received = Collector()
    with connect(pulse) as conn:
        second = conn.consume(
            "pruned",
            lambda p, d: received(d.exchange),
            bindings=[(TASK_COMPLETED, "primary.#")],
            max_length=500,
            expires=3600,
        )
        conn.start()
        assert second.wait_consuming(30) is None
        # Then only the remaining binding is on the queue, and task-failed messages stop arriving
        bound = rabbitmqctl("list_bindings", "-p", pulse.vhost, "source_name", "destination_name")
        sources = {line.split("\t")[0] for line in bound.splitlines() if line.endswith("\t" + name)}
        assert sources == {"", TASK_COMPLETED}, bound
        publish_all(pulse, range(10))  # task-completed and task-failed in turn
        assert wait_until(lambda: len(received) >= 5, timeout=30)
        time.sleep(0.5)
        assert Counter(received.snapshot()) == Counter({TASK_COMPLETED: 5})
