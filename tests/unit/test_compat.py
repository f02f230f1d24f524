"""What pulse_celery._compat does where Celery, kombu and py-amqp versions differ.

These run on whichever versions are installed; the noxfile runs them on the lowest and the
highest supported ones, so each branch below runs for real somewhere in the matrix.
"""

from __future__ import annotations

import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
from kombu.asynchronous import Hub

from pulse_celery import _compat
from pulse_celery.errors import ConfigError
from pulse_celery.pulse.loop import Loop, run_in_thread

#: Far less than the poller's timeout with a timer pending (1 to 10 s), far more than a thread switch.
PROMPTLY = 0.3


# -- Celery: the version floor and the consumer's internals ---------------------------------------


@pytest.mark.parametrize("version", ["5.3.6", "5.2.7", "4.4.7"])
def test_a_celery_older_than_5_4_is_refused_with_the_supported_versions_and_the_install_command(
    version: str,
) -> None:
    with pytest.raises(ConfigError) as refused:
        _compat.check_celery_version(version)

    message = str(refused.value)
    assert version in message
    assert _compat.SUPPORTED_CELERY in message
    assert "pip install 'celery>=5.4,<6'" in message


@pytest.mark.parametrize("version", ["5.4.0", "5.5.3", "5.6.3", "5.7.0", "5.7.1rc1"])
def test_celery_5_4_to_5_7_pass_the_version_check(version: str) -> None:
    _compat.check_celery_version(version)


def test_the_installed_celery_passes_the_version_check() -> None:
    from celery import __version__

    _compat.check_celery_version(__version__)


class _Consumer:
    """The parts of Celery's worker Consumer that the step uses, run on a real kombu Hub."""

    def __init__(self, hub: Hub, strategy: Any) -> None:
        self.hub = hub
        self.strategies = {"tasks.t": strategy}
        self.on_task_message: set[Any] = set()
        self.blueprint = SimpleNamespace(state=1)
        self.scheduled_with: list[str] = []

    def call_soon(self, p: Any, *args: Any) -> Any:
        self.scheduled_with.append("call_soon")
        return self.hub.call_soon(p, *args)


class _Consumer57(_Consumer):
    """Celery 5.7 adds call_soon_ack for acks and rejects."""

    def call_soon_ack(self, p: Any, *args: Any) -> Any:
        self.scheduled_with.append("call_soon_ack")
        return self.hub.call_soon(p, *args)


class _Message:
    def __init__(self) -> None:
        self.acked = 0
        self.rejected = 0

    def ack_log_error(self, *args: Any) -> None:
        self.acked += 1

    def reject_log_error(self, *args: Any) -> None:
        self.rejected += 1


def _run_ready(hub: Hub) -> None:
    for callback in hub._pop_ready():
        callback()


@pytest.mark.parametrize(
    ("consumer_class", "scheduler"), [(_Consumer, "call_soon"), (_Consumer57, "call_soon_ack")]
)
def test_the_strategys_ack_goes_through_the_hub_with_the_scheduler_of_each_celery_version(
    consumer_class: type[_Consumer], scheduler: str
) -> None:
    hub = Hub()
    calls: list[tuple[Any, ...]] = []

    def strategy(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any) -> None:
        calls.append((message, body, callbacks))
        ack()  # what Request.acknowledge does: the promise, not the message

    consumer = consumer_class(hub, strategy)
    message = _Message()
    try:
        _compat.check_worker_consumer(consumer)
        _compat.run_strategy(consumer, "tasks.t", message)

        assert calls == [(message, None, consumer.on_task_message)]
        assert message.acked == 0  # not from inside the strategy: on the next turn of the loop
        _run_ready(hub)
        assert (message.acked, message.rejected) == (1, 0)
        assert consumer.scheduled_with == [scheduler]
    finally:
        hub.close()


def test_a_reject_goes_through_call_soon_on_celery_before_5_7() -> None:
    hub = Hub()

    def strategy(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any) -> None:
        reject()

    consumer = _Consumer(hub, strategy)
    message = _Message()
    try:
        _compat.run_strategy(consumer, "tasks.t", message)
        _run_ready(hub)
        assert (message.acked, message.rejected) == (0, 1)
    finally:
        hub.close()


