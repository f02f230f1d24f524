"""Keep one AMQP connection up on the loop: connect in the background, back off, report each loss once.

A :class:`Link` is the lifecycle both the Pulse connection and the Celery worker's hand-off
connection share: ``connecting`` (a thread connects, never the loop) -> ``up`` (the
connection is attached to the loop) -> ``lost`` (a timer waits the backoff) ->
``connecting`` ...; ``stopped`` once closed. Every result from a connect thread and every
loss carries the generation it belongs to, so a late one cannot replace or tear down the
live connection. :meth:`Link.recycle` opens a second connection while one is up and swaps
it in: from then on the old one's loss is no longer the link's (its generation is past);
its owner retires it. The owner decides what each event means for its messages and says so in
its log lines; the link only keeps time.

Without an event loop (kombu's in-memory transport in the demo) the connection is opened at
once, in the caller's thread. Only py-amqp connections are attached to the loop; others
(a Redis Celery broker for the hand-off) are used as kombu leaves them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from kombu import Connection
from kombu.asynchronous import Hub

from .loop import Backoff, Timers, run_in_thread
from .wire import LoopConnection

#: Runs in the connect thread: connect, then anything else that may block; returns the
#: connection and whatever the owner wants back with it.
Opener = Callable[[], tuple[Connection, Any]]
#: Runs on the loop when an attempt begins and returns that attempt's :data:`Opener`, so
#: the thread works on a snapshot, never on the owner's live state.
Prepare = Callable[[], Opener]


@dataclass
class Up:
    """A link that came up: the connection, its loop driver, and what the opener returned beside it."""

    connection: Connection
    #: None without an event loop
    wire: LoopConnection | None
    extra: Any
    #: seconds the link was down before this connection, or None for the first
    down_for: float | None


class _Stale(Exception):
    """A connect attempt finished after the link was stopped or restarted."""


class Link:
    """One connection kept up with backoff; see the module docstring for its states."""

    #: A connection that lived this long resets the reconnect backoff when it is lost.
    HEALTHY_AFTER = 30.0

    def __init__(
        self,
        hub: Hub | None,
        name: str,
        prepare: Prepare,
        on_up: Callable[[Up], None],
        on_down: Callable[[BaseException, float, bool], None],
        backoff: Backoff | None = None,
    ) -> None:
        """``on_down(exc, delay, was_up)``: the connect attempt failed, or the live connection
        was lost; the next attempt comes in ``delay`` seconds (unless the link was stopped)."""
        self.hub = hub
        self.name = name
        self._prepare = prepare
        self._on_up = on_up
        self._on_down = on_down
        self.backoff = backoff or Backoff()
        self.timers = Timers(hub)
        self.state = "idle"
        self.generation = 0
        self.up: Up | None = None
        self.connects = 0
        self._up_at = 0.0
        self._down_at: float | None = None
        #: the generation a recycle attempt runs for, or None
        self._recycling: int | None = None

    @property
    def wire(self) -> LoopConnection | None:
        return self.up.wire if self.up is not None else None

    def start(self) -> None:
        """Connect now, unless a connection is up or being made."""
        if self.state in ("connecting", "up"):
            return
        self.timers.cancel_all()
        self.generation += 1
        generation = self.generation
        self.state = "connecting"
        opener = self._prepare()
        if self.hub is None:
            self._opened(generation, opener())
            return

        def attempt() -> tuple[Connection, Any]:
            result = opener()
            if generation != self.generation:
                # Stopped (or restarted) meanwhile: the loop may never run this result, so
                # drop the connection here rather than leave it open with nobody reading it.
                result[0].collect()
                raise _Stale()
            return result

        run_in_thread(
            self.hub,
            attempt,
            partial(self._opened, generation),
            partial(self._failed, generation),
            name=f"pulse-celery-connect-{self.name}",
        )

    def _opened(self, generation: int, result: tuple[Connection, Any]) -> None:
        connection, extra = result
        if generation != self.generation or self.state != "connecting":
            if self.hub is not None:
                connection.collect()
            return
        wire = None
        if self.hub is not None and connection.transport.driver_type == "amqp":
            wire = LoopConnection(connection, self.hub, partial(self._lost, generation), self.name)
            wire.attach()
        self.connects += 1
        down_for = None if self._down_at is None else time.monotonic() - self._down_at
        self.up = Up(connection, wire, extra, down_for=down_for)
        self.state = "up"
        self._up_at = time.monotonic()
        self._down_at = None
        self._on_up(self.up)

    def _failed(self, generation: int, exc: BaseException) -> None:
        if generation != self.generation or self.state != "connecting":
            return
        self._down(exc, was_up=False)

    def _lost(self, generation: int, exc: BaseException) -> None:
        if generation != self.generation or self.state != "up":
            return
        if time.monotonic() - self._up_at > self.HEALTHY_AFTER:
            self.backoff.reset()
        self.up = None
        self._down(exc, was_up=True)

    def _down(self, exc: BaseException, was_up: bool) -> None:
        self.state = "lost"
        if self._down_at is None:
            self._down_at = time.monotonic()
        delay = self.backoff.next()
        self.timers.later(delay, self.start)
        self._on_down(exc, delay, was_up)

    def lose(self, exc: BaseException) -> None:
        """Treat the live connection as lost (an error the owner found): close it, reconnect later."""
        up = self.up
        if up is None:
            return
        if up.wire is not None:
            up.wire.lost(exc)  # reports back through _lost, once
            return
        try:
            up.connection.collect()
        except Exception:
            pass
        self._lost(self.generation, exc)

    def healthy(self) -> None:
        """The owner got what it needed from this connection: reset the backoff."""
        self.backoff.reset()

    def recycle(
        self,
        opener: Opener,
        on_recycled: Callable[[Up, Up], None],
        on_failed: Callable[[BaseException], None],
    ) -> bool:
        """Open a fresh connection beside the live one; swap it in once it is up.

        ``on_recycled(old, new)`` runs on the loop once the new connection is the link's:
        ``old`` stays open (a loss of it is no longer reported) for its owner to retire.
        ``on_failed(exc)``: the attempt failed, and the live connection is kept. An attempt
        that finishes after a loss or a stop is dropped. Return False if no attempt starts
        (not up, no event loop, or one already running).
        """
        up = self.up
        if self.state != "up" or up is None or up.wire is None or self.hub is None:
            return False
        if self._recycling == self.generation:
            return False
        generation = self._recycling = self.generation

        def attempt() -> tuple[Connection, Any]:
            result = opener()
            if generation != self.generation or self.state != "up":
                result[0].collect()
                raise _Stale()
            return result

        run_in_thread(
            self.hub,
            attempt,
            partial(self._recycled, generation, on_recycled),
            partial(self._recycle_failed, generation, on_failed),
            name=f"pulse-celery-connect-{self.name}-recycle",
        )
        return True

    def _recycled(
        self, generation: int, on_recycled: Callable[[Up, Up], None], result: tuple[Connection, Any]
    ) -> None:
        connection, extra = result
        if self._recycling == generation:
            self._recycling = None
        old = self.up
        if generation != self.generation or self.state != "up" or old is None or self.hub is None:
            connection.collect()
            return
        self.generation += 1
        wire = LoopConnection(connection, self.hub, partial(self._lost, self.generation), self.name)
        wire.attach()
        self.connects += 1
        self.up = Up(connection, wire, extra, down_for=None)
        self._up_at = time.monotonic()
        on_recycled(old, self.up)

    def _recycle_failed(
        self, generation: int, on_failed: Callable[[BaseException], None], exc: BaseException
    ) -> None:
        if self._recycling == generation:
            self._recycling = None
        if isinstance(exc, _Stale) or generation != self.generation or self.state != "up":
            return
        on_failed(exc)

    def stop(self) -> Up | None:
        """Stop for good (until :meth:`start`): cancel timers and forget the connection.

        Return the live connection, if any, for the owner to settle what it must and close.
        """
        self.state = "stopped"
        self.generation += 1
        self.timers.cancel_all()
        up, self.up = self.up, None
        return up
