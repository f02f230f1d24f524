"""pulse_sources: each source's settings, resolved like the default source's; bindings grouped by source."""

from __future__ import annotations

import pytest

from pulse_celery import Binding, ConfigError
from pulse_celery.config import load_config
from pulse_celery.sources import plan_sources, source_configs

COMPLETED = "exchange/taskcluster-queue/v1/task-completed"
BASE = {"pulse_url": "amqps://pulse.mozilla.org:5671", "pulse_user": "alice", "pulse_password": "s3cret"}


def conf(**sources):
    return load_config({**BASE, "pulse_heartbeat": 60, "pulse_sources": sources}, environ={})


def binding(queue, source="default", task="tasks.a") -> Binding:
    return Binding(COMPLETED, "primary.#", queue, task_name=task, source=source)


def test_a_source_takes_its_own_credentials_and_vhost_and_the_app_wide_rest():
    configs = source_configs(
        conf(community={"url": "amqps://bob:pw@pulse.mozilla.org:5671/communitytc", "prefetch_count": 20})
    )
    default, community = configs["default"], configs["community"]
    assert (default.user, default.vhost, default.heartbeat) == ("alice", "/", 60)
    assert (community.user, community.password, community.vhost) == ("bob", "pw", "communitytc")
    assert community.heartbeat == 60  # not in the entry: the app-wide setting
    assert community.prefetch_count == 20  # in the entry: its own
    assert "pw" not in repr(community)


def test_a_source_never_borrows_the_default_sources_credentials():
    community = source_configs(conf(community={"url": "amqps://pulse.mozilla.org:5671/communitytc"}))
    assert (community["community"].user, community["community"].password) == ("guest", "guest")


@pytest.mark.parametrize(
    ("sources", "words"),
    [
        ({"community": {"usr": "bob"}}, "unknown keys usr"),
        ({"community": {"heartbeat": "often"}}, r"pulse_sources\['community'\]\.heartbeat"),
        ({"default": {"user": "bob"}}, "other than 'default'"),
        ({"community": "amqps://x"}, "give a dict"),
        ({"community": {"url": "amqp://bob:pw@pulse.example.org/"}}, "clear text"),
    ],
)
def test_a_bad_source_is_refused_with_the_fix(sources, words):
    with pytest.raises(ConfigError, match=words):
        source_configs(conf(**sources))


def test_bindings_are_grouped_by_source_with_queue_names_under_each_sources_user():
    config = conf(community={"url": "amqps://bob:pw@pulse.mozilla.org:5671/communitytc"})
    sources = plan_sources(config, [binding("builds"), binding("builds", "community", task="tasks.b")])
    names = {s.name: [p.name for p in s.plans] for s in sources}
    assert names == {"default": ["queue/alice/builds"], "community": ["queue/bob/builds"]}


def test_a_binding_on_an_unknown_source_is_refused_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"'communty', which pulse_sources does not define.*'default'"):
        plan_sources(conf(), [binding("builds", "communty")])


def test_pulse_queues_may_name_a_queue_of_any_source_but_not_a_missing_one():
    config = load_config(
        {
            **BASE,
            "pulse_sources": {"community": {"url": "amqps://bob:pw@pulse.mozilla.org:5671/communitytc"}},
            "pulse_queues": {"queue/bob/builds": {"prefetch": 5}},
        },
        environ={},
    )
    [community] = plan_sources(config, [binding("builds", "community")])
    assert community.plans[0].prefetch == 5
    with pytest.raises(ConfigError, match="no @pulse_binding"):
        plan_sources(config, [binding("builds")])
