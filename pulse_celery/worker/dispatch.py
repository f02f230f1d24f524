"""Turn one Pulse delivery into one task invocation, under the binding's ack policy.

``enqueue``: publish the task message to the Celery broker; ack the Pulse message once the
broker confirms it, requeue it if the broker refuses it. ``complete``: hand the task to this
worker's pool through Celery's own strategy, with the Pulse delivery as the message Celery
acks, so acks_late, reject_on_worker_lost, time limits and retries behave as for any task.
A delivery that cannot become a task (:class:`~pulse_celery.errors.BadMessage`) is rejected
without requeue and logged once.

Every task invocation's id is the message's stable id
(:func:`~pulse_celery.pulse.identity.message_id`, scoped by the task name): the same on every
redelivery and on every worker. With dedupe on for the binding, a redelivery already handled
is acked without running again (dedupe_gate.py), and the task is guarded where it runs
(guard.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from celery import Celery
from celery.exceptions import InvalidTaskError
from kombu.exceptions import ContentDisallowed, DecodeError

from .. import _compat
from ..bindings import Binding, app_bindings
from ..config import AppConfig
from ..errors import BadMessage, HandoffFailed, NoMatchingBinding
from ..plan import QueuePlan
from ..pulse.delivery import Delivery
from ..pulse.identity import message_id
from ..pulse.message import PulseMessage, RawDelivery, check_content, decode_body, delivery_count
from .celery_message import TaskDeliveryMessage
from .deadletters import as_task_message, dead_letter_route, make_dead_letter
from .dedupe import DEDUPE_HEADER, DedupeStore, require_redis, store_url
from .dedupe_gate import DedupeGate
from .guard import install_guard
from .handoff import Handoff, Route, resolve_route
from .taskmessage import TaskMessage, TaskTemplate

logger = logging.getLogger(__name__)


class Dispatcher:
    """Route deliveries of the app's Pulse queues to their tasks."""

    def __init__(
        self,
        app: Celery,
        config: AppConfig,
        consumer: Any,
        handoff: Handoff,
        on_handoff_failed: Callable[[BaseException], None],
        schedule_ack: Callable[..., Any] | None = None,
    ) -> None:
        """``schedule_ack``: what ``complete`` tasks' ack promises call (Celery's scheduler by default)."""
        self.app = app
        self.config = config
        self.consumer = consumer  # Celery's worker consumer: strategies, call_soon_ack
        self.handoff = handoff
        self.on_handoff_failed = on_handoff_failed
        self.schedule_ack = schedule_ack
        self.origin = getattr(consumer, "hostname", None) or "pulse-celery"
        self._routes: dict[str, Route] = {}
        self._templates: dict[tuple[str, bool], TaskTemplate] = {}
        self.dead_letter_route = dead_letter_route(app)
        #: None unless a binding has dedupe on; then set up here, failing the worker start
        #: (ConfigError) without a store
        self.dedupe_gate: DedupeGate | None = None
        deduped = {b.task_name for b in app_bindings(app) if self.dedupe_on(b)}
        if deduped:
            require_redis()
            store = DedupeStore(store_url(config.dedupe_url, app.conf.result_backend), config.dedupe_ttl)
            install_guard(app, deduped, store)
            self.dedupe_gate = DedupeGate(store, _compat.tick_callbacks(getattr(consumer, "hub", None)))
            handoff.after_confirms.add(self.dedupe_gate.flush)

    def dedupe_on(self, binding: Binding) -> bool:
        if binding.dedupe is not None:
            return binding.dedupe
        return bool(getattr(self.config, "dedupe", False))  # a bare PulseConfig has none

    def policy(self, binding: Binding) -> str:
        return binding.policy(self.config.ack_policy)

    def route(self, task_name: str) -> Route:
        route = self._routes.get(task_name)
        if route is None:
            route = self._routes[task_name] = resolve_route(self.app, task_name)
        return route

    def template(self, task_name: str, dedupe: bool = False) -> TaskTemplate:
        template = self._templates.get((task_name, dedupe))
        if template is None:
            extra = {DEDUPE_HEADER: True} if dedupe else None
            template = TaskTemplate(self.app, task_name, self.origin, extra)
            self._templates[task_name, dedupe] = template
        return template

    def on_message(self, delivery: Delivery, plan: QueuePlan) -> None:
        """Handle one delivery from ``plan``'s queue; never raises."""
        raw, meta = delivery.raw, delivery.meta
        logger.debug("Pulse delivery %s from %s (%s)", raw.delivery_tag, meta.exchange, meta.routing_key)
        if delivery.problem is not None:
            self.dead_letter(delivery, plan.task_name, delivery.problem.reason, str(delivery.problem))
            return
        try:
            # Decoded only to check it: the body goes into the task message as it came.
            binding, _payload = self._decode(raw, meta, plan)
            task_id = message_id(meta.exchange, meta.routing_key, raw.body, binding.task_name)
            policy = self.policy(binding)
            gate = self.dedupe_gate if self.dedupe_on(binding) else None
            if gate is not None and gate.already_handled(delivery, task_id, policy):
                return
            task_message = self.template(binding.task_name, gate is not None).build(raw.body, meta, task_id)
            if policy == "complete":
                # Runs here: a message that kills the worker each time must not loop forever.
                # (Under enqueue, returns mostly mean the Celery broker refused; not poison.)
                deliveries = delivery_count(raw.headers)
                if deliveries >= self.config.max_deliveries:
                    self.dead_letter(
                        delivery,
                        binding.task_name,
                        "too-many-deliveries",
                        f"delivered {deliveries + 1} times (pulse_max_deliveries is "
                        f"{self.config.max_deliveries}); no try ended in an ack, e.g. the worker died",
                    )
                    return
                self._run_here(delivery, binding, task_message)
            else:
                self._enqueue(delivery, binding, task_message, gate)
        except BadMessage as exc:
            self.dead_letter(delivery, plan.task_name, exc.reason, str(exc))
        except Exception:
            logger.exception(
                "Unexpected error handling a Pulse message from %s (%s); it goes back to the queue",
                meta.exchange,
                meta.routing_key,
            )
            delivery.reject(requeue=True)

    def _decode(self, raw: RawDelivery, meta: PulseMessage, plan: QueuePlan) -> tuple[Binding, Any]:
        for binding in plan.bindings:
            if binding.matches(meta.exchange, meta.routing_keys):
                break
        else:
            raise NoMatchingBinding(f"no binding of queue {plan.name} names this exchange and routing key")
        check_content(
            raw.content_type, raw.content_encoding, raw.headers, len(raw.body), self.config.max_body_size
        )
        payload = decode_body(raw.body)
        if binding.payload is not None:
            # Bad input: dead-lettered here; the task message still carries the JSON object.
            binding.check_payload(payload)
        return binding, payload

    def dead_letter(self, delivery: Delivery, task_name: str, reason: str, detail: str) -> None:
        """Keep ``delivery`` in the dead-letter store, then ack it; requeue it if that fails."""
        meta, raw = delivery.meta, delivery.raw
        letter = make_dead_letter(
            reason=reason,
            detail=detail,
            meta=meta,
            task=task_name,
            headers=raw.headers,
            content_type=raw.content_type,
            content_encoding=raw.content_encoding,
            body=raw.body,
            max_body=self.config.max_body_size,
        )
        logger.error(
            "Dead-lettered Pulse message from exchange %s, routing key %s, queue %s: %s (%s); kept as "
            "%s in %s on the Celery broker ('pulse-celery dead-letters list' shows it)",
            meta.exchange,
            meta.routing_key,
            meta.queue,
            detail,
            reason,
            letter.id,
            self.dead_letter_route.routing_key,
        )

        def on_failed(exc: BaseException) -> None:
            logger.warning(
                "Dead letter %s not confirmed by the Celery broker (%s); the Pulse message goes back "
                "to the queue",
                letter.id,
                exc,
            )
            delivery.reject(requeue=True)
            self.on_handoff_failed(exc)

        def on_kept() -> None:
            stats = delivery.lane.stats
            stats.dead_lettered += 1
            stats.error(f"dead-lettered ({reason}): {detail}")
            delivery.ack()

        self.handoff.publish(as_task_message(letter), self.dead_letter_route, on_kept, on_failed)

    def _enqueue(
        self, delivery: Delivery, binding: Binding, task_message: TaskMessage, gate: DedupeGate | None
    ) -> None:
        task_id = task_message.task_id
        if gate is not None and not gate.begin_enqueue(delivery, task_id):
            return

        def on_failed(exc: BaseException) -> None:
            logger.warning(
                "Task message for %s (from %s, %s) not confirmed by the Celery broker: %s; the Pulse "
                "message goes back to the queue",
                binding.task_name,
                delivery.meta.exchange,
                delivery.meta.routing_key,
                exc,
            )
            delivery.reject(requeue=True)
            if gate is not None:
                gate.enqueue_failed(delivery, task_id)
            self.on_handoff_failed(exc)

        on_confirmed = delivery.ack if gate is None else partial(gate.ack_when_recorded, delivery, task_id)
        try:
            self.handoff.publish(task_message, self.route(binding.task_name), on_confirmed, on_failed)
        except BaseException:
            if gate is not None:  # never published: nothing will settle its followers
                gate.enqueue_failed(delivery, task_id)
            raise

    def _run_here(self, delivery: Delivery, binding: Binding, task_message: TaskMessage) -> None:
        # Celery keeps its requests by task id: the same message still reserved or running
        # here (its first channel lost) is followed, not handed to Celery a second time.
        first = _compat.unfinished_request_message(task_message.task_id)
        if isinstance(first, TaskDeliveryMessage) and first.follow(delivery):
            logger.info(
                "Redelivered Pulse message from %s (%s) is still running here as task %s; it is "
                "acked when that run is",
                delivery.exchange,
                delivery.routing_key,
                task_message.task_id,
            )
            return
        route = self.route(binding.task_name)
        message = TaskDeliveryMessage(delivery, task_message, route, self.dead_letter)
        try:
            _compat.run_strategy(self.consumer, binding.task_name, message, self.schedule_ack)
        except KeyError:
            raise HandoffFailed(f"task {binding.task_name} is not registered in this worker") from None
        except (InvalidTaskError, ContentDisallowed, DecodeError) as exc:
            raise BadMessage(f"Celery refused the task message: {exc}") from exc
