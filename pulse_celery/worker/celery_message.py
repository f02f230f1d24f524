"""A Pulse delivery dressed as the kombu message Celery's own task handling expects.

Under the ``complete`` policy the task runs through Celery's strategy for it, exactly as
if Celery had consumed a task message: acks_late, reject_on_worker_lost, time limits and
retries behave as for any task. The message it is given is a :class:`TaskDeliveryMessage`:
a task-protocol-2 message whose ack and reject go to the Pulse delivery behind it, on the
Pulse channel it came on.

A redelivery of a message whose task is still reserved or running in this worker (the
first copy's channel was lost, so its ack will go nowhere) is not handed to Celery again:
it *follows* the first copy (:meth:`TaskDeliveryMessage.follow`) and is settled as that one
is, acked when it is acked (counted ``deduplicated``), requeued otherwise. Celery keeps its
requests by task id, and the task id of a Pulse message is the same on every delivery.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kombu.message import Message

from .. import _compat
from ..pulse.delivery import Delivery
from .handoff import Route
from .taskmessage import TaskMessage

#: ``(delivery, task name, reason, detail)``: keep a delivery Celery gave up on.
DeadLetterer = Callable[[Delivery, str, str, str], None]


class TaskDeliveryMessage(Message):
    """A task-protocol-2 message whose ack and reject go to the Pulse delivery behind it."""

    def __init__(
        self, delivery: Delivery, task_message: TaskMessage, route: Route, dead_letter: DeadLetterer
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
                "redelivered": delivery.redelivered,
            },
            properties=dict(task_message.properties),
            headers=task_message.headers,
        )
        self.delivery = delivery
        self.dead_letter = dead_letter
        self.task_name = task_message.headers["task"]
        #: redeliveries of the same message waiting for this one to settle
        self.followers: list[Delivery] = []

    def follow(self, delivery: Delivery) -> bool:
        """Settle ``delivery`` as this message is settled; False if this one is settled already."""
        if self.delivery.settled:
            return False
        self.followers.append(delivery)
        return True

    def _settle_followers(self, ack: bool) -> None:
        followers, self.followers = self.followers, []
        for follower in followers:
            if ack:
                follower.lane.stats.deduplicated += 1
                follower.ack()
            else:
                follower.reject(requeue=True)

    def ack(self, multiple: bool = False) -> None:
        self.delivery.ack()
        self._settle_followers(ack=True)
        _compat.set_message_state(self, "ACK")

    def reject(self, requeue: bool = False) -> None:
        if requeue:
            self.delivery.reject(requeue=True)
        else:
            # Celery gave up on it (acks_on_failure_or_timeout=False, Reject(requeue=False), ...):
            # keep it rather than let the broker drop it.
            self.dead_letter(
                self.delivery, self.task_name, "rejected-by-task", "Celery rejected it without requeue"
            )
        # Not acked: a follower goes back to the queue (a dead letter, if any, came from this one).
        self._settle_followers(ack=False)
        _compat.set_message_state(self, "REQUEUED" if requeue else "REJECTED")

    def requeue(self) -> None:
        self.reject(requeue=True)

    def ack_log_error(self, logger: Any, errors: Any, multiple: bool = False) -> None:
        self.ack()

    def reject_log_error(self, logger: Any, errors: Any, requeue: bool = False) -> None:
        self.reject(requeue)
