"""The engine's lifecycle where threads and the loop meet: stopping, closing, pausing mid-call.

* ``Session.run_on_own_channel`` over a real py-amqp connection and a scripted broker on a
  socketpair (``amqp_peer``): whose error is the outcome of the call, and whose is routed.
* ``Loop``: stopping it while other threads wait on :meth:`~Loop.call`; calls made before a
  claimed thread runs it.
* ``PulseConnection``: start/close/run orders and Ctrl-C, against a port nothing listens on.
* ``QueueConsumer.activate``: pauses, holds and nested activations while ``basic_consume``
  waits (fake channels whose ``basic_consume`` calls back into the consumer).
* ``Link``: a connect attempt that finishes after ``stop()``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import amqp
import pytest
from amqp import spec
from amqp.exceptions import NotFound, PreconditionFailed
from amqp_peer import (
    KombuConnection,
    Peer,
    SocketConnection,
    channel_closed_by_broker,
    connect,
    consume,
    method,
    methods,
    open_channel,
)
from kombu.asynchronous import Hub

from pulse_celery.errors import PulseCeleryError
from pulse_celery.pulse.config import PulseConfig
from pulse_celery.pulse.connection import PulseConnection, connection_config
from pulse_celery.pulse.consumer import QueueConsumer
from pulse_celery.pulse.lane import Lane
from pulse_celery.pulse.link import Link, Up
from pulse_celery.pulse.loop import Loop, Timers
from pulse_celery.pulse.session import Session
from pulse_celery.pulse.stats import QueueStats
from pulse_celery.pulse.topology import QueueSpec
from pulse_celery.pulse.wire import LoopConnection, error_channel

QUEUE = "queue/alice/builds"

#: A port nothing listens on: every connect attempt is refused at once, no broker needed.
NOWHERE = "amqp://127.0.0.1:9/"


def wait_until(done: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def join_connect_threads(timeout: float = 5.0) -> None:
    """Wait for the connect threads the engine started (each ends once its attempt is refused)."""
    for thread in threading.enumerate():
        if thread.name.startswith("pulse-celery-connect-"):
            thread.join(timeout)
            assert not thread.is_alive(), f"{thread.name} did not end"


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[threading.ExceptHookArgs]:
    """The exceptions that end any thread during the test (recorded, not printed)."""
    errors: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", errors.append)
    return errors


# -- 1. Session.run_on_own_channel: whose error is the outcome ----------------------------------


@dataclass(repr=False)
class Broker:
    """A py-amqp connection consuming on channel 1, attached to a loop, and its scripted peer."""

    connection: SocketConnection
    peer: Peer
    wire: LoopConnection
    lost: list[BaseException]
    routed: list[tuple[int, BaseException]] = field(default_factory=list)

    def session(self) -> Session:
        up = Up(connection=self.wire.connection, wire=self.wire, extra=None, down_for=None)
        return Session(up, ticks=None)

    def route(self) -> None:
        self.wire.route_channel_errors(lambda channel_id, exc: self.routed.append((channel_id, exc)))

    def sent(self) -> list[tuple[int, tuple[int, int]]]:
        """(channel, method) of every method the client has sent since the last call."""
        return [(channel, sig) for channel, sig, _ in methods(self.peer.received())]


@pytest.fixture
def broker(monkeypatch: pytest.MonkeyPatch) -> Iterator[Broker]:
    # A synchronous call the peer never answers fails in seconds, not in 30.
    monkeypatch.setattr(LoopConnection, "SYNC_TIMEOUT", 5.0)
    hub = Hub()
    connection, peer = connect()
    wire: LoopConnection | None = None
    try:
        channel = open_channel(connection, peer, 1)
        consume(channel, peer, "ctag", lambda message: None)
        lost: list[BaseException] = []
        wire = LoopConnection(KombuConnection(connection), hub, lost.append, "test")
        wire.attach()
        yield Broker(connection, peer, wire, lost)
    finally:
        peer.close()
        if wire is not None:
            wire.close()
        connection.collect()
        connection.given_sock.close()
        hub.close()


def ack_timeout_on_channel_1() -> bytes:
    """The broker closes the consumer's channel 1: an ack came too late (406)."""
    return channel_closed_by_broker(
        1, 406, "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out"
    )


