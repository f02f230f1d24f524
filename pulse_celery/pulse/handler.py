"""Run a standalone consumer's callback for each delivery: decode, call, settle; never loop forever.

``callback(payload, delivery)`` receives the decoded JSON body. What happens then:

* The callback returns and did not settle the delivery: it is acked.
* The callback raises: the message goes back to the queue (``reject(requeue=True)``) and
  comes again, up to ``max_deliveries`` deliveries in all (``pulse_max_deliveries``, 5).
  The last failure gives the message up: it goes to ``on_failure(delivery, exc)`` if given,
  then is dropped (rejected without requeue), with an ERROR that says what was lost.
* A body that is not JSON (another content type, compressed, too large, bad UTF-8 or
  syntax) is never decoded and never retried: straight to ``on_failure``, then dropped.

Why give up rather than requeue forever: a message that fails every time would otherwise
cycle at full speed, hold a prefetch slot for good, and grow the queue towards Pulse
Guardian's limit for everyone behind it. Why a hook rather than a dead-letter queue: Pulse
Guardian lets a user declare only its own exchanges and queues, and a broker-side dead-letter
exchange must be fixed when a queue is first declared; the hook lets the application keep
the message where it likes (a file, a database, its own queue). Deliveries are counted by
the broker on quorum queues (``x-delivery-count``) and by this process on classic ones.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from ..errors import BadMessage
from .config import PulseConfig
from .delivery import Delivery
from .message import check_content, decode_body, delivery_count
from .payloads import converter

logger = logging.getLogger(__name__)

#: ``callback(payload, delivery)``
Callback = Callable[[Any, Delivery], Any]
#: ``on_failure(delivery, exc)``: a message given up on
OnFailure = Callable[[Delivery, BaseException], Any]

#: Messages whose failures this process remembers (classic queues do not count deliveries).
REMEMBERED_FAILURES = 10_000


class CallbackRunner:
    """One consumer's callback and what happens to each message around it."""

    @classmethod
    def for_config(
        cls,
        config: PulseConfig,
        callback: Callback,
        *,
        auto_ack: bool,
        on_failure: OnFailure | None,
        payload: type | None,
    ) -> CallbackRunner:
        """A runner with the connection's ``max_deliveries`` and ``max_body_size``."""
        return cls(
            callback,
            auto_ack=auto_ack,
            max_deliveries=config.max_deliveries,
            max_body_size=config.max_body_size,
            on_failure=on_failure,
            payload=payload,
        )

    def __init__(
        self,
        callback: Callback,
        *,
        auto_ack: bool,
        max_deliveries: int,
        max_body_size: int,
        on_failure: OnFailure | None = None,
        payload: type | None = None,
    ) -> None:
        self.callback = callback
        self.auto_ack = auto_ack
        self.max_deliveries = max_deliveries
        self.max_body_size = max_body_size
        self.on_failure = on_failure
        self.convert = converter(payload) if payload is not None else None
        #: failures seen here per message (its stable id, Delivery.message_id), oldest first
        self._failures: OrderedDict[str, int] = OrderedDict()

    def __call__(self, delivery: Delivery) -> None:
        """Handle one delivery; never raises."""
        try:
            if delivery.problem is not None:
                raise delivery.problem
            raw = delivery.raw
            check_content(
                raw.content_type, raw.content_encoding, raw.headers, len(raw.body), self.max_body_size
            )
            payload = decode_body(raw.body)
            if self.convert is not None:
                payload = self.convert(payload)
        except BadMessage as exc:
            self._give_up(delivery, exc, f"bad input ({exc.reason})")
            return
        try:
            self.callback(payload, delivery)
        except Exception as exc:
            self._failed(delivery, exc)
            return
        if not delivery.settled:
            delivery.ack()
        if self._failures:
            self._failures.pop(delivery.message_id, None)

    def _failed(self, delivery: Delivery, exc: Exception) -> None:
        if self.auto_ack or delivery.settled:
            logger.error(
                "Callback %s failed on a message from %s (%s), %s: %r",
                _name(self.callback),
                delivery.exchange,
                delivery.routing_key,
                "consumed with auto_ack: it is LOST (the broker forgot it when it sent it)"
                if self.auto_ack
                else "after settling it (the broker has what the callback said)",
                exc,
                exc_info=exc,
            )
            return
        attempts = self._count(delivery)
        if attempts >= self.max_deliveries:
            self._give_up(
                delivery, exc, f"failed {attempts} times (pulse max_deliveries is {self.max_deliveries})"
            )
            return
        logger.warning(
            "Callback %s failed on a message from %s (%s), delivery %d of at most %d: %r; it goes "
            "back to the queue",
            _name(self.callback),
            delivery.exchange,
            delivery.routing_key,
            attempts,
            self.max_deliveries,
            exc,
            exc_info=exc,
        )
        delivery.reject(requeue=True)

    def _count(self, delivery: Delivery) -> int:
        """Deliveries so far, this one included: the broker's count or this process's, the larger."""
        key = delivery.message_id
        seen = self._failures.pop(key, 0) + 1
        self._failures[key] = seen
        while len(self._failures) > REMEMBERED_FAILURES:
            self._failures.popitem(last=False)
        return max(seen, delivery_count(delivery.headers) + 1)

    def _give_up(self, delivery: Delivery, exc: BaseException, why: str) -> None:
        self._failures.pop(delivery.message_id, None)
        kept = False
        if self.on_failure is not None:
            try:
                self.on_failure(delivery, exc)
                kept = True
            except Exception:
                logger.exception("on_failure hook %s failed", _name(self.on_failure))
        logger.error(
            "Pulse message from exchange %s, routing key %s, queue %s %s: %r; %s",
            delivery.exchange,
            delivery.routing_key,
            delivery.queue,
            why,
            exc,
            "handed to on_failure, then dropped from the queue"
            if kept
            else f"DROPPED: its {len(delivery.body)}-byte body is lost (on_failure= would keep it)",
        )
        if not delivery.settled:
            delivery.reject(requeue=False)


def _name(fun: Any) -> str:
    return getattr(fun, "__qualname__", None) or repr(fun)
