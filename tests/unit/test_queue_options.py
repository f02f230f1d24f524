"""pulse_queues: each named queue's own prefetch, max length and expiry, checked at start."""

from __future__ import annotations

import pytest

from pulse_celery import Binding, ConfigError, PulseConfig
from pulse_celery.config import load_config
from pulse_celery.plan import plan_queues
from pulse_celery.pulse.topology import kombu_queue

COMPLETED = "exchange/taskcluster-queue/v1/task-completed"


def config(**overrides) -> PulseConfig:
    settings = {"url": "amqps://pulse.mozilla.org:5671", "user": "alice", "password": "hunter2"}
    return PulseConfig(**{**settings, **overrides})


def binding(queue, task="tasks.on_completed") -> Binding:
    return Binding(COMPLETED, "primary.#", queue, task_name=task)


def test_a_queues_own_settings_become_its_arguments_and_prefetch():
    queues = {"builds": {"prefetch": 50, "max_length": 100_000, "expires": 7 * 86400}}
    builds, tests = plan_queues(
        config(queue_max_length=5000), [binding("builds"), binding("tests", task="tasks.t")], queues
    )
    assert builds.prefetch == 50
    assert kombu_queue(config(queue_max_length=5000), builds).queue_arguments == {
        "x-queue-type": "quorum",
        "x-max-length": 100_000,
        "x-expires": 7 * 86400 * 1000,
    }
    # a queue without its own settings follows the app-wide ones
    assert tests.prefetch is None
    assert kombu_queue(config(queue_max_length=5000), tests).queue_arguments == {
        "x-queue-type": "quorum",
        "x-max-length": 5000,
    }


def test_a_full_queue_name_works_as_a_key_too():
    [plan] = plan_queues(config(), [binding("builds")], {"queue/alice/builds": {"prefetch": 3}})
    assert plan.prefetch == 3


@pytest.mark.parametrize(
    ("queues", "words"),
    [
        ({"buidls": {"prefetch": 5}}, "no @pulse_binding"),
        ({"builds": {"prefech": 5}}, "unknown keys prefech"),
        ({"builds": {"prefetch": 0}}, r"pulse_queues\['builds'\]\['prefetch'\] 0 must be at least 1"),
        ({"builds": {"expires": "soon"}}, r"\['expires'\]"),
        ({"builds": 5}, "give a dict"),
    ],
)
def test_a_bad_pulse_queues_entry_is_refused_with_the_fix(queues, words):
    with pytest.raises(ConfigError, match=words):
        plan_queues(config(), [binding("builds")], queues)


def test_pulse_queues_is_read_from_the_app_and_from_json_in_the_environment():
    conf = {"pulse_url": "amqp://localhost", "pulse_queues": {"builds": {"prefetch": 5}}}
    assert load_config(conf, environ={}).queues == {"builds": {"prefetch": 5}}
    env = {"PULSE_QUEUES": '{"builds": {"max_length": 10}}'}
    from_env = load_config({"pulse_url": "amqp://localhost"}, environ=env)
    assert from_env.queues == {"builds": {"max_length": 10}}
    with pytest.raises(ConfigError, match="pulse_queues"):
        load_config({"pulse_url": "amqp://localhost"}, environ={"PULSE_QUEUES": "{not json"})