def channel_2_opens() -> bytes:
    return method(2, spec.Channel.OpenOk, "S", ("",))


def channel_2_close_ok() -> bytes:
    return method(2, spec.Channel.CloseOk)


def deleting(used: list[tuple[int, amqp.Channel]]) -> Callable[[amqp.Channel], Any]:
    """``fun`` for run_on_own_channel: delete the queue on the channel it is given.

    Each channel it is given goes in ``used`` with its number (py-amqp forgets it on close).
    """

    def delete(channel: amqp.Channel) -> Any:
        used.append((channel.channel_id, channel))
        return channel.queue_delete(QUEUE)

    return delete


def test_run_on_own_channel_returns_what_fun_returned_and_closes_its_channel(broker: Broker) -> None:
    used: list[tuple[int, amqp.Channel]] = []
    broker.peer.send(channel_2_opens(), method(2, spec.Queue.DeleteOk, "l", (7,)), channel_2_close_ok())

    outcome = broker.session().run_on_own_channel(deleting(used))

    assert outcome == 7
    [(channel_id, channel)] = used
    assert channel_id == 2
    assert not channel.is_open
    assert broker.sent() == [
        (2, spec.Channel.Open),
        (2, spec.Queue.Delete),
        (2, spec.Channel.Close),
    ]
    assert broker.lost == []


def test_another_channels_close_read_while_run_on_own_channel_waits_is_routed_with_its_number_not_returned(
    broker: Broker,
) -> None:
    broker.route()
    used: list[tuple[int, amqp.Channel]] = []
    broker.peer.send(
        channel_2_opens(),
        ack_timeout_on_channel_1(),  # read while queue.delete waits for its reply on channel 2
        method(2, spec.Queue.DeleteOk, "l", (0,)),  # arrives while channel 2 closes: ignored
        channel_2_close_ok(),
    )

    outcome = broker.session().run_on_own_channel(deleting(used))

    assert outcome is None  # not channel 1's error
    [(routed_id, exc)] = broker.routed
    assert routed_id == 1
    assert isinstance(exc, PreconditionFailed)
    assert error_channel(exc) == 1
    assert broker.lost == []
    assert broker.wire.alive
    [(channel_id, channel)] = used
    assert channel_id == 2
    assert not channel.is_open  # the short-lived channel is closed all the same
    assert broker.sent() == [
        (2, spec.Channel.Open),
        (2, spec.Queue.Delete),
        (1, spec.Channel.CloseOk),
        (1, spec.Channel.Open),  # py-amqp reopens channel 1; its owner decides what to do with it
        (2, spec.Channel.Close),
    ]


def test_another_channels_close_read_while_run_on_own_channel_waits_loses_the_connection_once_without_routing(
    broker: Broker,
) -> None:
    used: list[tuple[int, amqp.Channel]] = []
    broker.peer.send(
        channel_2_opens(),
        ack_timeout_on_channel_1(),
        method(2, spec.Queue.DeleteOk, "l", (0,)),
        channel_2_close_ok(),
    )

    outcome = broker.session().run_on_own_channel(deleting(used))

    assert outcome is None
    [exc] = broker.lost
    assert isinstance(exc, PreconditionFailed)
    assert error_channel(exc) == 1
    assert not broker.wire.alive
    [(channel_id, channel)] = used
    assert channel_id == 2
    assert not channel.is_open


