"""A Pulse delivery becomes a task-protocol-2 message carrying the Pulse metadata."""

from __future__ import annotations

from kombu.serialization import loads

from pulse_celery import PulseMessage
from pulse_celery.dispatch import build_task_message


def test_build_task_message_makes_a_protocol_2_message(app, task_completed):
    payload = {"status": {"taskId": "B3EheQ-IQ5aPzw34KS_a6g"}, "runId": 0}
    meta = PulseMessage(
        exchange=task_completed.exchange,
        routing_key=task_completed.routing_key,
        routes=task_completed.cc,
        redelivered=False,
        queue="queue/alice/builds",
    )
    message = build_task_message(app, "tasks.on_completed", payload, meta, origin="worker@host")

    assert message.headers["task"] == "tasks.on_completed"
    assert message.headers["id"] == message.task_id
    assert message.headers["pulse"] == {
        "exchange": task_completed.exchange,
        "routing_key": task_completed.routing_key,
        "routes": list(task_completed.cc),
        "redelivered": False,
        "queue": "queue/alice/builds",
    }
    assert isinstance(message.body, bytes)
    args, kwargs, embed = loads(message.body, message.content_type, message.content_encoding)
    assert (list(args), kwargs) == ([payload], {})
    assert set(embed) >= {"callbacks", "errbacks", "chain", "chord"}


def test_each_task_message_gets_its_own_id(app, task_completed):
    meta = PulseMessage(task_completed.exchange, task_completed.routing_key, (), False, "q")
    first = build_task_message(app, "tasks.t", {}, meta, origin="w")
    second = build_task_message(app, "tasks.t", {}, meta, origin="w")
    assert first.task_id != second.task_id
