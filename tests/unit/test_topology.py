"""Bindings become queues and exchanges that Pulse Guardian's permissions allow."""

from __future__ import annotations

import pytest

from pulse_celery import Binding, ConfigError, PulseConfig
from pulse_celery.plan import plan_queues
from pulse_celery.pulse.topology import kombu_exchange, kombu_queue, queue_name

COMPLETED = "exchange/taskcluster-queue/v1/task-completed"
FAILED = "exchange/taskcluster-queue/v1/task-failed"


def config(**overrides) -> PulseConfig:
    settings = {"url": "amqps://pulse.mozilla.org:5671", "user": "alice", "password": "hunter2"}
    return PulseConfig(**{**settings, **overrides})


def binding(queue, task="tasks.on_completed", exchange=COMPLETED, key="primary.#") -> Binding:
    return Binding(exchange, key, queue, task_name=task)


def test_queue_suffix_is_placed_under_the_users_prefix():
    assert queue_name("alice", "builds") == "queue/alice/builds"


def test_queue_already_under_the_users_prefix_is_kept():
    assert queue_name("alice", "queue/alice/x") == "queue/alice/x"


@pytest.mark.parametrize("suffix", ["queue/bob/x", "queue/alice/", "queue/alicex/y"])
def test_queue_under_another_prefix_is_refused(suffix):
    with pytest.raises(ConfigError, match="queue/alice/"):
        queue_name("alice", suffix)


def test_two_tasks_on_one_named_queue_are_refused():
    bindings = [binding("builds", task="tasks.a"), binding("builds", task="tasks.b")]
    with pytest.raises(ConfigError, match=r"tasks\.a, tasks\.b"):
        plan_queues(config(), bindings)


def test_bindings_of_one_task_on_one_queue_share_a_plan():
    bindings = [binding("builds"), binding("builds", exchange=FAILED), binding("queue/alice/builds")]
    [plan] = plan_queues(config(), bindings)
    assert plan.name == "queue/alice/builds"
    assert plan.bindings == tuple(bindings)
    assert plan.task_name == "tasks.on_completed"
    assert plan.exchanges() == [COMPLETED, FAILED]


def test_each_named_queue_gets_its_own_plan():
    plans = plan_queues(config(), [binding("builds", task="tasks.a"), binding("fails", task="tasks.b")])
    assert sorted((p.name, p.task_name) for p in plans) == [
        ("queue/alice/builds", "tasks.a"),
        ("queue/alice/fails", "tasks.b"),
    ]


def test_anonymous_queue_is_named_under_the_users_prefix_and_is_exclusive():
    [plan] = plan_queues(config(), [binding(None), binding(None, exchange=FAILED)])
    assert plan.anonymous
    assert plan.name.startswith("queue/alice/")
    assert len(plan.bindings) == 2
    queue = kombu_queue(config(), plan)
    assert (queue.exclusive, queue.auto_delete, queue.durable) == (True, True, False)
    assert "x-queue-type" not in (queue.queue_arguments or {})


def test_anonymous_queue_names_are_unique():
    first = plan_queues(config(), [binding(None)])[0].name
    second = plan_queues(config(), [binding(None)])[0].name
    assert first != second


def test_named_queue_is_durable_and_quorum_by_default():
    [plan] = plan_queues(config(), [binding("builds")])
    queue = kombu_queue(config(), plan)
    assert queue.name == "queue/alice/builds"
    assert (queue.durable, queue.auto_delete, queue.exclusive) == (True, False, False)
    assert queue.queue_arguments == {"x-queue-type": "quorum"}


def test_named_queue_is_classic_when_asked():
    classic = config(queue_type="classic")
    [plan] = plan_queues(classic, [binding("builds")])
    queue = kombu_queue(classic, plan)
    assert queue.durable
    assert "x-queue-type" not in (queue.queue_arguments or {})


def test_queue_carries_every_binding():
    bindings = [binding("builds"), binding("builds", exchange=FAILED, key="route.#")]
    [plan] = plan_queues(config(), bindings)
    queue = kombu_queue(config(), plan)
    assert sorted((b.exchange.name, b.routing_key) for b in queue.bindings) == [
        (COMPLETED, "primary.#"),
        (FAILED, "route.#"),
    ]


def test_other_users_exchanges_are_declared_passively():
    exchange = kombu_exchange(config(), COMPLETED)
    assert exchange.passive is True
    assert exchange.type == "topic"


def test_own_exchanges_are_declared_for_real():
    exchange = kombu_exchange(config(), "exchange/alice/builds")
    assert exchange.passive is False
    assert exchange.durable is True
    assert kombu_exchange(config(), "exchange/alicex/builds").passive is True


def test_queue_bindings_declare_foreign_exchanges_passively():
    [plan] = plan_queues(config(), [binding("builds"), binding("builds", exchange="exchange/alice/mine")])
    passive = {b.exchange.name: b.exchange.passive for b in kombu_queue(config(), plan).bindings}
    assert passive == {COMPLETED: True, "exchange/alice/mine": False}


def test_max_length_is_declared_on_named_queues_only():
    capped = config(queue_max_length=5000)
    named, anonymous = plan_queues(capped, [binding("builds"), binding(None, task="tasks.other")])
    assert kombu_queue(capped, named).queue_arguments == {"x-queue-type": "quorum", "x-max-length": 5000}
    assert not kombu_queue(capped, anonymous).queue_arguments