def test_another_channels_close_read_while_the_own_channel_closes_is_routed_and_the_result_kept(
    broker: Broker,
) -> None:
    broker.route()
    used: list[tuple[int, amqp.Channel]] = []
    broker.peer.send(
        channel_2_opens(),
        method(2, spec.Queue.DeleteOk, "l", (7,)),  # fun is done: the queue is deleted
        ack_timeout_on_channel_1(),  # read while channel 2's close waits for its Close-Ok
        channel_2_close_ok(),
    )

    outcome = broker.session().run_on_own_channel(deleting(used))

    [(routed_id, exc)] = broker.routed
    assert routed_id == 1
    assert isinstance(exc, PreconditionFailed)
    assert broker.lost == []
    assert outcome == 7  # what fun returned, not None ("the connection is gone")


def test_its_own_channels_error_is_the_outcome_of_run_on_own_channel_and_its_channel_is_closed(
    broker: Broker,
) -> None:
    broker.route()
    used: list[tuple[int, amqp.Channel]] = []
    broker.peer.send(
        channel_2_opens(),
        channel_closed_by_broker(2, 404, f"NOT_FOUND - no queue '{QUEUE}' in vhost '/'", spec.Queue.Delete),
        channel_2_close_ok(),
    )

    outcome = broker.session().run_on_own_channel(deleting(used))

    assert isinstance(outcome, NotFound)
    assert error_channel(outcome) == 2
    assert broker.routed == []
    assert broker.lost == []
    assert broker.wire.alive
    [(channel_id, channel)] = used
    assert channel_id == 2
    assert not channel.is_open
    assert broker.sent() == [
        (2, spec.Channel.Open),
        (2, spec.Queue.Delete),
        (2, spec.Channel.CloseOk),
        (2, spec.Channel.Open),  # py-amqp's reopen
        (2, spec.Channel.Close),  # then closed for good
    ]


# -- 2. Loop: stop() and claim() against call() from other threads --------------------------------

#: How long a call may wait for its answer before it counts as lost by the loop.
CALL_TIMEOUT = 3.0
#: Much less than CALL_TIMEOUT, much more than a thread switch.
PROMPTLY = 0.5


def stop_while_calls_are_queued(callers: int, busy: bool) -> list[tuple[Any, float]]:
    """Run a loop in a thread, let ``callers`` threads call() into it while another stops it.

    With ``busy`` the loop is held in a callback meanwhile, so that the calls and the stop
    are all queued together and run in one turn. Returns each call's outcome and duration.
    """
    loop = Loop()
    runner = threading.Thread(target=loop.run, name="loop-under-test")
    runner.start()
    outcomes: list[tuple[Any, float]] = [(None, -1.0)] * callers
    threads: list[threading.Thread] = []
    release = threading.Event()
    try:
        wait_until(lambda: loop.running, what="the loop to run")
        go = threading.Barrier(callers + 2)
        if busy:
            held = threading.Event()

            def hold() -> None:
                held.set()
                release.wait(CALL_TIMEOUT)

            loop.call_soon(hold)
            wait_until(held.is_set, what="the loop to be held")

        def call(index: int) -> None:
            try:
                go.wait(CALL_TIMEOUT)
                started = time.monotonic()
                try:
                    outcome: Any = loop.call(lambda: index, timeout=CALL_TIMEOUT)
                except BaseException as exc:
                    outcome = exc
                outcomes[index] = (outcome, time.monotonic() - started)
            except BaseException as exc:
                outcomes[index] = (exc, -1.0)

        def stop() -> None:
            try:
                go.wait(CALL_TIMEOUT)
                loop.stop()
            except BaseException:
                pass

        threads = [threading.Thread(target=call, args=(i,), name=f"caller-{i}") for i in range(callers)]
        threads.append(threading.Thread(target=stop, name="stopper"))
        for thread in threads:
            thread.start()
        go.wait(CALL_TIMEOUT)
        if busy:
            time.sleep(0.02)  # the calls and the stop are queued meanwhile
        release.set()
    finally:
        release.set()
        for thread in threads:
            thread.join(CALL_TIMEOUT + 2)
        if runner.is_alive():  # only if the stop under test failed
            loop.stop()
            runner.join(CALL_TIMEOUT + 2)
        loop.close()
    assert not any(thread.is_alive() for thread in (*threads, runner)), "a thread did not end"
    return outcomes


