"""Build the Celery task message (protocol 2) that invokes a bound task with a Pulse payload.

:class:`TaskTemplate` is the hot path: the headers and properties that are the same for every
message of one task are computed once, through Celery's own ``as_task_v2``, and the Pulse
body, already checked to be JSON, is spliced into the message body as it came instead of
being encoded again. :func:`build_task_message` is the general path (dead-letter replay),
for a payload that is a Python object.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from struct import pack
from typing import Any

from amqp import Message as AmqpMessage
from amqp.serialization import dumps as amqp_dumps
from celery import Celery
from celery.utils import gen_unique_id
from kombu.serialization import dumps

from .. import _compat
from ..pulse.message import PulseMessage
from ..request import HEADER


@dataclass(frozen=True)
class TaskMessage:
    """A task message ready to publish: protocol-2 headers, properties and encoded body."""

    task_id: str
    headers: dict[str, Any]
    properties: dict[str, Any]
    body: bytes
    content_type: str
    content_encoding: str
    #: the AMQP content-header properties (headers included) as bytes, made without
    #: py-amqp's table encoder (see taskmessage.TaskTemplate); None: py-amqp encodes them
    encode_properties: Callable[[], bytes] | None = None


#: py-amqp's Message with its properties given encoded (None: py-amqp encodes them).
EncodedMessage = _compat.encoded_message_class()


def amqp_message(message: TaskMessage) -> AmqpMessage:
    """The py-amqp message that carries ``message`` (persistent)."""
    if message.encode_properties is not None and EncodedMessage is not None:
        return EncodedMessage(message.body, message.encode_properties())
    return AmqpMessage(
        message.body,
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        application_headers=message.headers,
        delivery_mode=2,
        **message.properties,
    )


def build_task_message(
    app: Celery, task_name: str, payload: Any, meta: PulseMessage, origin: str
) -> TaskMessage:
    """Return the task message that invokes ``task_name(payload)``, carrying ``meta`` as a header."""
    task_id = gen_unique_id()
    # argsrepr given: Celery's default is a saferepr of the whole payload, a third of the
    # hand-off's CPU time per message in the benchmark's profile.
    headers, properties, body, _ = app.amqp.as_task_v2(
        task_id,
        task_name,
        args=(payload,),
        kwargs={},
        origin=origin,
        argsrepr=meta.describe(),
        kwargsrepr="{}",
    )
    headers[HEADER] = meta.as_header()
    content_type, content_encoding, data = dumps(body, serializer="json")
    if isinstance(data, str):
        data = data.encode(content_encoding or "utf-8")
    return TaskMessage(task_id, headers, properties, data, content_type, content_encoding)


class TaskTemplate:
    """The messages of one bound task: built once, then filled in per Pulse message."""

    #: header entries that change from one message to the next
    PER_MESSAGE = ("id", "root_id", "argsrepr", HEADER)

    def __init__(
        self, app: Celery, task_name: str, origin: str, extra_headers: dict[str, Any] | None = None
    ) -> None:
        """``extra_headers``: fixed headers of every message of this template (e.g. dedupe's)."""
        headers, properties, body, _ = app.amqp.as_task_v2(
            "template", task_name, args=(None,), kwargs={}, origin=origin, argsrepr="", kwargsrepr="{}"
        )
        headers.update(extra_headers or {})
        self.headers = headers
        self.properties = properties
        _args, kwargs, embed = body
        # The body is ``[[payload], kwargs, embed]``: everything after the payload is fixed.
        self._tail = b"]," + json.dumps([kwargs, embed], separators=(",", ":"))[1:].encode()
        self._encoder: _PropertiesEncoder | None = _PropertiesEncoder(headers, properties, self.PER_MESSAGE)
        if EncodedMessage is None or not self._encoder.matches_py_amqp():
            _compat.warn_once(
                "properties-encoding",
                "task-message properties encoded here differ from py-amqp's: py-amqp encodes them "
                "for every publish (slower, same result); pulse_celery was checked with amqp 5.4",
            )
            self._encoder = None

    def build(self, json_body: bytes, meta: PulseMessage, task_id: str | None = None) -> TaskMessage:
        """Return the task message for a Pulse body that :func:`~.message.decode_body` accepted.

        ``json_body`` must be UTF-8 JSON: it goes into the message body byte for byte.
        ``task_id``: the message's stable id (:func:`~pulse_celery.pulse.identity.message_id`);
        None: a random one.
        """
        task_id = task_id or gen_unique_id()
        argsrepr = meta.describe()
        pulse = meta.as_header()
        headers = {
            **self.headers,
            "id": task_id,
            "root_id": task_id,
            "timelimit": list(self.headers["timelimit"]),
            "stamps": {},
            "argsrepr": argsrepr,
            HEADER: pulse,
        }
        properties = {**self.properties, "correlation_id": task_id}
        body = b"[[" + json_body + self._tail
        encoder = self._encoder
        if encoder is None:
            return TaskMessage(task_id, headers, properties, body, JSON, UTF8)

        def encode_properties() -> bytes:
            return encoder.encode(
                task_id, {"id": task_id, "root_id": task_id, "argsrepr": argsrepr, HEADER: pulse}
            )

        return TaskMessage(task_id, headers, properties, body, JSON, UTF8, encode_properties)


JSON, UTF8 = "application/json", "utf-8"


class _PropertiesEncoder:
    """Encode a task message's AMQP properties from pre-encoded fixed parts.

    py-amqp encodes the whole headers table (about twenty entries) for every publish, a
    sixth of the hand-off's CPU time in the benchmark's profile. Here the fixed entries are
    encoded once; per message only the few that change are, and the parts are joined.
    The layout is py-amqp's own (basic_message.Message.PROPERTIES order): flags, then
    content_type, content_encoding, application_headers, delivery_mode, correlation_id,
    reply_to. :meth:`matches_py_amqp` compares the result with py-amqp's own encoding once per
    task (the layout is py-amqp's internal), and a unit test checks that py-amqp decodes it
    to the same properties.
    """

    def __init__(
        self, headers: dict[str, Any], properties: dict[str, Any], per_message: tuple[str, ...]
    ) -> None:
        extra = set(properties) - {"correlation_id", "reply_to"}
        if extra:
            raise ValueError(f"task message properties {sorted(extra)} are not encoded here")
        self._fixed = {key: value for key, value in headers.items() if key not in per_message}
        self._per_message = per_message
        self._reply_to_text = properties.get("reply_to") or ""
        self._fixed_entries = _compat.table_entries(self._fixed)
        # Flags: from py-amqp, for a message with the same properties present.
        reference = _compat.serialized_properties(self._reference({}, "x"))
        self._head = reference[:2] + amqp_dumps(b"ss", [JSON, UTF8])
        self._delivery_mode = amqp_dumps(b"o", [2])
        self._reply_to = amqp_dumps(b"s", [properties.get("reply_to") or ""])

    def _reference(self, headers: dict[str, Any], correlation_id: str) -> AmqpMessage:
        return AmqpMessage(
            b"",
            content_type=JSON,
            content_encoding=UTF8,
            application_headers=headers,
            delivery_mode=2,
            correlation_id=correlation_id,
            reply_to=self._reply_to_text,
        )

    def matches_py_amqp(self) -> bool:
        """True when a sample message encodes to the very bytes py-amqp would send."""
        sample = {key: f"sample-{key}" for key in self._per_message}
        try:
            ours = self.encode("sample-id", sample)
            theirs = _compat.serialized_properties(self._reference({**self._fixed, **sample}, "sample-id"))
        except Exception:
            return False
        return ours == theirs

    def encode(self, correlation_id: str, per_message: dict[str, Any]) -> bytes:
        entries = self._fixed_entries + _compat.table_entries(per_message)
        return b"".join(
            (
                self._head,
                pack(">I", len(entries)),
                entries,
                self._delivery_mode,
                amqp_dumps(b"s", [correlation_id]),
                self._reply_to,
            )
        )
