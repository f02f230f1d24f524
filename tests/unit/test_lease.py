"""The running lease: a copy of a deduped message that arrives while another runs waits for it."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from celery import Celery
from redis_fake import fake_store

from pulse_celery import pulse_binding
from pulse_celery.pulse.message import PulseMessage
from pulse_celery.request import HEADER
from pulse_celery.testing import port_open
from pulse_celery.worker.dedupe import DEDUPE_HEADER, SUCCEEDED, DedupeStore, dedupe_key, lease_key
from pulse_celery.worker.guard import install_guard
from pulse_celery.worker.lease import Leases

QUEUE = "queue/alice/q"


@pytest.fixture(autouse=True)
def quick_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Leases, "poll_first", 0.01)
    monkeypatch.setattr(Leases, "poll_most", 0.02)


class Steered:
    """A deduped task whose runs start, then wait for the test to let them finish or fail."""

    def __init__(self) -> None:
        self.app = Celery("lease-unit", broker="memory://", set_as_current=False)
        self.started = threading.Semaphore(0)
        self.go = threading.Event()
        self.fail = False
        self.runs = 0
        self.store, self.redis = fake_store()

        @pulse_binding("exchange/x", "primary.#", queue="q", dedupe=True)
        @self.app.task(name=f"unit.lease.{uuid.uuid4().hex[:8]}")
        def handle(payload: Any) -> str:
            self.runs += 1
            self.started.release()
            self.go.wait(10)
            if self.fail:
                raise RuntimeError("the run failed")
            return "ok"

        self.task = handle
        install_guard(self.app, {handle.name}, self.store)

    def apply_in_thread(self, task_id: str, results: list[Any]) -> threading.Thread:
        meta = PulseMessage("exchange/x", "primary.a", (), False, QUEUE)
        headers = {HEADER: meta.as_header(), DEDUPE_HEADER: True}

        def apply() -> None:
            results.append(self.task.apply(args=({"n": 1},), task_id=task_id, headers=headers))

        thread = threading.Thread(target=apply)
        thread.start()
        return thread

    def lease_held(self, task_id: str) -> bool:
        return lease_key(dedupe_key(QUEUE, task_id)) in self.redis.data


def test_a_copy_that_arrives_while_the_first_runs_waits_and_is_not_run_once_it_succeeded():
    steered, results = Steered(), []
    # Given a first copy running
    first = steered.apply_in_thread("t1", results)
    assert steered.started.acquire(timeout=5)
    assert steered.lease_held("t1")
    # When a second copy arrives
    copy = steered.apply_in_thread("t1", results)
    time.sleep(0.2)
    # Then it waits, not running
    assert copy.is_alive() and steered.runs == 1
    # and once the first succeeds, it ends without running
    steered.go.set()
    first.join(5)
    copy.join(5)
    assert sorted(r.state for r in results) == ["IGNORED", "SUCCESS"]
    assert steered.runs == 1
    assert steered.store.state(dedupe_key(QUEUE, "t1")) == SUCCEEDED
    assert not steered.lease_held("t1")


def test_a_waiting_copy_runs_when_the_first_run_fails():
    steered, results = Steered(), []
    steered.fail = True
    first = steered.apply_in_thread("t2", results)
    assert steered.started.acquire(timeout=5)
    copy = steered.apply_in_thread("t2", results)
    time.sleep(0.2)
    assert steered.runs == 1
    # When the first run raises, its lease is released and the copy runs
    steered.go.set()
    first.join(5)
    copy.join(5)
    assert steered.runs == 2
    assert [r.state for r in results] == ["FAILURE", "FAILURE"]
    assert steered.store.state(dedupe_key(QUEUE, "t2")) is None
    assert not steered.lease_held("t2")


def test_a_copy_runs_once_the_lease_of_a_dead_run_has_gone():
    # Given a lease taken by a run whose process then died (it is neither released nor renewed)
    steered, results = Steered(), []
    steered.store.claim(dedupe_key(QUEUE, "t3"), "dead-run", 10_000)
    steered.go.set()
    copy = steered.apply_in_thread("t3", results)
    time.sleep(0.2)
    assert copy.is_alive() and steered.runs == 0
    # When the lease expires (here: deleted, as Redis does at its expiry)
    del steered.redis.data[lease_key(dedupe_key(QUEUE, "t3"))]
    # Then the copy runs
    copy.join(5)
    assert steered.runs == 1 and results[0].state == "SUCCESS"


def test_a_lease_is_released_and_renewed_only_by_the_run_that_holds_it():
    store, redis = fake_store()
    key = dedupe_key(QUEUE, "t4")
    assert store.claim(key, "mine", 5_000) == (True, None)
    assert store.claim(key, "theirs", 5_000) == (False, None)
    store.finish(key, "theirs", succeeded=False)  # a run whose lease expired and was taken since
    assert redis.data[lease_key(key)] == ("mine", 5_000)
    assert store.renew({key: "theirs"}, 9_000) == [key]  # reported gone, and left alone
    assert store.renew({key: "mine"}, 9_000) == []
    assert redis.data[lease_key(key)] == ("mine", 9_000)
    store.finish(key, "mine", succeeded=True)
    assert lease_key(key) not in redis.data
    assert store.claim(key, "later", 5_000) == (True, SUCCEEDED)


@pytest.mark.skipif(not port_open(6379), reason="no Redis on 127.0.0.1:6379")
def test_against_a_real_redis_a_lease_is_renewed_while_its_run_lasts_and_expires_after_it_stops(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.setattr(Leases, "seconds", 1.0)
    monkeypatch.setattr(Leases, "renew_every", 0.2)
    store = DedupeStore("redis://127.0.0.1:6379/3", 60.0)
    leases, other = Leases(store), Leases(store)
    key = dedupe_key(QUEUE, str(uuid.uuid4()))
    try:
        token, succeeded = leases.acquire(key, on_wait=lambda: None)
        assert token is not None and not succeeded
        # While the run lasts (here 2.5 s, over twice the lease), no copy can take the lease
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            assert store.claim(key, "copy", 1000) == (False, None)
            time.sleep(0.1)
        # A run that stops renewing (its process killed) loses the lease once it expires
        leases._held.clear()
        time.sleep(1.3)
        waited: list[bool] = []
        copy_token, _ = other.acquire(key, on_wait=lambda: waited.append(True))
        assert copy_token is not None and not waited
        other.release(key, copy_token, succeeded=True)
        assert store.state(key) == SUCCEEDED
        assert not store._redis().exists(lease_key(key))
    finally:
        store._redis().delete(key, lease_key(key))
        store.close()