def test_stop_from_another_thread_answers_every_queued_call_promptly_with_a_result_or_runtime_error() -> None:
    for attempt in range(50):  # a race: the calls and the stop land in any order
        outcomes = stop_while_calls_are_queued(callers=8, busy=attempt % 2 == 0)

        for index, (outcome, took) in enumerate(outcomes):
            assert outcome == index or isinstance(outcome, RuntimeError), (
                f"attempt {attempt}: call {index} ended with {outcome!r}"
            )
            assert 0 <= took < PROMPTLY, f"attempt {attempt}: call {index} took {took:.2f} s"


def test_a_call_made_after_claim_before_the_claimed_thread_runs_waits_and_is_answered_on_that_thread() -> (
    None
):
    loop = Loop()
    runner = threading.Thread(target=loop.run, name="claimed-loop")
    loop.claim(runner)
    ran_on: list[threading.Thread] = []
    answers: list[Any] = []

    def fun() -> str:
        ran_on.append(threading.current_thread())
        return "answer"

    def caller() -> None:
        try:
            answers.append(loop.call(fun, timeout=CALL_TIMEOUT))
        except BaseException as exc:
            answers.append(exc)

    calling = threading.Thread(target=caller, name="caller")
    calling.start()
    try:
        time.sleep(0.2)
        assert calling.is_alive()  # waiting for the loop, not run in the caller's thread
        assert ran_on == [] and answers == []

        runner.start()
        calling.join(CALL_TIMEOUT + 2)

        assert answers == ["answer"]
        assert ran_on == [runner]
    finally:
        calling.join(CALL_TIMEOUT + 2)
        loop.stop()
        if runner.ident is not None:  # started
            runner.join(5)
        loop.close()
    assert not runner.is_alive() and not calling.is_alive()


def test_claim_refuses_a_second_thread() -> None:
    loop = Loop()
    try:
        loop.claim(threading.Thread(target=loop.run))
        with pytest.raises(RuntimeError):
            loop.claim(threading.Thread(target=loop.run))
    finally:
        loop.close()


# -- 3. PulseConnection: start, close, run, Ctrl-C ---------------------------------------------------


def unreachable() -> PulseConnection:
    """A connection to a port nothing listens on: each connect attempt is refused at once."""
    return PulseConnection(user="alice", password="secret", url=NOWHERE, heartbeat=0, connect_timeout=1)


def count_connect_attempts(conn: PulseConnection) -> list[float]:
    """Record the time of each connect attempt the engine makes (from now on)."""
    attempts: list[float] = []
    connect = conn.engine.connect_once

    def counted() -> Any:
        attempts.append(time.monotonic())
        return connect()

    conn.engine.connect_once = counted
    return attempts


def on_message(payload: Any, delivery: Any) -> None:
    pass


@pytest.mark.parametrize("after_a_failed_attempt", [False, True], ids=["at once", "after a refused attempt"])
def test_close_after_start_ends_the_thread_stops_the_link_and_no_connect_attempt_follows(
    after_a_failed_attempt: bool, thread_errors: list[threading.ExceptHookArgs]
) -> None:
    rounds = 3 if after_a_failed_attempt else 10
    made: list[tuple[PulseConnection, threading.Thread, list[float]]] = []
    try:
        for _ in range(rounds):
            conn = unreachable()
            attempts = count_connect_attempts(conn)
            conn.start()
            thread = conn._thread
            assert thread is not None
            made.append((conn, thread, attempts))
            if after_a_failed_attempt:
                stats = conn.engine.stats
                wait_until(lambda: stats.last_error is not None, what="a refused attempt")  # noqa: B023

            conn.close(timeout=5)  # returns

            thread.join(5)
            assert not thread.is_alive()
            assert conn.engine.link.state == "stopped"
            assert conn.state == "stopped"
            join_connect_threads()
        counts = [len(attempts) for _, _, attempts in made]

        time.sleep(1.5)  # longer than the first backoff (at most 1 s): a retry would have begun

        assert [len(attempts) for _, _, attempts in made] == counts
        assert all(count == 1 for count in counts) if after_a_failed_attempt else max(counts) <= 1
        assert all(conn.engine.link.state == "stopped" for conn, _, _ in made)
        assert thread_errors == []
    finally:
        for conn, thread, _ in made:
            if thread.is_alive():  # only if closing failed: do not leave it running
                conn._loop.stop()
                thread.join(5)
        join_connect_threads()


