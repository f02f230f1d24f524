"""The Pulse side of one Celery worker: the engine on the worker's hub, fed to dispatch and hand-off.

:class:`PulseWorker` wires the parts and owns the few decisions that are the worker's own:

* consumption is held while the hand-off to the Celery broker is down, and for a growing
  backoff after the broker refused a task message, so that nothing cycles through requeue;
* a restart of Celery's consumer closes the Pulse connection, which returns to Pulse every
  delivery whose task Celery forgot; a warm shutdown only stops new deliveries and keeps
  the connection for the acks of finishing tasks (kept alive by a thread of ours where
  Celery does not turn its loop while the pool drains: drain.py), then closes it;
* a queue whose declare or bind fails (a missing exchange, PRECONDITION_FAILED, a refused
  permission) is retried alone with its own backoff; the app's other queues consume on.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from celery import Celery

from .. import _compat
from ..bindings import app_bindings, complete_without_acks_late
from ..config import AppConfig
from ..errors import ConfigError
from ..plan import QueuePlan, plan_queues
from ..pulse.engine import Engine
from ..pulse.events import Connected
from ..pulse.loop import Backoff, Timers
from ..signals import pulse_connected
from .dispatch import Dispatcher
from .drain import DrainKeeper
from .handoff import Handoff
from .metrics import StatusReporter
from .remote import RemoteControl

logger = logging.getLogger(__name__)

#: The engine's state while the hand-off holds consumption.
HELD = "paused-by-handoff"


def check_policies(app: Celery, config: AppConfig, plans: list[QueuePlan]) -> None:
    """Refuse ``complete`` without acks_late; warn of time limits past the broker's consumer_timeout."""
    bindings = [b for plan in plans for b in plan.bindings]
    problems = complete_without_acks_late(app, config.ack_policy, bindings)
    if problems:
        raise ConfigError(problems[0])
    for binding in bindings:
        if binding.policy(config.ack_policy) != "complete":
            continue
        task = app.tasks[binding.task_name]
        limit = task.time_limit or app.conf.task_time_limit
        if limit and limit > config.consumer_timeout:
            logger.warning(
                "Task %s may run %d s, longer than the broker's consumer_timeout (%d s): RabbitMQ "
                "would close the Pulse channel of a delivery unacked that long, and the message "
                "would run again; lower the task's time_limit or raise consumer_timeout on the "
                "broker (and pulse_consumer_timeout here)",
                binding.task_name,
                limit,
                config.consumer_timeout,
            )


