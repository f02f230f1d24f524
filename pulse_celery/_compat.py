"""Every private internal of py-amqp, kombu and Celery that pulse_celery uses, checked before use.

Nothing else in the package reaches into another library's private parts, or switches on
their versions: it asks here. Each internal is checked once (per connection, hub or worker,
where a test or an upgrade can take it away), and each has either a fallback that is slower
but correct, announced by one WARNING, or a refusal to start that names the supported
versions. Where versions differ, the path each version takes is named below; a path that
is as fast and as correct as the other is chosen silently (it is not a degradation).

Supported and tested (the noxfile's ``lowest`` and ``highest`` sessions): Celery 5.4.0 to
5.7, kombu 5.3.5 to 5.7, py-amqp 5.1.1 to 5.4 (:data:`SUPPORTED_CELERY`).

Each entry: the internal; what it is for; what happens without it; what differs by version.

py-amqp
  * ``Transport._read_buffer``, ``Connection.on_inbound_frame``, ``Connection.drain_events``
    (public, but replaced on the instance), ``Connection.frame_writer`` and
    ``method_framing.frame_writer(connection, transport)``: the loop's fast path, frames cut
    from one ``recv`` and written in one ``send`` per turn of the loop; without any of them,
    py-amqp reads and writes frame by frame (one WARNING). Same in 5.1.1 to 5.4.2 (5.4 puts
    a lock around ``frame_writer``'s shared buffer; the loop writes from one thread anyway).
  * ``Channel.events``: publisher confirms collected as they arrive; without it, the
    hand-off waits for each confirm. Same in 5.1.1 to 5.4.2.
  * ``Message._serialize_properties`` and the layout of ``amqp.serialization.dumps``: task
    message properties encoded once per task; without them (or if a sample differs from
    py-amqp's own bytes), py-amqp encodes them per publish. The table encoding is the same
    in 5.1.1 to 5.4.2 (5.4 changed only the decoding of the 's', 'b'/'B' and 'l' table types,
    and the bit flushing of method arguments, which task properties do not use).

kombu
  * ``Hub.on_tick``: Pulse acks sent once per turn of the loop; without it, each at once.
    kombu 5.3.4 iterates the set itself (not a copy), so a lane that stops ticking inside a
    tick would break the loop: kombu 5.3.5 is the lowest supported.
  * ``Hub._create_waker`` (kombu 5.7): ``call_soon`` from another thread wakes the poller.
    Before 5.7 such a call waits for the poller's timeout (up to 10 s with timers pending):
    the connect thread's result, the standalone connection's calls and stop. There,
    :func:`hub_waker` gives the hub a socket pair of our own, as 5.7 does.
  * ``Message._state``: a task message's settled state; without it, not recorded.
  * ``Hub.on_close`` (public, not documented): where the thread that keeps the Pulse
    connection during a warm shutdown hands it back before ``hub.close()`` runs the acks
    left in the ready set; without it, the thread stops at the step's shutdown.

Celery
  * ``Consumer.strategies[name](message, None, ack, reject, callbacks)``,
    ``Consumer.on_task_message``, ``Consumer.blueprint.state`` and ``bootsteps.CLOSE``: the
    ``complete`` policy and warm shutdown; without them, the worker refuses to start and
    names the supported versions (:data:`SUPPORTED_CELERY`). Same in 5.4.0 to 5.7.0.
  * ``Consumer.call_soon_ack`` (5.7) or ``Consumer.call_soon`` (5.4 to 5.6): what Celery's own
    task consumer schedules a message's ack and reject with (:func:`ack_scheduler`). With the
    worker's hub, both are ``hub.call_soon``; without one (the memory:// demo) 5.7 acks at
    once and 5.4 to 5.6 at the next turn of ``synloop``, as Celery itself does there.
  * ``Consumer.max_prefetch_count``: Celery's prefetch for ``complete`` queues; without it,
    ``pulse_prefetch_count``. Same in 5.4.0 to 5.7.0.
  * ``PromiseProxy._Proxy__local``: the app of a task not evaluated yet; without it, the
    task is evaluated at decoration (its app is finalized early).
  * The pool's drain on warm shutdown (:func:`celery_turns_hub_while_pool_drains`): Celery
    5.7's prefork pool fires the hub's timers and runs the queued ack callbacks from a
    thread while it joins (``celery.concurrency.prefork._run_ready_callbacks`` is there),
    so the Pulse heartbeats and the acks of finishing tasks go on. Celery 5.4 to 5.6 reset
    the hub when ``asynloop`` exits (and the consumer's close clears its timer) and turn it
    no more; the acks wait in the hub's ready set until ``hub.close()`` (the Hub step's
    stop, after the pool's join), and no heartbeat goes out meanwhile. No version turns it
    for the threads and solo pools. Where Celery does not, the step's own thread keeps the
    Pulse connection (worker/drain.py), and stops on the hub's ``on_close`` (kombu; without
    it, at the step's shutdown). Without the check's internal the thread runs under 5.7's
    prefork too: still correct (the thread alone writes on the Pulse connection).
  * ``celery.worker.state.requests`` (task id -> request, reserved or running in this
    worker) and ``Request.message``: under ``complete`` a redelivery whose task id is still
    reserved or running here follows that request instead of being handed to Celery twice
    (:func:`unfinished_request_message`); without them, it is handed to Celery (it may run
    twice, as without a stable id). Same in 5.4.0 to 5.7.0.
  * The task tracer calls ``task.run`` as it found it when built (``build_tracer``, in the
    main process at consumer start and in each prefork child at its start): an instance
    attribute ``run`` set before then is what runs (:func:`wrap_task_run`, dedupe's guard).
    Same in 5.4.0 to 5.7.0; a task class with its own ``__call__`` calls ``self.run`` too.
  * Celery older than 5.4: refused at worker start (:func:`check_celery_version`).
"""

