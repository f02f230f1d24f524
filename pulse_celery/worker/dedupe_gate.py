"""In the worker's main process: ack a redelivery already handled; record an enqueue before its ack.

Per delivery of a binding with dedupe on (task id: the message's stable id):

* a delivery the broker flags as seen before (``redelivered``, or a quorum queue's
  ``x-delivery-count`` above 0) is looked up in the store; ``succeeded`` (both policies) or
  ``enqueued`` (``enqueue``) means it is acked without running or enqueueing it again, and
  counted (``deduplicated``). Only such deliveries are looked up here: RabbitMQ guarantees
  that a message without the flag was never delivered before, and a lookup of every message
  would cost a Redis round trip each on the worker's event loop. A message a publisher sent
  twice comes unflagged: the guard where the task runs looks up every task (guard.py);
* under ``enqueue``, a copy of a message whose task message is still on its way to the
  Celery broker from this worker (a publisher that sent it twice; or the first copy's channel
  was lost and the broker delivered it again) is not enqueued a second time: it *follows*
  the first copy, acked when that one is (counted ``deduplicated``), requeued if its
  hand-off fails. Without this, both copies became task messages, and the second would
  wait in a pool slot for the first's running lease (lease.py). A copy of a message this
  worker enqueued lately (its last :data:`RECENT` ones, within ``pulse_dedupe_ttl``) is acked
  at once, from memory: a publisher's repeat that comes unflagged a little later;
* under ``enqueue``, once the Celery broker confirms a task message its entry becomes
  ``enqueued``, then the Pulse message is acked. The entries of one batch of confirms go to
  Redis in one pipeline (after each batch the hand-off reports, or at the next turn of the
  event loop), so the cost is one round trip per batch, not per message.

The store down: the delivery is handled as without dedupe and counted (``dedupe_unavailable``);
an enqueue whose entry could not be written is acked all the same (requeueing it would make
a duplicate certain; acking it makes one possible only if the ack is lost too).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..pulse.delivery import Delivery
from ..pulse.message import delivery_count
from .dedupe import ENQUEUED, SUCCEEDED, DedupeStore, StoreUnavailable, dedupe_key

logger = logging.getLogger(__name__)

#: How many of the messages it enqueued last a worker remembers (about 100 bytes each).
RECENT = 10_000


def seen_before(delivery: Delivery) -> bool:
    """True when the broker says the message may have been delivered before."""
    return delivery.redelivered or delivery_count(delivery.headers) > 0


def count_deduplicated(delivery: Delivery) -> None:
    stats: Any = delivery.lane.stats
    stats.deduplicated += 1


class DedupeGate:
    """Look up redeliveries; write ``enqueued`` entries in batches and ack their deliveries after."""

    def __init__(self, store: DedupeStore, ticks: set[Callable[[], Any]] | None) -> None:
        """``ticks``: the hub's once-per-turn callbacks (a batch not flushed by the hand-off is, there)."""
        self.store = store
        self._ticks = ticks
        self._pending: list[tuple[str, Delivery]] = []
        #: key of each task message on its way to the Celery broker -> the copies following it
        self._in_flight: dict[str, list[Delivery]] = {}
        #: key of each task message this worker enqueued lately -> when (time.monotonic())
        self._recent: OrderedDict[str, float] = OrderedDict()

    def already_handled(self, delivery: Delivery, task_id: str, policy: str) -> bool:
        """Ack ``delivery`` and return True if its task already succeeded (or was enqueued, under enqueue)."""
        if not seen_before(delivery):
            return False
        key = dedupe_key(delivery.queue, task_id)
        if policy == "enqueue" and self._recently_enqueued(key):
            return False  # begin_enqueue acks it from memory: no Redis round trip
        try:
            state = self.store.state(key)
        except StoreUnavailable:
            delivery.lane.stats.dedupe_unavailable += 1
            return False
        if state == SUCCEEDED or (state == ENQUEUED and policy == "enqueue"):
            logger.info(
                "Redelivered Pulse message from %s (%s), task id %s, was already %s; acked, not %s again",
                delivery.exchange,
                delivery.routing_key,
                task_id,
                state,
                "run" if policy == "complete" else "enqueued",
            )
            count_deduplicated(delivery)
            delivery.ack()
            return True
        return False

    def begin_enqueue(self, delivery: Delivery, task_id: str) -> bool:
        """Mark ``delivery``'s task message as on its way; False if a copy already is (it follows)."""
        key = dedupe_key(delivery.queue, task_id)
        if self._recently_enqueued(key):
            logger.info(
                "Pulse message from %s (%s), task id %s, was enqueued by this worker already; acked, "
                "not enqueued again",
                delivery.exchange,
                delivery.routing_key,
                task_id,
            )
            count_deduplicated(delivery)
            delivery.ack()
            return False
        followers = self._in_flight.get(key)
        if followers is None:
            self._in_flight[key] = []
            return True
        followers.append(delivery)
        logger.info(
            "Pulse message from %s (%s), task id %s, is already being enqueued by this worker; "
            "acked once that copy is, requeued if it fails",
            delivery.exchange,
            delivery.routing_key,
            task_id,
        )
        return False

    def _recently_enqueued(self, key: str) -> bool:
        enqueued_at = self._recent.get(key)
        return enqueued_at is not None and time.monotonic() - enqueued_at < self.store.ttl_ms / 1000

    def enqueue_failed(self, delivery: Delivery, task_id: str) -> None:
        """The first copy's task message did not reach the Celery broker: its followers go back too."""
        for follower in self._in_flight.pop(dedupe_key(delivery.queue, task_id), []):
            follower.reject(requeue=True)

    def ack_when_recorded(self, delivery: Delivery, task_id: str) -> None:
        """The task message is confirmed: record ``enqueued``, then ack (batched, see the module)."""
        self._pending.append((dedupe_key(delivery.queue, task_id), delivery))
        if self._ticks is None:
            self.flush()
        elif len(self._pending) == 1:
            self._ticks.add(self.flush)

    def flush(self) -> None:
        """Write the pending entries in one pipeline, then ack their deliveries."""
        if self._ticks is not None:
            self._ticks.discard(self.flush)
        pending, self._pending = self._pending, []
        if not pending:
            return
        try:
            self.store.record([key for key, _ in pending], ENQUEUED)
        except StoreUnavailable:
            for _, delivery in pending:
                delivery.lane.stats.dedupe_unavailable += 1
        now = time.monotonic()
        for key, delivery in pending:
            self._recent[key] = now
            self._recent.move_to_end(key)
            delivery.ack()
            for follower in self._in_flight.pop(key, []):
                count_deduplicated(follower)
                follower.ack()
        while len(self._recent) > RECENT:
            self._recent.popitem(last=False)
