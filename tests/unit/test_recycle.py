"""Retiring a recycled connection: it closes once nothing is in flight on it, at the deadline, or never
(it was lost: its deliveries come again, and nothing reconnects).

Fakes stand in for the connection (a wire) and its channels; the timers have no loop, so each
test calls ``check()`` where the loop would.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from pulse_celery.pulse.lane import Lane
from pulse_celery.pulse.link import Up
from pulse_celery.pulse.loop import Timers
from pulse_celery.pulse.recycle import Retirement
from pulse_celery.pulse.stats import QueueStats


class FakeWire:
    def __init__(self) -> None:
        self.alive = True
        self.closed = False
        self.reading = True
        self.on_channel_error: Any = None

    def guard(self, fun: Any, *args: Any) -> Any:
        return fun(*args) if self.alive else None

    def route_channel_errors(self, callback: Any) -> None:
        self.on_channel_error = callback

    def stop_reading(self) -> None:
        self.reading = False

    def close(self) -> None:
        self.closed, self.alive = True, False


class FakeChannel:
    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id
        self.acks: list[int] = []
        self.closed = False

    def basic_ack(self, tag: int, multiple: bool = False) -> None:
        self.acks.append(tag)

    def close(self) -> None:
        self.closed = True


def retiring(in_flight: int, deadline: float = 60.0) -> tuple[Retirement, FakeWire, Lane]:
    wire = FakeWire()
    lane = Lane(FakeChannel(1), wire, QueueStats("queue/alice/builds", "task"), set())  # type: ignore[arg-type]
    for tag in range(1, in_flight + 1):
        lane.delivered(tag, redelivered=False)
    up = Up(SimpleNamespace(), wire, {}, None)  # type: ignore[arg-type]
    return Retirement(up, [lane], Timers(None), time.monotonic() + deadline), wire, lane


def test_the_old_connection_stays_open_while_a_delivery_on_it_is_unsettled_and_closes_after_its_ack() -> None:
    retirement, wire, lane = retiring(in_flight=2)
    retirement.check()
    assert (wire.closed, retirement.done, retirement.in_flight) == (False, False, 2)
    lane.ack(1)
    lane.ack(2)
    retirement.check()
    # the acks went out on the old channel (in one frame: multiple up to 2) before it closed
    assert lane.channel.acks[-1] == 2 and lane.channel.closed
    assert (wire.closed, retirement.done, lane.stats.acked) == (True, True, 2)


def test_at_the_deadline_the_old_connection_is_closed_with_what_is_still_unsettled() -> None:
    retirement, wire, lane = retiring(in_flight=3, deadline=-1.0)
    retirement.check()
    assert (wire.closed, retirement.done, lane.alive) == (True, True, False)
    assert lane.stats.acked == 0  # redelivered by the broker, never acked here


def test_a_loss_of_the_old_connection_kills_its_lanes_and_settling_is_then_a_no_op() -> None:
    retirement, wire, lane = retiring(in_flight=1)
    wire.alive = False
    retirement.check()
    assert (retirement.done, lane.alive, wire.closed) == (True, False, False)
    lane_acks_before = list(lane.channel.acks)
    assert lane.guard(lane.channel.basic_ack, 1) is None
    assert lane.channel.acks == lane_acks_before


def test_a_channel_error_on_the_old_connection_kills_only_that_lane() -> None:
    retirement, wire, lane = retiring(in_flight=1)
    wire.on_channel_error(1, RuntimeError("PRECONDITION_FAILED"))
    assert not lane.alive and retirement.in_flight == 0
    retirement.check()
    assert wire.closed and retirement.done


def test_a_warm_shutdown_sends_the_old_connections_acks_at_once_and_stops_reading_it() -> None:
    retirement, wire, lane = retiring(in_flight=1)
    retirement.drain()
    lane.ack(1)
    assert lane.channel.acks == [1] and not wire.reading
