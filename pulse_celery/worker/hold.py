"""Hold Pulse consumption while the hand-off to the Celery broker cannot take task messages.

Every source's engine is held (no new deliveries; those in flight still settle) while the
hand-off connection is down, and for a growing backoff after the Celery broker refused a
task message, so that nothing cycles through requeue. The Celery broker is one for all
sources, so its trouble holds them all; a source's own trouble (its connection, its
queues) holds nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from ..pulse.engine import Engine
from ..pulse.loop import Backoff, Timers

logger = logging.getLogger(__name__)

#: The engines' state while the hand-off holds consumption.
HELD = "paused-by-handoff"


class HandoffHold:
    """Hold and release every engine as the hand-off's readiness and refusals say."""

    def __init__(
        self, engines: Callable[[], Iterable[Engine]], timers: Timers, ready: Callable[[], bool]
    ) -> None:
        self._engines = engines
        self.timers = timers
        self._ready = ready
        #: the Celery broker refused a task message: held for a while
        self.refused = False
        self.backoff = Backoff()

    def reset(self) -> None:
        self.refused = False

    def update(self, quiet: bool = False) -> None:
        """Hold every engine if the hand-off cannot take messages now, else release them."""
        hold = self.refused or not self._ready()
        for engine in self._engines():
            if hold and engine.held is None:
                if not self.refused and not quiet:
                    logger.info(
                        "Pulse consumption from %s waits for the hand-off connection to the Celery broker",
                        engine.source,
                    )
                engine.hold(HELD)
            elif not hold and engine.held is not None:
                engine.release()

    def handoff_ready(self, ready: bool) -> None:
        if ready:
            self.backoff.reset()
        elif any(engine.up and engine.held is None for engine in self._engines()):
            logger.warning("Pulse consumption paused until the Celery broker is reachable again")
        self.update()

    def handoff_failed(self, exc: BaseException) -> None:
        """Stop taking Pulse deliveries for a while instead of cycling them through requeue."""
        engines = list(self._engines())
        if self.refused or all(e.draining or e.link.state == "stopped" for e in engines):
            return
        self.refused = True
        delay = self.backoff.next()
        logger.warning("Pulse consumption paused for %.1f s: the Celery broker refused a task message", delay)
        for engine in engines:
            engine.stats.error(f"the Celery broker refused a task message: {exc}")
        self.update()
        self.timers.later(delay, self._after_refusal)

    def _after_refusal(self) -> None:
        self.refused = False
        self.update()
        if any(engine.state() == "consuming" for engine in self._engines()):
            logger.info("Pulse consumption resumed: the Celery broker takes task messages again")
