"""The standalone host: the Go ``pulse`` client's API in Python, on an event loop of its own.

::

    from pulse_celery import PulseConnection

    def on_message(payload, delivery):
        print(delivery.routing_key, payload["status"]["taskId"])

    with PulseConnection(user="alice", password="...") as conn:
        builds = conn.consume("builds", on_message, prefetch=20,
                              bindings=[("exchange/taskcluster-queue/v1/task-completed", "primary.#")])
        conn.run()  # blocks until conn.close(), from a callback, a signal handler or a thread

The engine underneath is the Celery worker's: the same reconnects, TLS checks, Guardian
recovery and acks. Callbacks run one at a time on the connection's thread; a slow callback
holds the others (and the heartbeats) while it runs, so keep them short or hand work off.
Every method may be called from any thread: it runs on the connection's thread and returns
once done there.
"""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from amqp.exceptions import NotFound

from ..errors import PulseCeleryError
from .bindings import as_binding
from .config import PulseConfig, build_config
from .consumer import QueueConsumer
from .diagnose import describe_error
from .engine import Engine, open_any_host
from .events import Connected
from .handler import Callback, CallbackRunner, OnFailure
from .loop import Loop
from .topology import QueueSpec, anonymous_queue_name, queue_name, unbind_and_delete, validate_queue_suffix

logger = logging.getLogger(__name__)

_anonymous = itertools.count(1)


def connection_config(user: str, password: str, url: str, settings: dict[str, Any]) -> PulseConfig:
    """The settings of ``PulseConnection(user, password, url, **settings)``; ConfigError with the fix."""
    unknown = set(settings) - set(PulseConfig.__dataclass_fields__)
    if unknown:
        raise PulseCeleryError(f"unknown setting(s) {', '.join(sorted(unknown))}; see PulseConfig")
    given = {"user": user or None, "password": password or None, "url": url or None, **settings}
    config: PulseConfig = build_config(PulseConfig, given, option_prefix="")
    return config


@dataclass(frozen=True)
class Subscription:
    """What one ``consume(...)`` asks for, checked: the queue, the callback's runner, its prefetch."""

    spec: QueueSpec
    runner: CallbackRunner
    #: the callback's name, for the log lines and the queue's figures
    label: str
    prefetch: int


def subscription(
    config: PulseConfig,
    queue: str | None,
    callback: Callback,
    prefetch: int | None,
    auto_ack: bool,
    bindings: Iterable[Any],
    on_failure: OnFailure | None,
    payload: type | None,
    all_messages: bool,
    max_length: int | None = None,
    expires: float | None = None,
) -> Subscription:
    """Check ``consume``'s arguments (ConfigError, BindingError or PulseCeleryError with the fix).

    ``queue`` is ``queue/<user>/<queue>``, or an anonymous queue for "" and None.
    """
    for name, value in (("max_length", max_length), ("expires", expires)):
        if value is not None and (isinstance(value, bool) or not value >= 1):
            raise PulseCeleryError(f"{name} must be at least 1 (or None), not {value!r}")
        if value is not None and not queue:
            raise PulseCeleryError(f"{name} is for named queues; an anonymous queue dies with its connection")
    window = config.prefetch_count if prefetch is None else int(prefetch)
    if window < 1:
        raise PulseCeleryError("prefetch must be at least 1 (0 would let the broker send everything)")
    checked = tuple(as_binding(b, all_messages=all_messages) for b in bindings)
    if not queue:
        short_name = getattr(callback, "__name__", "consume")
        spec = QueueSpec(anonymous_queue_name(config.user, short_name), checked, True, "classic")
    else:
        spec = QueueSpec(
            queue_name(config.user, validate_queue_suffix(queue)),
            checked,
            False,
            config.queue_type,
            max_length=None if max_length is None else int(max_length),
            expires=expires,
        )
    runner = CallbackRunner.for_config(
        config, callback, auto_ack=auto_ack, on_failure=on_failure, payload=payload
    )
    label = getattr(callback, "__qualname__", None) or repr(callback)
    return Subscription(spec, runner, label, window)


