"""Give every Pulse message a stable id: the same on every redelivery, on every worker.

The id is a UUID (RFC 9562 version 8, "custom") made from SHA-256 over, in this order::

    b"pulse-celery/message-id/v1"   the derivation's name and version
    scope                          the handler's name (the Celery task name; "" for none)
    exchange                       the exchange the message was published to
    routing key                    the delivery's routing key (the primary one, never a CC route)
    body                           the body, byte for byte as it came

each part preceded by its length as 8 bytes big-endian, strings encoded as UTF-8 (so no
two different tuples give the same bytes). The first 16 bytes of the digest are the UUID,
with its version nibble set to 8 and its variant bits to ``10``: 122 bits of the digest
remain, so distinct messages collide with odds of about n² / 2¹²³.

The scope keeps two handlers of one message (two tasks bound to the same exchange) apart:
same message, different work, different ids.

Limit: the id names the *content*, not the delivery. Two publications of byte-identical
bodies to the same exchange with the same routing key are the same message here. Taskcluster
messages carry taskId and runId in both the routing key and the body, so genuine repeats are
rare there; a publisher that sends the same body twice on purpose (a heartbeat, a ping) must
not be handled with dedupe on.
"""

from __future__ import annotations

import hashlib
from struct import pack

#: The derivation's name; a change of derivation gets a new name, so old and new ids never meet.
DERIVATION = b"pulse-celery/message-id/v1"


#: SHA-256 with the derivation's name already in: each id starts from a copy of it.
_START = hashlib.sha256(pack(">Q", len(DERIVATION)) + DERIVATION)


def message_id(exchange: str, routing_key: str, body: bytes, scope: str = "") -> str:
    """Return the message's stable id: a version-8 UUID string derived as the module says."""
    digest = _START.copy()
    for text in (scope, exchange, routing_key):
        data = text.encode("utf-8")
        digest.update(pack(">Q", len(data)))
        digest.update(data)
    # Fed as it is (bytes, bytearray or memoryview): hashing reads it without a copy.
    digest.update(pack(">Q", len(body)))
    digest.update(body)
    raw = bytearray(digest.digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
    raw[8] = (raw[8] & 0x3F) | 0x80  # variant 10 (RFC 9562)
    h = raw.hex()
    # str(uuid.UUID(bytes=raw)), without building the UUID object (a third of the cost)
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
