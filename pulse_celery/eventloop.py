"""Drive a second AMQP connection from the Celery worker's event loop without ever blocking it.

Connecting (DNS, TCP, TLS, AMQP handshake, declarations) happens in a short-lived thread;
the connected connection is then handed to the loop's thread, which from then on is the
only thread that touches it: it reads frames when the socket is readable and ticks
heartbeats from the loop's timer. Any error of that connection is reported once to
``on_lost`` and never propagates into the loop, where it would restart or stop Celery's
own consumer.

Two things keep the per-message cost of the loop's connections low (see benchmarks/):
frames written while one readable event is handled are sent together at its end, in one
``send`` per connection (:class:`WriteBatch`), instead of one system call per publish and
per ack; and on a plain TCP socket each readable event reads what the socket holds in one
``recv`` and hands py-amqp only complete frames, instead of three reads and two timeout
changes per frame.
"""

from __future__ import annotations

import logging
import random
import socket
import ssl
import struct
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

from amqp.exceptions import UnexpectedFrame
from amqp.method_framing import frame_writer
from kombu import Connection
from kombu.asynchronous import Hub

logger = logging.getLogger(__name__)

#: Frames read per readable event before yielding to the rest of the loop.
MAX_FRAMES_PER_READ = 256

#: Bytes read ahead per readable event on a plain TCP socket. py-amqp copies what follows a
#: frame each time it takes one from its buffer, so a larger read costs more than it saves.
READ_AHEAD = 16384

_FRAME_HEADER = struct.Struct(">BHI")


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
        if batch is None or not self.owner.alive:
            self.write_now(data)
            return
        if not self.buffer:
            batch.pending.append(self.owner)
        self.buffer += data  # a copy: py-amqp reuses the memory behind ``data``

    def take(self) -> bytes | bytearray:
        data, self.buffer = self.buffer, bytearray()
        return data


def backoff_delays(first: float = 1.0, maximum: float = 30.0) -> Callable[[], float]:
    """Return a function giving the next delay: exponential with full jitter, capped."""
    attempt = [0]

    def next_delay() -> float:
        ceiling = min(maximum, first * (2 ** attempt[0]))
        attempt[0] += 1
        return round(random.uniform(ceiling / 2, ceiling), 2)

    return next_delay


class Timers:
    """One-shot timers on the hub that can all be cancelled at once (on stop or restart)."""

    def __init__(self, hub: Hub | None) -> None:
        self.hub = hub
        self._entries: set[Any] = set()

    def later(self, delay: float, fun: Callable[..., Any], *args: Any) -> None:
        if self.hub is None:
            return
        holder: list[Any] = []

        def fire() -> None:
            self._entries.discard(holder[0])
            fun(*args)

        entry = self.hub.call_later(delay, fire)
        holder.append(entry)
        self._entries.add(entry)

    def cancel_all(self) -> None:
        entries, self._entries = self._entries, set()
        for entry in entries:
            entry.cancel()


def connect_in_background(
    hub: Hub,
    connect: Callable[[], Any],
    on_connected: Callable[[Any], None],
    on_failed: Callable[[BaseException], None],
    name: str,
) -> threading.Thread:
    """Run ``connect()`` in a thread and deliver its result to the loop's thread."""

    def run() -> None:
        try:
            result = connect()
        except BaseException as exc:  # reported on the loop's thread, never raised here
            hub.call_soon(on_failed, exc)
        else:
            hub.call_soon(on_connected, result)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


