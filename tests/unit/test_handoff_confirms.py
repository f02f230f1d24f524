"""Publisher confirms settle exactly the task messages they name, in publish order."""

from __future__ import annotations

from celery import Celery

from pulse_celery.worker.handoff import Handoff


def handoff_with(seqs: range) -> tuple[Handoff, list[tuple[int, str]]]:
    """A hand-off whose channel has published ``seqs`` (numbered from 1; those before settled)."""
    handoff = Handoff(Celery("t", broker="memory://", set_as_current=False), None, lambda ready: None)
    outcomes: list[tuple[int, str]] = []
    for seq in range(1, seqs.stop):
        number = handoff.confirms.expect(
            f"task-{seq}",
            lambda seq=seq: outcomes.append((seq, "confirmed")),
            lambda exc, seq=seq: outcomes.append((seq, f"failed: {exc}")),
        )
        assert number == seq
        if seq < seqs.start:
            handoff.confirms.settle(seq, False, nacked=False)
    outcomes.clear()
    return handoff, outcomes


class Returned:
    def __init__(self, task_id: str) -> None:
        self.properties = {"correlation_id": task_id}


def test_a_multiple_ack_confirms_every_message_up_to_its_tag_in_order():
    handoff, outcomes = handoff_with(range(1, 6))
    handoff._on_basic_ack(3, True)
    assert outcomes == [(1, "confirmed"), (2, "confirmed"), (3, "confirmed")]
    assert list(handoff.confirms._unconfirmed) == [4, 5]
    handoff._on_basic_ack(5, False)
    assert outcomes[-1] == (5, "confirmed")
    assert list(handoff.confirms._unconfirmed) == [4]


def test_a_nack_fails_and_a_returned_message_fails_even_when_acked():
    handoff, outcomes = handoff_with(range(1, 4))
    handoff._on_basic_return(Exception("NO_ROUTE"), "", "celery", Returned("task-2"))
    handoff._on_basic_ack(2, True)
    handoff._on_basic_nack(3, False)
    assert outcomes[0] == (1, "confirmed")
    assert outcomes[1][0] == 2 and "basic.return" in outcomes[1][1]
    assert outcomes[2][0] == 3 and "basic.nack" in outcomes[2][1]
    assert not handoff.confirms and not handoff.confirms._returned


def test_a_confirm_for_an_unknown_or_already_settled_tag_changes_nothing():
    handoff, outcomes = handoff_with(range(4, 6))
    handoff._on_basic_ack(3, True)
    handoff._on_basic_ack(9, False)
    assert outcomes == []
    assert list(handoff.confirms._unconfirmed) == [4, 5]
