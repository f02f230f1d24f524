"""The worker step: a Pulse connection of its own, driven by the Celery worker's event loop.

The step lives in the consumer blueprint (``app.steps['consumer']``), so Celery restarts it
with its own consumer: on such a restart the Pulse connection is closed, which returns to
Pulse every delivery whose task Celery forgot. On warm shutdown the Pulse consumers are
cancelled first and the connection stays open until the pool has finished, so the acks of
finishing tasks still reach Pulse; then it is closed.

Pulse trouble stays on the Pulse side: connection errors are logged and the connection is
re-established with backoff, while Celery's own consumer goes on untouched.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any

import click
from amqp.exceptions import ChannelError, NotFound
from celery import Celery, bootsteps
from kombu import Connection

from . import control as _control  # noqa: F401  (registers the pulse_* remote-control commands)
from .bindings import app_bindings, complete_without_acks_late
from .config import PulseConfig, load_config
from .dispatch import Dispatcher
from .errors import ConfigError
from .eventloop import LoopConnection, Timers, backoff_delays, connect_in_background
from .handoff import Handoff
from .metrics import StatusReporter
from .session import Session
from .stats import ConnectionStats, QueueStats
from .topology import QueuePlan, kombu_queue, plan_queues

logger = logging.getLogger(__name__)

_STEP_INSTALLED = "_pulse_celery_installed"


class PulseConsumer:
    """Consume the app's Pulse queues inside one Celery worker.

    States: connecting (a connect thread runs) -> consuming (a live :class:`Session`) ->
    lost (reconnect timer) -> connecting ...; ``paused`` while the Celery broker refuses task
    messages; ``draining`` during warm shutdown (no new deliveries, the connection stays open
    for the acks of finishing tasks); ``stopping`` once closed. Every callback that arrives
    from a connect thread or a timer checks the generation and the state before acting.

    Remote control (:mod:`pulse_celery.control`) pauses, resumes and deletes single queues:
    those choices live here, not on the session, so a reconnect keeps them.
    """

    #: A session that lived this long resets the reconnect backoff when it is lost.
    HEALTHY_AFTER = 30.0

    def __init__(self, c: Any, app: Celery, config: PulseConfig) -> None:
        self.c = c
        self.app = app
        self.config = config
        self.hub = c.hub
        self.bindings = app_bindings(app)
        plans = plan_queues(config, self.bindings)  # validate now: a bad binding fails the worker start
        #: figures and remote-control state of each queue, by queue_key(); for the worker's life
        self.queue_stats: dict[str, QueueStats] = {
            queue_key(plan): QueueStats(plan.name, plan.task_name) for plan in plans
        }
        #: the latest plan of each queue, by queue_key()
        self._plans: dict[str, QueuePlan] = {queue_key(plan): plan for plan in plans}
        self.connection_stats = ConnectionStats()
        self._link = "connecting"  # or "lost": what the state is while there is no session
        self._lost_at: float | None = None
        self._check_policies()
        # Task messages (enqueue) and dead letters (both policies) go through the hand-off.
        self.handoff = Handoff(app, self.hub, self._on_handoff_ready)
        self.dispatcher = Dispatcher(app, config, c, self.handoff, self._on_handoff_failed)
        self.session: Session | None = None
        self.generation = 0
        self.stopping = False
        self.draining = False
        self.paused = False
        self._timers = Timers(self.hub)
        self._reconnect_delay = backoff_delays()
        self._pause_delay = backoff_delays(first=1.0, maximum=30.0)
        # Prometheus when pulse_metrics_port is set (checked here: fails the worker start),
        # Celery events otherwise.
        self.reporter = StatusReporter(c, config, self.status)

    def _check_policies(self) -> None:
        problems = complete_without_acks_late(self.app, self.config.ack_policy, self.bindings)
        if problems:
            raise ConfigError(problems[0])
        for binding in self.bindings:
            if (binding.ack or self.config.ack_policy) != "complete":
                continue
            task = self.app.tasks[binding.task_name]
            limit = task.time_limit or self.app.conf.task_time_limit
            if limit and limit > self.config.consumer_timeout:
                logger.warning(
                    "Task %s may run %d s, longer than the broker's consumer_timeout (%d s): RabbitMQ "
                    "would close the Pulse channel of a delivery unacked that long, and the message "
                    "would run again; lower the task's time_limit or raise consumer_timeout on the "
                    "broker (and pulse_consumer_timeout here)",
                    binding.task_name,
                    limit,
                    self.config.consumer_timeout,
                )

    @property
    def active(self) -> bool:
        """False once stopping or draining: no connecting, consuming or resuming then."""
        return not (self.stopping or self.draining)

    # -- connecting ----------------------------------------------------------------

    def start(self) -> None:
        self.stopping = self.draining = self.paused = False
        if self.config.is_memory:
            if self.c.connection is None or self.c.connection.transport.driver_type != "memory":
                raise ConfigError("pulse_url memory:// works only with a memory:// Celery broker (the demo)")
        elif self.hub is None:
            raise ConfigError(
                "Pulse consumption needs the worker's event loop, which the gevent and eventlet pools "
                "do not run; use the prefork, threads or solo pool for Pulse workers, or start this "
                "worker with --no-pulse"
            )
        self.reporter.start(self._timers)
        if self.handoff is not None:
            self.handoff.start()
        self._connect()

    def _connect(self) -> None:
        self.generation += 1
        generation = self.generation
        self._link = "connecting"
        self._state_changed()
        if self.config.is_memory:
            self._on_open((generation, self._open_shared()))
            return
        logger.info("Connecting to Pulse at %s", self.config.safe_url())
        connect_in_background(
            self.hub,
            lambda: (generation, self._open()),
            self._on_open,
            partial(self._on_open_failed, generation),
            name="pulse-celery-connect",
        )

    def _declare(self, channel: Any) -> list[QueuePlan]:
        plans = [  # fresh anonymous names each time; a queue deleted by remote control stays so
            plan
            for plan in plan_queues(self.config, self.bindings)
            if not self.queue_stats[queue_key(plan)].deleted
        ]
        for plan in plans:
            kombu_queue(self.config, plan).bind(channel).declare()
        return plans

    def _open(self) -> tuple[Connection, Any, list[QueuePlan]]:
        """Connect and declare; runs in a short-lived thread, never on the event loop."""
        connection = Connection(**self.config.connection_kwargs())
        try:
            # One attempt: the caller's backoff decides when to try again.
            connection.ensure_connection(max_retries=0)
            channel = connection.channel()
            channel.auto_decode = False  # bodies stay bytes: only JSON is ever decoded, by us
            plans = self._declare(channel)
        except Exception:
            connection.collect()
            raise
        return connection, channel, plans

    def _open_shared(self) -> tuple[Connection, Any, list[QueuePlan]]:
        """Open a channel on Celery's own in-memory connection (the demo and unit tests)."""
        channel = self.c.connection.channel()
        return self.c.connection, channel, self._declare(channel)

    def _on_open(self, result: tuple[int, tuple[Connection, Any, list[QueuePlan]]]) -> None:
        generation, (connection, channel, plans) = result
        if generation != self.generation or not self.active or self.session is not None:
            if not self.config.is_memory:
                connection.collect()
            return
        loop_connection = None
        if not self.config.is_memory:
            loop_connection = LoopConnection(
                connection, self.hub, partial(self._on_lost, generation), "Pulse"
            )
            loop_connection.attach()
        stats = {}
        for plan in plans:
            key = queue_key(plan)
            self._plans[key] = plan
            stats[plan.name] = self.queue_stats[key]
            stats[plan.name].name = plan.name  # an anonymous queue has a new name each time
        self.session = Session(connection, channel, plans, loop_connection, stats)
        self.connection_stats.connects += 1
        again = ""
        if self._lost_at is not None:
            again = f" again, {time.monotonic() - self._lost_at:.1f} s after it was lost"
            self._lost_at = None
        logger.info(
            "Connected to Pulse at %s%s; queues: %s",
            self.config.safe_url(),
            again,
            ", ".join(f"{p.name} -> {p.task_name}{self._paused_note(p)}" for p in plans) or "none",
        )
        self._timers.later(self.config.depth_check_interval, self._check_depths, self.session)
        self._consume_if_ready()
        self._state_changed()

    def _paused_note(self, plan: QueuePlan) -> str:
        return " (paused by remote control)" if self.queue_stats[queue_key(plan)].paused else ""

    def _on_open_failed(self, generation: int, exc: BaseException) -> None:
        if generation != self.generation or not self.active:
            return
        self.connection_stats.error(describe_error(exc, self.config))
        self._link = "lost"
        self._state_changed()
        delay = self._reconnect_delay()
        logger.error(
            "Cannot connect to Pulse at %s: %s; nothing is consumed until it works; retrying in %.1f s",
            self.config.safe_url(),
            describe_error(exc, self.config),
            delay,
        )
        self._timers.later(delay, self._reconnect)

    def _on_lost(self, generation: int, exc: BaseException) -> None:
        session = self.session
        if generation != self.generation or session is None:
            return
        self.session = None
        session.release()
        self._link = "lost"
        self._lost_at = time.monotonic()
        self.connection_stats.losses += 1
        self.connection_stats.error(describe_error(exc, self.config))
        if time.monotonic() - session.opened_at > self.HEALTHY_AFTER:
            self._reconnect_delay = backoff_delays()
        delay = self._reconnect_delay()
        logger.warning(
            "Pulse connection lost (%s); %d unacknowledged messages will be redelivered by the "
            "broker; reconnecting in %.1f s",
            describe_error(exc, self.config),
            self.in_flight(session),
            delay,
        )
        if self.active:
            self._timers.later(delay, self._reconnect)
        self._state_changed()

    def _reconnect(self) -> None:
        if self.active and self.session is None:
            self._connect()

    @staticmethod
    def in_flight(session: Session) -> int:
        """Deliveries received on ``session`` and not yet acked, rejected or requeued."""
        c = session.counts
        return c["delivered"] - c["ack"] - c["reject"] - c["requeue"]

    # -- consuming -----------------------------------------------------------------

    def prefetch_for(self, plan: QueuePlan) -> int:
        """Prefetch per queue: Celery's own for tasks run here, the hand-off pipe's otherwise."""
        if all((b.ack or self.config.ack_policy) == "complete" for b in plan.bindings):
            # Celery's full figure (concurrency x multiplier), not its current one, which it
            # lowers for a while after a reconnect of its own.
            return max(1, getattr(self.c, "max_prefetch_count", 0) or self.config.prefetch_count)
        return self.config.prefetch_count

    def _consume_if_ready(self) -> None:
        session = self.session
        if session is None or not session.alive or self.paused or not self.active:
            return
        if self.handoff is not None and not self.handoff.ready:
            logger.info("Pulse consumption waits for the hand-off connection to the Celery broker")
            return
        session.guard(self._start_consumers, session)

    def _start_consumers(self, session: Session) -> None:
        """Consume every queue not consumed yet, except those paused or deleted by remote control."""
        for plan in session.plans:
            stats = self.queue_stats[queue_key(plan)]
            if plan.name in session.consumers or stats.paused or stats.deleted:
                continue
            self._consume(session, plan)

    def _consume(self, session: Session, plan: QueuePlan) -> None:
        # With global=False the limit applies to each consumer started after it.
        session.channel.basic_qos(0, self.prefetch_for(plan), False)
        tag = f"pulse-celery.{self.generation}.{plan.name}"
        session.channel.basic_consume(
            queue=plan.name,
            no_ack=False,
            callback=partial(self.dispatcher.on_message, plan=plan, session=session),
            consumer_tag=tag,
            on_cancel=partial(self._on_cancelled_by_broker, session, plan),
        )
        session.consumers[plan.name] = tag

    def _on_cancelled_by_broker(self, session: Session, plan: QueuePlan, tag: str) -> None:
        """The broker cancelled our consumer: the queue was deleted (Pulse Guardian does that)."""
        if session.consumers.get(plan.name) == tag:
            del session.consumers[plan.name]
        stats = self.queue_stats[queue_key(plan)]
        if stats.deleted:
            return  # deleted by our own pulse_delete (on another worker): stays deleted
        stats.error("the queue was deleted under this worker (Pulse Guardian?); declared again")
        self._state_changed()
        logger.error(
            "Pulse queue %s was deleted under this worker (Pulse Guardian deletes queues that grow "
            "past its limit): messages published to its exchanges while it was gone are LOST for "
            "this consumer, and unacknowledged ones it held are gone with it; declaring the queue "
            "and its bindings again",
            plan.name,
        )
        if self.hub is not None:
            self.hub.call_soon(self._redeclare, session, plan)

    def _redeclare(self, session: Session, plan: QueuePlan) -> None:
        if session is not self.session or not session.alive or not self.active:
            return
        stats = self.queue_stats[queue_key(plan)]
        if stats.deleted:
            return

        def redeclare() -> None:
            kombu_queue(self.config, plan).bind(session.channel).declare()
            if not self.paused and not stats.paused:
                self._consume(session, plan)
            logger.warning(
                "Pulse queue %s declared again with its bindings; %s",
                plan.name,
                "paused by remote control" if stats.paused else "consuming",
            )

        session.guard(redeclare)
        self._state_changed()

    def _check_depths(self, session: Session) -> None:
        """Warn well below Guardian's thresholds, once per crossing, while messages pile up."""
        if session is not self.session or not session.alive or not self.active:
            return
        for plan in session.plans:
            declared = session.guard(session.channel.queue_declare, plan.name, True)
            if declared is None:
                return  # the session is gone
            depth = declared.message_count + self.in_flight(session)
            was_deep = plan.name in session.deep_queues
            if depth >= self.config.queue_warn_depth and not was_deep:
                session.deep_queues.add(plan.name)
                logger.warning(
                    "Pulse queue %s holds %d messages (warning at %d; Pulse Guardian warns at 2,000 "
                    "and deletes the queue at 8,000 by default): add workers, or set "
                    "pulse_queue_max_length",
                    plan.name,
                    depth,
                    self.config.queue_warn_depth,
                )
            elif depth < self.config.queue_warn_depth // 2 and was_deep:
                session.deep_queues.discard(plan.name)
                logger.info("Pulse queue %s is back to %d messages", plan.name, depth)
        self._timers.later(self.config.depth_check_interval, self._check_depths, session)

    def _stop_consumers(self, session: Session) -> None:
        tags, session.consumers = session.consumers, {}
        for tag in tags.values():
            session.guard(session.channel.basic_cancel, tag)

    def _on_handoff_ready(self, ready: bool) -> None:
        if ready:
            self._pause_delay = backoff_delays(first=1.0, maximum=30.0)
            self._consume_if_ready()
        elif self.session is not None and self.session.consuming:
            logger.warning("Pulse consumption paused until the Celery broker is reachable again")
            self._stop_consumers(self.session)
        self._state_changed()

    def _on_handoff_failed(self, exc: BaseException) -> None:
        """Stop taking Pulse deliveries for a while instead of cycling them through requeue."""
        if self.paused or not self.active:
            return
        self.paused = True
        delay = self._pause_delay()
        logger.warning("Pulse consumption paused for %.1f s: the Celery broker refused a task message", delay)
        self.connection_stats.error(f"the Celery broker refused a task message: {exc}")
        if self.session is not None:
            self._stop_consumers(self.session)
        self._timers.later(delay, self._resume)
        self._state_changed()

    def _resume(self) -> None:
        self.paused = False
        self._consume_if_ready()
        if self.session is not None and self.session.consuming:
            logger.info("Pulse consumption resumed: the Celery broker takes task messages again")
        self._state_changed()

    # -- stopping ------------------------------------------------------------------

    def stop(self) -> None:
        """Celery stops its consumer: for a restart, close; for a warm shutdown, only cancel."""
        if self.c.blueprint.state == bootsteps.CLOSE:
            self._drain()
            return
        self._close("Celery's consumer is restarting")

    def _drain(self) -> None:
        """Warm shutdown: take no new deliveries; keep the connection for the last acks.

        Nothing reads the sockets while the pool finishes its tasks (the event loop no longer
        runs): the connections only send heartbeats then (see LoopConnection.stop_reading).
        """
        self.draining = True
        self._timers.cancel_all()
        session = self.session
        if session is not None:
            logger.info("Warm shutdown: no new Pulse deliveries; finishing the ones in flight")
            self._stop_consumers(session)
            # The loop may not turn again: acks go out as they come from now on.
            session.acker.batched = False
            session.acker.flush()
            if session.loop_connection is not None:
                session.loop_connection.stop_reading()
        if self.handoff is not None:
            self.handoff.stop_reading()
        self._state_changed()

    def shutdown(self) -> None:
        """The pool has drained: send the last acks, then close."""
        if self.handoff is not None:
            self.handoff.flush(timeout=10.0)
        self._close("worker shutdown")

    def _close(self, why: str) -> None:
        self.stopping = True
        self.generation += 1
        self._timers.cancel_all()
        session, self.session = self.session, None
        if session is not None:
            logger.info(
                "Closing the Pulse connection (%s); %d unacknowledged messages go back to their queues",
                why,
                self.in_flight(session),
            )
            session.acker.flush()  # acks already decided on must not be redelivered
            session.close()
        if self.handoff is not None:
            self.handoff.close()
        self._state_changed()

    # -- remote control, status -----------------------------------------------------
    # Called on the event loop's thread (Celery runs remote-control commands there), except
    # status(), which the Prometheus exporter also calls from its HTTP thread: it only reads.

    def state(self) -> str:
        """The connection's state, one of :data:`pulse_celery.stats.CONNECTION_STATES`."""
        if self.stopping:
            return "stopped"
        if self.draining:
            return "draining"
        session = self.session
        if session is None or not session.alive:
            return self._link
        if self.paused or (self.handoff is not None and not self.handoff.ready):
            return "paused-by-handoff"
        return "consuming" if session.consuming else "connected"

    def _state_changed(self, queues_changed: bool = False) -> None:
        """Report a new state of the connection or of queues (as a Celery event; callers log it)."""
        if self.connection_stats.enter(self.state()) or queues_changed:
            self.reporter.changed()

    def status(self) -> dict[str, Any]:
        """Return what ``pulse_status`` replies: the connection, then each queue's figures."""
        session = self.session
        live = session is not None and session.alive
        queues = {}
        for key, stats in list(self.queue_stats.items()):
            plan = self._plans[key]
            if stats.deleted:
                state = "deleted"
            elif stats.paused:
                state = "paused"
            elif live and session is not None and stats.name in session.consumers:
                state = "consuming"
            else:
                state = "waiting"
            in_flight = session.in_flight[stats.name] if live and session is not None else 0
            queues[stats.name] = stats.snapshot(
                state=state, prefetch=self.prefetch_for(plan), in_flight=in_flight
            )
        return {
            "connection": {**self.connection_stats.snapshot(), "url": self.config.safe_url()},
            "queues": queues,
        }

    def select(self, queue: str | None) -> list[str]:
        """Return the keys of the queues ``queue`` names (all when None); LookupError if none.

        A queue is named by its full name (``queue/alice/builds``), by the name given to
        ``@pulse_binding`` (``builds``), or by its task's name (for anonymous queues).
        """
        if not queue:
            return list(self.queue_stats)
        own = f"queue/{self.config.user}/"
        keys = [
            key
            for key, stats in self.queue_stats.items()
            if queue in (stats.name, key, stats.task) or own + queue == stats.name
        ]
        if not keys:
            known = ", ".join(s.name for s in self.queue_stats.values()) or "none"
            raise LookupError(f"no Pulse queue {queue!r} in this worker; its queues: {known}")
        return keys

    def pause(self, queue: str | None = None) -> list[str]:
        """Cancel the consumer of ``queue`` (every queue when None); it stays so across reconnects.

        Deliveries already received are still acked or rejected on the same channel.
        Return one line per queue for the reply.
        """
        lines = []
        session = self.session
        for key in self.select(queue):
            stats = self.queue_stats[key]
            if stats.deleted:
                lines.append(f"{stats.name}: deleted by remote control; nothing to pause")
                continue
            if stats.paused:
                lines.append(f"{stats.name}: already paused")
                continue
            stats.paused = True
            in_flight = 0
            if session is not None and session.alive:
                in_flight = session.in_flight[stats.name]
                tag = session.consumers.pop(stats.name, None)
                if tag is not None:
                    session.guard(session.channel.basic_cancel, tag)
            logger.info(
                "Pulse queue %s paused by remote control: no new deliveries; the %d in flight are "
                "still acked; new messages wait in the queue on Pulse, where they count toward "
                "Pulse Guardian's limits",
                stats.name,
                in_flight,
            )
            lines.append(f"{stats.name}: paused; {in_flight} deliveries in flight are still acked")
        self._state_changed(queues_changed=True)
        return lines

    def resume(self, queue: str | None = None) -> list[str]:
        """Consume ``queue`` (every queue when None) again after :meth:`pause`."""
        lines = []
        resumed = []
        for key in self.select(queue):
            stats = self.queue_stats[key]
            if stats.deleted:
                lines.append(
                    f"{stats.name}: deleted by remote control; a restart of the worker declares it again"
                )
            elif not stats.paused:
                lines.append(f"{stats.name}: not paused")
            else:
                stats.paused = False
                resumed.append(stats)
                lines.append(f"{stats.name}: resumed")
        self._consume_if_ready()
        for stats in resumed:
            session = self.session
            if session is not None and stats.name in session.consumers:
                logger.info("Pulse queue %s resumed by remote control; consuming", stats.name)
            else:
                logger.info(
                    "Pulse queue %s resumed by remote control; consuming once the connection allows "
                    "(now: %s)",
                    stats.name,
                    self.state(),
                )
        self._state_changed(queues_changed=True)
        return lines

    def delete(self, queue: str) -> list[str]:
        """Cancel the consumer of ``queue``, unbind it and delete it on Pulse.

        This worker does not declare it again until it restarts; a restart does, because
        the bindings are in the code. Refused while there is no Pulse connection.
        """
        keys = self.select(queue)
        session = self.session
        if session is None or not session.alive:
            raise RuntimeError(
                f"not connected to Pulse (state: {self.state()}); nothing was deleted; try again "
                "once pulse_status shows the connection up"
            )
        lines = []
        for key in keys:
            stats = self.queue_stats[key]
            if stats.deleted:
                lines.append(f"{stats.name}: already deleted")
                continue
            plan = self._plans[key]
            stats.deleted = True
            stats.paused = False
            in_flight = session.in_flight[stats.name]
            tag = session.consumers.pop(stats.name, None)
            if tag is not None:
                session.guard(session.channel.basic_cancel, tag)
            outcome = session.guard(drop_queue, session, plan)
            if outcome is None or isinstance(outcome, ChannelError):
                why = describe_error(outcome, self.config) if outcome else "the Pulse connection was lost"
                stats.deleted = False
                stats.error(f"pulse_delete failed: {why}")
                logger.error("Pulse queue %s NOT deleted by remote control: %s", stats.name, why)
                lines.append(f"{stats.name}: NOT deleted: {why}")
                continue
            session.plans = [p for p in session.plans if p.name != plan.name]
            logger.warning(
                "Pulse queue %s deleted by remote control (%s); its bindings are gone and messages "
                "published to them are not kept for this worker; the %d deliveries in flight are "
                "still acked; this worker will not declare it again, but a restart does",
                stats.name,
                outcome,
                in_flight,
            )
            lines.append(
                f"{stats.name}: deleted ({outcome}); {in_flight} deliveries in flight are still "
                "acked; not declared again by this worker, but a restart of the worker declares it "
                "again (its bindings are in the code)"
            )
        self._consume_if_ready()  # a queue that could not be deleted is consumed again
        self._state_changed(queues_changed=True)
        return lines