from __future__ import annotations

import logging
import socket
import weakref
from collections.abc import Callable
from contextlib import suppress
from typing import Any

import amqp.method_framing
from amqp.serialization import dumps as _amqp_dumps
from vine import promise

logger = logging.getLogger(__name__)

#: The versions whose internals the ``complete`` policy and the step were checked on (and are tested).
SUPPORTED_CELERY = "Celery 5.4 to 5.7 (with kombu 5.3.5 to 5.7 and py-amqp 5.1.1 to 5.4)"

#: The lowest Celery the worker step starts with (major, minor).
MIN_CELERY = (5, 4)

_warned: set[str] = set()


def warn_once(key: str, message: str, *args: Any, exc_info: bool = False) -> None:
    """Log one WARNING per process for a missing internal and its fallback."""
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args, exc_info=exc_info)


# -- py-amqp: the loop connection's fast path (pulse/wire.py) --------------------------------


def fast_path_missing(amqp_connection: Any) -> list[str]:
    """Name the internals the loop's read-ahead and write batching need that are missing."""
    missing = []
    if not hasattr(amqp_connection.transport, "_read_buffer"):
        missing.append("amqp Transport._read_buffer")
    if not callable(getattr(amqp_connection, "on_inbound_frame", None)):
        missing.append("amqp Connection.on_inbound_frame")
    if not hasattr(amqp_connection, "frame_writer"):
        missing.append("amqp Connection.frame_writer")
    if not callable(getattr(amqp.method_framing, "frame_writer", None)):
        missing.append("amqp.method_framing.frame_writer")
    return missing


def read_buffer(transport: Any) -> bytes:
    buffer: bytes = transport._read_buffer
    return buffer


def set_read_buffer(transport: Any, data: bytes) -> None:
    transport._read_buffer = data


def frame_dispatcher(amqp_connection: Any) -> Callable[[tuple[int, int, Any]], Any]:
    """The function py-amqp hands each inbound frame to."""
    dispatch: Callable[[tuple[int, int, Any]], Any] = amqp_connection.on_inbound_frame
    return dispatch


def set_frame_dispatcher(amqp_connection: Any, dispatch: Callable[[tuple[int, int, Any]], Any]) -> None:
    amqp_connection.on_inbound_frame = dispatch


