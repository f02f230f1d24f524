"""Turn one Pulse delivery into one task invocation, under the binding's ack policy.

``enqueue``: publish the task message to the Celery broker; ack the Pulse message once the
broker confirms it, requeue it if the broker refuses it. ``complete``: hand the task to this
worker's pool through Celery's own strategy, with the Pulse delivery as the message Celery
acks, so acks_late, reject_on_worker_lost, time limits and retries behave as for any task.
A delivery that cannot become a task (:class:`~pulse_celery.errors.BadMessage`) is rejected
without requeue and logged once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.exceptions import InvalidTaskError
from kombu.exceptions import ContentDisallowed, DecodeError
from kombu.message import Message
from vine import promise

from .bindings import Binding
from .config import PulseConfig
from .deadletters import as_task_message, dead_letter_route, make_dead_letter
from .errors import BadMessage, HandoffFailed, NoMatchingBinding
from .handoff import Handoff, Route, TaskMessage, resolve_route
from .message import PulseMessage, RawDelivery, cc_routes, check_content, decode_body, raw_delivery
from .taskmessage import TaskTemplate
from .topology import QueuePlan

logger = logging.getLogger(__name__)


class PulseDelivery:
    """One unacknowledged Pulse delivery: settled (acked or rejected) exactly once, safely.

    If the channel it came on is gone, settling is a logged no-op: the broker has already
    put the message back in the queue and will deliver it again.
    """

    __slots__ = ("delivery_tag", "meta", "raw", "session", "settled")

    def __init__(self, raw: RawDelivery, meta: PulseMessage, session: Any) -> None:
        self.delivery_tag = raw.delivery_tag
        self.raw = raw
        self.meta = meta
        self.session = session
        self.settled = False

    def ack(self) -> None:
        # Sent with the other acks of this turn of the loop, maybe as one (acks.py).
        self._settle("ack", lambda: self.session.acker.ack(self.delivery_tag))

    def reject(self, requeue: bool) -> None:
        def send() -> None:
            self.session.channel.basic_reject(self.delivery_tag, requeue)
            self.session.acker.rejected(self.delivery_tag)

        self._settle("requeue" if requeue else "reject", send)

    def _settle(self, what: str, action: Callable[[], None]) -> None:
        if self.settled:
            return
        self.settled = True
        if not self.session.alive:
            logger.info(
                "Pulse %s of a message from %s (%s) not sent: its channel is gone; the broker will "
                "deliver it again",
                what,
                self.meta.exchange,
                self.meta.routing_key,
            )
            return
        self.session.guard(action)
        self.session.settled(what, self.meta.queue)


class TaskDeliveryMessage(Message):
    """A task-protocol-2 message whose ack and reject go to the Pulse delivery behind it."""

    def __init__(
        self, delivery: PulseDelivery, task_message: TaskMessage, route: Route, dispatcher: Dispatcher
    ) -> None:
        super().__init__(
            body=task_message.body,
            delivery_tag=delivery.delivery_tag,
            content_type=task_message.content_type,
            content_encoding=task_message.content_encoding,
            delivery_info={
                # retry() republishes here: to the Celery broker, not to a Pulse exchange.
                "exchange": route.exchange,
                "routing_key": route.routing_key,
                "priority": 0,
                "redelivered": delivery.meta.redelivered,
            },
            properties=dict(task_message.properties),
            headers=task_message.headers,
        )
        self.delivery = delivery
        self.dispatcher = dispatcher
        self.task_name = task_message.headers["task"]

    def ack(self, multiple: bool = False) -> None:
        self.delivery.ack()
        self._state = "ACK"

    def reject(self, requeue: bool = False) -> None:
        if requeue:
            self.delivery.reject(requeue=True)
        else:
            # Celery gave up on it (acks_on_failure_or_timeout=False, Reject(requeue=False), ...):
            # keep it rather than let the broker drop it.
            self.dispatcher.dead_letter(
                self.delivery, self.task_name, "rejected-by-task", "Celery rejected it without requeue"
            )
        self._state = "REQUEUED" if requeue else "REJECTED"

    def requeue(self) -> None:
        self.reject(requeue=True)

    def ack_log_error(self, logger: Any, errors: Any, multiple: bool = False) -> None:
        self.ack()

    def reject_log_error(self, logger: Any, errors: Any, requeue: bool = False) -> None:
        self.reject(requeue)


def _delivery_count(headers: dict[str, Any]) -> int:
    """How many times the broker delivered this message before (quorum queues count them)."""
    try:
        return int(headers.get("x-delivery-count") or 0)
    except (TypeError, ValueError):
        return 0


class Dispatcher:
    """Route deliveries of the app's Pulse queues to their tasks."""

    def __init__(
        self,
        app: Celery,
        config: PulseConfig,
        consumer: Any,
        handoff: Handoff,
        on_handoff_failed: Callable[[BaseException], None],
    ) -> None:
        self.app = app
        self.config = config
        self.consumer = consumer  # Celery's worker consumer: strategies, call_soon_ack
        self.handoff = handoff
        self.on_handoff_failed = on_handoff_failed
        self.origin = getattr(consumer, "hostname", None) or "pulse-celery"
        self._routes: dict[str, Route] = {}
        self._templates: dict[str, TaskTemplate] = {}
        self.dead_letter_route = dead_letter_route(app)

    def policy(self, binding: Binding) -> str:
        return binding.ack or self.config.ack_policy

    def route(self, task_name: str) -> Route:
        route = self._routes.get(task_name)
        if route is None:
            route = self._routes[task_name] = resolve_route(self.app, task_name)
        return route

    def template(self, task_name: str) -> TaskTemplate:
        template = self._templates.get(task_name)
        if template is None:
            template = self._templates[task_name] = TaskTemplate(self.app, task_name, self.origin)
        return template

    def on_message(self, message: Any, plan: QueuePlan, session: Any) -> None:
        """Handle one delivery from ``plan``'s queue; never raises."""
        raw = raw_delivery(message)
        info = raw.delivery_info
        try:
            routes = cc_routes(raw.headers)
            problem = None
        except Exception as exc:  # a header py-amqp could not read as routes
            routes, problem = (), exc
        meta = PulseMessage(
            exchange=str(info.get("exchange", "")),
            routing_key=str(info.get("routing_key", "")),
            routes=routes,
            redelivered=bool(info.get("redelivered")),
            queue=plan.name,
        )
        delivery = PulseDelivery(raw, meta, session)
        session.acker.delivered(raw.delivery_tag)
        session.delivered(plan.name, meta.redelivered)
        logger.debug("Pulse delivery %s from %s (%s)", raw.delivery_tag, meta.exchange, meta.routing_key)
        if problem is not None:
            self.dead_letter(
                delivery, plan.task_name, BadMessage.reason, f"unreadable CC header ({problem!r})"
            )
            return
        try:
            # Decoded only to check it: the body goes into the task message as it came.
            binding, _payload = self._decode(raw, meta, plan)
            task_message = self.template(binding.task_name).build(raw.body, meta)
            if self.policy(binding) == "complete":
                # Runs here: a message that kills the worker each time must not loop forever.
                # (Under enqueue, returns mostly mean the Celery broker refused; not poison.)
                deliveries = _delivery_count(raw.headers)
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
                self._enqueue(delivery, binding, task_message)
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

    def dead_letter(self, delivery: PulseDelivery, task_name: str, reason: str, detail: str) -> None:
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
            delivery.session.dead_lettered(meta.queue, f"dead-lettered ({reason}): {detail}")
            delivery.ack()

        self.handoff.publish(as_task_message(letter), self.dead_letter_route, on_kept, on_failed)

    def _enqueue(self, delivery: PulseDelivery, binding: Binding, task_message: TaskMessage) -> None:

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
            self.on_handoff_failed(exc)

        self.handoff.publish(task_message, self.route(binding.task_name), delivery.ack, on_failed)

    def _run_here(self, delivery: PulseDelivery, binding: Binding, task_message: TaskMessage) -> None:
        c = self.consumer
        message = TaskDeliveryMessage(delivery, task_message, self.route(binding.task_name), self)
        try:
            strategy = c.strategies[binding.task_name]
        except KeyError:
            raise HandoffFailed(f"task {binding.task_name} is not registered in this worker") from None
        try:
            strategy(
                message,
                None,
                promise(c.call_soon_ack, (message.ack_log_error,)),
                promise(c.call_soon_ack, (message.reject_log_error,)),
                c.on_task_message,
            )
        except (InvalidTaskError, ContentDisallowed, DecodeError) as exc:
            raise BadMessage(f"Celery refused the task message: {exc}") from exc
