"""Drive a second AMQP connection from the Celery worker's event loop without ever blocking it.

Connecting (DNS, TCP, TLS, AMQP handshake, declarations) happens in a short-lived thread;
the connected connection is then handed to the loop's thread, which from then on is the
only thread that touches it: it reads frames when the socket is readable and ticks
heartbeats from the loop's timer. Any error of that connection is reported once to
``on_lost`` and never propagates into the loop, where it would restart or stop Celery's
own consumer.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from typing import Any

from kombu import Connection
from kombu.asynchronous import Hub

logger = logging.getLogger(__name__)

#: Frames read per readable event before yielding to the rest of the loop.
MAX_FRAMES_PER_READ = 256


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
            self._amqp.drain_events(timeout=timeout)
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

    def _on_readable(self) -> None:
        drain = self._amqp.drain_events
        try:
            for _ in range(MAX_FRAMES_PER_READ):
                if not self.alive:
                    return
                drain(timeout=0)
            # Frames may still sit in the TLS buffer, where poll() cannot see them.
            self.hub.call_soon(self._on_readable)
        except TimeoutError:
            pass
        except self.errors as exc:
            self.lost(exc)
        except Exception as exc:  # a callback of ours failed: never let it reach the loop
            logger.exception("%s: error while handling frames", self.name)
            self.lost(exc)

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