def install_frame_writer(amqp_connection: Any, write: Callable[[Any], None]) -> None:
    """Make py-amqp write every frame of ``amqp_connection`` through ``write``."""
    frame_writer = amqp.method_framing.frame_writer

    class _Transport:  # frame_writer only reads ``transport.write``
        pass

    transport = _Transport()
    transport.write = write  # type: ignore[attr-defined]
    amqp_connection.frame_writer = frame_writer(amqp_connection, transport)


def replace_drain_events(amqp_connection: Any, drain: Callable[..., Any]) -> Callable[..., Any]:
    """Make py-amqp's synchronous waits call ``drain``; return py-amqp's own drain_events."""
    original: Callable[..., Any] = amqp_connection.drain_events
    amqp_connection.drain_events = drain
    return original


# -- py-amqp: the hand-off (worker/handoff.py, worker/taskmessage.py) ------------------------


def confirm_events(channel: Any) -> Any:
    """The channel's event callbacks for basic.ack/nack/return, or None if py-amqp has none."""
    events = getattr(channel, "events", None)
    if events is None or not hasattr(events, "__getitem__"):
        warn_once(
            "channel.events",
            "py-amqp's Channel.events is missing: the hand-off waits for each publisher confirm "
            "(correct, but about ten times slower); pulse_celery was checked with amqp 5.4",
        )
        return None
    return events


def table_entries(table: dict[str, Any]) -> bytes:
    """The entries of an AMQP field table as py-amqp encodes them, without the length prefix."""
    encoded: bytes = _amqp_dumps(b"F", [table])[4:]
    return encoded


def serialized_properties(message: Any) -> bytes:
    """The content-header properties py-amqp would send for ``message``."""
    encoded: bytes = message._serialize_properties()
    return encoded


def encoded_message_class() -> type | None:
    """A py-amqp Message class whose properties are given already encoded, or None."""
    from amqp import Message

    if not callable(getattr(Message, "_serialize_properties", None)):
        warn_once(
            "Message._serialize_properties",
            "py-amqp's Message._serialize_properties is missing: task-message properties are "
            "encoded by py-amqp for every publish (slower, same bytes)",
        )
        return None

    class EncodedMessage(Message):  # type: ignore[misc]
        """An AMQP message whose content-header properties are already encoded."""

        def __init__(self, body: bytes, encoded_properties: bytes) -> None:
            super().__init__(body)
            self._encoded_properties = encoded_properties

        def _serialize_properties(self) -> bytes:
            return self._encoded_properties

    return EncodedMessage


# -- kombu -------------------------------------------------------------------------------------


def _hub_callbacks(hub: Any, name: str, without: str) -> set[Callable[..., Any]] | None:
    """``hub.<name>``, kombu's set of callbacks; None (and one WARNING saying ``without``) if missing."""
    callbacks = getattr(hub, name, None)
    if not isinstance(callbacks, set):
        warn_once(
            f"Hub.{name}",
            f"kombu's Hub.{name} is missing: {without}; pulse_celery was checked with kombu 5.7",
        )
        return None
    return callbacks


def tick_callbacks(hub: Any) -> set[Callable[[], Any]] | None:
    """The hub's callbacks run once per turn of the loop, before it polls; None if it has none."""
    return _hub_callbacks(
        hub, "on_tick", "Pulse acks are sent one by one as they come (correct, more frames)"
    )


def hub_close_callbacks(hub: Any) -> set[Callable[[Any], Any]] | None:
    """The hub's callbacks run by ``hub.close()`` (before its ready callbacks); None if it has none."""
    return _hub_callbacks(
        hub,
        "on_close",
        "on warm shutdown the thread that keeps the Pulse connection stops at the worker step's shutdown",
    )


