"""Credentials that change: pulse_credentials and pulse_recycle_interval against the real RabbitMQ.

Only the test's own user is touched (its password, its connections): other tests share the node.
Each test prints its figures (messages, lost, duplicates, recycles, time).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from pulse_celery import Connected, Delivery, PulseConnection
from pulse_celery.testing import rabbitmqctl, wait_until

from .conftest import TASK_COMPLETED
from .harness import RetryingPublisher

pytestmark = pytest.mark.rabbitmq


def user_connections(user: str) -> list[str]:
    """The pids of ``user``'s connections on the broker."""
    out = rabbitmqctl("list_connections", "user", "pid")
    rows = (line.split("\t") for line in out.splitlines() if "\t" in line)
    return [pid for name, pid in rows if name == user]


def close_user_connections(user: str) -> int:
    """Close every connection of ``user`` (and only those), as an operator would after a rotation."""
    pids = user_connections(user)
    for pid in pids:
        try:
            rabbitmqctl("close_connection", pid, "test: password rotated")
        except Exception:
            pass  # gone meanwhile
    return len(pids)


class Seen:
    """Task ids a callback saw, safe to read from the test's thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ids: Counter[int] = Counter()

    def add(self, i: int) -> None:
        with self.lock:
            self.ids[i] += 1

    def figures(self, n: int) -> tuple[int, int]:
        """(lost, duplicates) of messages 0..n-1."""
        with self.lock:
            lost = sum(1 for i in range(n) if self.ids[i] == 0)
            return lost, sum(self.ids.values()) - (n - lost)


def test_standalone_recycles_every_second_without_losing_or_repeating_a_message(pulse: Any) -> None:
    # Given a PulseConnection that recycles its connection every second, with an on_connected
    # callback, and a callback slow enough that deliveries are in flight at each recycle
    n = 2000
    named, events = Seen(), []
    on_connected_threads = set()

    def on_connected(event: Connected) -> None:
        events.append(event)
        on_connected_threads.add(threading.current_thread().name)

    def on_message(payload: Any, delivery: Delivery) -> None:
        named.add(payload["id"])
        time.sleep(0.002)

    started = time.monotonic()
    conn = PulseConnection(url=pulse.url, heartbeat=10, recycle_interval=1, on_connected=on_connected)
    with conn:
        queue = conn.consume("rotating", on_message, prefetch=50, bindings=[(TASK_COMPLETED, "primary.#")])
        conn.start()
        assert queue.wait_consuming(30) is None
        # When 2,000 messages are published meanwhile
        publisher = RetryingPublisher(pulse, n, pace=0.002)
        publisher.start()
        publisher.join(180)
        assert publisher.sent == n
        assert wait_until(lambda: named.figures(n)[0] == 0, timeout=60), named.figures(n)
        assert wait_until(lambda: pulse.queue_counts(queue.name) == (0, 0), timeout=30)
        # Then the old connections were closed: one connection of the user is left
        assert wait_until(lambda: len(user_connections(pulse.user)) == 1, timeout=10)
    elapsed = time.monotonic() - started
    status, seen_events = conn.engine.status()["connection"], list(events)  # closed: no more recycles
    lost, duplicates = named.figures(n)
    print(
        f"\nstandalone recycle: messages={n} lost={lost} duplicates={duplicates} "
        f"recycles={status['recycles']} losses={status['losses']} connects={status['connects']} "
        f"on_connected={len(events)} time={elapsed:.1f}s"
    )
    assert (lost, duplicates) == (0, 0)
    assert status["recycles"] >= 3 and status["losses"] == 0 and status["connects"] == 1
    # and on_connected came on the connection's thread: first once, then once per recycle
    assert on_connected_threads == {"pulse-connection"}
    expected = [(True, False)] + [(False, True)] * status["recycles"]
    assert [(e.first, e.recycled) for e in seen_events] == expected
    assert all(e.down_for is None and not e.reconnect for e in seen_events)
