"""The Pulse side of one Celery worker: an engine per Pulse source on the worker's hub, fed to dispatch.

:class:`PulseWorker` wires the parts and owns the few decisions that are the worker's own:

* each Pulse source (``pulse_sources``; the ``pulse_*`` settings are ``"default"``) has its
  own engine: its connection, reconnects and backoff; a source that is down or refuses the
  login holds nothing else;
* consumption is held while the hand-off to the Celery broker is down, and for a growing
  backoff after the broker refused a task message, so that nothing cycles through requeue
  (hold.py);
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
from ..plan import QueuePlan
from ..pulse.engine import Engine
from ..pulse.events import Connected
from ..pulse.loop import Timers
from ..signals import pulse_connected
from ..sources import plan_sources
from .dispatch import Dispatcher
from .drain import DrainKeeper
from .handoff import Handoff
from .hold import HandoffHold
from .metrics import StatusReporter
from .remote import RemoteControl

logger = logging.getLogger(__name__)


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
    """Consume the app's Pulse queues inside one Celery worker (``c.pulse``), one engine per source."""

    def __init__(self, c: Any, app: Celery, config: AppConfig) -> None:
        self.c = c
        self.app = app
        self.config = config
        self.hub = c.hub
        # A bad binding, source or pulse_queues entry fails the worker start.
        self.sources = plan_sources(config, app_bindings(app))
        check_policies(app, config, [plan for source in self.sources for plan in source.plans])
        # Task messages (enqueue) and dead letters (both policies) go through the hand-off.
        self.handoff = Handoff(app, self.hub, lambda ready: self.hold.handoff_ready(ready))
        # Acks of complete tasks: Celery's scheduler, or our thread while the pool drains.
        self.keeper = DrainKeeper()
        self.dispatcher = Dispatcher(
            app,
            config,
            c,
            self.handoff,
            lambda exc: self.hold.handoff_failed(exc),
            schedule_ack=self.keeper.schedule,
        )
        self.timers = Timers(self.hub)
        self.hold = HandoffHold(lambda: self.engines.values(), self.timers, lambda: self.handoff.ready)
        # Prometheus when pulse_metrics_port is set (checked here: fails the worker start),
        # Celery events otherwise.
        self.reporter = StatusReporter(c, config, self.status)
        #: one engine per Pulse source, each with its own connection, reconnects and backoff
        self.engines: dict[str, Engine] = {}
        for source in self.sources:
            memory = source.config.is_memory
            engine = Engine(
                source.config,
                self.hub,
                isolate=True,
                connect=(lambda: c.connection) if memory else None,
                on_changed=self.reporter.changed,
                on_connected=self._on_connected,
                source=source.name,
            )
            for plan in source.plans:
                engine.add(
                    plan.key,
                    plan,
                    partial(self.dispatcher.on_message, plan=plan),
                    source.config.prefetch_count,  # set by start(): prefork's pool knows its size then
                    label=plan.task_name,
                )
            self.engines[source.name] = engine
        self.remote = RemoteControl(self.engines, config)

    def prefetch_for(self, plan: QueuePlan) -> int:
        """Prefetch per queue: its own (pulse_queues), Celery's for tasks run here, else the hand-off's."""
        if plan.prefetch is not None:
            return plan.prefetch
        if plan.policies(self.config.ack_policy) == {"complete"}:
            return max(1, _compat.max_prefetch(self.c) or self.config.prefetch_count)
        return self.config.prefetch_count

    # -- starting and stopping ---------------------------------------------------------------

    def start(self) -> None:
        if any(source.config.is_memory for source in self.sources):
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
        for source in self.sources:
            for plan in source.plans:
                self.engines[source.name].consumers[plan.key].prefetch = self.prefetch_for(plan)
        self.hold.reset()
        self.reporter.start(self.timers)
        self.handoff.start()
        self.hold.update(quiet=True)
        for engine in self.engines.values():
            engine.start()

    def stop(self) -> None:
        """Celery stops its consumer: for a restart, close; for a warm shutdown, only stop taking."""
        if _compat.is_warm_shutdown(self.c):
            logger.info("Warm shutdown: no new Pulse deliveries; finishing the ones in flight")
            self.timers.cancel_all()
            for engine in self.engines.values():
                engine.drain()
            self.handoff.stop_reading()
            if not _compat.celery_turns_hub_while_pool_drains(self.c):
                # with the connections a recycle is retiring: their acks still go out
                wires = [wire for engine in self.engines.values() for wire in engine.wires()]
                self.keeper.start(wires, self.hub)
            return
        self.close("Celery's consumer is restarting")

    def shutdown(self) -> None:
        """The pool has drained: send the last acks, then close."""
        self.keeper.stop()
        self.handoff.flush(timeout=10.0)
        self.close("worker shutdown")

    def close(self, why: str) -> None:
        self.timers.cancel_all()
        for engine in self.engines.values():
            if engine.link.up is not None:
                logger.info(
                    "Closing the Pulse connection to %s (%s); %d unacknowledged messages go back to "
                    "their queues",
                    engine.config.safe_url(engine.host),
                    why,
                    engine.in_flight(),
                )
            engine.close(why)
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

    # -- status and remote control (pulse_celery.control) --------------------------------------

    def state(self) -> str:
        """The first source's connection state, one of :data:`pulse_celery.pulse.stats.CONNECTION_STATES`."""
        return next(iter(self.engines.values())).state()

    def pause(self, queue: str | None = None) -> list[str]:
        return self.remote.pause(queue)

    def resume(self, queue: str | None = None) -> list[str]:
        return self.remote.resume(queue)

    def delete(self, queue: str) -> list[str]:
        return self.remote.delete(queue)

    def status(self) -> dict[str, Any]:
        return self.remote.status()
