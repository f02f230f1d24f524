"""The loop's wire layer over a socketpair: frames in, frames out, heartbeats, errors, fallbacks.

The client is a real py-amqp connection; the broker is a script on the other end of a
socketpair (``amqp_peer``) that writes frames and reads what the client sent. The loop is
driven by hand: ``_on_readable`` is what the hub calls when the socket is readable, and
``run_until`` turns a real kombu Hub for what the connection schedules on it.

The TLS tests run a real TLS session over the pair: py-amqp's own ``SSLTransport`` on the
client's end, verifying a certificate made here with the ``openssl`` command line, and a peer
that makes its TLS records in memory, so a test decides where a record begins and ends.
"""

from __future__ import annotations

import logging
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amqp
import amqp.connection
import amqp.method_framing
import amqp.serialization
import pytest
from amqp import spec
from amqp.exceptions import ConnectionForced, NotFound
from amqp_peer import (
    KombuConnection,
    Peer,
    SocketConnection,
    SocketTransport,
    TLSPeer,
    TLSSocketTransport,
    connect,
    connect_tls,
    consume,
    delivery,
    heartbeat,
    method,
    method_args,
    methods,
    open_channel,
    parse_frames,
)
from kombu.asynchronous import Hub

from pulse_celery import _compat
from pulse_celery.pulse.wire import (
    MAX_FRAMES_PER_READ,
    READ_AHEAD_TLS,
    LoopConnection,
    error_channel,
)

CONSUMER_TAG = "ctag"


def body_of(tag: int) -> bytes:
    return b"body %04d" % tag  # one length for every tag


def deliveries(*tags: int, channel: int = 1) -> bytes:
    return b"".join(delivery(channel, CONSUMER_TAG, tag, body_of(tag)) for tag in tags)


def acked_tags(data: bytes) -> list[int]:
    return [method_args(payload, "Lb")[0] for _, sig, payload in methods(data) if sig == spec.Basic.Ack]


@dataclass
class Wire:
    """One py-amqp connection consuming on channel 1, its peer, and the loop connection over it."""

    connection: SocketConnection
    transport: SocketTransport | TLSSocketTransport
    peer: Peer
    hub: Hub
    channel: Any = None
    loop: Any = None
    delivered: list[int] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    lost: list[BaseException] = field(default_factory=list)
    #: called with each message after it is recorded
    on_delivery: Callable[[amqp.Message], None] | None = None

    def on_message(self, message: amqp.Message) -> None:
        self.delivered.append(message.delivery_tag)
        self.bodies.append(message.body)
        if self.on_delivery is not None:
            self.on_delivery(message)

    def attach(self) -> LoopConnection:
        self.loop = LoopConnection(KombuConnection(self.connection), self.hub, self.lost.append, "test")
        self.loop.attach()
        return self.loop

    def readable(self) -> None:
        """What the hub does when the socket is readable."""
        self.loop._on_readable()

    def close(self) -> None:
        # The peer first: over TLS, py-amqp's close waits for the peer's close_notify otherwise.
        self.peer.close()
        if self.loop is not None:
            self.loop.close()
        self.connection.collect()
        self.connection.given_sock.close()


@pytest.fixture
def hub() -> Iterator[Hub]:
    hub = Hub()
    yield hub
    hub.close()


@pytest.fixture
def new_wire(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Wire]]:
    """Make a consuming connection (not attached yet: a test may take an internal away first)."""
    # A synchronous call the peer never answers fails in seconds, not in 30.
    monkeypatch.setattr(LoopConnection, "SYNC_TIMEOUT", 5.0)
    made: list[Wire] = []

    def make(heartbeat: int = 0) -> Wire:
        connection, peer = connect(heartbeat)
        wire = Wire(connection, connection.transport, peer, hub)
        made.append(wire)
        wire.channel = open_channel(connection, peer, 1)
        consume(wire.channel, peer, CONSUMER_TAG, wire.on_message)
        return wire

    yield make
    for wire in made:
        wire.close()


@pytest.fixture
def wire(new_wire: Callable[..., Wire]) -> Wire:
    wire = new_wire()
    wire.attach()
    return wire