def test_close_before_run_makes_run_and_start_raise_pulse_celery_error(
    thread_errors: list[threading.ExceptHookArgs],
) -> None:
    conn = unreachable()
    attempts = count_connect_attempts(conn)
    conn.close()

    with pytest.raises(PulseCeleryError):
        conn.run()
    with pytest.raises(PulseCeleryError):
        conn.start()

    thread = conn._thread
    if thread is not None:  # started anyway: let it end before asserting
        thread.join(5)
    assert thread is None
    assert attempts == []
    assert conn.engine.link.state == "stopped"
    assert thread_errors == []


def test_a_keyboard_interrupt_inside_the_loop_leaves_run_as_itself_and_the_connection_closed() -> None:
    conn = unreachable()
    attempts = count_connect_attempts(conn)
    conn.consume("builds", on_message)

    def interrupt() -> None:
        raise KeyboardInterrupt()

    conn._loop.hub.call_soon(interrupt)  # straight on the hub: Loop.call_soon guards only Exceptions
    try:
        with pytest.raises(KeyboardInterrupt) as raised:
            conn.run()

        assert type(raised.value) is KeyboardInterrupt  # not kombu's Stop, nor anything else
        assert conn.engine.link.state == "stopped"
        assert conn.state == "stopped"
        assert not conn._loop.running
        with pytest.raises(PulseCeleryError):
            conn.run()
        with pytest.raises(PulseCeleryError):
            conn.start()
        conn.close()  # nothing left to do: returns at once
        assert len(attempts) <= 1  # the engine may have started before the interrupt
    finally:
        join_connect_threads()
    assert conn._thread is None


def test_wait_consuming_before_start_raises_pulse_celery_error_instead_of_blocking() -> None:
    conn = unreachable()
    try:
        queue = conn.consume("builds", on_message)
        started = time.monotonic()

        with pytest.raises(PulseCeleryError):
            queue.wait_consuming(timeout=2)

        assert time.monotonic() - started < PROMPTLY
    finally:
        conn.close()


def test_wait_consuming_on_the_connections_thread_raises_and_from_another_thread_returns_the_refusal() -> (
    None
):
    conn = unreachable()
    queue = conn.consume("builds", on_message)
    conn.start()
    try:
        started = time.monotonic()
        with pytest.raises(PulseCeleryError):
            conn._loop.call(lambda: queue.wait_consuming(timeout=2), timeout=5)  # as a callback would
        assert time.monotonic() - started < PROMPTLY

        why = queue.wait_consuming(timeout=5)  # from this thread: allowed, and answered
        assert why is not None and why.startswith("cannot connect to Pulse at")
    finally:
        conn.close(timeout=5)
        join_connect_threads()
    assert conn._thread is not None and not conn._thread.is_alive()


# -- 4. QueueConsumer.activate while basic_consume waits -----------------------------------------------


class FakeChannel:
    """A channel whose ``basic_consume`` runs ``during_consume`` (once) before it returns,
    as frames of other queues are handled while py-amqp waits for ConsumeOk."""

    channel_id = 5

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.during_consume: Callable[[], Any] | None = None
        self.is_open = True
        self.auto_decode = True

    def basic_qos(self, prefetch_size: int, prefetch_count: int, a_global: bool) -> None:
        self.calls.append(("qos", prefetch_count))

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, on_cancel: Any
    ) -> str:
        self.calls.append(("consume", consumer_tag))
        during, self.during_consume = self.during_consume, None
        if during is not None:
            during()
        return consumer_tag

    def basic_cancel(self, consumer_tag: str) -> None:
        self.calls.append(("cancel", consumer_tag))

    def basic_ack(self, delivery_tag: int, multiple: bool = False) -> None:
        self.calls.append(("ack", delivery_tag))

    def close(self) -> None:
        self.calls.append(("close", None))
        self.is_open = False

    def tags(self, what: str) -> list[Any]:
        return [tag for name, tag in self.calls if name == what]


