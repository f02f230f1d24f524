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
from .harness import RetryingPublisher, Worker, app_worker, read_records, worker_status

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


def done_ids(tmp_path: Any) -> Counter[int]:
    return Counter(r["id"] for r in read_records(tmp_path / "records.jsonl") if r["event"] == "done")


def worker_figures(done: Counter[int], n: int) -> tuple[int, int]:
    """(lost, duplicates) of messages 0..n-1 by the tasks that ran."""
    lost = sum(1 for i in range(n) if done[i] == 0)
    return lost, sum(done.values()) - (n - lost)


def rotation_worker(pulse: Any, celery_broker: Any, tmp_path: Any, policy: str, **env: Any) -> Worker:
    password_file = tmp_path / "password"
    password_file.write_text(pulse.password)
    return app_worker(
        "rotation_app",
        pulse,
        celery_broker,
        tmp_path,
        ACK_POLICY=policy,
        PASSWORD_FILE=password_file,
        TASK_SECONDS="0.005",
        **env,
    )


@pytest.mark.parametrize("policy", ["enqueue", "complete"])
def test_worker_recycling_every_3_s_loses_and_repeats_nothing(
    pulse: Any, celery_broker: Any, tmp_path: Any, policy: str
) -> None:
    # Given a worker that recycles its Pulse connection every 3 s
    n = 2000
    worker = rotation_worker(pulse, celery_broker, tmp_path, policy, PULSE_RECYCLE_INTERVAL="3").start()
    started = time.monotonic()
    try:
        # When 2,000 messages are published over about 15 s
        publisher = RetryingPublisher(pulse, n, pace=0.0075)
        publisher.start()
        publisher.join(180)
        assert publisher.sent == n
        # Then every message is handled exactly once
        assert wait_until(lambda: worker_figures(done_ids(tmp_path), n)[0] == 0, timeout=120), worker.log()[
            -3000:
        ]
        assert wait_until(lambda: pulse.queue_counts(f"queue/{pulse.user}/rotation") == (0, 0), timeout=30)
        elapsed = time.monotonic() - started
        # and the retired connections were closed: one Pulse connection of the user is left
        assert wait_until(lambda: len(user_connections(pulse.user)) == 1, timeout=15)
        # and pulse_status counts the recycles, and no loss: no connection was dropped
        connection = worker_status(celery_broker)["connection"]
        recycles = connection["recycles"]
    finally:
        worker.stop()
    lost, duplicates = worker_figures(done_ids(tmp_path), n)
    print(
        f"\nworker recycle every 3 s ({policy}): messages={n} lost={lost} duplicates={duplicates} "
        f"recycles={recycles} time={elapsed:.1f}s"
    )
    assert (lost, duplicates) == (0, 0)
    assert recycles >= 3
    assert connection["losses"] == 0, connection


@pytest.mark.parametrize("policy", ["enqueue", "complete"])
def test_worker_logs_in_with_the_new_password_after_a_rotation_and_loses_nothing(
    pulse: Any, celery_broker: Any, tmp_path: Any, policy: str
) -> None:
    # Given a worker whose pulse_credentials reads the password from a file
    n = 2000
    worker = rotation_worker(pulse, celery_broker, tmp_path, policy).start()
    started = time.monotonic()
    try:
        publisher = RetryingPublisher(pulse, n, pace=0.0075)
        publisher.start()
        assert wait_until(lambda: len(done_ids(tmp_path)) >= 500, timeout=60)
        # When the password is changed on the broker and the user's connections are closed, while
        # the provider still returns the old password (the secret store not yet updated)
        new_password = f"rotated-{pulse.password}"
        rabbitmqctl("change_password", pulse.user, new_password)
        closed = close_user_connections(pulse.user)
        # Then the worker's attempts are refused (pulse_status says why) ...
        refused: dict[str, Any] = {}

        def login_refused() -> bool:
            refused.update(worker_status(celery_broker)["connection"])
            return refused["state"] != "consuming" and "ACCESS_REFUSED" in (refused["last_error"] or "")

        assert wait_until(login_refused, timeout=60, interval=0.5), refused
        # ... and once the provider returns the new password, the next attempt asks it again
        # and logs in
        (tmp_path / "password").write_text(new_password)
        publisher.join(180)
        assert publisher.sent == n
        # and every message is handled
        assert wait_until(lambda: worker_figures(done_ids(tmp_path), n)[0] == 0, timeout=120), worker.log()[
            -3000:
        ]
        assert wait_until(lambda: pulse.queue_counts(f"queue/{pulse.user}/rotation") == (0, 0), timeout=30)
        elapsed = time.monotonic() - started
        connection = worker_status(celery_broker)["connection"]
        log = worker.log()
    finally:
        worker.stop()
    lost, duplicates = worker_figures(done_ids(tmp_path), n)
    print(
        f"\nworker password change ({policy}): messages={n} lost={lost} duplicates={duplicates} "
        f"connections closed={closed} connects={connection['connects']} losses={connection['losses']} "
        f"time={elapsed:.1f}s"
    )
    assert lost == 0 and closed >= 1
    # consuming again after the refusals: a connect more than the first
    assert connection["state"] == "consuming" and connection["connects"] >= 2, connection
    assert new_password not in log and pulse.password not in log
