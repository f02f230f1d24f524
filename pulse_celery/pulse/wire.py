"""Drive a connected py-amqp connection from the event loop: frames in, frames out, heartbeats.

The loop's thread is the only thread that touches the connection once it is attached: it
reads frames when the socket is readable and ticks heartbeats from the loop's timer. Any
error of the connection is reported once to ``on_lost`` and never propagates into the
loop. An error that closes only one channel (the broker refused something on it) carries
that channel's number (:func:`error_channel`), so its owner can recover alone.

Two things keep the per-message cost low (see benchmarks/): frames written while one
readable event is handled are sent together at its end, in one ``send`` per connection
(:class:`WriteBatch`), instead of one system call per publish and per ack; and each readable
event reads what the socket (or the TLS layer) holds at once and hands py-amqp only complete
frames (:class:`FrameReader`). Both rest on py-amqp internals
(:mod:`pulse_celery._compat`); without them, py-amqp's own reading and writing are used.
"""

from __future__ import annotations

import logging
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from typing import Any

from amqp.exceptions import ChannelError, UnexpectedFrame
from kombu import Connection
from kombu.asynchronous import Hub

from .. import _compat

logger = logging.getLogger(__name__)

#: Frames read per readable event before yielding to the rest of the loop.
MAX_FRAMES_PER_READ = 256

#: Bytes read ahead per readable event on a plain TCP socket. py-amqp copies what follows a
#: frame each time it takes one from its buffer, so a larger read costs more than it saves.
READ_AHEAD = 16384

#: Bytes read ahead per readable event on a TLS socket. Each read call yields one TLS record
#: (about 1.7 KB from RabbitMQ in the benchmark), so a larger limit saves turns of the loop.
READ_AHEAD_TLS = 65536

_FRAME_HEADER = struct.Struct(">BHI")

#: Attribute set on a channel error raised while a frame of that channel was handled.
_CHANNEL_ATTRIBUTE = "pulse_channel_id"


def error_channel(exc: BaseException) -> int | None:
    """The channel an error closed, when it closed only that channel; None otherwise."""
    return getattr(exc, _CHANNEL_ATTRIBUTE, None) if isinstance(exc, ChannelError) else None


class WriteBatch:
    """Hold what the loop's connections write during one readable event; send it at its end.

    Only the loop's thread writes on these connections, so one batch per thread is enough.
    Outside a batch (timers, shutdown) writes go straight to the socket.
    """

    _local = threading.local()

    @classmethod
    def current(cls) -> WriteBatch | None:
        return getattr(cls._local, "batch", None)

    @classmethod
    def begin(cls) -> WriteBatch | None:
        """Open a batch on this thread; return it, or None if one is already open."""
        if cls.current() is not None:
            return None
        batch = cls._local.batch = WriteBatch()
        return batch

    def __init__(self) -> None:
        self.pending: list[LoopConnection] = []

    def flush(self) -> None:
        """Send each connection's frames now; a write error goes to that connection."""
        pending, self.pending = self.pending, []
        for connection in pending:
            connection.flush_writes()

    def end(self) -> None:
        """Close the batch and send what it holds."""
        self._local.batch = None
        self.flush()


class _BatchingWriter:
    """The transport ``write`` that py-amqp's frame writer calls, deferred inside a batch."""

    def __init__(self, owner: LoopConnection, write: Callable[[Any], None]) -> None:
        self.owner = owner
        self.write_now = write
        self.buffer = bytearray()

    def write(self, data: Any) -> None:
        batch = WriteBatch.current()
        # Channel 0 (connection close-ok, heartbeats) goes at once, after what is held: py-amqp
        # closes the socket right after writing close-ok, before the batch would send it.
        if batch is None or not self.owner.alive or data[1:3] == b"\x00\x00":
            if self.buffer:
                data = bytes(self.take()) + bytes(data)
            self.write_now(data)
            return
        if not self.buffer:
            batch.pending.append(self.owner)
        self.buffer += data  # a copy: py-amqp reuses the memory behind ``data``

    def take(self) -> bytes | bytearray:
        data, self.buffer = self.buffer, bytearray()
        return data


