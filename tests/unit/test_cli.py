"""The line format of listen/replay and the bindings table, without a broker."""

from __future__ import annotations

import json

import pytest

from pulse_celery.bindings import Binding
from pulse_celery.cli.inspection import Check, QueueState, format_table, queue_rows
from pulse_celery.cli.sniffer import Outgoing, delivery_record, read_records
from pulse_celery.config import load_config
from pulse_celery.errors import PulseCeleryError
from pulse_celery.plan import plan_queues
from pulse_celery.pulse.message import RawDelivery

EXCHANGE = "exchange/taskcluster-queue/v1/task-completed"


def delivery(body: bytes, content_type: str | None = "application/json", **headers) -> RawDelivery:
    return RawDelivery(
        body=body,
        content_type=content_type,
        content_encoding="utf-8",
        headers=headers,
        delivery_info={"exchange": EXCHANGE, "routing_key": "primary.a.0", "redelivered": True},
        delivery_tag=1,
    )


def test_a_json_delivery_becomes_a_line_with_its_decoded_body_and_cc_routes():
    record = delivery_record(delivery(b'{"id": 1}', CC=[b"route.a", "route.b"]))
    assert record == {
        "exchange": EXCHANGE,
        "routing_key": "primary.a.0",
        "routes": ["route.a", "route.b"],
        "redelivered": True,
        "body": {"id": 1},
    }


@pytest.mark.parametrize(
    ("body", "content_type", "key", "value"),
    [
        (b"not json", "application/json", "body_text", "not json"),
        (b'{"a": 1}', "application/x-yaml", "body_text", '{"a": 1}'),
        (b"\xff\x00", "application/json", "body_base64", "/wA="),
    ],
)
def test_a_body_that_is_not_json_is_kept_undecoded_and_says_why(body, content_type, key, value):
    record = delivery_record(delivery(body, content_type))
    assert "body" not in record
    assert record[key] == value
    assert record["content_type"] == content_type
    assert record["body_error"]


@pytest.mark.parametrize(
    "raw",
    [
        delivery(b'{"id": 1, "s": "\xc3\xa9"}', CC=["route.x"]),
        delivery(b"null"),
        delivery(b"plain", "text/plain"),
        delivery(b"\x1f\x8b\x08", None),
    ],
)
def test_a_line_read_back_publishes_the_same_body_and_routes(raw):
    record = json.loads(json.dumps(delivery_record(raw)))
    (message,) = read_records([json.dumps(record)])
    assert (message.exchange, message.routing_key, message.routes) == (
        EXCHANGE,
        "primary.a.0",
        tuple(record["routes"]),
    )
    if "body" in record:
        assert message.body == json.loads(raw.body)
        assert message.content_type == "application/json"
    else:
        assert message.body == raw.body
        assert message.content_type == (raw.content_type or "application/octet-stream")


def test_exchange_override_replaces_the_recorded_exchange():
    (message,) = read_records(['{"exchange": "a", "routing_key": "k", "body": 1}'], exchange="b")
    assert message == Outgoing("b", "k", 1)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("{oops", "line 2 is not JSON"),
        ("[1]", "line 2: expected a JSON object"),
        ('{"routing_key": "k", "body": 1}', "line 2: no 'exchange'"),
        ('{"exchange": "e", "body": 1}', "line 2: no 'routing_key'"),
        ('{"exchange": "e", "routing_key": "k"}', "line 2: no 'body'"),
        (
            '{"exchange": "e", "routing_key": "k", "routes": "r", "body": 1}',
            "line 2: 'routes' must be a list",
        ),
        ('{"exchange": "e", "routing_key": "k", "body_base64": "**"}', "line 2: 'body_base64' is not valid"),
    ],
)
def test_a_bad_line_is_refused_with_its_number(line, error):
    good = '{"exchange": "e", "routing_key": "k", "body": {}}'
    with pytest.raises(PulseCeleryError, match=error.replace("[", r"\[")):
        list(read_records([good, line]))


def test_blank_lines_are_skipped():
    assert len(list(read_records(["", '{"exchange": "e", "routing_key": "k", "body": {}}', "  \n"]))) == 1


def test_table_has_one_aligned_row_per_binding_and_the_queue_state():
    config = load_config({"pulse_url": "amqp://alice:pw@127.0.0.1:5672/"}, environ={})
    plans = plan_queues(
        config,
        [
            Binding(EXCHANGE, "primary.#", "builds", task_name="app.build"),
            Binding("exchange/hgpushes/v1", "try", "builds", ack="complete", task_name="app.build"),
            Binding(EXCHANGE, "route.#", None, task_name="app.live"),
        ],
    )
    rows = queue_rows(config, plans, {"queue/alice/builds": QueueState(True, 12, 3)})
    lines = format_table(rows)
    assert [line.split() for line in lines[1:]] == [
        ["queue/alice/builds", EXCHANGE, "primary.#", "app.build", "enqueue", "exists", "12", "3"],
        ["queue/alice/builds", "exchange/hgpushes/v1", "try", "app.build", "complete", "exists", "12", "3"],
        ["anonymous", EXCHANGE, "route.#", "app.live", "enqueue", "per-connection", "-", "-"],
    ]
    columns = [lines[0].index(name) for name in ("EXCHANGE", "TASK", "STATE")]
    assert all(line[c - 2 : c] == "  " for line in lines for c in columns)
    offline = format_table(queue_rows(config, plans, None))
    assert offline[1].split()[5:] == ["?", "-", "-"]


def test_check_lines_start_with_ok_or_fail():
    assert Check("connection", True, "logged in").line() == "ok    connection: logged in"
    assert Check("exchange x", False, "missing -- fix").line() == "FAIL  exchange x: missing -- fix"


def test_check_fails_a_complete_binding_whose_task_acks_early_and_says_the_fix():
    from celery import Celery

    from pulse_celery import pulse_binding
    from pulse_celery.bindings import app_bindings
    from pulse_celery.cli.inspection import run_checks

    app = Celery("checked", broker="memory://", set_as_current=False)
    app.conf.pulse_url = "amqp://alice:secret@127.0.0.1:1/"  # nothing listens: the login check fails

    @pulse_binding("exchange/taskcluster-queue/v1/task-completed", "primary.#", queue="a", ack="complete")
    @app.task(name="checked.early")
    def early(payload):
        return payload

    @pulse_binding("exchange/taskcluster-queue/v1/task-failed", "primary.#", queue="b", ack="complete")
    @app.task(name="checked.late", acks_late=True)
    def late(payload):
        return payload

    checks = {c.name: c for c in run_checks(app.conf, app_bindings(app), app)}
    assert not checks["ack policies"].ok
    assert "checked.early" in checks["ack policies"].detail
    assert "acks_late=True" in checks["ack policies"].detail

    late_only = [b for b in app_bindings(app) if b.task_name == "checked.late"]
    checks = {c.name: c for c in run_checks(app.conf, late_only, app)}
    assert checks["ack policies"].ok
