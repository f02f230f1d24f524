"""The live Pulse connection: the channels on it, one per queue, and the first declarations.

A :class:`Session` exists from a connect to the connection's loss or close. Queues take
their channels from it (as :class:`~pulse_celery.pulse.lane.Lane`), and every call on it is
guarded: an error of the connection is reported once, through the link, and never raised.
:func:`predeclare` is what the connect thread does before the session starts, so the loop
never waits on those round trips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from amqp.exceptions import ChannelError
from kombu import Connection

from .config import PulseConfig
from .lane import Lane
from .link import Up
from .stats import QueueStats
from .topology import QueueSpec, declare
from .wire import error_channel


def predeclare(
    connection: Connection, config: PulseConfig, specs: Iterable[tuple[str, QueueSpec]], isolate: bool
) -> dict[str, Any]:
    """In the connect thread: for each queue, a channel with it declared, or (``isolate``) the error.

    Without ``isolate`` a refusal fails the whole connect attempt.
    """
    declared: dict[str, Any] = {}
    for key, spec in specs:
        channel = connection.channel()
        channel.auto_decode = False  # bodies stay bytes: only JSON is ever decoded, by us
        try:
            declare(channel, config, spec)
        except ChannelError as exc:
            if not isolate:
                raise
            try:
                channel.close()  # py-amqp reopened it after the broker closed it
            except Exception:
                pass
            declared[key] = exc
        else:
            declared[key] = channel
    return declared


class Session:
    """Channels on the live connection; dead once the connection is lost or closed."""

    def __init__(self, up: Up, ticks: set[Callable[[], Any]] | None) -> None:
        """``ticks``: the hub's once-per-turn callbacks, where each lane sends its acks; or None."""
        self.connection = up.connection
        #: None on kombu's in-memory transport (no event loop)
        self.wire = up.wire
        self._ticks = ticks
        self._closed = False

    @property
    def alive(self) -> bool:
        return not self._closed and (self.wire is None or self.wire.alive)

    def end(self) -> None:
        self._closed = True

    def guard(self, fun: Callable[..., Any], *args: Any) -> Any:
        """Call ``fun``; a connection error becomes the link's loss, never an exception."""
        if not self.alive:
            return None
        return self.wire.guard(fun, *args) if self.wire is not None else fun(*args)

    def lane(self, channel: Any, stats: QueueStats) -> Lane:
        """A queue's lane on ``channel``, whose acks are counted into ``stats``."""
        channel.auto_decode = False
        return Lane(channel, self.wire, stats, self._ticks)

    def open_channel(self) -> Any:
        """A new channel (None if the connection is gone)."""
        return self.guard(self.connection.channel)

    def close_channel(self, channel: Any) -> None:
        if getattr(channel, "is_open", False):
            self.guard(channel.close)

    def run_on_own_channel(self, fun: Callable[..., Any], *args: Any) -> Any:
        """Run ``fun(channel, *args)`` on a short-lived channel; a channel error is returned, not raised.

        None when the connection is gone.
        """

        def work() -> Any:
            channel = self.connection.channel()
            try:
                return fun(channel, *args)
            except ChannelError as exc:
                if error_channel(exc) not in (None, channel.channel_id):
                    raise  # another channel's, read while this one waited: the guard routes it
                return exc
            finally:
                self.close_channel(channel)  # guarded: another channel's error is routed, not ours

        return self.guard(work)