def queue_key(plan: QueuePlan) -> str:
    """Name a queue across reconnects: its full name, or its task's for an anonymous queue."""
    return plan.task_name if plan.anonymous else plan.name


def drop_queue(session: Session, plan: QueuePlan) -> str | ChannelError:
    """Unbind ``plan``'s bindings and delete its queue, on a channel of its own.

    A channel error (permission refused, say) closes only that channel, never the one that
    carries the deliveries: it is returned, not raised. Connection errors propagate (the
    caller guards).
    """
    channel = session.connection.connection.channel()
    try:
        for b in plan.bindings:
            channel.queue_unbind(queue=plan.name, exchange=b.exchange, routing_key=b.routing_key)
        dropped = channel.queue_delete(plan.name)
    except NotFound:
        return "it was already gone"
    except ChannelError as exc:
        return exc
    finally:
        if channel.is_open:
            channel.close()
    return f"{dropped or 0} ready messages dropped with it"


def describe_error(exc: BaseException, config: PulseConfig) -> str:
    """Say what a connection or declaration error means for a Pulse user, with the fix."""
    text = str(exc) or repr(exc)
    code = getattr(exc, "reply_code", None) or getattr(exc, "code", None)
    if config.password and config.password in text:
        text = text.replace(config.password, "****")
    if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text:
        return (
            f"{text} -- the server's certificate is not trusted for {config.host!r}: check the host "
            "name in pulse_url, and pulse_ssl_ca_certs if the server uses a private CA"
        )
    if "WRONG_VERSION_NUMBER" in text or "wrong version number" in text:
        return f"{text} -- amqps:// reached a port without TLS; Pulse's TLS port is 5671"
    if code == 403 or "ACCESS_REFUSED" in text:
        return (
            f"{text} -- check pulse_user/pulse_password, and that queues are named "
            f"queue/{config.user}/... and foreign exchanges exist"
        )
    if code == 404 or "NOT_FOUND" in text:
        return f"{text} -- an exchange named in a binding does not exist on this Pulse vhost"
    if code == 406 or "PRECONDITION_FAILED" in text:
        return (
            f"{text} -- the queue exists with other arguments (queue type or x-max-length); set "
            "pulse_queue_type / pulse_queue_max_length to match it, or delete the queue"
        )
    return text


class PulseStep(bootsteps.StartStopStep):
    """Consumer-blueprint step that runs :class:`PulseConsumer` beside Celery's own consumer."""

    label = "Pulse"
    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, c: Any, pulse: bool = True, **kwargs: Any) -> None:
        self.enabled = pulse
        c.pulse = None
        super().__init__(c, **kwargs)

    def include_if(self, c: Any) -> bool:
        return bool(self.enabled and app_bindings(c.app))

    def create(self, c: Any) -> PulseConsumer:
        c.pulse = PulseConsumer(c, c.app, load_config(c.app.conf))
        return c.pulse

    def shutdown(self, c: Any) -> None:
        if self.obj is not None:
            self.obj.shutdown()


def install(app: Celery) -> None:
    """Add the Pulse step and the ``--pulse/--no-pulse`` worker option to ``app`` (idempotent)."""
    if getattr(app, _STEP_INSTALLED, False):
        return
    setattr(app, _STEP_INSTALLED, True)
    app.steps["consumer"].add(PulseStep)
    app.user_options["worker"].add(
        click.Option(
            ["--pulse/--no-pulse"],
            default=True,
            show_default=True,
            help="Consume the Pulse queues this app's tasks are bound to.",
        )
    )