class FakeSession:
    """What a consumer uses of Session: channels and lanes, with no connection behind them."""

    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel
        self.alive = True

    def lane(self, channel: Any, stats: QueueStats) -> Lane:
        channel.auto_decode = False
        return Lane(channel, None, stats, ticks=None)

    def open_channel(self) -> Any:
        return self.channel

    def close_channel(self, channel: Any) -> None:
        channel.close()


@dataclass
class FakeHost:
    """The engine, as a consumer sees it (the ``Host`` protocol of consumer.py)."""

    config: PulseConfig
    session: Any
    timers: Timers = field(default_factory=lambda: Timers(None))
    held: str | None = None
    consumers: list[QueueConsumer] = field(default_factory=list)
    changes: int = 0

    @property
    def up(self) -> bool:
        return self.session is not None

    def soon(self, fun: Callable[[], Any]) -> None:
        fun()

    def changed(self, queues: bool = False) -> None:
        self.changes += 1

    def state(self) -> str:
        return self.held or "connected"

    def hold(self, state: str) -> None:
        """As Engine.hold: every queue stops taking deliveries."""
        self.held = state
        for consumer in self.consumers:
            consumer.deactivate()

    def release(self) -> None:
        self.held = None
        for consumer in self.consumers:
            consumer.activate()


@pytest.fixture
def host() -> FakeHost:
    config = connection_config("alice", "secret", NOWHERE, {})
    return FakeHost(config, FakeSession(FakeChannel()))


def add_consumer(host: FakeHost) -> tuple[QueueConsumer, FakeChannel]:
    consumer = QueueConsumer(
        host, "builds", QueueSpec(QUEUE, (), False, "classic"), lambda delivery: None, 10, label="test"
    )
    host.consumers.append(consumer)
    return consumer, host.session.channel


def test_a_queue_paused_while_its_basic_consume_waits_ends_cancelled_and_paused(host: FakeHost) -> None:
    consumer, channel = add_consumer(host)
    channel.during_consume = lambda: consumer.pause("test")

    consumer.connected(channel)  # the queue was declared on connect: qos, then consume

    [tag] = channel.tags("consume")
    assert channel.tags("cancel") == [tag]
    assert consumer.lane is not None and consumer.lane.consumer_tag is None
    assert not consumer.consuming
    assert consumer.state() == "paused"

    consumer.resume("test")  # and it consumes again when resumed
    assert consumer.consuming
    assert len(channel.tags("consume")) == 2
    assert consumer.lane.consumer_tag == channel.tags("consume")[-1] != tag


def test_queues_held_while_a_basic_consume_waits_end_cancelled_until_released(host: FakeHost) -> None:
    consumer, channel = add_consumer(host)
    channel.during_consume = lambda: host.hold("held by the hand-off")

    consumer.connected(channel)

    [tag] = channel.tags("consume")
    assert channel.tags("cancel") == [tag]
    assert consumer.lane is not None and consumer.lane.consumer_tag is None
    assert not consumer.consuming
    assert consumer.state() == "waiting"

    host.release()
    assert consumer.consuming
    assert len(channel.tags("consume")) == 2


def test_activate_called_again_while_its_basic_consume_waits_does_nothing(host: FakeHost) -> None:
    consumer, channel = add_consumer(host)
    channel.during_consume = consumer.activate

    consumer.connected(channel)

    [tag] = channel.tags("consume")  # one consumer, not two on the same channel
    assert channel.tags("qos") == [10]
    assert channel.tags("cancel") == []
    assert consumer.consuming
    assert consumer.lane is not None and consumer.lane.consumer_tag == tag
    assert consumer.state() == "consuming"