class PulseWorker:
    """Consume the app's Pulse queues inside one Celery worker (``c.pulse``)."""

    def __init__(self, c: Any, app: Celery, config: AppConfig) -> None:
        self.c = c
        self.app = app
        self.config = config
        self.hub = c.hub
        # A bad binding or pulse_queues entry fails the worker start.
        self.plans = plan_queues(config, app_bindings(app), config.queues)
        check_policies(app, config, self.plans)
        # Task messages (enqueue) and dead letters (both policies) go through the hand-off.
        self.handoff = Handoff(app, self.hub, self._on_handoff_ready)
        # Acks of complete tasks: Celery's scheduler, or our thread while the pool drains.
        self.keeper = DrainKeeper()
        self.dispatcher = Dispatcher(
            app, config, c, self.handoff, self._on_handoff_failed, schedule_ack=self.keeper.schedule
        )
        self.timers = Timers(self.hub)
        self._refused = False  # the Celery broker refused a task message: held for a while
        self._refusal_backoff = Backoff()
        # Prometheus when pulse_metrics_port is set (checked here: fails the worker start),
        # Celery events otherwise.
        self.reporter = StatusReporter(c, config, self.status)
        connect = (lambda: c.connection) if config.is_memory else None
        self.engine = Engine(
            config,
            self.hub,
            isolate=True,
            connect=connect,
            on_changed=self.reporter.changed,
            on_connected=self._on_connected,
        )
        self.remote = RemoteControl(self.engine, config)
        for plan in self.plans:
            self.engine.add(
                plan.key,
                plan,
                partial(self.dispatcher.on_message, plan=plan),
                config.prefetch_count,  # set by start(): prefork's pool knows its size once started
                label=plan.task_name,
            )

    def prefetch_for(self, plan: QueuePlan) -> int:
        """Prefetch per queue: its own (pulse_queues), Celery's for tasks run here, else the hand-off's."""
        if plan.prefetch is not None:
            return plan.prefetch
        if plan.policies(self.config.ack_policy) == {"complete"}:
            return max(1, _compat.max_prefetch(self.c) or self.config.prefetch_count)
        return self.config.prefetch_count

    # -- starting and stopping ---------------------------------------------------------------

    def start(self) -> None:
        if self.config.is_memory:
            if self.c.connection is None or self.c.connection.transport.driver_type != "memory":
                raise ConfigError("pulse_url memory:// works only with a memory:// Celery broker (the demo)")
        elif self.hub is None:
            raise ConfigError(
                "Pulse consumption needs the worker's event loop, which the gevent and eventlet pools "
                "do not run; use the prefork, threads or solo pool for Pulse workers, or start this "
                "worker with --no-pulse"
            )
        _compat.check_worker_consumer(self.c)
        self.keeper.ready(_compat.ack_scheduler(self.c))
        for plan in self.plans:
            self.engine.consumers[plan.key].prefetch = self.prefetch_for(plan)
        self._refused = False
        self.reporter.start(self.timers)
        self.handoff.start()
        self._hold_if_needed(quiet=True)
        self.engine.start()

    def stop(self) -> None:
        """Celery stops its consumer: for a restart, close; for a warm shutdown, only stop taking."""
        if _compat.is_warm_shutdown(self.c):
            logger.info("Warm shutdown: no new Pulse deliveries; finishing the ones in flight")
            self.timers.cancel_all()
            self.engine.drain()
            self.handoff.stop_reading()
            if not _compat.celery_turns_hub_while_pool_drains(self.c):
                self.keeper.start(self.engine.link.wire, self.hub)
            return
        self.close("Celery's consumer is restarting")

    def shutdown(self) -> None:
        """The pool has drained: send the last acks, then close."""
        self.keeper.stop()
        self.handoff.flush(timeout=10.0)
        self.close("worker shutdown")

    def close(self, why: str) -> None:
        self.timers.cancel_all()
        if self.engine.link.up is not None:
            logger.info(
                "Closing the Pulse connection (%s); %d unacknowledged messages go back to their queues",
                why,
                self.engine.in_flight(),
            )
        self.engine.close(why)
        self.handoff.close()

    def _on_connected(self, event: Connected) -> None:
        """Send ``pulse_connected``; a receiver's error is logged, never raised into the engine."""
        for receiver, result in pulse_connected.send_robust(
            sender=self.app,
            source=event.source,
            queues=event.queues,
            first=event.first,
            reconnect=event.reconnect,
            recycled=event.recycled,
            event=event,
        ):
            if isinstance(result, Exception):
                logger.error(
                    "A pulse_connected receiver (%r) failed: %r; Pulse consumption goes on",
                    receiver,
                    result,
                )

    # -- the hand-off holds consumption -------------------------------------------------------

    def _hold_if_needed(self, quiet: bool = False) -> None:
        if self._refused or not self.handoff.ready:
            if self.engine.held is None:
                if not self._refused and not quiet:
                    logger.info("Pulse consumption waits for the hand-off connection to the Celery broker")
                self.engine.hold(HELD)
        elif self.engine.held is not None:
            self.engine.release()

    def _on_handoff_ready(self, ready: bool) -> None:
        if ready:
            self._refusal_backoff.reset()
        elif self.engine.up and self.engine.held is None:
            logger.warning("Pulse consumption paused until the Celery broker is reachable again")
        self._hold_if_needed()

    def _on_handoff_failed(self, exc: BaseException) -> None:
        """Stop taking Pulse deliveries for a while instead of cycling them through requeue."""
        if self._refused or self.engine.draining or self.engine.link.state == "stopped":
            return
        self._refused = True
        delay = self._refusal_backoff.next()
        logger.warning("Pulse consumption paused for %.1f s: the Celery broker refused a task message", delay)
        self.engine.stats.error(f"the Celery broker refused a task message: {exc}")
        self._hold_if_needed()
        self.timers.later(delay, self._after_refusal)

    def _after_refusal(self) -> None:
        self._refused = False
        self._hold_if_needed()
        if self.engine.state() == "consuming":
            logger.info("Pulse consumption resumed: the Celery broker takes task messages again")

    # -- status and remote control (pulse_celery.control) --------------------------------------

    def state(self) -> str:
        """The connection's state, one of :data:`pulse_celery.pulse.stats.CONNECTION_STATES`."""
        return self.engine.state()

    def pause(self, queue: str | None = None) -> list[str]:
        return self.remote.pause(queue)

    def resume(self, queue: str | None = None) -> list[str]:
        return self.remote.resume(queue)

    def delete(self, queue: str) -> list[str]:
        return self.remote.delete(queue)

    def status(self) -> dict[str, Any]:
        return self.remote.status()