@pytest.fixture
def compat_warnings(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> Callable[[], list[str]]:
    """The WARNINGs of ``_compat``, logged afresh in this test (``warn_once`` forgets earlier ones)."""
    monkeypatch.setattr(_compat, "_warned", set())
    caplog.set_level(logging.WARNING, logger=_compat.__name__)

    def logged() -> list[str]:
        return [
            record.getMessage()
            for record in caplog.records
            if record.name == _compat.__name__ and record.levelno == logging.WARNING
        ]

    return logged


def run_until(hub: Hub, done: Callable[[], bool], timeout: float = 5.0) -> None:
    """Turn the hub (ready callbacks, timers, readable sockets) until ``done()``."""
    deadline = time.monotonic() + timeout
    keep_turning = hub.call_repeatedly(0.01, lambda: None)  # each poll waits 10 ms, not 1 s
    try:
        while not done():
            assert time.monotonic() < deadline, "timed out turning the hub"
            hub.run_once()
    finally:
        keep_turning.cancel()


# -- frames in ---------------------------------------------------------------------------------


def test_a_delivery_split_at_any_byte_is_dispatched_once_when_its_last_byte_arrives(wire: Wire) -> None:
    size = len(deliveries(1))
    for tag, split in enumerate(range(1, size), start=1):
        data = deliveries(tag)
        wire.peer.send(data[:split])
        wire.readable()
        assert wire.delivered == list(range(1, tag))  # nothing yet

        wire.peer.send(data[split:])
        wire.readable()
        assert wire.delivered == list(range(1, tag + 1))
        assert wire.bodies[-1] == body_of(tag)

    wire.readable()  # nothing left over to dispatch twice
    assert wire.delivered == list(range(1, size))
    assert wire.lost == []


def test_fifty_deliveries_written_at_once_are_all_delivered_by_one_read_in_order(wire: Wire) -> None:
    tags = list(range(1, 51))
    wire.peer.send(deliveries(*tags))

    wire.readable()

    assert wire.delivered == tags
    assert wire.bodies == [body_of(tag) for tag in tags]
    assert wire.lost == []


def test_more_frames_than_one_read_handles_are_delivered_on_later_turns_of_the_loop_in_order(
    wire: Wire, hub: Hub
) -> None:
    tags = list(range(1, 301))  # 900 frames, about 24 KB: more than one read takes
    wire.peer.send(deliveries(*tags))

    wire.readable()
    assert 0 < len(wire.delivered) <= MAX_FRAMES_PER_READ // 3  # the loop gets its turn back

    run_until(hub, lambda: len(wire.delivered) >= len(tags))
    assert wire.delivered == tags
    assert wire.lost == []


# -- heartbeats --------------------------------------------------------------------------------


def test_heartbeat_frames_between_and_inside_deliveries_are_accepted_and_change_nothing(wire: Wire) -> None:
    first = deliveries(1)
    method_frame, header_frame, body_frame = parse_frames(first)
    assert [frame_type for frame_type, _, _ in (method_frame, header_frame, body_frame)] == [1, 2, 3]
    method_end = 7 + len(method_frame[2]) + 1
    header_end = method_end + 7 + len(header_frame[2]) + 1
    wire.peer.send(
        heartbeat(),
        first[:method_end],
        heartbeat(),
        first[method_end:header_end],
        heartbeat(),
        first[header_end:],
        heartbeat(),
        deliveries(2),
        heartbeat(),
    )

    wire.readable()

    assert wire.delivered == [1, 2]
    assert wire.bodies == [body_of(1), body_of(2)]
    assert wire.lost == []


def test_a_silent_peer_is_lost_at_the_tick_after_two_heartbeat_intervals_and_a_heartbeat_keeps_it(
    new_wire: Callable[..., Wire], hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    scheduled: list[tuple[float, Callable[[], None]]] = []
    call_repeatedly = hub.call_repeatedly

    def record(delay: float, callback: Callable[[], None], *args: Any) -> Any:
        scheduled.append((delay, callback))
        return call_repeatedly(delay, callback, *args)

    monkeypatch.setattr(hub, "call_repeatedly", record)
    now = [1000.0]
    monkeypatch.setattr(amqp.connection, "monotonic", lambda: now[0])
    wire = new_wire(heartbeat=10)
    wire.attach()
    [(interval, tick)] = scheduled
    assert interval == 10 / 4

    tick()  # the first tick starts the clock
    now[0] = 1015.0
    tick()  # 15 s of silence: not lost yet, and the client sends its own heartbeat
    assert wire.lost == []
    assert [frame_type for frame_type, _, _ in parse_frames(wire.peer.received())] == [8]

    wire.peer.send(heartbeat())
    wire.readable()
    now[0] = 1025.0
    tick()  # the peer's heartbeat restarts the count
    now[0] = 1044.0
    tick()
    assert wire.lost == []

    now[0] = 1046.0  # more than 2 x 10 s since the heartbeat was seen
    tick()
    assert len(wire.lost) == 1
    assert isinstance(wire.lost[0], ConnectionForced)
    assert not wire.loop.alive

    now[0] = 1100.0
    tick()
    assert len(wire.lost) == 1  # lost once


# -- synchronous calls from callbacks ------------------------------------------------------------


def test_a_synchronous_call_from_a_callback_takes_its_reply_from_the_middle_of_the_buffer(
    wire: Wire, hub: Hub
) -> None:
    events: list[Any] = []

    def on_delivery(message: amqp.Message) -> None:
        events.append(message.delivery_tag)
        if message.delivery_tag == 1:
            wire.channel.basic_qos(0, 10, False)
            events.append("qos returned")

    wire.on_delivery = on_delivery
    wire.peer.send(deliveries(1, 2, 3), method(1, spec.Basic.QosOk), deliveries(4, 5, 6))

    wire.readable()
    run_until(hub, lambda: len(wire.delivered) >= 6)

    # Every frame handled once, in the order it arrived (2 and 3 while basic_qos waited).
    assert events == [1, 2, 3, "qos returned", 4, 5, 6]
    assert wire.delivered == [1, 2, 3, 4, 5, 6]
    [(channel, _sig, payload)] = [m for m in methods(wire.peer.received()) if m[1] == spec.Basic.Qos]
    assert (channel, method_args(payload, "lBb")) == (1, [0, 10, False])
    assert wire.lost == []


def test_a_synchronous_call_from_a_callback_sends_what_the_batch_holds_and_its_request_before_waiting(
    wire: Wire,
) -> None:
    seen: list[tuple[int, tuple[int, int], bytes]] = []
    failed: list[BaseException] = []

    def broker() -> None:  # answers basic.qos only once it has received it
        try:
            seen.extend(wire.peer.wait_for(spec.Basic.Qos))
            wire.peer.send(method(1, spec.Basic.QosOk))
        except BaseException as exc:
            failed.append(exc)

    def on_delivery(message: amqp.Message) -> None:
        wire.channel.basic_ack(message.delivery_tag)  # held by the write batch
        wire.channel.basic_qos(0, 10, False)

    wire.on_delivery = on_delivery
    answering = threading.Thread(target=broker)
    answering.start()
    try:
        wire.peer.send(deliveries(1))
        wire.readable()
    finally:
        answering.join(10)

    assert failed == []
    assert [sig for _, sig, _ in seen] == [spec.Basic.Ack, spec.Basic.Qos]  # in the order written
    assert wire.delivered == [1]
    assert wire.lost == []


# -- frames out --------------------------------------------------------------------------------


def test_acks_written_by_delivery_callbacks_reach_the_peer_together_in_one_send_after_the_read(
    wire: Wire,
) -> None:
    peer_had_data: list[bool] = []

    def on_delivery(message: amqp.Message) -> None:
        wire.channel.basic_ack(message.delivery_tag)
        peer_had_data.append(wire.peer.has_unread())

    wire.on_delivery = on_delivery
    sends_before = len(wire.transport.sends)
    wire.peer.send(deliveries(*range(1, 11)))

    wire.readable()

    assert peer_had_data == [False] * 10  # nothing sent while the frames were handled
    assert len(wire.transport.sends) == sends_before + 1
    assert acked_tags(wire.transport.sends[-1]) == list(range(1, 11))
    assert acked_tags(wire.peer.received()) == list(range(1, 11))


def test_a_write_outside_a_readable_event_is_sent_at_once(wire: Wire) -> None:
    wire.peer.send(deliveries(1, 2))
    wire.readable()
    sends_before = len(wire.transport.sends)

    wire.channel.basic_ack(1)  # as from a timer or a ready callback of the loop
    assert acked_tags(wire.peer.received()) == [1]
    wire.channel.basic_ack(2)
    assert acked_tags(wire.peer.received()) == [2]
    assert len(wire.transport.sends) == sends_before + 2


# -- errors ------------------------------------------------------------------------------------


def channel_close(channel: int) -> bytes:
    """The broker closes ``channel`` (404, as for a missing queue), and answers py-amqp's reopen."""
    return method(
        channel, spec.Channel.Close, "BsBB", (404, "NOT_FOUND - no queue 'q'", *spec.Queue.Declare)
    ) + method(channel, spec.Channel.OpenOk, "S", ("",))


def test_a_channel_closed_by_the_peer_reaches_on_channel_error_with_its_number(wire: Wire) -> None:
    open_channel(wire.connection, wire.peer, 2)
    channel_errors: list[tuple[int, BaseException]] = []
    wire.loop.route_channel_errors(lambda channel_id, exc: channel_errors.append((channel_id, exc)))
    wire.peer.send(deliveries(1), channel_close(2))

    wire.readable()

    [(channel_id, exc)] = channel_errors
    assert channel_id == 2
    assert isinstance(exc, NotFound)
    assert error_channel(exc) == 2
    assert wire.lost == []
    assert wire.loop.alive
    replies = [(channel, sig) for channel, sig, _ in methods(wire.peer.received())]
    assert (2, spec.Channel.CloseOk) in replies

    wire.peer.send(deliveries(2))  # channel 1 goes on
    wire.readable()
    assert wire.delivered == [1, 2]


def test_without_on_channel_error_a_channel_error_loses_the_connection_once_and_is_not_raised(
    wire: Wire, hub: Hub
) -> None:
    open_channel(wire.connection, wire.peer, 2)
    fd = wire.connection.given_sock.fileno()
    wire.peer.send(channel_close(2))

    wire.readable()  # does not raise

    [exc] = wire.lost
    assert isinstance(exc, NotFound)
    assert error_channel(exc) == 2
    assert not wire.loop.alive
    assert fd not in hub.readers

    wire.readable()
    assert len(wire.lost) == 1


def test_a_connection_error_loses_the_connection_once_even_with_on_channel_error_set(wire: Wire) -> None:
    channel_errors: list[tuple[int, BaseException]] = []
    wire.loop.route_channel_errors(lambda channel_id, exc: channel_errors.append((channel_id, exc)))
    wire.peer.send(method(0, spec.Connection.Close, "BsBB", (320, "CONNECTION_FORCED", 0, 0)))

    wire.readable()

    [exc] = wire.lost
    assert isinstance(exc, ConnectionForced)
    assert error_channel(exc) is None
    assert channel_errors == []
    assert not wire.loop.alive


def test_frames_after_a_channel_error_in_the_same_read_are_delivered_without_more_bytes_arriving(
    wire: Wire, hub: Hub
) -> None:
    open_channel(wire.connection, wire.peer, 2)
    wire.loop.route_channel_errors(lambda channel_id, exc: None)
    wire.peer.send(channel_close(2), deliveries(1))

    wire.readable()

    run_until(hub, lambda: wire.delivered == [1], timeout=0.5)


def test_the_close_ok_answering_a_connection_close_from_the_peer_is_sent(wire: Wire) -> None:
    wire.peer.send(method(0, spec.Connection.Close, "BsBB", (320, "CONNECTION_FORCED", 0, 0)))

    wire.readable()

    assert len(wire.lost) == 1
    assert [(channel, sig) for channel, sig, _ in methods(wire.peer.received())] == [
        (0, spec.Connection.CloseOk)
    ]


def test_an_exception_from_a_consumer_callback_loses_the_connection_once_and_never_reaches_the_loop(
    wire: Wire,
) -> None:
    def on_delivery(message: amqp.Message) -> None:
        raise RuntimeError("bug in a callback")

    wire.on_delivery = on_delivery
    wire.peer.send(deliveries(1, 2))

    wire.readable()

    assert wire.delivered == [1]
    [exc] = wire.lost
    assert isinstance(exc, RuntimeError)
    assert not wire.loop.alive


# -- fallbacks when an internal is missing ------------------------------------------------------


def test_without_amqp_method_framing_frame_writer_py_amqp_reads_and_writes_frame_by_frame(
    new_wire: Callable[..., Wire], compat_warnings: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(amqp.method_framing, "frame_writer")
    first, second = new_wire(), new_wire()
    first.attach()
    second.attach()

    for wire in (first, second):
        peer_had_data: list[bool] = []

        def on_delivery(message: amqp.Message, wire: Wire = wire, seen: list[bool] = peer_had_data) -> None:
            wire.channel.basic_ack(message.delivery_tag)
            seen.append(wire.peer.has_unread())

        wire.on_delivery = on_delivery
        sends_before = len(wire.transport.sends)
        wire.peer.send(deliveries(*range(1, 51)))

        wire.readable()

        assert wire.delivered == list(range(1, 51))
        assert wire.bodies == [body_of(tag) for tag in range(1, 51)]
        assert peer_had_data == [True] * 50  # py-amqp's own writing: each ack sent at once
        assert len(wire.transport.sends) == sends_before + 50
        assert acked_tags(wire.peer.received()) == list(range(1, 51))
        assert wire.lost == []

    [warning] = compat_warnings()  # one per process, not one per connection
    assert "amqp.method_framing.frame_writer" in warning


def _remove_read_buffer(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    del wire.connection.transport._read_buffer


def _remove_on_inbound_frame(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(amqp.Connection, "on_inbound_frame")


def _remove_frame_writer(wire: Wire, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(amqp.Connection, "frame_writer")


@pytest.mark.parametrize(
    ("remove", "internal"),
    [
        (_remove_read_buffer, "amqp Transport._read_buffer"),
        (_remove_on_inbound_frame, "amqp Connection.on_inbound_frame"),
        (_remove_frame_writer, "amqp Connection.frame_writer"),
    ],
)
def test_an_internal_py_amqp_itself_reads_or_writes_through_is_named_when_missing_and_its_loss_is_not_raised(
    new_wire: Callable[..., Wire],
    compat_warnings: Callable[[], list[str]],
    monkeypatch: pytest.MonkeyPatch,
    remove: Callable[[Wire, pytest.MonkeyPatch], None],
    internal: str,
) -> None:
    """amqp 5.4.2 reads and writes through these internals itself: without them it cannot.

    So no fallback can deliver here (that needs a py-amqp which renamed them); what holds is
    that the missing internal is named in one WARNING and that the failure ends the connection
    once, through ``on_lost``, without reaching the loop.
    """
    wire = new_wire()
    wire.on_delivery = lambda message: wire.channel.basic_ack(message.delivery_tag)
    remove(wire, monkeypatch)
    wire.attach()
    wire.peer.send(deliveries(1))

    wire.readable()  # does not raise
    wire.readable()

    assert len(wire.lost) == 1
    assert not wire.loop.alive
    [warning] = compat_warnings()
    assert internal in warning


def test_tick_callbacks_of_a_hub_without_on_tick_are_none_with_one_warning(
    hub: Hub, compat_warnings: Callable[[], list[str]]
) -> None:
    assert _compat.tick_callbacks(hub) is hub.on_tick
    del hub.on_tick

    assert _compat.tick_callbacks(hub) is None
    assert _compat.tick_callbacks(hub) is None

    [warning] = compat_warnings()
    assert "Hub.on_tick" in warning


def test_encoded_message_class_without_message_serialize_properties_is_none_with_one_warning(
    compat_warnings: Callable[[], list[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    encoded = _compat.encoded_message_class()
    assert encoded is not None
    properties = amqp.Message(b"", content_type="application/json")._serialize_properties()
    assert encoded(b"body", properties)._serialize_properties() == properties
    # Defined on py-amqp's GenericContent, Message's base class: removed there.
    monkeypatch.delattr(amqp.serialization.GenericContent, "_serialize_properties")
    assert not hasattr(amqp.Message, "_serialize_properties")

    assert _compat.encoded_message_class() is None
    assert _compat.encoded_message_class() is None

    [warning] = compat_warnings()
    assert "Message._serialize_properties" in warning


# -- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tls_certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and its key: the peer's, and all the client trusts."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    directory = tmp_path_factory.mktemp("wire-tls")
    cert, key = directory / "localhost.pem", directory / "localhost.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-sha256",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_wire(hub: Hub, monkeypatch: pytest.MonkeyPatch, tls_certificate: tuple[Path, Path]) -> Iterator[Wire]:
    """A consuming connection over a TLS session, attached."""
    monkeypatch.setattr(LoopConnection, "SYNC_TIMEOUT", 5.0)
    cert, key = tls_certificate
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    connection, peer = connect_tls(server_context, str(cert))
    wire = Wire(connection, connection.transport, peer, hub)
    try:
        assert isinstance(wire.transport.sock, ssl.SSLSocket)
        wire.channel = open_channel(connection, peer, 1)
        consume(wire.channel, peer, CONSUMER_TAG, wire.on_message)
        wire.attach()
        yield wire
    finally:
        wire.close()


def tls_peer(wire: Wire) -> TLSPeer:
    assert isinstance(wire.peer, TLSPeer)
    return wire.peer


def timed(fun: Callable[[], None]) -> float:
    """Seconds ``fun()`` took."""
    start = time.perf_counter()
    fun()
    return time.perf_counter() - start


#: Much less than a busy-wait for the rest of a frame takes, much more than a read does.
PROMPTLY = 0.1


def test_a_frame_split_across_two_tls_records_is_not_waited_for_and_is_dispatched_once_when_whole(
    tls_wire: Wire,
) -> None:
    wire, peer = tls_wire, tls_peer(tls_wire)
    data = deliveries(1, 2)
    [(_type, _channel, payload), *_] = parse_frames(data)
    split = (7 + len(payload)) // 2  # inside the first frame, past its header
    assert 7 < split < 7 + len(payload)
    first, second = peer.records(data[:split]), peer.records(data[split:])
    # Should the loop wait for the second half (as py-amqp's own reading did, spinning), the
    # second half is sent after a second, so that the test fails instead of hanging.
    rescued = threading.Event()

    def rescue() -> None:
        rescued.set()
        peer.send_raw(second)

    rescuing = threading.Timer(1.0, rescue)
    peer.send_raw(first)
    rescuing.start()
    try:
        took = timed(wire.readable)
    finally:
        rescuing.cancel()
        rescuing.join()

    assert not rescued.is_set() and took < PROMPTLY, f"the read waited {took:.3f} s for the rest"
    assert wire.delivered == []
    assert wire.lost == []

    peer.send_raw(second)
    wire.readable()
    assert wire.delivered == [1, 2]
    assert wire.bodies == [body_of(1), body_of(2)]

    wire.readable()  # nothing left over to dispatch twice
    assert wire.delivered == [1, 2]
    assert wire.lost == []


def test_a_tls_record_of_which_only_part_has_arrived_is_not_waited_for(tls_wire: Wire) -> None:
    wire, peer = tls_wire, tls_peer(tls_wire)
    timeout = wire.transport.sock.gettimeout()
    record = peer.records(deliveries(1))
    peer.send_raw(record[: len(record) // 2])  # the TLS layer can decrypt nothing yet

    took = timed(wire.readable)

    assert took < PROMPTLY, f"the read waited {took:.3f} s for the rest of the record"
    assert wire.lost == []
    assert wire.transport.sock.gettimeout() == timeout

    peer.send_raw(record[len(record) // 2 :])
    wire.readable()
    assert wire.delivered == [1]
    assert wire.lost == []


def long_body(tag: int) -> bytes:
    return body_of(tag).ljust(200, b".")


def test_more_bytes_than_one_read_ahead_in_many_tls_records_are_all_delivered_in_order_by_the_loop(
    tls_wire: Wire, hub: Hub
) -> None:
    wire, peer = tls_wire, tls_peer(tls_wire)
    tags = list(range(1, 301))
    data = b"".join(delivery(1, CONSUMER_TAG, tag, long_body(tag)) for tag in tags)
    assert len(data) > READ_AHEAD_TLS  # records of 16 KiB, frames cut across them
    peer.send(data)

    wire.readable()
    assert 0 < len(wire.delivered) < len(tags)  # the loop gets its turn back

    run_until(hub, lambda: len(wire.delivered) >= len(tags))
    assert wire.delivered == tags
    assert wire.bodies == [long_body(tag) for tag in tags]
    assert wire.lost == []


def test_a_synchronous_call_from_a_callback_takes_its_reply_from_the_middle_of_a_tls_record(
    tls_wire: Wire, hub: Hub
) -> None:
    """py-amqp reads the reply frame by frame: the deliveries behind it stay inside the TLS layer,
    where poll() cannot see them, and must still be delivered."""
    wire, peer = tls_wire, tls_peer(tls_wire)
    events: list[Any] = []
    seen: list[tuple[int, tuple[int, int], bytes]] = []
    failed: list[BaseException] = []

    def broker() -> None:  # answers basic.qos once it has received it, deliveries behind the reply
        try:
            seen.extend(peer.wait_for(spec.Basic.Qos))
            peer.send(method(1, spec.Basic.QosOk), deliveries(4, 5, 6))  # one TLS record
        except BaseException as exc:
            failed.append(exc)

    def on_delivery(message: amqp.Message) -> None:
        events.append(message.delivery_tag)
        if message.delivery_tag == 1:
            wire.channel.basic_qos(0, 10, False)
            events.append("qos returned")

    wire.on_delivery = on_delivery
    answering = threading.Thread(target=broker)
    answering.start()
    try:
        peer.send(deliveries(1, 2, 3))
        wire.readable()
    finally:
        answering.join(10)
    assert failed == []

    run_until(hub, lambda: len(wire.delivered) >= 6, timeout=1.0)

    # Every frame handled once, in the order it arrived (2 and 3 while basic_qos waited).
    assert events == [1, 2, 3, "qos returned", 4, 5, 6]
    assert wire.delivered == [1, 2, 3, 4, 5, 6]
    [(channel, _sig, payload)] = [m for m in seen if m[1] == spec.Basic.Qos]
    assert (channel, method_args(payload, "lBb")) == (1, [0, 10, False])
    assert wire.lost == []


@pytest.mark.parametrize("timeout", [5.0, None], ids=["timeout as py-amqp set it", "blocking"])
def test_a_tls_read_leaves_the_socket_timeout_as_it_was_so_py_amqp_blocking_reads_still_wait(
    tls_wire: Wire, timeout: float | None
) -> None:
    wire, peer = tls_wire, tls_peer(tls_wire)
    sock = wire.transport.sock
    sock.settimeout(timeout)
    peer.send(deliveries(1))

    wire.readable()

    assert wire.delivered == [1]
    assert sock.gettimeout() == timeout

    # py-amqp's own blocking read (as at shutdown), for a delivery that arrives while it waits.
    sender = threading.Timer(0.05, peer.send, (deliveries(2),))
    sender.start()
    try:
        for _ in range(3):  # a frame per read at least
            if wire.delivered == [1, 2]:
                break
            amqp.Connection.drain_events(wire.connection, timeout=None)
    finally:
        sender.join(10)
    assert wire.delivered == [1, 2]
    assert wire.lost == []


def _end_tls_session(peer: TLSPeer) -> None:
    peer.close_tls()  # a close_notify alert; the socket stays open


def _close_socket(peer: TLSPeer) -> None:
    peer.close()  # no close_notify: the TLS session just stops


@pytest.mark.parametrize("close", [_end_tls_session, _close_socket], ids=["close_notify", "socket closed"])
def test_the_peer_closing_the_tls_session_loses_the_connection_once_after_what_came_before(
    tls_wire: Wire, hub: Hub, close: Callable[[TLSPeer], None]
) -> None:
    wire, peer = tls_wire, tls_peer(tls_wire)
    fd = wire.transport.sock.fileno()
    peer.send(deliveries(1))
    close(peer)

    run_until(hub, lambda: bool(wire.lost))  # does not raise

    assert wire.delivered == [1]
    [exc] = wire.lost
    assert isinstance(exc, ConnectionResetError)
    assert not wire.loop.alive
    assert fd not in hub.readers

    wire.readable()
    assert len(wire.lost) == 1
