"""A Pulse message's stable id: the same for the same message, different for any other."""

from __future__ import annotations

import hashlib
import uuid
from struct import pack

from pulse_celery.pulse.identity import DERIVATION, message_id

EXCHANGE = "exchange/taskcluster-queue/v1/task-completed"
KEY = (
    "primary.B3EheQ-IQ5aPzw34KS_a6g.0.mdc2.t-mojave-r7-153.releng-hardware.gecko-t-osx-1014.gecko-level-3._._"
)
BODY = b'{"version":1,"runId":0,"status":{"taskId":"B3EheQ-IQ5aPzw34KS_a6g","state":"completed"}}'


def test_the_same_message_gets_the_same_id_every_time():
    assert message_id(EXCHANGE, KEY, BODY, "app.handle") == message_id(
        EXCHANGE, KEY, bytes(BODY), "app.handle"
    )


def test_the_id_is_a_version_8_uuid():
    parsed = uuid.UUID(message_id(EXCHANGE, KEY, BODY))
    assert parsed.version == 8
    assert parsed.variant == uuid.RFC_4122


def test_the_id_is_the_documented_derivation():
    def part(data: bytes) -> bytes:
        return pack(">Q", len(data)) + data

    digest = hashlib.sha256(
        part(DERIVATION) + part(b"app.handle") + part(EXCHANGE.encode()) + part(KEY.encode()) + part(BODY)
    ).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80
    raw[8] = (raw[8] & 0x3F) | 0x80
    assert message_id(EXCHANGE, KEY, BODY, "app.handle") == str(uuid.UUID(bytes=bytes(raw)))


def test_any_difference_in_exchange_routing_key_body_or_task_gives_another_id():
    base = message_id(EXCHANGE, KEY, BODY, "app.handle")
    assert message_id(EXCHANGE + "x", KEY, BODY, "app.handle") != base
    assert message_id(EXCHANGE, KEY + "x", BODY, "app.handle") != base
    assert message_id(EXCHANGE, KEY, BODY + b" ", "app.handle") != base
    assert message_id(EXCHANGE, KEY, BODY, "app.other") != base


def test_parts_are_length_prefixed_so_moving_a_boundary_changes_the_id():
    assert message_id("ab", "c", b"") != message_id("a", "bc", b"")
    assert message_id("a", "b", b"c") != message_id("a", "bc", b"")
