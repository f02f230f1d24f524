"""The acker: acks in order go as one multiple ack; out-of-order acks are never held back."""

from __future__ import annotations

from pulse_celery.pulse.acks import Acker


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bool]] = []

    def send(self, tag: int, multiple: bool) -> None:
        self.sent.append((tag, multiple))


def acker_with(tags: range) -> tuple[Acker, Recorder]:
    recorder = Recorder()
    acker = Acker(recorder.send, batched=True)
    for tag in tags:
        acker.delivered(tag)
    return acker, recorder


def test_acks_in_delivery_order_go_as_one_multiple_ack_at_the_end_of_the_turn() -> None:
    acker, recorder = acker_with(range(1, 6))
    for tag in range(1, 6):
        acker.ack(tag)
    assert recorder.sent == []  # nothing before the loop's turn ends
    acker.flush()
    assert recorder.sent == [(5, True)]
    acker.flush()
    assert recorder.sent == [(5, True)]  # nothing twice


def test_an_unfinished_older_delivery_does_not_hold_back_newer_acks() -> None:
    acker, recorder = acker_with(range(1, 6))
    for tag in (2, 3, 5):
        acker.ack(tag)
    acker.flush()
    # 1 still runs: a multiple ack would ack it too, so each goes on its own.
    assert recorder.sent == [(2, False), (3, False), (5, False)]
    acker.ack(1)
    acker.ack(4)
    acker.flush()
    # 1..5 are now all settled: one multiple ack covers 1 and 4 (2, 3, 5 are already acked).
    assert recorder.sent[3:] == [(4, True)]


def test_a_multiple_ack_never_covers_a_delivery_still_in_flight() -> None:
    acker, recorder = acker_with(range(1, 8))
    acker.rejected(2)  # the caller sent basic.reject for it
    for tag in (1, 3, 4, 6):
        acker.ack(tag)
    acker.flush()
    assert recorder.sent == [(4, True), (6, False)]  # 5 is in flight: 6 alone
    acker.ack(5)
    acker.ack(7)
    acker.flush()
    assert recorder.sent[2:] == [(7, True)]


def test_without_an_event_loop_or_during_warm_shutdown_each_ack_goes_at_once() -> None:
    recorder = Recorder()
    acker = Acker(recorder.send, batched=False)
    acker.delivered(1)
    acker.delivered(2)
    acker.ack(2)
    assert recorder.sent == [(2, False)]
    acker.ack(1)
    assert recorder.sent == [(2, False), (1, True)]

    acker, recorder = acker_with(range(1, 3))
    acker.batched = False  # what the consumer does on warm shutdown
    acker.ack(1)
    assert recorder.sent == [(1, True)]
