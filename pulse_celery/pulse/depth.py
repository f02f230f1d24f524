"""Warn well below Pulse Guardian's thresholds, once per crossing, while a queue backs up.

Guardian counts a queue's ready and unacknowledged messages; past its deletion threshold
(8,000 by default) it deletes the queue and its bindings. Every ``depth_check_interval``
seconds each declared queue is asked its depth with a passive declare, on a short-lived
channel: a queue that is gone (Guardian deletes paused queues too, and no consumer hears of
it) closes that channel only, and the queue is declared again when it is next consumed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from amqp.exceptions import NotFound

from .config import PulseConfig
from .consumer import QueueConsumer
from .loop import Timers
from .session import Session

logger = logging.getLogger(__name__)


class DepthMonitor:
    """The engine's periodic depth check, from each connect to the connection's end."""

    def __init__(
        self,
        timers: Timers,
        config: PulseConfig,
        consumers: Callable[[], list[QueueConsumer]],
        session: Callable[[], Session | None],
    ) -> None:
        self.timers, self.config = timers, config
        self._consumers, self._session = consumers, session
        self._timer: Any = None
        #: queues now over the warning depth
        self.deep: set[str] = set()

    def start(self) -> None:
        self.stop()
        self._timer = self.timers.later(self.config.depth_check_interval, self._check)

    def stop(self) -> None:
        self.timers.cancel(self._timer)
        self._timer = None

    def _check(self) -> None:
        self._timer = None
        warn_at = self.config.queue_warn_depth
        for consumer in self._consumers():
            lane = consumer.lane
            if lane is None or not lane.alive or not lane.declared:
                continue
            session = self._session()
            if session is None:
                return  # the connection went while asking: the next connect starts again
            declared = session.run_on_own_channel(_passive_declare, consumer.name)
            if isinstance(declared, NotFound):
                lane.declared = False  # gone: declared again (with its bindings) when next consumed
                continue
            if declared is None or isinstance(declared, BaseException):
                continue
            depth = declared.message_count + consumer.in_flight
            if depth >= warn_at and consumer.name not in self.deep:
                self.deep.add(consumer.name)
                logger.warning(
                    "Pulse queue %s holds %d messages (warning at %d; Pulse Guardian warns at 2,000 "
                    "and deletes the queue at 8,000 by default): add workers, or set "
                    "pulse_queue_max_length",
                    consumer.name,
                    depth,
                    warn_at,
                )
            elif depth < warn_at // 2 and consumer.name in self.deep:
                self.deep.discard(consumer.name)
                logger.info("Pulse queue %s is back to %d messages", consumer.name, depth)
        self._timer = self.timers.later(self.config.depth_check_interval, self._check)


def _passive_declare(channel: Any, name: str) -> Any:
    return channel.queue_declare(name, passive=True)
