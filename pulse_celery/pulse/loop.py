"""The event loop the engine runs on: a kombu ``Hub``, the Celery worker's or one of its own.

Everything the engine does happens on the loop's thread: reading frames, acks, timers,
consumer callbacks. Blocking work (connecting: DNS, TCP, TLS, the AMQP handshake and the
first declarations) runs in a short-lived thread whose result comes back to the loop
(:func:`run_in_thread`). Nothing the engine schedules may raise into the loop: in the
Celery worker an exception there restarts or stops Celery's own consumer, so every
callback here is guarded (:func:`guarded`).

:class:`Loop` is the standalone host's loop (``PulseConnection.run``): a kombu Hub run in
the caller's thread, to which other threads hand work with :meth:`Loop.call_soon`.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from kombu.asynchronous import Hub

from .. import _compat

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def guarded(fun: Callable[..., Any], what: str) -> Callable[..., None]:
    """Wrap ``fun`` so that an error is logged with ``what`` instead of reaching the loop."""

    def call(*args: Any) -> None:
        try:
            fun(*args)
        except Exception:
            logger.exception("Error in %s (ignored; the loop goes on)", what)

    return call


class Backoff:
    """Delays between attempts: exponential with full jitter, capped; :meth:`reset` after success."""

    def __init__(self, first: float = 1.0, maximum: float = 30.0) -> None:
        self.first, self.maximum = first, maximum
        self.attempt = 0

    def next(self) -> float:
        ceiling = min(self.maximum, self.first * (2**self.attempt))
        self.attempt += 1
        return round(random.uniform(ceiling / 2, ceiling), 2)

    def reset(self) -> None:
        self.attempt = 0


class Timers:
    """One-shot timers on the hub that can all be cancelled at once (on stop or restart)."""

    def __init__(self, hub: Hub | None) -> None:
        self.hub = hub
        self._entries: set[Any] = set()

    def later(self, delay: float, fun: Callable[..., Any], *args: Any) -> Any:
        """Call ``fun(*args)`` on the loop in ``delay`` seconds; an error is logged, not raised."""
        if self.hub is None:
            return None
        holder: list[Any] = []
        call = guarded(fun, getattr(fun, "__qualname__", "a timer"))

        def fire() -> None:
            self._entries.discard(holder[0])
            call(*args)

        entry = self.hub.call_later(delay, fire)
        holder.append(entry)
        self._entries.add(entry)
        return entry

    def cancel(self, entry: Any) -> None:
        if entry is not None:
            self._entries.discard(entry)
            entry.cancel()

    def cancel_all(self) -> None:
        entries, self._entries = self._entries, set()
        for entry in entries:
            entry.cancel()


def run_in_thread(
    hub: Hub,
    work: Callable[[], _T],
    on_done: Callable[[_T], None],
    on_failed: Callable[[BaseException], None],
    name: str,
) -> threading.Thread:
    """Run ``work()`` in a thread; deliver its result or error to the loop's thread.

    Called on the loop's thread (or before the loop runs).
    """
    wake = _compat.hub_waker(hub)

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # reported on the loop's thread, never raised here
            hub.call_soon(guarded(on_failed, name), exc)
        else:
            hub.call_soon(guarded(on_done, name), result)
        wake()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread


class Loop:
    """A kombu Hub run by :meth:`run` in one thread; other threads hand it work with :meth:`call`.

    It stops through a flag, never by raising out of the hub's ready callbacks (kombu keeps
    them in a set: raising would drop the others queued with it). Work handed over by
    :meth:`call` that the loop cannot run any more fails in its caller's thread instead of
    leaving it waiting.
    """

    def __init__(self) -> None:
        self.hub = Hub()
        self._wake = _compat.hub_waker(self.hub)  # calls from other threads run at once
        self.thread: threading.Thread | None = None
        self._stopping = False
        self._lock = threading.Lock()
        self._pending: set[Future[Any]] = set()

    @property
    def running(self) -> bool:
        return self.thread is not None

    def in_loop_thread(self) -> bool:
        return self.thread is threading.current_thread()

    def claim(self, thread: threading.Thread) -> None:
        """Reserve the loop for ``thread`` before it starts, so that calls queue for it at once."""
        with self._lock:
            if self.thread is not None:
                raise RuntimeError("this Pulse connection's loop already runs in another thread")
            self.thread = thread

    def run(self, on_start: Callable[[], None] | None = None) -> None:
        """Run the loop in this thread until :meth:`stop`; refuse a second runner."""
        with self._lock:
            if self.thread not in (None, threading.current_thread()):
                raise RuntimeError("this Pulse connection's loop already runs in another thread")
            self.thread = threading.current_thread()
        try:
            if on_start is not None:
                self.hub.call_soon(guarded(on_start, "starting the connection"))
            while not self._stopping:
                self.hub.run_once()
        finally:
            with self._lock:
                self.thread = None
                pending, self._pending = self._pending, set()
            for future in pending:
                future.set_exception(RuntimeError("the Pulse connection's loop has stopped"))

    def call_soon(self, fun: Callable[..., Any], *args: Any) -> None:
        """Run ``fun(*args)`` on the loop's thread (from any thread); an error is logged."""
        self.hub.call_soon(guarded(fun, getattr(fun, "__qualname__", "a callback")), *args)
        self._wake()

    def call(self, fun: Callable[[], _T], timeout: float | None = None) -> _T:
        """Run ``fun()`` on the loop's thread and return its result (or raise its error).

        From the loop's thread, or while no thread runs the loop, it runs at once.
        """
        future: Future[_T] = Future()
        with self._lock:
            direct = self.thread is None or self.thread is threading.current_thread()
            if not direct:
                self._pending.add(future)
        if direct:
            return fun()

        def work() -> None:
            with self._lock:
                if future not in self._pending:
                    return
                self._pending.discard(future)
            try:
                future.set_result(fun())
            except BaseException as exc:  # handed to the caller's thread
                future.set_exception(exc)

        self.hub.call_soon(work)
        self._wake()
        return future.result(timeout)

    def stop(self) -> None:
        """Make :meth:`run` return after the current turn of the loop (from any thread)."""
        self._stopping = True
        self.hub.call_soon(_wake)
        self._wake()

    def close(self) -> None:
        self.hub.close()
        _compat.close_hub_waker(self.hub)


def _wake() -> None:
    """Nothing: queued from another thread, it wakes the hub's poller."""
