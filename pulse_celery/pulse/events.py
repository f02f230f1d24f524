"""What the engine tells its host when a connection comes up: :class:`Connected`.

An app on anonymous queues missed what was published while it was disconnected (its queues
died with the old connection); a named queue kept it. ``Connected`` says which is which, so
that an app can resync (ask an API for what it missed) after a reconnect. A recycled
connection (``pulse_recycle_interval``) missed nothing: it consumed before the old one stopped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectedQueue:
    """One queue consumed on the new connection."""

    #: its full name (an anonymous queue's is new on every connect)
    name: str
    #: True for an anonymous queue: it is new, and what was published before it was declared is not in it
    anonymous: bool


@dataclass(frozen=True)
class Connected:
    """A Pulse connection came up: the first of this process, or after a loss, or a recycle."""

    #: the Pulse source's name (``"default"`` for the single-source settings)
    source: str
    #: the queues to be consumed on it (closed and deleted ones are left out)
    queues: tuple[ConnectedQueue, ...]
    #: True for the first connect of this engine; False after a loss or for a recycle
    first: bool
    #: True when this connection replaces one that was up (``pulse_recycle_interval``): nothing was missed
    recycled: bool = False
    #: seconds the connection was down before this one (None for the first and for a recycle)
    down_for: float | None = None

    @property
    def reconnect(self) -> bool:
        """A reconnect after a loss: anonymous queues missed what was published meanwhile."""
        return not self.first and not self.recycled
