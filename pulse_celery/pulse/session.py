"""The live Pulse connection: the channels on it, one per queue, and the first declarations.

A :class:`Session` exists from a connect to the connection's loss or close. Queues take
their channels from it (as :class:`~pulse_celery.pulse.lane.Lane`), and every call on it is
guarded: an error of the connection is reported once, through the link, and never raised.
:func:`opener` is what the connect thread does before the session starts, so the loop
never waits on those round trips.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from amqp.exceptions import ChannelError
from kombu import Connection

from .config import PulseConfig
from .lane import Lane
from .link import Opener, Up
from .stats import QueueStats
from .topology import QueueSpec, declare
from .wire import error_channel


def opener(
    connect: Callable[[], Connection],
    config: PulseConfig,
    specs: list[tuple[str, QueueSpec]],
    isolate: bool,
    shared: bool,
) -> Opener:
    """The connect thread's work: connect, then declare each queue of ``specs`` on its channel.

    The thread hands back, by key, the spec it declared and a channel with it declared, or
    (``isolate``) the error; without ``isolate`` a refusal fails the whole attempt. A
    ``shared`` connection (the Celery app's in-memory one) is never dropped here.
    """

    def open() -> tuple[Connection, dict[str, tuple[QueueSpec, Any]]]:
        connection = connect()
        try:
            return connection, {
                key: (spec, _declared(connection, config, spec, isolate)) for key, spec in specs
            }
        except Exception:
            if not shared:
                connection.collect()
            raise

    return open


def _declared(connection: Connection, config: PulseConfig, spec: QueueSpec, isolate: bool) -> Any:
    """A channel with ``spec`` declared on it, or (``isolate``) the broker's refusal."""
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
        return exc
    return channel


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
