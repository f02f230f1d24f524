"""A scripted AMQP 0-9-1 broker on one end of a socketpair, for tests of the loop's wire layer.

The client is a real ``amqp.Connection`` whose transport is the other end of the pair. The
peer writes its replies before the client asks (the socket buffers them), so no broker and
no thread are needed: ``connect()`` finds Connection.Start, Tune and OpenOk already waiting.

Over TLS (``connect_tls()``) the client is py-amqp's own ``SSLTransport`` on its end of the
pair, and the peer encrypts and decrypts in memory (``TLSPeer``), so that a test chooses where
each TLS record begins and ends and can send part of one. Only the TLS handshake needs a
thread: the client's ``connect()`` waits in it for the peer.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
from typing import Any

import amqp
from amqp import spec
from amqp.serialization import dumps, loads
from amqp.transport import SSLTransport, TCPTransport

FRAME_END = b"\xce"
_HEADER = struct.Struct(">BHI")


def frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    """One frame: type, channel, size, payload, frame-end octet."""
    return _HEADER.pack(frame_type, channel, len(payload)) + payload + FRAME_END


def method(channel: int, sig: tuple[int, int], argsig: str = "", args: tuple[Any, ...] = ()) -> bytes:
    """A method frame, its arguments encoded by py-amqp's own serializer."""
    encoded = dumps(argsig, list(args)) if argsig else b""
    return frame(1, channel, struct.pack(">HH", *sig) + encoded)


def heartbeat() -> bytes:
    return frame(8, 0, b"")


def delivery(channel: int, consumer_tag: str, delivery_tag: int, body: bytes) -> bytes:
    """Basic.Deliver, its content header (no properties) and its body: three frames."""
    return b"".join(
        (
            method(channel, spec.Basic.Deliver, "sLbss", (consumer_tag, delivery_tag, False, "ex", "rk")),
            frame(2, channel, struct.pack(">HHQH", spec.Basic.Deliver[0], 0, len(body), 0)),
            frame(3, channel, body),
        )
    )


def split_frames(data: bytes) -> tuple[list[tuple[int, int, bytes]], bytes]:
    """The complete frames at the start of ``data`` as (type, channel, payload), and the rest."""
    frames, position = [], 0
    while len(data) - position >= 8:
        frame_type, channel, size = _HEADER.unpack_from(data, position)
        end = position + 7 + size
        if end >= len(data):
            break
        assert data[end : end + 1] == FRAME_END, f"bad frame end at {end}"
        frames.append((frame_type, channel, data[position + 7 : end]))
        position = end + 1
    return frames, data[position:]


def parse_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """The frames in ``data``, which must hold only complete frames."""
    frames, rest = split_frames(data)
    assert rest == b"", f"{len(rest)} bytes of an incomplete frame"
    return frames


def method_args(payload: bytes, argsig: str) -> list[Any]:
    args, _ = loads(argsig, payload, 4)
    return list(args)


def methods(data: bytes) -> list[tuple[int, tuple[int, int], bytes]]:
    """The method frames in ``data`` as (channel, method signature, payload)."""
    return [
        (channel, struct.unpack_from(">HH", payload), payload)
        for frame_type, channel, payload in parse_frames(data)
        if frame_type == 1
    ]