def test_a_consumer_without_call_soon_ack_or_call_soon_is_refused_naming_what_is_missing() -> None:
    consumer = SimpleNamespace(strategies={}, on_task_message=set(), blueprint=SimpleNamespace(state=1))

    with pytest.raises(ConfigError) as refused:
        _compat.check_worker_consumer(consumer)

    assert "Consumer.call_soon_ack (or call_soon)" in str(refused.value)
    assert _compat.SUPPORTED_CELERY in str(refused.value)


def test_the_installed_celery_consumer_has_what_the_step_uses() -> None:
    from celery.worker.consumer import Consumer

    assert callable(getattr(Consumer, "call_soon_ack", None)) or callable(
        getattr(Consumer, "call_soon", None)
    )
    assert isinstance(Consumer.max_prefetch_count, property)


# -- kombu: calls from other threads wake the hub --------------------------------------------------


def test_a_call_from_another_thread_runs_at_once_while_the_poller_waits_for_a_far_timer() -> None:
    # Before kombu 5.7 the hub had no waker: this call waited for the poller's timeout.
    loop = Loop()
    idle, peer = socket.socketpair()
    loop.hub.add_reader(idle.fileno(), idle.recv, 1)  # a socket to poll, as a connection's
    loop.hub.call_repeatedly(5.0, lambda: None)  # a timer, as heartbeat checks
    runner = threading.Thread(target=loop.run, name="loop")
    runner.start()
    try:
        time.sleep(0.3)  # the loop is in its poll
        took = []
        for _ in range(3):
            started = time.monotonic()
            assert loop.call(lambda: "done", timeout=10) == "done"
            took.append(time.monotonic() - started)
            time.sleep(0.2)
        assert max(took) < PROMPTLY, took
    finally:
        loop.stop()
        runner.join(15)
        loop.close()
        idle.close()
        peer.close()
    assert not runner.is_alive()


def test_a_worker_thread_result_reaches_the_hub_at_once_while_the_poller_waits_for_a_far_timer() -> None:
    hub = Hub()
    idle, peer = socket.socketpair()
    hub.add_reader(idle.fileno(), idle.recv, 1)
    hub.call_repeatedly(5.0, lambda: None)
    done: list[float] = []
    finished: list[float] = []

    def work() -> None:
        time.sleep(0.2)  # the hub is in its poll by then
        finished.append(time.monotonic())

    try:
        run_in_thread(hub, work, lambda result: done.append(time.monotonic()), print, "work")
        deadline = time.monotonic() + 10
        while not done and time.monotonic() < deadline:
            hub.run_once()
        assert done and done[0] - finished[0] < PROMPTLY, done and done[0] - finished[0]
    finally:
        hub.close()
        _compat.close_hub_waker(hub)
        idle.close()
        peer.close()


class _HubBefore57:
    """What a kombu Hub before 5.7 has of what the waker uses (and no ``_create_waker``)."""

    def __init__(self) -> None:
        self.on_tick: set[Any] = set()
        self.readers: dict[int, Any] = {}

    def add_reader(self, fd: int, callback: Any) -> None:
        self.readers[fd] = callback


def test_kombu_5_7_wakes_itself_and_an_older_hub_gets_a_socket_pair_of_ours() -> None:
    new = Hub()
    old = _HubBefore57()
    try:
        if callable(getattr(new, "_create_waker", None)):
            assert _compat.hub_waker(new) is _compat._nothing
        wake = _compat.hub_waker(old)
        assert wake is not _compat._nothing
        assert _compat.hub_waker(old) == wake  # one per hub
        assert len(old.on_tick) == 1
    finally:
        _compat.close_hub_waker(old)
        new.close()
    assert old.on_tick == set()


def test_our_waker_is_registered_again_after_hub_reset_and_wakes_the_poller() -> None:
    hub = Hub()
    waker = _compat._Waker(hub)
    try:
        waker.wake()  # (only so that the poll returns at once)
        next(hub.create_loop())
        assert waker.reader.fileno() in hub.readers

        hub.reset()  # what Celery does on a loop error: every reader is dropped
        assert waker.reader.fileno() not in hub.readers
        turn = hub.create_loop()  # and then a new loop (asynloop) on the new poller
        waker.wake()
        next(turn)
        assert waker.reader.fileno() in hub.readers

        waker.wake()
        started = time.monotonic()
        next(turn)  # returns at once: the reader is readable, and drained
        assert time.monotonic() - started < PROMPTLY
        with pytest.raises(BlockingIOError):
            waker.reader.recv(1)
    finally:
        waker.close()
        hub.close()
    assert waker.reader.fileno() == -1 and waker.writer.fileno() == -1