class FrameReader:
    """Read what the socket holds at once and hand py-amqp the complete frames in it.

    Frames are cut from the buffer here and given to py-amqp's frame handler, as its
    ``blocking_read`` would (without a timeout context and three buffer copies per frame).
    A synchronous call made from a callback (a cancel, a declare) waits through py-amqp's
    reading, so :meth:`give_back` first returns the unparsed bytes to the transport's
    buffer, where py-amqp reads them before the socket: every byte stays in order.
    """

    def __init__(
        self, amqp_connection: Any, dispatch: Callable[[tuple[int, int, Any]], Any], name: str
    ) -> None:
        self.transport = amqp_connection.transport
        self.dispatch = dispatch
        self.name = name
        self.tls = isinstance(self.transport.sock, ssl.SSLSocket)
        #: the TLS stream ended behind data still to be handled
        self._eof = False
        #: the buffer :meth:`read` is cutting frames from, and how far it got
        self._parsing: bytes | None = None
        self._parsed = 0
        #: where TLS records are read into (made at the first TLS read)
        self._tls_buffer: memoryview | None = None

    def read(self, receive: bool, alive: Callable[[], bool]) -> bool:
        """Receive (if asked) and handle complete frames; return True if one more is buffered."""
        transport = self.transport
        buffer = _compat.read_buffer(transport)
        if receive:
            data = self._receive_tls() if self.tls else self._receive()
            if not data:
                return False
            buffer = buffer + data if buffer else data
        _compat.set_read_buffer(transport, b"")
        self._parsing, self._parsed = buffer, 0
        dispatch, unpack_from, size_of = self.dispatch, _FRAME_HEADER.unpack_from, len(buffer)
        try:
            for _ in range(MAX_FRAMES_PER_READ):
                position = self._parsed
                if size_of - position < 8 or not alive():
                    break
                frame_type, channel, size = unpack_from(buffer, position)
                end = position + 7 + size
                if end >= size_of:
                    break  # the rest of this frame has not arrived yet
                if buffer[end] != 0xCE:
                    raise UnexpectedFrame(f"{self.name}: frame-end octet {buffer[end]:#04x}, expected 0xce")
                self._parsed = end + 1
                dispatch((frame_type, channel, buffer[position + 7 : end]))
                if self._parsing is None:
                    break  # a synchronous call took the rest of the buffer over
        except ChannelError as exc:  # the broker closed this frame's channel (or one it waited on)
            if getattr(exc, _CHANNEL_ATTRIBUTE, None) is None:
                setattr(exc, _CHANNEL_ATTRIBUTE, channel)
            raise
        finally:
            if self._parsing is not None:
                _compat.set_read_buffer(transport, buffer[self._parsed :])
                self._parsing = None
        return self.buffered()

    def _receive(self) -> bytes:
        try:
            data: bytes = self.transport.sock.recv(READ_AHEAD, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return b""
        if not data:
            raise ConnectionResetError(f"{self.name}: the broker closed the connection")
        return data

    def _receive_tls(self) -> bytes:
        """Read the TLS records that can be read now, without blocking (the socket is made so briefly).

        Each ``recv_into`` gives at most one TLS record (RabbitMQ sent about two deliveries per
        record in the benchmark), so it reads until the TLS layer would block, or
        :data:`READ_AHEAD_TLS` bytes came, into one buffer kept for the connection. An end of
        stream behind data is remembered, and reported at the next read, after that data is
        handled.
        """
        if self._eof:
            raise ConnectionResetError(f"{self.name}: the broker closed the connection")
        sock = self.transport.sock
        if self._tls_buffer is None:
            self._tls_buffer = memoryview(bytearray(READ_AHEAD_TLS))
        view, size = self._tls_buffer, 0
        timeout = sock.gettimeout()
        sock.settimeout(0)
        try:
            while size < READ_AHEAD_TLS:
                try:
                    got = sock.recv_into(view[size:])
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
                    break
                if not got:
                    if not size:
                        raise ConnectionResetError(f"{self.name}: the broker closed the connection")
                    self._eof = True
                    break
                size += got
        finally:
            sock.settimeout(timeout)
        return bytes(view[:size])

    def pending(self) -> bool:
        """More to read where poll() cannot see it: inside the TLS layer, or the stream's end."""
        return self.tls and (self._eof or self.transport.sock.pending() > 0)

    def buffered(self) -> bool:
        """A complete frame waits in the buffer (poll() will not say so)."""
        return self._frame_buffered(_compat.read_buffer(self.transport))

    def give_back(self) -> None:
        """Put the bytes :meth:`read` has not handled yet back in py-amqp's buffer."""
        if self._parsing is not None:
            rest = self._parsing[self._parsed :]
            _compat.set_read_buffer(self.transport, rest + _compat.read_buffer(self.transport))
            self._parsing = None

    @staticmethod
    def _frame_buffered(buffer: bytes) -> bool:
        if len(buffer) < 7:
            return False
        _type, _channel, size = _FRAME_HEADER.unpack_from(buffer)
        return len(buffer) >= size + 8


def _marking_channel_errors(dispatch: Callable[[tuple[int, int, Any]], Any]) -> Callable[..., Any]:
    """``dispatch``, with a channel error marked with the channel of the frame that raised it."""

    def on_frame(frame: tuple[int, int, Any]) -> Any:
        try:
            return dispatch(frame)
        except ChannelError as exc:
            if getattr(exc, _CHANNEL_ATTRIBUTE, None) is None:
                setattr(exc, _CHANNEL_ATTRIBUTE, frame[1])
            raise

    return on_frame


class LoopConnection:
    """One connected kombu/py-amqp connection, read and heartbeated on the hub's thread."""

    #: Seconds a synchronous call (declare, cancel, qos) may wait for its reply on the loop.
    SYNC_TIMEOUT = 30.0

    def __init__(
        self, connection: Connection, hub: Hub, on_lost: Callable[[BaseException], None], name: str
    ) -> None:
        self.connection = connection
        self.hub = hub
        self.name = name
        self._on_lost = on_lost
        self._fd: int | None = None
        self._sock: Any = None
        self._heartbeat_timer: Any = None
        self._send_heartbeats_only = False
        self.alive = True
        self._amqp = amqp_connection = connection.connection
        #: Called with ``(channel_id, exc)`` when the broker closed one channel; None: the
        #: whole connection is treated as lost.
        self.on_channel_error: Callable[[int, BaseException], None] | None = None
        self._installed = False
        self._writer: _BatchingWriter | None = None
        self._reader: FrameReader | None = None
        self._amqp_drain: Callable[..., Any] = amqp_connection.drain_events
        #: Errors that mean "this connection or a channel of it is gone".
        self.errors: tuple[type[BaseException], ...] = (
            *connection.connection_errors,
            *connection.channel_errors,
            OSError,
        )

    def attach(self) -> None:
        """Put the socket on the loop and start heartbeats (idempotent)."""
        if self._fd is not None or not self.alive:
            return
        amqp_connection = self._amqp
        transport = amqp_connection.transport
        transport.raise_on_initial_eintr = True
        if not self._installed:
            self._install(amqp_connection, transport)
        self._sock = transport.sock
        self._fd = transport.sock.fileno()
        self.hub.add_reader(self._fd, self._on_readable)
        heartbeat = amqp_connection.heartbeat
        if heartbeat:
            # Tick at twice the rate py-amqp expects, as Celery does for its own connection.
            self._heartbeat_timer = self.hub.call_repeatedly(heartbeat / 4.0, self._tick)

    def _install(self, amqp_connection: Any, transport: Any) -> None:
        """Take over reading and writing where py-amqp's internals allow (see _compat)."""
        self._installed = True
        missing = _compat.fast_path_missing(amqp_connection)
        if missing:
            _compat.warn_once(
                "fast-path",
                "%s missing: frames are read and written one by one by py-amqp (correct, slower); "
                "pulse_celery was checked with amqp 5.4",
                ", ".join(missing),
            )
            return
        dispatch = _compat.frame_dispatcher(amqp_connection)
        writer = _BatchingWriter(self, transport.write)
        try:
            _compat.install_frame_writer(amqp_connection, writer.write)
        except Exception:
            _compat.warn_once(
                "frame_writer",
                "py-amqp's frame_writer could not be installed: frames are read and written one by "
                "one by py-amqp (correct, slower)",
                exc_info=True,
            )
            return
        self._writer = writer
        self._amqp_drain = _compat.replace_drain_events(amqp_connection, self._drain_events)
        # Frames py-amqp reads itself (while a synchronous call waits) are marked as the
        # FrameReader marks its own: a channel error carries the channel of the frame.
        _compat.set_frame_dispatcher(amqp_connection, _marking_channel_errors(dispatch))
        self._reader = FrameReader(amqp_connection, dispatch, self.name)

    def route_channel_errors(self, callback: Callable[[int, BaseException], None]) -> None:
        """Send an error that closes only one channel to ``callback(channel_id, exc)``.

        Without this (or without the fast path) such an error loses the whole connection.
        """
        self.on_channel_error = callback

    def _remove_reader(self) -> None:
        if self._fd is not None:
            try:
                self.hub.remove_reader(self._fd)
            except Exception:  # already gone with a hub reset
                pass
            self._fd = None

    def detach(self) -> None:
        """Take the socket off the loop and stop heartbeats; the connection stays open."""
        self._remove_reader()
        if self._heartbeat_timer is not None:
            self._heartbeat_timer.cancel()
            self._heartbeat_timer = None

    def stop_reading(self) -> None:
        """Warm shutdown: take the socket off the loop but keep sending heartbeats.

        While Celery's pool drains, the loop's timers and ready callbacks still fire (the
        acks of finishing tasks among them); nothing reads the socket then, so the
        missed-heartbeat check is off and only heartbeats are sent. Without them the broker
        would close the connection and those acks would be lost.
        """
        self._send_heartbeats_only = True
        self._remove_reader()

    def close(self) -> None:
        """Detach and close, ignoring errors of a connection that is already gone."""
        self.detach()
        self.alive = False
        try:
            self.connection.close()
        except Exception:
            logger.debug("%s: error while closing (ignored)", self.name, exc_info=True)

    def drain(self, timeout: float) -> None:
        """Read frames for up to ``timeout`` seconds outside the loop (used at shutdown)."""
        try:
            self._amqp_drain(timeout=timeout)
        except TimeoutError:
            pass
        except self.errors as exc:
            self.lost(exc)

    def lost(self, exc: BaseException) -> None:
        """Mark the connection dead and report it once."""
        if not self.alive:
            return
        self.alive = False
        self.detach()
        if isinstance(self._sock, ssl.SSLSocket):
            try:  # py-amqp unwraps TLS on collect: send close_notify, never wait for the broker's
                self._sock.settimeout(0)
            except OSError:
                pass
        try:
            self.connection.collect()  # drop the socket without a blocking close handshake
        except Exception:
            pass
        self._on_lost(exc)

    def guard(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fun``; an error of this connection becomes :meth:`lost`, never an exception.

        An error that closed only one channel goes to :attr:`on_channel_error` when one is
        set. Either way the caller gets None and reads its channel's state to know more.
        """
        if not self.alive:
            return None
        try:
            return fun(*args, **kwargs)
        except self.errors as exc:
            self._on_error(exc)
            return None

    def _drain_events(self, timeout: float | None = None) -> None:
        """What py-amqp calls to wait for frames, adapted to a connection the loop reads.

        ``timeout=0`` is py-amqp's "anything arrived?" before every publish: the loop reads
        this socket when it is readable anyway, so the answer is "not yet", with no system
        call. A real wait (a synchronous method's reply) first sends the frames the batch
        holds, or the broker would never see the request it is to answer, and waits at most
        :attr:`SYNC_TIMEOUT` seconds: a broker that stops answering must not hold the loop.
        """
        if timeout == 0 and self._fd is not None:
            raise TimeoutError()
        if self._reader is not None:
            self._reader.give_back()
        batch = WriteBatch.current()
        if batch is not None:
            batch.flush()
        self._amqp_drain(timeout=self.SYNC_TIMEOUT if timeout is None else timeout)

    def flush_writes(self) -> None:
        """Send the frames held by the current batch (see :class:`WriteBatch`)."""
        if self._writer is None:
            return
        data = self._writer.take()
        if data and self.alive:
            self.guard(self._writer.write_now, data)

    def _on_readable(self) -> None:
        self._handle_frames(receive=True)

    def _on_buffered(self) -> None:
        self._handle_frames(receive=False)

    def _handle_frames(self, receive: bool) -> None:
        """Read in a write batch; an error ends this connection (or one channel), never the loop."""
        if not self.alive or self._fd is None:
            return  # a read scheduled before the connection was lost, closed or taken off the loop
        batch = WriteBatch.begin()
        try:
            more = self._read(receive)
            if self.alive and self._reader is not None and self._reader.pending():
                self.hub.call_soon(self._on_readable)  # more inside the TLS layer: read it next
            elif more and self.alive:
                self.hub.call_soon(self._on_buffered)
        except self.errors as exc:
            self._on_error(exc)
            # The frames behind the one that failed are still buffered, where poll() cannot see them.
            if self.alive and self._reader is not None and self._reader.buffered():
                self.hub.call_soon(self._on_buffered)
        except Exception as exc:  # a callback of ours failed: never let it reach the loop
            logger.exception("%s: error while handling frames", self.name)
            self.lost(exc)
        finally:
            if batch is not None:
                batch.end()

    def _on_error(self, exc: BaseException) -> None:
        channel_id = error_channel(exc)
        if channel_id is not None and self.on_channel_error is not None and self.alive:
            self.on_channel_error(channel_id, exc)
        else:
            self.lost(exc)

    def _read(self, receive: bool) -> bool:
        if self._reader is not None:
            return self._reader.read(receive, lambda: self.alive)
        # py-amqp reads frame by frame (its internals are missing).
        drain = self._amqp_drain
        try:
            for _ in range(MAX_FRAMES_PER_READ):
                if not self.alive:
                    return False
                drain(timeout=0)
            # Frames may still sit in py-amqp's buffer, where poll() cannot see them.
            self.hub.call_soon(self._on_readable)
        except TimeoutError:
            pass
        return False

    def _tick(self) -> None:
        if not self.alive:
            return
        try:
            if self._send_heartbeats_only:
                self._amqp.send_heartbeat()
            else:
                self._amqp.heartbeat_tick(rate=2)
        except Exception as exc:  # connection errors and anything else: this connection is done
            self.lost(exc)