class SocketTransport(TCPTransport):
    """py-amqp's own TCP transport, over a socket it is given instead of one it connects.

    Every write is recorded in :attr:`sends`, one entry per system call, so that tests can
    count them.
    """

    def __init__(self, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__("peer:5672", **kwargs)
        self.given_sock = sock
        self.sends: list[bytes] = []

    def _connect(self, host: str, port: int, timeout: float | None) -> None:
        self.sock = self.given_sock

    def _set_socket_options(self, socket_settings: Any) -> None:
        pass  # a Unix socketpair has no TCP options

    def _setup_transport(self) -> None:
        super()._setup_transport()
        sendall = self.sock.sendall

        def recorded_sendall(data: Any) -> None:
            self.sends.append(bytes(data))
            sendall(data)

        self._write = recorded_sendall


class TLSSocketTransport(SSLTransport):
    """py-amqp's own TLS transport, over a socket it is given instead of one it connects.

    It wraps the socket and does the TLS handshake itself, with the options it is given
    (``ssl``), as for a broker it connected to.
    """

    def __init__(self, sock: socket.socket, **kwargs: Any) -> None:
        super().__init__("peer:5671", **kwargs)
        self.given_sock = sock

    def _connect(self, host: str, port: int, timeout: float | None) -> None:
        self.sock = self.given_sock

    def _set_socket_options(self, socket_settings: Any) -> None:
        pass  # a Unix socketpair has no TCP options


class SocketConnection(amqp.Connection):
    """A real py-amqp connection whose transport is :class:`SocketTransport`.

    Given ``ssl`` (py-amqp's TLS options), the transport is :class:`TLSSocketTransport`.
    """

    def __init__(self, sock: socket.socket, **kwargs: Any) -> None:
        self.given_sock = sock
        super().__init__(host="peer:5672", connect_timeout=5, **kwargs)

    def Transport(
        self, host: str, connect_timeout: float | None, ssl: Any = False, *args: Any, **kwargs: Any
    ) -> SocketTransport | TLSSocketTransport:
        if ssl:
            return TLSSocketTransport(self.given_sock, connect_timeout=connect_timeout, ssl=ssl)
        return SocketTransport(self.given_sock, connect_timeout=connect_timeout)


class KombuConnection:
    """What ``LoopConnection`` uses of a kombu Connection over py-amqp (kombu.transport.pyamqp)."""

    connection_errors = amqp.Connection.connection_errors
    channel_errors = amqp.Connection.channel_errors

    def __init__(self, connection: amqp.Connection) -> None:
        self.connection = connection

    def channel(self) -> amqp.Channel:
        """A new channel on the next free number, as kombu's pyamqp transport opens one."""
        return self.connection.channel()

    def collect(self) -> None:
        self.connection.collect()

    def close(self) -> None:
        self.connection.collect()


class Peer:
    """The broker's end of the socketpair."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def send(self, *data: bytes) -> None:
        self.sock.sendall(self._outbound(b"".join(data)))

    def _outbound(self, data: bytes) -> bytes:
        """The bytes that carry ``data`` on the wire."""
        return data

    def _inbound(self, data: bytes) -> bytes:
        """What the bytes ``data`` read from the wire carry."""
        return data

    def received(self) -> bytes:
        """Everything the client has sent since the last call (without waiting)."""
        chunks = []
        while True:
            try:
                chunk = self.sock.recv(65536, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return self._inbound(b"".join(chunks))

    def wait_for(
        self, sig: tuple[int, int], timeout: float = 5.0
    ) -> list[tuple[int, tuple[int, int], bytes]]:
        """Read until the client has sent method ``sig``; return the methods read until then."""
        data = b""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("the client closed the connection")
                data += self._inbound(chunk)
                frames, _rest = split_frames(data)
                found = [
                    (channel, struct.unpack_from(">HH", payload), payload)
                    for frame_type, channel, payload in frames
                    if frame_type == 1
                ]
                if any(method_sig == sig for _, method_sig, _ in found):
                    return found
        finally:
            self.sock.settimeout(None)

    def has_unread(self) -> bool:
        """True if the client has sent bytes this peer has not read yet."""
        try:
            return bool(self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except BlockingIOError:
            return False

    def close(self) -> None:
        self.sock.close()


class TLSPeer(Peer):
    """The broker's end of a TLS session: records are made and read in memory (``ssl.SSLObject``).

    :meth:`send` sends its data as TLS records at once; :meth:`records` makes the records
    without sending them, for :meth:`send_raw` to send all or part of.
    """

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        super().__init__(sock)
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def handshake(self, timeout: float = 5.0) -> None:
        """The server's side of the TLS handshake (the client does its side meanwhile)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                try:
                    self.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self.send_raw(self.outgoing.read())
                    chunk = self.sock.recv(65536)
                    if not chunk:
                        raise ConnectionResetError("the client closed the connection") from None
                    self.incoming.write(chunk)
            self.send_raw(self.outgoing.read())  # the last flight (and TLS 1.3 session tickets)
        finally:
            self.sock.settimeout(None)

    def records(self, *data: bytes) -> bytes:
        """Each of ``data`` in TLS records of its own (one each, up to 16 KiB), not sent yet."""
        for part in data:
            self.tls.write(part)
        return self.outgoing.read()

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are: records made by :meth:`records`, or part of them."""
        self.sock.sendall(data)

    def close_tls(self) -> None:
        """End the TLS session (a close_notify alert); the socket stays open."""
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # the client's close_notify is not awaited
        self.send_raw(self.outgoing.read())

    def _outbound(self, data: bytes) -> bytes:
        return self.records(data)

    def _inbound(self, data: bytes) -> bytes:
        self.incoming.write(data)
        chunks = []
        while True:
            try:
                chunk = self.tls.read(65536)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def handshake(heartbeat: int = 0, frame_max: int = 131072) -> bytes:
    """Connection.Start, Tune and OpenOk, as a broker sends them."""
    return b"".join(
        (
            method(0, spec.Connection.Start, "ooFSS", (0, 9, {}, "PLAIN AMQPLAIN", "en_US")),
            method(0, spec.Connection.Tune, "BlB", (2047, frame_max, heartbeat)),
            method(0, spec.Connection.OpenOk, "s", ("",)),
        )
    )


def connect(heartbeat: int = 0) -> tuple[SocketConnection, Peer]:
    """A connected py-amqp connection and its peer; what the handshake sent is already read."""
    client_sock, peer_sock = socket.socketpair()
    peer = Peer(peer_sock)
    connection = SocketConnection(client_sock, heartbeat=heartbeat)
    try:
        peer.send(handshake(heartbeat))
        connection.connect()
    except BaseException:
        client_sock.close()
        peer.close()
        raise
    peer.received()
    return connection, peer


def channel_closed_by_broker(channel: int, code: int, text: str, failed: tuple[int, int] = (0, 0)) -> bytes:
    """The broker closes ``channel`` with ``code`` (for the method ``failed``), then answers the
    Channel.Open py-amqp sends to reopen it at once."""
    return method(channel, spec.Channel.Close, "BsBB", (code, text, *failed)) + method(
        channel, spec.Channel.OpenOk, "S", ("",)
    )


def open_channel(connection: amqp.Connection, peer: Peer, channel_id: int) -> amqp.Channel:
    peer.send(method(channel_id, spec.Channel.OpenOk, "S", ("",)))
    channel = connection.channel(channel_id)
    peer.received()
    return channel


def consume(channel: amqp.Channel, peer: Peer, consumer_tag: str, callback: Any) -> None:
    peer.send(method(channel.channel_id, spec.Basic.ConsumeOk, "s", (consumer_tag,)))
    channel.basic_consume("queue", consumer_tag=consumer_tag, callback=callback)
    peer.received()


def connect_tls(
    server_context: ssl.SSLContext, ca_certs: str, heartbeat: int = 0
) -> tuple[SocketConnection, TLSPeer]:
    """:func:`connect` over TLS: the client verifies the peer's certificate, as the worker does."""
    client_sock, peer_sock = socket.socketpair()
    peer = TLSPeer(peer_sock, server_context)
    # What pulse_celery's PulseConfig.connection_kwargs() gives kombu for an amqps:// URL.
    sslopts = {"server_hostname": "localhost", "cert_reqs": ssl.CERT_REQUIRED, "ca_certs": ca_certs}
    connection = SocketConnection(client_sock, heartbeat=heartbeat, ssl=sslopts)
    failed: list[BaseException] = []

    def serve() -> None:
        try:
            peer.handshake()
            peer.send(handshake(heartbeat))
        except BaseException as exc:
            failed.append(exc)

    serving = threading.Thread(target=serve, name="tls-peer-handshake")
    serving.start()
    try:
        try:
            connection.connect()
        finally:
            serving.join(10)
        assert not serving.is_alive(), "the peer's TLS handshake did not end"
        assert failed == [], f"the peer's TLS handshake failed: {failed!r}"
    except BaseException:
        connection.collect()
        client_sock.close()
        peer.close()
        raise
    peer.received()
    return connection, peer
