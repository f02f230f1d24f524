"""Keep the Pulse connection alive, and send the acks of finishing tasks, while Celery's pool drains.

On warm shutdown Celery stops its event loop, then waits for the pool to finish the tasks
it runs. Celery 5.7's prefork pool turns the hub's timers and acks meanwhile; older
Celery, and the threads and solo pools, do not
(:func:`pulse_celery._compat.celery_turns_hub_while_pool_drains`).
Without heartbeats the broker closes the Pulse connection after two intervals, and the
acks of the tasks finishing after that are lost: their messages come again.

Where Celery does not turn the hub, a :class:`DrainKeeper` thread takes the Pulse connection
over from the step's ``stop()``: it sends the heartbeats and runs the ack and reject
callbacks of ``complete`` tasks as they finish, and is the only thread writing on the
connection until it stops: when ``hub.close()`` begins (before it runs the callbacks left
on the hub, on the worker's main thread), or at the step's ``shutdown()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from functools import partial
from typing import Any

from .. import _compat
from ..pulse.wire import LoopConnection

logger = logging.getLogger(__name__)

#: Seconds the worker waits for the thread to finish the callback it runs when asked to stop.
JOIN_TIMEOUT = 30.0

_IDLE, _KEEPING, _DONE = "idle", "keeping", "done"


class DrainKeeper:
    """Send ``complete`` tasks' acks through Celery's scheduler, or our thread while the pool drains."""

    def __init__(self) -> None:
        self._celery_schedule: Callable[..., Any] | None = None
        self._state = _IDLE
        self._lock = threading.Condition()
        self._callbacks: list[Callable[[], Any]] = []
        self._thread: threading.Thread | None = None
        self._hub_close: set[Callable[[Any], Any]] | None = None
        #: callbacks run by the thread during the last drain
        self.ran = 0

    def ready(self, celery_schedule: Callable[..., Any]) -> None:
        """The worker (re)starts: acks go through ``celery_schedule`` (Celery's own, see _compat)."""
        self.stop()
        self._celery_schedule = celery_schedule
        self._state = _IDLE
        self.ran = 0

    def schedule(self, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """What the ack and reject promises of ``complete`` tasks call, from any thread."""
        if self._state == _IDLE:  # the worker runs: Celery's scheduler, as for its own tasks
            assert self._celery_schedule is not None, "DrainKeeper.ready() first"
            return self._celery_schedule(callback, *args, **kwargs)
        call = partial(callback, *args, **kwargs)
        with self._lock:
            if self._state == _KEEPING:
                self._callbacks.append(call)
                self._lock.notify()
                return None
        self._run(call)  # the thread has stopped: the caller is the only writer now
        return None

    # -- the thread --------------------------------------------------------------------------

    def start(self, wires: Iterable[LoopConnection | None], hub: Any) -> None:
        """Take the Pulse connections (one per source) over from the stopped loop: heartbeats and acks."""
        if self._state != _IDLE:
            return
        beats: list[Callable[[], Any]] = []
        interval = 0.0
        for wire in wires:
            if wire is None or not wire.alive:
                continue
            wire.detach()  # the hub's heartbeat timer must not write too (Celery 5.7 fires it)
            seconds = wire.connection.get_heartbeat_interval() or 0
            if seconds:
                # as the loop ticks them (wire.py); the shortest interval serves every connection
                interval = min(interval or seconds / 4.0, seconds / 4.0)
                beats.append(partial(wire.guard, wire.connection.connection.send_heartbeat))
        heartbeat = partial(_each, beats) if beats else None
        with self._lock:
            self._state = _KEEPING
        self._hub_close = _compat.hub_close_callbacks(hub) if hub is not None else None
        if self._hub_close is not None:
            self._hub_close.add(self._on_hub_close)
        self._thread = threading.Thread(
            target=self._keep, args=(heartbeat, interval), name="pulse-drain", daemon=True
        )
        self._thread.start()
        logger.info(
            "Warm shutdown: Celery does not turn its event loop while the pool drains; a thread "
            "keeps the Pulse connection alive (%s) and acks each message whose task finishes, so "
            "it is not delivered again",
            f"heartbeats every {interval:.1f} s" if heartbeat else "no heartbeats negotiated",
        )

    def _on_hub_close(self, hub: Any) -> None:
        # Not removed from hub.on_close here: kombu before 5.7 iterates the set itself.
        self._stop_thread()

    def stop(self) -> None:
        """Stop the thread (idempotent); later callbacks run in the thread that schedules them."""
        self._stop_thread()
        if self._hub_close is not None:
            self._hub_close.discard(self._on_hub_close)
            self._hub_close = None

    def _stop_thread(self) -> None:
        with self._lock:
            if self._state != _KEEPING:
                return
            self._state = _DONE
            self._lock.notify()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        thread.join(JOIN_TIMEOUT)
        if thread.is_alive():
            logger.warning(
                "The thread keeping the Pulse connection did not stop within %.0f s; the worker "
                "closes the connection anyway (messages not acked by then are delivered again)",
                JOIN_TIMEOUT,
            )
        else:
            logger.info(
                "Pulse connection handed back to the worker; %d acks or rejects sent during the drain",
                self.ran,
            )

    def _keep(self, heartbeat: Callable[[], Any] | None, interval: float) -> None:
        next_beat = time.monotonic() + interval
        while True:
            with self._lock:
                while not self._callbacks and self._state == _KEEPING:
                    if heartbeat is None:
                        self._lock.wait()
                    else:
                        wait = next_beat - time.monotonic()
                        if wait <= 0:
                            break
                        self._lock.wait(wait)
                calls, self._callbacks = self._callbacks, []
                stopping = self._state != _KEEPING
            for call in calls:
                self._run(call)
                self.ran += 1
            if stopping:
                return  # no callback is queued once the state has left _KEEPING
            if heartbeat is not None and time.monotonic() >= next_beat:
                heartbeat()  # an error loses the connection (wire.guard); acks are then no-ops
                next_beat = time.monotonic() + interval

    @staticmethod
    def _run(call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception:
            logger.exception("Error sending a Pulse ack or reject during the drain (the message comes again)")


def _each(calls: list[Callable[[], Any]]) -> None:
    for call in calls:
        call()  # each guarded: an error loses that connection only