class PulseQueue:
    """A queue being consumed: pause, resume, close, delete (the Go client's ``PulseQueue``)."""

    def __init__(self, connection: PulseConnection, consumer: QueueConsumer) -> None:
        self._connection = connection
        self._consumer = consumer

    @property
    def name(self) -> str:
        """The queue's full name (an anonymous queue gets a new one on each connect)."""
        return self._consumer.name

    @property
    def state(self) -> str:
        """consuming, paused, waiting (for the connection or a retry), closed or deleted."""
        return self._consumer.state()

    def pause(self) -> int:
        """Take no new deliveries (also after a reconnect); return how many are in flight.

        Deliveries already received are still acked or rejected. An anonymous queue is
        deleted by the broker meanwhile (auto-delete) and declared again by :meth:`resume`:
        messages published in between are not kept.
        """
        return self._connection._call(lambda: self._consumer.pause("the application"))

    def resume(self) -> None:
        """Take deliveries again after :meth:`pause`."""
        self._connection._call(lambda: self._consumer.resume("the application"))

    def close(self) -> None:
        """Stop consuming for good; unsettled deliveries go back to the queue, which stays on Pulse."""
        self._connection._call(self._consumer.close)

    def delete(self) -> str:
        """Stop consuming, unbind and delete the queue on Pulse; return what was dropped with it.

        Raises :class:`~pulse_celery.errors.PulseCeleryError` with the broker's reason if it
        refuses. Without a live connection it connects once, just for this.
        """
        return self._connection._call(self._delete)

    def _delete(self) -> str:
        consumer = self._consumer
        if not self._connection.engine.up:
            return self._connection._delete_offline(consumer)
        outcome = consumer.delete()
        if isinstance(outcome, BaseException):
            raise PulseCeleryError(f"queue {consumer.name} was not deleted: {outcome}") from outcome
        logger.warning("Pulse queue %s deleted (%s); its bindings are gone", consumer.name, outcome)
        return outcome

    def wait_consuming(self, timeout: float | None = None) -> str | None:
        """Block until the queue is consumed; return None, or why not (the queue's or the connection's error).

        Returns as soon as there is an answer: consuming, a refusal (a missing exchange, say;
        the queue keeps retrying meanwhile), or a failed connect. ``"timed out"`` otherwise.
        """
        consumer, engine = self._consumer, self._connection.engine
        loop = self._connection._loop
        if loop.in_loop_thread() or not loop.running:
            raise PulseCeleryError(
                "wait_consuming() waits for the connection's thread: call it from another thread, "
                "after start()"
            )

        def answer() -> tuple[str | None] | None:  # a 1-tuple: truthy even when it holds None
            if consumer.consuming:
                return (None,)
            if consumer.recovery.failure:
                return (consumer.recovery.failure,)
            if engine.state() == "lost" and engine.stats.last_error:
                return (f"cannot connect to Pulse at {engine.config.safe_url()}: {engine.stats.last_error}",)
            return None

        found = self._connection._wait_for(answer, timeout)
        return found[0] if found else "timed out"

    def status(self) -> dict[str, Any]:
        """This queue's figures: state, in flight, delivered, acked, rejected, requeued, ..."""
        consumer = self._consumer
        return consumer.stats.snapshot(
            state=consumer.state(), prefetch=consumer.prefetch, in_flight=consumer.in_flight
        )

    def __repr__(self) -> str:
        return f"<PulseQueue {self.name} {self.state}>"


