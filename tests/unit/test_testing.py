"""What pulse_celery.testing gives users for tests with no broker: a fake connection, bound tasks run here."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest

from pulse_celery import Delivery, NoMatchingBinding, PayloadMismatch, pulse_binding, pulse_message
from pulse_celery.pulse.identity import message_id
from pulse_celery.testing import FakePulseConnection, apply_task, deliver, taskcluster_message

COMPLETED = "exchange/taskcluster-queue/v1/task-completed"
FAILED = "exchange/taskcluster-queue/v1/task-failed"


# -- FakePulseConnection: the callbacks run as with the real connection ------------------------


def test_a_published_message_reaches_the_callback_of_each_matching_queue_once_and_is_acked():
    conn = FakePulseConnection(user="alice")
    seen: list[tuple[str, Any, tuple[str, ...]]] = []
    builds = conn.consume(
        "builds",
        lambda payload, delivery: seen.append((delivery.queue, payload, delivery.routes)),
        bindings=[(COMPLETED, "primary.#"), (COMPLETED, "route.index.#")],
    )
    other = conn.consume(
        "",
        lambda payload, delivery: seen.append((delivery.queue, payload, ())),
        bindings=[(FAILED, "#")],
        all_messages=True,
    )

    assert conn.publish(COMPLETED, "primary.a.0", {"n": 1}, routes=["route.index.x"]) == 1
    assert seen == [("queue/alice/builds", {"n": 1}, ("route.index.x",))]
    assert (builds.delivered, builds.acked, other.delivered) == (1, 1, 0)
    assert other.name.startswith("queue/alice/anonymous.")


def test_a_failing_callback_is_retried_then_handed_to_on_failure_and_its_message_dropped():
    conn = FakePulseConnection(user="alice", max_deliveries=3)
    calls: list[bool] = []
    given_up: list[tuple[str, str]] = []

    def on_message(payload: Any, delivery: Delivery) -> None:
        calls.append(delivery.redelivered)
        raise RuntimeError("no")

    queue = conn.consume(
        "q",
        on_message,
        bindings=[(COMPLETED, "primary.#")],
        on_failure=lambda delivery, exc: given_up.append((delivery.routing_key, str(exc))),
    )
    conn.publish(COMPLETED, "primary.a.0", {})
    assert calls == [False, True, True]
    assert given_up == [("primary.a.0", "no")]
    assert (queue.requeued, queue.rejected, queue.acked) == (2, 1, 0)


def test_bad_input_never_reaches_the_callback():
    conn = FakePulseConnection(user="alice")
    called: list[Any] = []
    refused: list[str] = []
    queue = conn.consume(
        "q",
        lambda payload, delivery: called.append(payload),
        bindings=[(COMPLETED, "primary.#")],
        on_failure=lambda delivery, exc: refused.append(type(exc).__name__),
    )
    conn.publish(COMPLETED, "primary.a.0", body=b"<xml/>", content_type="application/xml")
    conn.publish(COMPLETED, "primary.b.0", body=b"{not json")
    assert called == []
    assert refused == ["ContentRefused", "UndecodableBody"]
    assert queue.rejected == 2


def test_a_paused_queue_keeps_messages_until_resumed_and_a_closed_one_takes_none():
    conn = FakePulseConnection(user="alice")
    seen: list[int] = []
    queue = conn.consume(
        "q", lambda payload, delivery: seen.append(payload["n"]), bindings=[(COMPLETED, "primary.#")]
    )
    queue.pause()
    conn.publish(COMPLETED, "primary.a.0", {"n": 1})
    assert seen == [] and len(queue.ready) == 1
    queue.resume()
    assert seen == [1]
    queue.close()
    assert conn.publish(COMPLETED, "primary.a.0", {"n": 2}) == 0
    assert seen == [1]


def test_a_callback_that_settles_its_delivery_itself_is_not_acked_twice():
    conn = FakePulseConnection(user="alice")
    queue = conn.consume(
        "q",
        lambda payload, delivery: delivery.reject(requeue=False),
        bindings=[(COMPLETED, "#")],
        all_messages=True,
    )
    conn.publish(COMPLETED, "x", {})
    assert (queue.acked, queue.rejected) == (0, 1)


def test_typed_payloads_and_go_style_bindings_work_with_the_fake():
    @dataclass
    class Event:
        n: int

    class GoBinding:
        def ExchangeName(self) -> str:
            return COMPLETED

        def RoutingKey(self) -> str:
            return "primary.#"

    conn = FakePulseConnection(user="alice")
    seen: list[Event] = []
    refused: list[str] = []
    conn.consume(
        "q",
        lambda payload, delivery: seen.append(payload),
        bindings=[GoBinding()],
        payload=Event,
        on_failure=lambda delivery, exc: refused.append(type(exc).__name__),
    )
    conn.publish(COMPLETED, "primary.a.0", {"n": 1})
    conn.publish(COMPLETED, "primary.a.0", {"n": "one"})
    assert seen == [Event(1)]
    assert refused == ["PayloadMismatch"]


def test_a_delivery_has_the_same_message_id_on_every_redelivery_and_another_for_another_body():
    conn = FakePulseConnection(user="alice", max_deliveries=3)
    ids: list[tuple[str, bytes]] = []

    def on_message(payload: Any, delivery: Delivery) -> None:
        ids.append((delivery.message_id, delivery.body))
        if not delivery.redelivered:
            raise RuntimeError("once")

    conn.consume("q", on_message, bindings=[(COMPLETED, "primary.#")])
    conn.publish(COMPLETED, "primary.a.0", {"n": 1})
    conn.publish(COMPLETED, "primary.a.0", {"n": 2})
    (first, body), (again, _), (other, _), (other_again, _) = ids
    assert first == again != other == other_again
    assert first == message_id(COMPLETED, "primary.a.0", body)
    assert str(uuid.UUID(first)) == first and uuid.UUID(first).version == 8


# -- a bound Celery task run here with its Pulse metadata ---------------------------------------


@dataclass
class Resolved:
    runId: int
    status: dict[str, Any]


def typed_app(app: Any) -> Any:
    @pulse_binding(COMPLETED, "primary.#", queue="builds", payload=Resolved)
    @app.task(bind=True, name="tasks.on_completed", shared=False)
    def on_completed(self: Any, payload: Resolved) -> tuple[str, int, str, tuple[str, ...], bool]:
        meta = pulse_message()
        assert meta is not None and pulse_message(self.request) == meta
        key = meta.taskcluster
        assert key is not None
        return type(payload).__name__, payload.runId, key["taskId"], key.routes, meta.redelivered

    return on_completed


def test_deliver_runs_the_bound_task_with_its_pulse_metadata_and_typed_payload(app):
    typed_app(app)
    key, body = taskcluster_message(task_id="abcdefghijklmnopqrstuv")
    result = deliver(app, COMPLETED, key, body, routes=["route.index.x"], redelivered=True)
    assert result.get() == ("Resolved", 0, "abcdefghijklmnopqrstuv", ("index.x",), True)


def test_deliver_refuses_what_the_worker_would_refuse(app):
    typed_app(app)
    key, body = taskcluster_message()
    with pytest.raises(NoMatchingBinding):
        deliver(app, FAILED, key, body)
    with pytest.raises(PayloadMismatch):
        deliver(app, COMPLETED, key, {**body, "runId": "zero"})


def test_apply_task_runs_the_named_task_and_the_request_carries_the_queue(app):
    @app.task(bind=True, shared=False)
    def where(self: Any, payload: Any) -> str:
        meta = pulse_message()
        assert meta is not None
        return f"{meta.queue} {meta.exchange} {meta.routing_key} {payload}"

    result = apply_task(where, 7, exchange=COMPLETED, routing_key="primary.x", queue="queue/alice/q")
    assert result.get() == f"queue/alice/q {COMPLETED} primary.x 7"