class _Waker:
    """A socket pair on the hub that makes ``call_soon`` from another thread run at once (kombu < 5.7).

    The hub's own thread registers the reader (a tick callback, so that it comes back after
    ``hub.reset()``, which drops every reader); other threads only write one byte.
    """

    def __init__(self, hub: Any) -> None:
        self._hub = weakref.ref(hub)
        self.reader, self.writer = socket.socketpair()
        self.reader.setblocking(False)
        self.writer.setblocking(False)
        hub.on_tick.add(self._register)
        # Closed with the hub (or by close()), never left to the garbage collector.
        self._finalizer = weakref.finalize(hub, _close_sockets, self.reader, self.writer)

    def _register(self) -> None:
        hub = self._hub()
        if hub is not None and self.reader.fileno() not in hub.readers:
            hub.add_reader(self.reader.fileno(), self._drain)

    def _drain(self) -> None:
        with suppress(OSError):
            self.reader.recv(4096)

    def wake(self) -> None:
        with suppress(OSError):  # full: a wakeup is pending anyway; closed: the hub is gone
            self.writer.send(b"\0")

    def close(self) -> None:
        hub = self._hub()
        if hub is not None:
            hub.on_tick.discard(self._register)
            if self.reader.fileno() in hub.readers:
                hub.remove_reader(self.reader.fileno())
        self._finalizer()


def _close_sockets(*sockets: socket.socket) -> None:
    for sock in sockets:
        sock.close()


_wakers: weakref.WeakKeyDictionary[Any, _Waker] = weakref.WeakKeyDictionary()


def _nothing() -> None:
    pass


def hub_waker(hub: Any) -> Callable[[], None]:
    """What another thread calls after ``hub.call_soon(...)`` so that the hub runs it now.

    Call it on the hub's thread (or before the hub runs). kombu 5.7 wakes its poller itself:
    the function does nothing there. Before 5.7, the hub gets one socket pair of ours.
    """
    if callable(getattr(hub, "_create_waker", None)):
        return _nothing
    waker = _wakers.get(hub)
    if waker is None:
        waker = _wakers[hub] = _Waker(hub)
    return waker.wake


def close_hub_waker(hub: Any) -> None:
    """Close the socket pair :func:`hub_waker` gave ``hub``, if it gave one."""
    waker = _wakers.pop(hub, None)
    if waker is not None:
        waker.close()


def set_message_state(message: Any, state: str) -> None:
    """Record on a kombu Message that it was acked or rejected (its ``acknowledged`` flag)."""
    if _MESSAGE_HAS_STATE:
        message._state = state
    else:
        warn_once("Message._state", "kombu's Message._state is missing: settled states are not recorded")


def _message_has_state() -> bool:
    from kombu.message import Message

    return "_state" in getattr(Message, "__slots__", ())


_MESSAGE_HAS_STATE = _message_has_state()


# -- Celery ------------------------------------------------------------------------------------


def check_celery_version(version: str) -> None:
    """Refuse a Celery older than :data:`MIN_CELERY`, naming the supported versions and the fix."""
    from .errors import ConfigError

    try:
        found = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        return  # not a release number (a checkout): the internals check decides
    if found < MIN_CELERY:
        raise ConfigError(
            f"this Celery ({version}) is older than pulse_celery supports ({SUPPORTED_CELERY}): "
            f"install a supported one (pip install 'celery>={MIN_CELERY[0]}.{MIN_CELERY[1]},<6'), "
            "or run this worker with --no-pulse"
        )


def check_worker_consumer(c: Any) -> None:
    """Refuse to start, naming the supported versions, if Celery's consumer lacks what the step uses."""
    from celery import __version__, bootsteps

    from .errors import ConfigError

    check_celery_version(__version__)
    missing = [
        what
        for what, ok in (
            ("Consumer.strategies", isinstance(getattr(c, "strategies", None), dict)),
            (
                "Consumer.call_soon_ack (or call_soon)",
                callable(getattr(c, "call_soon_ack", None)) or callable(getattr(c, "call_soon", None)),
            ),
            ("Consumer.on_task_message", hasattr(c, "on_task_message")),
            ("Consumer.blueprint.state", hasattr(getattr(c, "blueprint", None), "state")),
            ("celery.bootsteps.CLOSE", hasattr(bootsteps, "CLOSE")),
        )
        if not ok
    ]
    if missing:
        raise ConfigError(
            f"this Celery ({__version__}) lacks {', '.join(missing)}, which pulse_celery's worker "
            f"step needs; pulse_celery supports {SUPPORTED_CELERY}: install a supported Celery, "
            "or run this worker with --no-pulse"
        )


