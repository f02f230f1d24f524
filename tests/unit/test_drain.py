"""The drain keeper: while Celery's pool drains without a loop, one thread of ours heartbeats and acks."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import Any

import celery
import pytest
from kombu.asynchronous import Hub

from pulse_celery import _compat
from pulse_celery.worker.drain import DrainKeeper


class FakeWire:
    """What the keeper uses of a LoopConnection: its heartbeat, and guard() around each write."""

    def __init__(self, heartbeat: float) -> None:
        self.alive = True
        self.detached = False
        self.beats: list[str] = []
        amqp_connection = SimpleNamespace(send_heartbeat=self._beat)
        self.connection = SimpleNamespace(
            get_heartbeat_interval=lambda: heartbeat, connection=amqp_connection
        )

    def _beat(self) -> None:
        self.beats.append(threading.current_thread().name)

    def detach(self) -> None:
        self.detached = True

    def guard(self, fun: Any, *args: Any) -> Any:
        return fun(*args)


class Message:
    def __init__(self) -> None:
        self.acked_in: list[str] = []

    def ack_log_error(self, logger: Any, errors: Any) -> None:
        self.acked_in.append(threading.current_thread().name)


def wait_for(condition: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return bool(condition())


def test_while_the_worker_runs_acks_go_through_celerys_scheduler() -> None:
    scheduled: list[tuple[Any, ...]] = []
    keeper = DrainKeeper()
    keeper.ready(lambda p, *args: scheduled.append((p, *args)))
    message = Message()

    keeper.schedule(message.ack_log_error, "logger", ())

    assert scheduled == [(message.ack_log_error, "logger", ())]
    assert message.acked_in == []


def test_during_the_drain_one_thread_sends_heartbeats_and_the_acks_of_finishing_tasks() -> None:
    # Given a keeper that took the connection over (heartbeat 0.2 s: a beat every 0.05 s)
    keeper = DrainKeeper()
    keeper.ready(lambda p, *args: pytest.fail("Celery's scheduler is not used during the drain"))
    wire = FakeWire(heartbeat=0.2)
    keeper.start([wire], hub=None)  # type: ignore[arg-type]
    try:
        # When tasks finish in other threads (the pool's result handling)
        message = Message()
        finisher = threading.Thread(target=keeper.schedule, args=(message.ack_log_error, "logger", ()))
        finisher.start()
        finisher.join()
        # Then their acks and the heartbeats are written by the keeper's thread alone
        assert wait_for(lambda: message.acked_in == ["pulse-drain"])
        assert wait_for(lambda: len(wire.beats) >= 3)
        assert set(wire.beats) == {"pulse-drain"}
        assert wire.detached  # the hub's heartbeat timer no longer writes
    finally:
        keeper.stop()
    # And once stopped, a late ack runs in the thread that finished its task (the only writer then)
    late = Message()
    keeper.schedule(late.ack_log_error, "logger", ())
    assert late.acked_in == [threading.current_thread().name]
    assert keeper.ran == 1


def test_the_keeper_hands_the_connection_back_before_hub_close_runs_the_callbacks_left_on_the_hub() -> None:
    hub = Hub()
    keeper = DrainKeeper()
    keeper.ready(hub.call_soon)
    wire = FakeWire(heartbeat=60)
    keeper.start([wire], hub)
    running_at_close: list[bool] = []
    # A callback Celery left on the hub (queued before the drain): hub.close() runs it
    keeping = lambda: any(t.name == "pulse-drain" for t in threading.enumerate())  # noqa: E731
    hub.call_soon(lambda: running_at_close.append(keeping()))

    hub.close()

    assert running_at_close == [False]
    keeper.stop()
    assert keeper._on_hub_close not in hub.on_close


def test_celery_turns_its_hub_while_the_pool_drains_only_for_5_7s_prefork_pool() -> None:
    from celery.concurrency.prefork import TaskPool as PreforkPool
    from celery.concurrency.thread import TaskPool as ThreadsPool

    prefork = SimpleNamespace(pool=PreforkPool.__new__(PreforkPool))
    threads = SimpleNamespace(pool=ThreadsPool.__new__(ThreadsPool))
    at_least_5_7 = tuple(celery.VERSION[:2]) >= (5, 7)

    assert _compat.celery_turns_hub_while_pool_drains(prefork) is at_least_5_7
    assert _compat.celery_turns_hub_while_pool_drains(threads) is False
