"""The hand-off's task messages awaiting the Celery broker's confirm, settled as confirms arrive.

RabbitMQ numbers the publishes of a confirm channel from 1 and confirms them by that number,
one at a time or (``multiple``) every one up to it. A message the broker returned
(``basic.return``: unroutable) is confirmed too, after the return: it counts as failed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from ..errors import HandoffFailed

OnConfirmed = Callable[[], None]
OnFailed = Callable[[BaseException], None]


class Confirms:
    """Publish sequence number -> (task id, on_confirmed, on_failed), in publish order."""

    def __init__(self) -> None:
        self._seq = 0
        #: in publish order, so that a multiple confirm settles a prefix of it
        self._unconfirmed: OrderedDict[int, tuple[str, OnConfirmed, OnFailed]] = OrderedDict()
        self._returned: set[str] = set()
        #: called after each batch of confirms has been reported (dedupe writes its entries then)
        self.after: set[Callable[[], None]] = set()

    def __len__(self) -> int:
        return len(self._unconfirmed)

    def new_channel(self) -> None:
        """A fresh confirm channel: its publishes are numbered from 1."""
        self._seq = 0
        self._returned.clear()

    def expect(self, task_id: str, on_confirmed: OnConfirmed, on_failed: OnFailed) -> int:
        """Number the next publish and wait for its confirm; return its number."""
        seq = self._seq = self._seq + 1
        self._unconfirmed[seq] = (task_id, on_confirmed, on_failed)
        return seq

    def withdraw(self, seq: int) -> None:
        """Publish ``seq`` never reached the broker (the last one numbered): forget it."""
        self._unconfirmed.pop(seq, None)
        self._seq = seq - 1

    def fail_all(self, failure: HandoffFailed) -> None:
        """The channel is gone: every message not confirmed yet has failed, each reported once."""
        unconfirmed, self._unconfirmed = self._unconfirmed, OrderedDict()
        for _task_id, _ok, on_failed in unconfirmed.values():
            on_failed(failure)

    def returned(self, task_id: str) -> None:
        """The broker returned ``task_id``'s message: its confirm, when it comes, is a failure."""
        self._returned.add(task_id)

    def settle(self, delivery_tag: int, multiple: bool, nacked: bool) -> None:
        """A confirm (``basic.ack``) or refusal (``basic.nack``) of ``delivery_tag`` (and those before)."""
        unconfirmed = self._unconfirmed
        if multiple:
            entries = []
            while unconfirmed and next(iter(unconfirmed)) <= delivery_tag:
                entries.append(unconfirmed.popitem(last=False)[1])
        else:
            entry = unconfirmed.pop(delivery_tag, None)
            entries = [entry] if entry is not None else []
        for task_id, on_confirmed, on_failed in entries:
            if task_id in self._returned:
                self._returned.discard(task_id)
                on_failed(HandoffFailed("the Celery broker could not route the task message (basic.return)"))
            elif nacked:
                on_failed(HandoffFailed("the Celery broker refused the task message (basic.nack)"))
            else:
                on_confirmed()
        for after in tuple(self.after):
            after()