def ack_scheduler(c: Any) -> Callable[..., Any]:
    """What Celery's own task consumer schedules a task message's ack and reject with.

    ``call_soon_ack`` from Celery 5.7, ``call_soon`` before (5.4 to 5.6 build the ack
    promises of ``on_task_received`` from it).
    """
    schedule: Callable[..., Any] | None = getattr(c, "call_soon_ack", None)
    if schedule is None:
        schedule = c.call_soon
    return schedule


def run_strategy(c: Any, task_name: str, message: Any, schedule: Callable[..., Any] | None = None) -> None:
    """Hand ``message`` to Celery's own strategy for ``task_name``, acked through the worker's loop.

    ``schedule``: what the ack and reject promises call (:func:`ack_scheduler`'s by default).
    Raises KeyError when the task is not registered in this worker.
    """
    strategy = c.strategies[task_name]
    if schedule is None:
        schedule = ack_scheduler(c)
    strategy(
        message,
        None,
        promise(schedule, (message.ack_log_error,)),
        promise(schedule, (message.reject_log_error,)),
        c.on_task_message,
    )


def celery_turns_hub_while_pool_drains(c: Any) -> bool:
    """True when Celery itself fires the hub's timers and runs queued acks while its pool drains.

    Celery 5.7's prefork pool does, from a thread of its own (see the module docstring);
    5.4 to 5.6, and every version's threads and solo pools, do not.
    """
    from celery.concurrency import prefork

    return callable(getattr(prefork, "_run_ready_callbacks", None)) and isinstance(
        getattr(c, "pool", None), prefork.TaskPool
    )


def is_warm_shutdown(c: Any) -> bool:
    """True when Celery stops its consumer for good (warm shutdown), False for a restart."""
    from celery import bootsteps

    return bool(c.blueprint.state == bootsteps.CLOSE)


def max_prefetch(c: Any) -> int | None:
    """Celery's full prefetch (concurrency x multiplier), not the one it lowers after a reconnect.

    Only once the pool has started: before, prefork's pool cannot say its size.
    """
    try:
        value = c.max_prefetch_count
    except AttributeError:
        warn_once(
            "max_prefetch_count",
            "Celery's Consumer.max_prefetch_count is not readable: complete queues use "
            "pulse_prefetch_count as their prefetch",
        )
        return None
    return int(value) if value else None


def is_unevaluated_task(target: Any) -> bool:
    """True for the proxy ``@app.task`` returns before the app is finalized."""
    from celery.local import PromiseProxy

    return isinstance(target, PromiseProxy) and not target.__evaluated__()


def app_of_task_proxy(target: Any) -> Any:
    """The app of a task proxy, without evaluating it (which would finalize the app early)."""
    try:
        factory = object.__getattribute__(target, "_Proxy__local")
        return factory.__self__
    except AttributeError:
        warn_once(
            "PromiseProxy._Proxy__local",
            "celery's PromiseProxy._Proxy__local is missing: @pulse_binding evaluates the task "
            "at decoration, which finalizes its app early",
        )
        return target._get_current_object().app


def unfinished_request_message(task_id: str) -> Any:
    """The message of this worker's reserved or running request ``task_id``, or None."""
    try:
        from celery.worker import state
    except ImportError:  # pragma: no cover
        return None
    request = getattr(state, "requests", {}).get(task_id)
    if request is None:
        return None
    return getattr(request, "message", None)


def wrap_task_run(task: Any, wrap: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
    """Make ``task`` run ``wrap(task.run)``; once per task (a second call does nothing).

    Set before the worker's tracers are built (the pool starts after the consumer steps are
    made), so Celery's tracer calls the wrapped ``run`` in every pool process.
    """
    if getattr(task.run, "__pulse_celery_wrapped__", False):
        return
    wrapped = wrap(task.run)
    wrapped.__pulse_celery_wrapped__ = True  # type: ignore[attr-defined]
    task.run = wrapped