# -- 5. Link: a connect attempt that finishes after stop() -------------------------------------------


class StubConnection:
    """What Link uses of a kombu Connection; not py-amqp, so no LoopConnection is made for it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.transport = SimpleNamespace(driver_type="memory")
        #: each thread that collected it
        self.collected_in: list[threading.Thread] = []

    def collect(self) -> None:
        self.collected_in.append(threading.current_thread())


@dataclass
class Attempts:
    """Openers that each block until released, and what they opened, in which thread."""

    released: list[threading.Event] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)
    connections: list[StubConnection] = field(default_factory=list)

    def prepare(self) -> Callable[[], tuple[Any, Any]]:
        number = len(self.released)
        release = threading.Event()
        self.released.append(release)
        connection = StubConnection(f"attempt {number}")
        self.connections.append(connection)

        def opener() -> tuple[Any, Any]:
            self.threads.append(threading.current_thread())
            release.wait(5)
            return connection, f"extra of attempt {number}"

        return opener

    def join(self) -> None:
        for release in self.released:
            release.set()
        for thread in self.threads:
            thread.join(5)
            assert not thread.is_alive()


def turn(hub: Hub, turns: int = 3) -> None:
    """Turn the hub by hand: the ready callbacks (results of connect threads) run."""
    for _ in range(turns):
        hub.run_once()


@pytest.fixture
def link_parts() -> Iterator[tuple[Hub, Attempts, list[Up], list[BaseException]]]:
    hub = Hub()
    attempts = Attempts()
    try:
        yield hub, attempts, [], []
    finally:
        attempts.join()
        hub.close()


def make_link(parts: tuple[Hub, Attempts, list[Up], list[BaseException]]) -> Link:
    hub, attempts, ups, downs = parts
    return Link(hub, "test", attempts.prepare, ups.append, lambda exc, delay, was_up: downs.append(exc))


def test_a_connect_attempt_finishing_after_stop_collects_its_connection_in_its_own_thread_and_never_comes_up(
    link_parts: tuple[Hub, Attempts, list[Up], list[BaseException]],
) -> None:
    hub, attempts, ups, downs = link_parts
    link = make_link(link_parts)
    link.start()
    wait_until(lambda: len(attempts.threads) == 1, what="the connect thread")
    [thread] = attempts.threads
    [connection] = attempts.connections

    assert link.stop() is None
    attempts.released[0].set()
    thread.join(5)

    assert not thread.is_alive()
    assert connection.collected_in == [thread]  # before the loop turned at all

    turn(hub)

    assert connection.collected_in == [thread]  # once
    assert ups == []
    assert downs == []  # a stale attempt is no failure of the link
    assert link.state == "stopped"
    assert link.up is None and link.connects == 0


def test_an_attempt_overtaken_by_a_restart_is_collected_and_only_the_new_one_comes_up(
    link_parts: tuple[Hub, Attempts, list[Up], list[BaseException]],
) -> None:
    hub, attempts, ups, downs = link_parts
    link = make_link(link_parts)
    link.start()
    wait_until(lambda: len(attempts.threads) == 1, what="the first connect thread")
    link.stop()
    link.start()
    wait_until(lambda: len(attempts.threads) == 2, what="the second connect thread")
    first, second = attempts.connections

    attempts.released[1].set()  # the new attempt finishes first
    attempts.threads[1].join(5)
    attempts.released[0].set()
    attempts.threads[0].join(5)
    turn(hub)

    assert first.collected_in == [attempts.threads[0]]
    assert second.collected_in == []
    [up] = ups
    assert up.connection is second
    assert up.extra == "extra of attempt 1"
    assert up.wire is None  # not py-amqp: nothing attached to the loop
    assert downs == []
    assert link.state == "up"
    assert link.connects == 1
