"""What a queue consumer, and its recovery, need of the engine they run in.

A protocol rather than the :class:`~pulse_celery.pulse.engine.Engine` itself, so that the
consumer's modules do not import the engine that imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from .config import PulseConfig
from .loop import Timers
from .session import Session


class Host(Protocol):
    """What a consumer needs of the engine it runs in."""

    config: PulseConfig
    timers: Timers
    #: the live connection's channels, while it is up
    session: Session | None
    #: set while every queue is held (no consumer active)
    held: str | None

    @property
    def up(self) -> bool: ...

    def soon(self, fun: Callable[[], Any]) -> None: ...

    def served(self) -> None: ...

    def changed(self, queues: bool = False) -> None: ...

    def state(self) -> str: ...
