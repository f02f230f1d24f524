"""A Pulse delivery becomes a task-protocol-2 message carrying the Pulse metadata."""

from __future__ import annotations

import json

from kombu.serialization import loads

from pulse_celery import PulseMessage
from pulse_celery.worker.taskmessage import build_task_message


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


def test_a_templated_task_message_is_the_one_celery_builds_with_the_body_spliced_in(app, task_completed):
    from pulse_celery.worker.taskmessage import TaskTemplate

    payload = {"status": {"taskId": "B3EheQ-IQ5aPzw34KS_a6g", "runs": [{"runId": 0}]}, "note": '\u00e9 "q"'}
    raw_body = json.dumps(payload, indent=1, ensure_ascii=False).encode("utf-8")  # not Celery's own spacing
    meta = PulseMessage(task_completed.exchange, task_completed.routing_key, task_completed.cc, True, "q")
    template = TaskTemplate(app, "tasks.on_completed", origin="worker@host")
    first, second = template.build(raw_body, meta), template.build(raw_body, meta)
    general = build_task_message(app, "tasks.on_completed", payload, meta, origin="worker@host")

    assert first.task_id != second.task_id
    assert first.properties == {**general.properties, "correlation_id": first.task_id}
    assert first.headers == {**general.headers, "id": first.task_id, "root_id": first.task_id}
    assert first.headers["timelimit"] is not second.headers["timelimit"]  # no shared mutable parts
    assert loads(first.body, first.content_type, first.content_encoding) == loads(
        general.body, general.content_type, general.content_encoding
    )


def test_pre_encoded_properties_decode_to_what_py_amqp_would_send(app, task_completed):
    from amqp import Message as AmqpMessage

    from pulse_celery.worker.taskmessage import TaskTemplate, amqp_message

    meta = PulseMessage(task_completed.exchange, task_completed.routing_key, task_completed.cc, False, "q")
    message = TaskTemplate(app, "tasks.on_completed", origin="worker@host").build(b"{}", meta)
    assert message.encode_properties is not None
    plain = AmqpMessage(
        message.body,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        application_headers=message.headers,
        delivery_mode=2,
        **message.properties,
    )
    decoded, expected = AmqpMessage(), AmqpMessage()
    decoded._load_properties(60, amqp_message(message)._serialize_properties(), 0)
    expected._load_properties(60, plain._serialize_properties(), 0)
    assert decoded.properties == expected.properties
    assert decoded.properties["application_headers"]["pulse"]["routes"] == list(task_completed.cc)
    assert decoded.properties["correlation_id"] == message.task_id