class PulseConnection:
    """A connection to Pulse that consumes queues with callbacks (the Go client's ``pulse.Connection``).

    ``user``, ``password`` and ``url`` follow the Go client's precedence: the argument, then
    the URL's own, then ``PULSE_USERNAME``/``PULSE_PASSWORD`` (``PULSE_URL``), then ``guest``
    (production Pulse over TLS). Other settings are keyword arguments named as in
    :class:`~pulse_celery.pulse.config.PulseConfig` (``heartbeat=60``), else ``PULSE_<NAME>``
    in the environment. Nothing connects until :meth:`run` or :meth:`start`.

    ``on_connected(event)`` is called on the connection's thread with a
    :class:`~pulse_celery.pulse.events.Connected` each time a connection comes up, before
    its deliveries are handled: ``event.first`` on the first, ``event.reconnect`` after a
    loss (anonymous queues missed what was published meanwhile: resync then), and
    ``event.recycled`` when ``recycle_interval`` replaced a live connection (nothing was
    missed). ``event.queues`` names each queue and whether it is anonymous. An error it
    raises is logged; consumption goes on.
    """

    def __init__(
        self,
        user: str = "",
        password: str = "",
        url: str = "",
        *,
        on_connected: Callable[[Connected], None] | None = None,
        **settings: Any,
    ) -> None:
        self._setup(connection_config(user, password, url, settings), on_connected)

    @classmethod
    def from_config(
        cls, config: PulseConfig, *, on_connected: Callable[[Connected], None] | None = None
    ) -> PulseConnection:
        """A connection with settings already resolved (``load_config(app.conf)``, say)."""
        connection = cls.__new__(cls)
        connection._setup(config, on_connected)
        return connection

    def _setup(self, config: PulseConfig, on_connected: Callable[[Connected], None] | None = None) -> None:
        self.config = config
        self._loop = Loop()
        #: notified on every change of the connection's or a queue's state
        self._changes = threading.Condition()
        self.engine = Engine(
            config, self._loop.hub, isolate=True, on_changed=self._notify, on_connected=on_connected
        )
        self._thread: threading.Thread | None = None
        self._closed = False

    # -- consuming -------------------------------------------------------------------------

    def consume(
        self,
        queue: str | None,
        callback: Callback,
        prefetch: int | None = None,
        auto_ack: bool = False,
        bindings: Iterable[Any] = (),
        *,
        on_failure: OnFailure | None = None,
        payload: type | None = None,
        all_messages: bool = False,
        max_length: int | None = None,
        expires: float | None = None,
    ) -> PulseQueue:
        """Consume ``queue`` (``queue/<user>/<queue>``; "" or None: anonymous) with ``callback``.

        ``callback(payload, delivery)`` gets the decoded JSON body and the
        :class:`~pulse_celery.pulse.delivery.Delivery`.

        ``bindings`` are ``(exchange, routing-key pattern)`` pairs, Taskcluster references or
        objects with ``ExchangeName()``/``RoutingKey()``. Each queue gets its own channel and
        ``prefetch`` (default ``prefetch_count``). A queue that cannot be declared or bound
        is retried on its own; the others consume on. See :mod:`pulse_celery.pulse.handler`
        for what happens when the callback raises, and ``on_failure``.

        A named queue's ``max_length`` (x-max-length; default ``queue_max_length``) and
        ``expires`` (x-expires, seconds without a consumer before the broker deletes it) are
        its own. Bindings an earlier run declared on the named queue, and this call does not,
        are removed (see :mod:`~pulse_celery.pulse.records`).
        """
        if self._closed:
            raise PulseCeleryError("this Pulse connection is closed; make a new one")
        sub = subscription(
            self.config,
            queue,
            callback,
            prefetch,
            auto_ack,
            bindings,
            on_failure,
            payload,
            all_messages,
            max_length=max_length,
            expires=expires,
        )
        key = f"anonymous-{next(_anonymous)}" if sub.spec.anonymous else sub.spec.name
        consumer = self._call(
            lambda: self.engine.add(
                key, sub.spec, sub.runner, sub.prefetch, label=sub.label, auto_ack=auto_ack
            )
        )
        return PulseQueue(self, consumer)

    # -- running ---------------------------------------------------------------------------

    def run(self) -> None:
        """Connect and consume in this thread until :meth:`close` (Ctrl-C closes, then re-raises)."""
        if self._closed and not self._loop.in_loop_thread():
            raise PulseCeleryError("this Pulse connection is closed; make a new one")
        try:
            self._loop.run(on_start=self._start_engine)
        except KeyboardInterrupt:
            self._closed = True
            self.engine.close("interrupted")
            raise
        finally:
            if self._closed:
                self._loop.close()  # its poller and the socket that wakes it

    def _start_engine(self) -> None:
        if not self._closed:  # close() may have come first, from another thread
            self.engine.start()

    def start(self) -> PulseConnection:
        """Run :meth:`run` in a background thread; return at once."""
        if self._closed:
            raise PulseCeleryError("this Pulse connection is closed; make a new one")
        if self._thread is None:
            thread = threading.Thread(target=self.run, name="pulse-connection", daemon=True)
            self._loop.claim(thread)  # from now on, calls from other threads queue for it
            self._thread = thread
            thread.start()
        return self

    def close(self, timeout: float = 30.0) -> None:
        """Stop consuming, send the acks decided on, close the connection; :meth:`run` returns.

        Unsettled deliveries go back to their queues; named queues stay on Pulse.
        """
        if self._closed:
            return
        self._closed = True
        if not self._loop.running:
            self.engine.close("closed by the application")
            self._loop.close()
        elif self._loop.in_loop_thread():
            self._loop.call_soon(self._shut)  # from a callback: after the frame it came in
            return
        else:
            try:
                self._loop.call(self._shut, timeout)
            except RuntimeError:  # the loop stopped meanwhile
                self.engine.close("closed by the application")
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _shut(self) -> None:
        in_flight = self.engine.close("closed by the application")
        if in_flight:
            logger.info(
                "Closed the Pulse connection; %d unsettled messages go back to their queues", in_flight
            )
        self._loop.stop()

    def __enter__(self) -> PulseConnection:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """connecting, consuming, connected, lost or stopped."""
        return self.engine.state()

    def status(self) -> dict[str, Any]:
        """The connection's figures and each queue's, as the Celery worker's ``pulse_status``."""
        return self._call(self.engine.status)

    def _notify(self) -> None:
        with self._changes:
            self._changes.notify_all()

    def _wait_for(self, answer: Any, timeout: float | None) -> Any:
        with self._changes:
            return self._changes.wait_for(answer, timeout)

    def _call(self, fun: Any, timeout: float | None = 60.0) -> Any:
        return self._loop.call(fun, timeout)

    def _delete_offline(self, consumer: QueueConsumer) -> str:
        """Delete a queue over a short-lived connection of its own (the loop's is not up)."""
        before = consumer.wants
        consumer.wants = "deleted"  # first, so that no connect declares it again meanwhile
        try:
            with open_any_host(self.config, max(self.engine.host, 0)) as connection:
                dropped = unbind_and_delete(connection.channel(), consumer.spec)
        except NotFound:
            dropped = 0
        except Exception as exc:
            consumer.wants = before
            raise PulseCeleryError(
                f"queue {consumer.name} was not deleted: {describe_error(exc, self.config)}"
            ) from exc
        consumer.close()
        consumer.wants = "deleted"
        return f"{dropped} ready messages dropped with it"
