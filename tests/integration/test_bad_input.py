"""Bad input never crashes the worker and is never silently lost.

Given a running worker, when each kind of bad message arrives, followed by a good one,
then the bad one goes to the dead-letter store (with reason, exchange, routing key and
headers), is logged once, the good one is still handled, and the Pulse queue ends empty.
"""

from __future__ import annotations

import gzip
import pickle

import pytest
from kombu import Exchange

from pulse_celery.testing import publish
from pulse_celery.worker.deadletters import list_dead_letters

from .conftest import TASK_COMPLETED
from .harness import read_records, wait_until, worker_status
from .test_acks import done_ids, faults_worker, store_app

OTHER_EXCHANGE = "exchange/someone-else/v1/things"

BAD_INPUTS = [
    # (name, body, publish options, reason in the log)
    ("invalid-json", b'{"id": 1,', {}, "not valid JSON"),
    ("invalid-utf8", b'{"id": "\xff\xfe"}', {}, "not valid UTF-8"),
    ("pickle", pickle.dumps({"id": 3}), {"content_type": "application/x-python-serialize"}, "is not JSON"),
    (
        "gzip-header",
        gzip.compress(b'{"id": 4}'),
        {"headers": {"compression": "application/x-gzip"}},
        "compressed",
    ),
    ("gzip-encoding", gzip.compress(b'{"id": 5}'), {"content_encoding": "gzip"}, "compressed"),
    # 100 MB of zeros in 100 KB: refused before anything expands it
    (
        "gzip-bomb",
        gzip.compress(bytes(100_000_000)),
        {"headers": {"compression": "application/x-gzip"}},
        "compressed",
    ),
    ("yaml", b"id: 6\n", {"content_type": "application/x-yaml"}, "is not JSON"),
    ("oversized", b'{"id": 7, "pad": "' + b"x" * 1_100_000 + b'"}', {}, "over the"),
    ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, {}, "nested too deeply"),
    ("huge-integer", b'{"id": ' + b"9" * 5000 + b"}", {}, "not valid JSON"),
]


@pytest.mark.rabbitmq
@pytest.mark.parametrize("policy", ["enqueue", "complete"])
def test_each_bad_message_is_dead_lettered_and_logged_and_the_next_good_one_is_handled(
    pulse, celery_broker, tmp_path, policy
):
    worker = faults_worker(pulse, celery_broker, tmp_path, ACK_POLICY=policy).start()
    queue = f"queue/{pulse.user}/faults"
    try:
        with pulse.admin_connection() as conn:
            # A binding nobody declared in the app (left over, or added by hand).
            channel = conn.default_channel
            Exchange(OTHER_EXCHANGE, type="topic", durable=True).declare(channel=channel)
            channel.queue_bind(queue, OTHER_EXCHANGE, "#")
            good = []
            for n, (name, body, options, _) in enumerate(BAD_INPUTS):
                publish(conn, TASK_COMPLETED, f"primary.{name}.0", body, **options)
                publish(conn, TASK_COMPLETED, f"primary.good{n}.0", {"id": 100 + n})
                good.append(100 + n)
            publish(conn, OTHER_EXCHANGE, "primary.unknown-exchange.0", {"id": 6})
            publish(conn, TASK_COMPLETED, "primary.good-last.0", {"id": 199})
            good.append(199)

        assert wait_until(lambda: set(done_ids(tmp_path)) >= set(good), timeout=60), worker.log()
        assert wait_until(lambda: pulse.queue_counts(queue) == (0, 0), timeout=30), pulse.queue_counts(queue)
        assert worker.alive
    finally:
        worker.stop()

    assert done_ids(tmp_path) == {i: 1 for i in good}, "a bad message ran, or a good one ran twice"
    letters = {letter.routing_key: letter for letter in list_dead_letters(store_app(celery_broker))}
    assert sorted(letters) == sorted(
        [f"primary.{name}.0" for name, *_ in BAD_INPUTS] + ["primary.unknown-exchange.0"]
    )
    for name, body, options, reason in BAD_INPUTS:
        letter = letters[f"primary.{name}.0"]
        kept = body[: 1024 * 1024]  # pulse_max_body_size: an oversized body is kept in part
        assert (letter.exchange, letter.body, letter.queue) == (TASK_COMPLETED, kept, queue)
        assert (letter.body_size, letter.truncated) == (len(body), len(body) > len(kept))
        assert reason in letter.detail
        assert letter.content_type == options.get("content_type", "application/json")
    assert letters["primary.gzip-header.0"].headers["compression"] == "application/x-gzip"
    assert letters["primary.unknown-exchange.0"].reason == "no-binding"
    log = worker.log()
    rejections = [line for line in log.splitlines() if "Dead-lettered Pulse message" in line]
    assert len(rejections) == len(BAD_INPUTS) + 1, "\n".join(rejections)
    for name, _, _, reason in BAD_INPUTS:
        [line] = [r for r in rejections if f"primary.{name}.0" in r]
        assert TASK_COMPLETED in line and reason in line, line
    [line] = [r for r in rejections if "primary.unknown-exchange.0" in r]
    assert OTHER_EXCHANGE in line and "no binding" in line
    assert "Traceback" not in log


@pytest.mark.rabbitmq
def test_cc_route_that_is_not_utf8_is_read_with_replacement_and_does_not_stall_the_queue(
    pulse, celery_broker, tmp_path
):
    worker = faults_worker(pulse, celery_broker, tmp_path).start()
    try:
        with pulse.admin_connection() as conn:
            publish(conn, TASK_COMPLETED, "primary.odd-cc.0", {"id": 1}, headers={"CC": [b"route.\xff"]})
            publish(conn, TASK_COMPLETED, "primary.next.0", {"id": 2})
        assert wait_until(lambda: set(done_ids(tmp_path)) == {1, 2}, timeout=30), worker.log()
        # and the connection was never dropped over it
        connection = worker_status(celery_broker)["connection"]
    finally:
        worker.stop()
    [odd] = [r for r in read_records(tmp_path / "records.jsonl") if r["id"] == 1 and r["event"] == "done"]
    assert odd["routes"] == ["route.\ufffd"]
    assert (connection["connects"], connection["losses"]) == (1, 0), connection