class LoopConnection:
    """One connected kombu/py-amqp connection, read and heartbeated on the hub's thread."""

    def __init__(
        self,
        connection: Connection,
        hub: Hub,
        on_lost: Callable[[BaseException], None],
        name: str,
    ) -> None:
        self.connection = connection
        self.hub = hub
        self.name = name
        self._on_lost = on_lost
        self._fd: int | None = None
        self._heartbeat_timer: Any = None
        self._send_heartbeats_only = False
        self.alive = True
        amqp_connection = connection.connection
        self._amqp = amqp_connection
        self._writer: _BatchingWriter | None = None
        #: the buffer :meth:`_read_frames` is cutting frames from, and how far it got
        self._parsing: bytes | None = None
        self._parsed = 0
        #: py-amqp's own drain_events; the connection's is replaced by :meth:`_drain_events`
        self._amqp_drain = amqp_connection.drain_events
        self._read_ahead = not isinstance(amqp_connection.transport.sock, ssl.SSLSocket)
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
        transport = self._amqp.transport
        transport.raise_on_initial_eintr = True
        if self._writer is None:
            self._writer = _BatchingWriter(self, transport.write)
            self._amqp.frame_writer = frame_writer(self._amqp, self._writer)
            self._amqp.drain_events = self._drain_events
        self._fd = transport.sock.fileno()
        self.hub.add_reader(self._fd, self._on_readable)
        heartbeat = self._amqp.heartbeat
        if heartbeat:
            # Tick at twice the rate py-amqp expects, as Celery does for its own connection.
            self._heartbeat_timer = self.hub.call_repeatedly(heartbeat / 4.0, self._tick)

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

        While the pool drains, Celery's prefork pool fires the loop's timers and ready
        callbacks from one thread (the acks of finishing tasks among them); nothing reads
        the socket then, so the missed-heartbeat check is off and only heartbeats are sent.
        Without them the broker would close the connection and those acks would be lost.
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
        try:
            self.connection.collect()  # drop the socket without a blocking close handshake
        except Exception:
            pass
        self._on_lost(exc)

    def guard(self, fun: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fun``; turn an error of this connection into :meth:`lost` instead of raising."""
        if not self.alive:
            return None
        try:
            return fun(*args, **kwargs)
        except self.errors as exc:
            self.lost(exc)
            return None

    def _drain_events(self, timeout: float | None = None) -> None:
        """What py-amqp calls to wait for frames, adapted to a connection the loop reads.

        ``timeout=0`` is py-amqp's "anything arrived?" before every publish: the loop reads
        this socket when it is readable anyway, so the answer is "not yet", with no system
        call. A real wait (a synchronous method's reply) first sends the frames the batch
        holds, or the broker would never see the request it is to answer.
        """
        if timeout == 0 and self._fd is not None:
            raise TimeoutError()
        self._give_back_unparsed()
        batch = WriteBatch.current()
        if batch is not None:
            batch.flush()
        self._amqp_drain(timeout=timeout)

    def flush_writes(self) -> None:
        """Send the frames held by the current batch (see :class:`WriteBatch`)."""
        if self._writer is None:
            return
        data = self._writer.take()
        if data and self.alive:
            self.guard(self._writer.write_now, data)

    def _on_readable(self) -> None:
        self._handle_frames(self._read_frames if self._read_ahead else self._drain_frames)

    def _on_buffered(self) -> None:
        self._handle_frames(partial(self._read_frames, receive=False))

    def _handle_frames(self, read: Callable[[], None]) -> None:
        """Run ``read`` in a write batch; an error ends this connection, never the loop."""
        batch = WriteBatch.begin()
        try:
            read()
        except self.errors as exc:
            self.lost(exc)
        except Exception as exc:  # a callback of ours failed: never let it reach the loop
            logger.exception("%s: error while handling frames", self.name)
            self.lost(exc)
        finally:
            if batch is not None:
                batch.end()

    def _drain_frames(self) -> None:
        """Read frame by frame through py-amqp (TLS: the socket cannot be read ahead)."""
        drain = self._amqp_drain
        try:
            for _ in range(MAX_FRAMES_PER_READ):
                if not self.alive:
                    return
                drain(timeout=0)
            # Frames may still sit in the TLS buffer, where poll() cannot see them.
            self.hub.call_soon(self._on_readable)
        except TimeoutError:
            pass

    def _read_frames(self, receive: bool = True) -> None:
        """Read what the socket holds at once, then hand py-amqp the complete frames in it.

        Frames are cut from the buffer here and given to py-amqp's frame handler, as its
        ``blocking_read`` would (without a timeout context and three buffer copies per
        frame). A synchronous call made from a callback (a cancel, a declare) waits through
        :meth:`_drain_events`, which first gives the unparsed bytes back to the transport's
        buffer, where py-amqp reads them before the socket: every byte stays in order.
        """
        transport = self._amqp.transport
        buffer = transport._read_buffer
        if receive:
            try:
                data = transport.sock.recv(READ_AHEAD, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                raise ConnectionResetError(f"{self.name}: the broker closed the connection")
            buffer = buffer + data if buffer else data
        transport._read_buffer = b""
        self._parsing, self._parsed = buffer, 0
        on_frame = self._amqp.on_inbound_frame
        unpack_from = _FRAME_HEADER.unpack_from
        size_of = len(buffer)
        try:
            for _ in range(MAX_FRAMES_PER_READ):
                position = self._parsed
                if size_of - position < 8 or not self.alive:
                    break
                frame_type, channel, size = unpack_from(buffer, position)
                end = position + 7 + size
                if end >= size_of:
                    break  # the rest of this frame has not arrived yet
                if buffer[end] != 0xCE:
                    raise UnexpectedFrame(f"{self.name}: frame-end octet {buffer[end]:#04x}, expected 0xce")
                self._parsed = end + 1
                on_frame((frame_type, channel, buffer[position + 7 : end]))
                if self._parsing is None:
                    break  # a synchronous call took the rest of the buffer over
        finally:
            if self._parsing is not None:
                transport._read_buffer = buffer[self._parsed :]
                self._parsing = None
        if self.alive and self._frame_buffered(transport._read_buffer):
            self.hub.call_soon(self._on_buffered)

    def _give_back_unparsed(self) -> None:
        """Put the bytes :meth:`_read_frames` has not handled yet back in py-amqp's buffer."""
        if self._parsing is not None:
            transport = self._amqp.transport
            transport._read_buffer = self._parsing[self._parsed :] + transport._read_buffer
            self._parsing = None

    @staticmethod
    def _frame_buffered(buffer: bytearray) -> bool:
        if len(buffer) < 7:
            return False
        _type, _channel, size = _FRAME_HEADER.unpack_from(buffer)
        return len(buffer) >= size + 8

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
