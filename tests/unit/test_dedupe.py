"""The dedupe store, the gate in the main process and the guard where the task runs."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import Celery
from redis_fake import fake_store

from pulse_celery import pulse_binding
from pulse_celery.errors import ConfigError
from pulse_celery.pulse.message import PulseMessage
from pulse_celery.pulse.stats import QueueStats
from pulse_celery.request import HEADER
from pulse_celery.testing import port_open
from pulse_celery.worker.dedupe import (
    DEDUPE_HEADER,
    ENQUEUED,
    SUCCEEDED,
    DedupeStore,
    StoreUnavailable,
    dedupe_key,
    store_url,
)
from pulse_celery.worker.dedupe_gate import DedupeGate
from pulse_celery.worker.guard import install_guard

# -- the store ------------------------------------------------------------------------------


def test_enqueued_never_overwrites_an_entry_and_succeeded_always_does():
    store, redis = fake_store(ttl=2.5)
    store.record(["k"], SUCCEEDED)
    store.record(["k", "j"], ENQUEUED)
    assert store.state("k") == SUCCEEDED
    assert store.state("j") == ENQUEUED
    store.record(["j"], SUCCEEDED)
    assert store.state("j") == SUCCEEDED
    assert redis.data["j"] == (SUCCEEDED, 2500)  # expires after pulse_dedupe_ttl
    assert store.state("missing") is None


def test_a_store_that_fails_is_left_alone_for_a_while_then_asked_again():
    store, redis = fake_store()
    redis.down = True
    with pytest.raises(StoreUnavailable):
        store.state("k")
    assert not store.available
    calls = redis.calls
    with pytest.raises(StoreUnavailable):
        store.record(["k"], ENQUEUED)
    assert redis.calls == calls  # not asked while resting
    redis.down = False
    store._down_until = 0.0  # the rest is over
    assert store.state("k") is None
    assert store.available


def test_keys_are_namespaced_by_queue_and_task_id():
    assert dedupe_key("queue/alice/builds", "abc") == "pulse_celery:dedupe:queue/alice/builds:abc"


def test_the_store_is_pulse_dedupe_url_else_a_redis_result_backend_else_a_config_error():
    assert store_url("redis://h:6379/1", "redis://other/0") == "redis://h:6379/1"
    assert store_url(None, "redis://backend:6379/2") == "redis://backend:6379/2"
    with pytest.raises(ConfigError, match="pulse_dedupe_url"):
        store_url(None, "rpc://")
    with pytest.raises(ConfigError, match="pulse_dedupe_url"):
        store_url(None, None)
    with pytest.raises(ConfigError, match="Redis URL"):
        store_url("amqp://guest@h//", None)


@pytest.mark.skipif(not port_open(6379), reason="no Redis on 127.0.0.1:6379")
def test_the_store_works_against_a_real_redis():
    store = DedupeStore("redis://127.0.0.1:6379/3", 5.0)
    key = dedupe_key("queue/unit/test", str(uuid.uuid4()))
    try:
        assert store.state(key) is None
        store.record([key], ENQUEUED)
        store.record([key], ENQUEUED)
        assert store.state(key) == ENQUEUED
        store.record([key], SUCCEEDED)
        assert store.state(key) == SUCCEEDED
        ttl = store._redis().pttl(key)
        assert 0 < ttl <= 5000
    finally:
        store._redis().delete(key)
        store.close()


def test_an_unreachable_redis_is_store_unavailable_quickly():
    store = DedupeStore("redis://127.0.0.1:1/0", 5.0)
    with pytest.raises(StoreUnavailable):
        store.state("k")


# -- the gate (main process) -----------------------------------------------------------------


@dataclass
class FakeLane:
    stats: QueueStats = field(default_factory=lambda: QueueStats("queue/alice/q", "t"))


@dataclass
class FakeDelivery:
    redelivered: bool = False
    headers: dict[str, Any] = field(default_factory=dict)
    queue: str = "queue/alice/q"
    exchange: str = "exchange/x"
    routing_key: str = "primary.a"
    lane: FakeLane = field(default_factory=FakeLane)
    acked: int = 0

    def ack(self) -> None:
        self.acked += 1


@pytest.mark.parametrize("policy", ["enqueue", "complete"])
def test_a_first_delivery_is_not_looked_up(policy):
    store, redis = fake_store()
    store.record([dedupe_key("queue/alice/q", "t1")], SUCCEEDED)
    gate, delivery = DedupeGate(store, None), FakeDelivery(redelivered=False)
    calls = redis.calls
    assert not gate.already_handled(delivery, "t1", policy)  # type: ignore[arg-type]
    assert redis.calls == calls


def test_a_redelivery_already_enqueued_is_acked_under_enqueue_and_run_under_complete():
    store, _ = fake_store()
    store.record([dedupe_key("queue/alice/q", "t1")], ENQUEUED)
    gate = DedupeGate(store, None)
    enqueue, complete = FakeDelivery(redelivered=True), FakeDelivery(redelivered=True)
    assert gate.already_handled(enqueue, "t1", "enqueue")  # type: ignore[arg-type]
    assert enqueue.acked == 1 and enqueue.lane.stats.deduplicated == 1
    assert not gate.already_handled(complete, "t1", "complete")  # type: ignore[arg-type]
    assert complete.acked == 0 and complete.lane.stats.deduplicated == 0


def test_a_quorum_delivery_count_counts_as_redelivered():
    store, _ = fake_store()
    store.record([dedupe_key("queue/alice/q", "t1")], SUCCEEDED)
    delivery = FakeDelivery(headers={"x-delivery-count": 1})
    assert DedupeGate(store, None).already_handled(delivery, "t1", "complete")  # type: ignore[arg-type]


def test_with_the_store_down_a_redelivery_is_handled_and_counted():
    store, redis = fake_store()
    redis.down = True
    delivery = FakeDelivery(redelivered=True)
    assert not DedupeGate(store, None).already_handled(delivery, "t1", "enqueue")  # type: ignore[arg-type]
    assert delivery.lane.stats.dedupe_unavailable == 1
    assert delivery.lane.stats.snapshot(state="consuming", prefetch=1, in_flight=0)["dedupe_unavailable"] == 1


def test_confirmed_enqueues_are_recorded_in_one_pipeline_then_acked():
    store, redis = fake_store()
    ticks: set[Any] = set()
    gate = DedupeGate(store, ticks)
    deliveries = [FakeDelivery() for _ in range(3)]
    for i, d in enumerate(deliveries):
        gate.ack_when_recorded(d, f"t{i}")  # type: ignore[arg-type]
    assert ticks == {gate.flush}
    assert all(d.acked == 0 for d in deliveries)  # not before the record
    calls = redis.calls
    gate.flush()
    assert redis.calls == calls + 1
    assert all(d.acked == 1 for d in deliveries)
    assert store.state(dedupe_key("queue/alice/q", "t2")) == ENQUEUED
    assert not ticks


def test_confirmed_enqueues_are_acked_even_when_the_store_is_down():
    store, redis = fake_store()
    redis.down = True
    gate, delivery = DedupeGate(store, None), FakeDelivery()
    gate.ack_when_recorded(delivery, "t1")  # type: ignore[arg-type]
    assert delivery.acked == 1
    assert delivery.lane.stats.dedupe_unavailable == 1


# -- the guard (where the task runs) ---------------------------------------------------------


@pytest.fixture
def guarded_app():
    app = Celery("dedupe-unit", broker="memory://", set_as_current=False)
    runs: list[Any] = []

    @pulse_binding("exchange/x", "primary.#", queue="q", dedupe=True)
    @app.task(name=f"unit.handle.{uuid.uuid4().hex[:8]}")
    def handle(payload):
        runs.append(payload)
        return "ok"

    store, _redis = fake_store()
    install_guard(app, {handle.name}, store)
    install_guard(app, {handle.name}, store)  # once only
    return handle, runs, store


def apply(task: Any, task_id: str, redelivered: bool) -> Any:
    meta = PulseMessage("exchange/x", "primary.a", (), redelivered, "queue/alice/q")
    return task.apply(
        args=({"n": 1},), task_id=task_id, headers={HEADER: meta.as_header(), DEDUPE_HEADER: True}
    )


def test_the_guard_records_success_and_skips_a_redelivery_that_already_succeeded(guarded_app):
    handle, runs, store = guarded_app
    assert apply(handle, "t1", redelivered=False).get() == "ok"
    assert store.state(dedupe_key("queue/alice/q", "t1")) == SUCCEEDED
    result = apply(handle, "t1", redelivered=True)
    assert result.state == "IGNORED"
    assert len(runs) == 1


def test_the_guard_skips_a_repeat_the_broker_did_not_flag_as_redelivered(guarded_app):
    # A publisher that lost a confirm publishes the same message again, unflagged.
    handle, runs, _store = guarded_app
    apply(handle, "t3", redelivered=False)
    assert apply(handle, "t3", redelivered=False).state == "IGNORED"
    assert len(runs) == 1


def test_the_guard_leaves_a_task_called_the_ordinary_way_alone(guarded_app):
    handle, runs, store = guarded_app
    assert handle.apply(args=({"n": 2},), task_id="t2").get() == "ok"
    assert store.state(dedupe_key("queue/alice/q", "t2")) is None
    assert len(runs) == 1


def test_deduplicated_deliveries_are_an_outcome_of_the_messages_metric():
    pytest.importorskip("prometheus_client")
    from pulse_celery.worker.metrics import StatusCollector

    stats = QueueStats("queue/alice/q", "t")
    stats.deduplicated = 3
    queue = stats.snapshot(state="consuming", prefetch=1, in_flight=0)
    connection = {"state": "consuming", "connects": 1, "losses": 0}
    collector = StatusCollector(lambda: {"queues": {"q": queue}, "connection": connection}, "w")
    [messages] = [m for m in collector.collect() if m.name == "pulse_celery_messages"]
    found = {s.labels["outcome"]: s.value for s in messages.samples if s.name.endswith("_total")}
    assert found["deduplicated"] == 3


# -- copies of one message in flight at once (enqueue) -----------------------------------------


@dataclass
class RequeueableDelivery(FakeDelivery):
    requeued: int = 0

    def reject(self, requeue: bool = False) -> None:
        assert requeue
        self.requeued += 1


def test_a_copy_of_a_message_being_enqueued_follows_it_and_is_acked_once_it_is_recorded():
    # Given a first copy whose task message is on its way to the Celery broker
    store, _ = fake_store()
    gate = DedupeGate(store, None)
    first, copy = RequeueableDelivery(), RequeueableDelivery()
    assert gate.begin_enqueue(first, "t1")  # type: ignore[arg-type]
    # When a second copy of the same message arrives (a publisher's repeat: not flagged)
    assert not gate.begin_enqueue(copy, "t1")  # type: ignore[arg-type]
    assert copy.acked == 0
    # Then it is acked, as a duplicate, once the first is confirmed and recorded
    gate.ack_when_recorded(first, "t1")  # type: ignore[arg-type]
    assert (first.acked, copy.acked, copy.requeued) == (1, 1, 0)
    assert copy.lane.stats.deduplicated == 1
    # and a later copy does not wait for anything: it is acked at once
    later = RequeueableDelivery()
    assert not gate.begin_enqueue(later, "t1")  # type: ignore[arg-type]
    assert later.acked == 1


def test_a_copy_goes_back_to_the_queue_when_the_first_copys_hand_off_fails():
    store, _ = fake_store()
    gate = DedupeGate(store, None)
    first, copy, other = RequeueableDelivery(), RequeueableDelivery(), RequeueableDelivery()
    assert gate.begin_enqueue(first, "t1")  # type: ignore[arg-type]
    assert gate.begin_enqueue(other, "t2")  # type: ignore[arg-type]
    assert not gate.begin_enqueue(copy, "t1")  # type: ignore[arg-type]
    gate.enqueue_failed(first, "t1")  # type: ignore[arg-type]
    assert (copy.acked, copy.requeued) == (0, 1)
    assert copy.lane.stats.deduplicated == 0
    # the next copy is enqueued again; another message in flight is untouched
    assert gate.begin_enqueue(copy, "t1")  # type: ignore[arg-type]
    assert not gate.begin_enqueue(RequeueableDelivery(), "t2")  # type: ignore[arg-type]


def test_a_copy_of_a_message_this_worker_enqueued_lately_is_acked_from_memory(monkeypatch):
    # Given a message whose task message was confirmed and recorded
    store, redis = fake_store(ttl=60.0)
    gate, first = DedupeGate(store, None), RequeueableDelivery()
    assert gate.begin_enqueue(first, "t1")  # type: ignore[arg-type]
    gate.ack_when_recorded(first, "t1")  # type: ignore[arg-type]
    # When a publisher's repeat arrives later, unflagged
    calls, repeat = redis.calls, RequeueableDelivery()
    assert not gate.begin_enqueue(repeat, "t1")  # type: ignore[arg-type]
    # Then it is acked as a duplicate, without asking the store
    assert (repeat.acked, repeat.lane.stats.deduplicated, redis.calls) == (1, 1, calls)
    # but not once pulse_dedupe_ttl has passed
    clock = time.monotonic() + 61
    monkeypatch.setattr("pulse_celery.worker.dedupe_gate.time.monotonic", lambda: clock)
    assert gate.begin_enqueue(RequeueableDelivery(), "t1")  # type: ignore[arg-type]


def test_a_worker_remembers_only_its_last_enqueues(monkeypatch):
    monkeypatch.setattr("pulse_celery.worker.dedupe_gate.RECENT", 3)
    store, _ = fake_store()
    gate = DedupeGate(store, None)
    for i in range(5):
        delivery = RequeueableDelivery()
        assert gate.begin_enqueue(delivery, f"t{i}")  # type: ignore[arg-type]
        gate.ack_when_recorded(delivery, f"t{i}")  # type: ignore[arg-type]
    assert gate.begin_enqueue(RequeueableDelivery(), "t0")  # type: ignore[arg-type]  # forgotten
    assert not gate.begin_enqueue(RequeueableDelivery(), "t4")  # type: ignore[arg-type]


def test_a_flagged_redelivery_this_worker_enqueued_lately_is_not_looked_up_in_the_store():
    store, redis = fake_store()
    gate, first = DedupeGate(store, None), RequeueableDelivery()
    assert gate.begin_enqueue(first, "t1")  # type: ignore[arg-type]
    gate.ack_when_recorded(first, "t1")  # type: ignore[arg-type]
    calls, again = redis.calls, RequeueableDelivery(redelivered=True)
    assert not gate.already_handled(again, "t1", "enqueue")  # type: ignore[arg-type]
    assert not gate.begin_enqueue(again, "t1")  # type: ignore[arg-type]
    assert (again.acked, again.lane.stats.deduplicated, redis.calls) == (1, 1, calls)
