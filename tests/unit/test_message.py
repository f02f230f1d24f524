"""Only plain JSON bodies are decoded; Pulse metadata travels with the task and back."""

from __future__ import annotations

import json

import pytest
from celery.app.task import Context

from pulse_celery import ContentRefused, PulseMessage, UndecodableBody, pulse_message
from pulse_celery.pulse.message import cc_routes, check_content, decode_body

LIMIT = 1024


def check(content_type="application/json", content_encoding="utf-8", headers=None, size=100):
    check_content(content_type, content_encoding, headers, size, LIMIT)


@pytest.mark.parametrize(
    "content_type",
    ["application/x-python-serialize", "application/x-yaml", "application/x-msgpack", "text/plain"],
)
def test_non_json_content_type_is_refused(content_type):
    with pytest.raises(ContentRefused, match="not JSON"):
        check(content_type=content_type)


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", None, ""])
def test_json_or_missing_content_type_is_accepted(content_type):
    check(content_type=content_type)


@pytest.mark.parametrize("content_encoding", ["utf-8", "UTF-8", None, "binary"])
def test_plain_content_encoding_is_accepted(content_encoding):
    check(content_encoding=content_encoding)


@pytest.mark.parametrize("content_encoding", ["gzip", "zlib", "deflate"])
def test_compressed_content_encoding_is_refused(content_encoding):
    with pytest.raises(ContentRefused, match="compressed"):
        check(content_encoding=content_encoding)


def test_compression_header_is_refused():
    with pytest.raises(ContentRefused, match="compressed"):
        check(headers={"compression": "application/x-gzip"})


def test_body_over_the_size_limit_is_refused():
    check(size=LIMIT)
    with pytest.raises(ContentRefused, match="pulse_max_body_size"):
        check(size=LIMIT + 1)


def test_real_taskcluster_message_decodes(task_completed):
    payload = decode_body(task_completed.body)
    assert payload["status"]["taskId"] == "B3EheQ-IQ5aPzw34KS_a6g"
    assert payload["status"]["runs"][0]["state"] == "completed"
    assert payload == json.loads(task_completed.body)


def test_str_body_decodes():
    assert decode_body('{"a": [1, 2]}') == {"a": [1, 2]}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"a": "\xff"}', id="invalid-utf8"),
        pytest.param(b'{"a": ', id="truncated-json"),
        pytest.param(b"\x80\x04K\x01.", id="pickle"),
        pytest.param(b"[" * 100_000, id="nested-100000-deep"),
        pytest.param(b"1" * 5000, id="5000-digit-integer"),
        pytest.param(b"", id="empty"),
    ],
)
def test_undecodable_body_is_refused(body):
    with pytest.raises(UndecodableBody):
        decode_body(body)


def test_cc_routes_reads_a_list():
    assert cc_routes({"CC": ["route.a", "route.b"]}) == ("route.a", "route.b")


def test_cc_routes_decodes_bytes_entries():
    assert cc_routes({"CC": [b"route.a", "route.b"]}) == ("route.a", "route.b")


def test_cc_routes_accepts_a_single_string():
    assert cc_routes({"CC": "route.a"}) == ("route.a",)


@pytest.mark.parametrize("headers", [None, {}, {"other": 1}, {"CC": []}])
def test_cc_routes_is_empty_without_a_cc_header(headers):
    assert cc_routes(headers) == ()


def meta(task_completed) -> PulseMessage:
    return PulseMessage(
        exchange=task_completed.exchange,
        routing_key=task_completed.routing_key,
        routes=task_completed.cc,
        redelivered=True,
        queue="queue/alice/builds",
    )


def test_pulse_message_round_trips_through_the_header(task_completed):
    original = meta(task_completed)
    header = json.loads(json.dumps(original.as_header()))  # as it travels in a JSON task message
    assert PulseMessage.from_header(header) == original


def test_routing_keys_lists_primary_key_then_routes(task_completed):
    assert meta(task_completed).routing_keys == (task_completed.routing_key, *task_completed.cc)


def test_pulse_message_reads_the_task_request(task_completed):
    request = Context(pulse=meta(task_completed).as_header())
    assert pulse_message(request) == meta(task_completed)


def test_pulse_message_is_none_for_a_request_without_the_header():
    assert pulse_message(Context(id="abc", args=[1])) is None


def test_pulse_message_is_none_outside_a_task():
    assert pulse_message() is None
