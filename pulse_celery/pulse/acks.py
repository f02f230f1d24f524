"""Ack Pulse deliveries in as few frames as the order in which they finish allows.

Acks asked for during one turn of the event loop are sent together before the loop polls
again (:meth:`Acker.flush` is one of the hub's ``on_tick`` callbacks): every
delivery from the oldest unsettled one up to the newest acked one in a row goes in one
``basic.ack`` with ``multiple=True``; the rest (acked while an older delivery is still
running) are acked one by one at once, so that a long task never holds the acks of the
short ones behind it (they would fill the prefetch window and stay unacked). On a quorum
queue, each ack frame is a command in the queue's Raft log: fewer frames, less broker work.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

#: ``send(delivery_tag, multiple)``: write one ``basic.ack``.
SendAck = Callable[[int, bool], None]


class Acker:
    """Track one channel's unsettled deliveries and send their acks in batches."""

    def __init__(self, send: SendAck, batched: bool) -> None:
        self._send = send
        #: True: acks wait for :meth:`flush`, which the event loop calls once per turn;
        #: False (no event loop): each ack is sent at once
        self.batched = batched
        #: delivery tags received and not yet known to be settled, oldest first
        self._outstanding: deque[int] = deque()
        #: tags in ``_outstanding`` already settled (rejected, or acked on their own)
        self._done: set[int] = set()
        #: tags acked since the last flush, not sent yet
        self._pending: list[int] = []

    def delivered(self, delivery_tag: int) -> None:
        self._outstanding.append(delivery_tag)

    def rejected(self, delivery_tag: int) -> None:
        """The caller has sent a ``basic.reject`` for it."""
        self._done.add(delivery_tag)

    def ack(self, delivery_tag: int) -> None:
        self._pending.append(delivery_tag)
        if not self.batched:
            self.flush()

    def flush(self) -> None:
        """Send the acks asked for so far."""
        if not self._pending:
            return
        pending = set(self._pending)
        self._pending = []
        outstanding, done = self._outstanding, self._done
        highest = None
        while outstanding and (outstanding[0] in pending or outstanding[0] in done):
            tag = outstanding.popleft()
            if tag in pending:
                pending.discard(tag)
                highest = tag
            else:
                done.discard(tag)
        if highest is not None:
            self._send(highest, True)
        for tag in sorted(pending):
            self._send(tag, False)
            done.add(tag)
