"""A Taskcluster message's routing key reads as named fields, and its CC routes as task routes."""

from __future__ import annotations

import json
import sys
import types
from importlib import resources

import pytest
import taskcluster
from celery.app.task import Context

from pulse_celery import PulseMessage, TaskclusterKey, pulse_message, routing_fields
from pulse_celery.pulse.taskcluster import FALLBACK_REFERENCES, client_references, exchange_references
from pulse_celery.testing import taskcluster_message
from pulse_celery.worker.deadletters import make_dead_letter

QUEUE = "exchange/taskcluster-queue/v1/"
TASK_EXCHANGES = [
    "task-defined",
    "task-pending",
    "task-running",
    "artifact-created",
    "task-completed",
    "task-failed",
    "task-exception",
    "task-priority-changed",
]
TASK_GROUP_EXCHANGES = ["task-group-resolved", "task-group-sealed", "task-group-priority-changed"]
ROUTES = ("route.tc-treeherder.v2.autoland.918d7c84da371bda26460fb4b50f161d32107880.88554", "route.index.x")


@pytest.fixture(autouse=True)
def fresh_references():
    """Each test reads the references as its own environment gives them."""
    exchange_references.cache_clear()
    yield
    exchange_references.cache_clear()


def message(exchange: str, routing_key: str, routes=ROUTES) -> PulseMessage:
    return PulseMessage(exchange, routing_key, tuple(routes), redelivered=False, queue="queue/alice/q")


@pytest.mark.parametrize("name", TASK_EXCHANGES)
def test_task_exchange_key_gives_every_entry_by_its_taskcluster_name(name):
    key, _ = taskcluster_message(
        task_id="B3EheQ-IQ5aPzw34KS_a6g",
        run_id=2,
        worker_group="mdc2",
        worker_id="t-mojave-r7-153",
        provisioner_id="releng-hardware",
        worker_type="gecko-t-osx-1014",
        scheduler_id="gecko-level-3",
        task_group_id="EJAo7mQyRqS-jmzebhceFA",
    )
    fields = message(QUEUE + name, key).taskcluster

    assert isinstance(fields, TaskclusterKey)
    assert dict(fields.fields) == {
        "routingKeyKind": "primary",
        "taskId": "B3EheQ-IQ5aPzw34KS_a6g",
        "runId": "2",
        "workerGroup": "mdc2",
        "workerId": "t-mojave-r7-153",
        "provisionerId": "releng-hardware",
        "workerType": "gecko-t-osx-1014",
        "schedulerId": "gecko-level-3",
        "taskGroupId": "EJAo7mQyRqS-jmzebhceFA",
        "reserved": None,
    }
    assert fields["workerType"] == "gecko-t-osx-1014"
    assert list(fields.fields) == [
        "routingKeyKind", "taskId", "runId", "workerGroup", "workerId", "provisionerId", "workerType",
        "schedulerId", "taskGroupId", "reserved",
    ]  # fmt: skip


@pytest.mark.parametrize("name", TASK_GROUP_EXCHANGES)
def test_task_group_exchange_key_gives_task_group_id_and_scheduler_id(name):
    fields = message(QUEUE + name, "primary.EJAo7mQyRqS-jmzebhceFA.gecko-level-3._", routes=()).taskcluster
    assert fields is not None
    assert dict(fields.fields) == {
        "routingKeyKind": "primary",
        "taskGroupId": "EJAo7mQyRqS-jmzebhceFA",
        "schedulerId": "gecko-level-3",
        "reserved": None,
    }
    assert fields.routes == ()


def sample_messages():
    text = resources.files("pulse_celery").joinpath("data/taskcluster-sample.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("recorded", sample_messages(), ids=lambda r: r["routing_key"].split(".")[1])
def test_recorded_message_key_agrees_with_its_body(recorded):
    fields = message(recorded["exchange"], recorded["routing_key"], recorded["routes"]).taskcluster
    body, status = recorded["body"], recorded["body"]["status"]

    assert fields is not None
    assert fields["taskId"] == status["taskId"]
    assert fields["runId"] == str(body["runId"])
    assert (fields["workerGroup"], fields["workerId"]) == (body["workerGroup"], body["workerId"])
    for name in ("provisionerId", "workerType", "schedulerId", "taskGroupId"):
        assert fields[name] == status[name]
    assert fields.routes == tuple(route.removeprefix("route.") for route in recorded["routes"])


def test_underscore_for_an_absent_value_becomes_none():
    # A task defined but not yet run: no run, no worker.
    fields = message(QUEUE + "task-defined", "primary.abc._._._.prov.wt.sched.group._").taskcluster
    assert fields is not None
    assert (fields["runId"], fields["workerGroup"], fields["workerId"], fields["reserved"]) == (None,) * 4
    assert fields.get("runId", "no run") == "no run"
    assert fields.get("taskId") == "abc"
    assert fields.get("noSuchEntry") is None


def test_cc_routes_lose_their_route_prefix_and_keep_their_order():
    key, _ = taskcluster_message()
    routes = ("route.index.gecko.v2.try.latest", "not-a-task-route", "route.tc-treeherder.v2.try.abc.1")
    msg = message(QUEUE + "task-completed", key, routes)

    assert msg.taskcluster is not None
    assert msg.taskcluster.routes == ("index.gecko.v2.try.latest", "tc-treeherder.v2.try.abc.1")
    assert msg.routes == routes  # the raw CC routes stay as delivered


def test_non_taskcluster_exchange_gives_none():
    assert message("exchange/hgpushes/v1", "try", routes=()).taskcluster is None
    assert routing_fields(message("exchange/alice/v1/task-completed", taskcluster_message()[0])) is None


@pytest.mark.parametrize(
    "routing_key",
    [
        "primary.abc.0",  # too few words
        "secondary.abc.0.g.w.p.t.s.group._",  # not the primary kind
        "",
    ],
)
def test_key_without_the_exchanges_shape_gives_none(routing_key):
    assert message(QUEUE + "task-completed", routing_key).taskcluster is None


def test_reserved_words_are_kept_joined():
    fields = message(QUEUE + "task-group-resolved", "primary.group.sched.future.words", ()).taskcluster
    assert fields is not None
    assert fields["reserved"] == "future.words"


def test_multi_word_entry_takes_the_rest_of_the_key():
    fields = message("exchange/taskcluster-notify/v1/notification", "primary.my.topic.name", ()).taskcluster
    assert fields is not None
    assert fields["topic"] == "my.topic.name"


def test_fields_are_read_inside_a_task_from_the_pulse_header():
    key, _ = taskcluster_message(task_id="abc", run_id=1)
    request = Context(pulse=message(QUEUE + "task-failed", key).as_header())
    meta = pulse_message(request)
    assert meta is not None and meta.taskcluster is not None
    assert (meta.taskcluster["taskId"], meta.taskcluster["runId"]) == ("abc", "1")


def test_a_dead_letter_is_read_too():
    key, body = taskcluster_message(task_id="abc")
    letter = make_dead_letter(
        reason="payload-mismatch",
        detail="",
        meta=message(QUEUE + "task-completed", key),
        task="tasks.t",
        headers={},
        content_type="application/json",
        content_encoding="utf-8",
        body=json.dumps(body).encode(),
        max_body=1 << 20,
    )
    fields = routing_fields(letter)
    assert fields is not None and fields["taskId"] == "abc"


QUEUE_EVENT_METHODS = [
    name
    for name, member in vars(taskcluster.QueueEvents).items()
    if not name.startswith("_") and callable(member)
]


@pytest.mark.parametrize("method", QUEUE_EVENT_METHODS)
def test_each_entry_sits_where_the_clients_own_patterns_put_it(method):
    # The client's public API builds patterns; each named entry must be at the same word.
    events = taskcluster.QueueEvents({"rootUrl": "https://tc.example.com"})
    exchange = getattr(events, method)()["exchange"]
    shape = exchange_references()[exchange]
    for index, entry in enumerate(shape):
        if entry.constant is not None:
            continue
        pattern = getattr(events, method)({entry.name: "VALUE"})["routingKeyPattern"].split(".")
        assert pattern.index("VALUE") == index, entry.name
    assert len(getattr(events, method)()["routingKeyPattern"].split(".")) == len(shape)


def test_every_queue_exchange_is_known():
    names = {ref for ref in exchange_references() if ref.startswith(QUEUE)}
    assert names == {QUEUE + name for name in TASK_EXCHANGES + TASK_GROUP_EXCHANGES}


def test_exchanges_a_newer_client_adds_are_read_from_it(monkeypatch):
    class FutureEvents(taskcluster.QueueEvents):
        classOptions = {"exchangePrefix": "exchange/taskcluster-future/v1/"}

        def thingHappened(self, *args, **kwargs):
            ref = {
                "exchange": "thing-happened",
                "name": "thingHappened",
                "routingKey": [
                    {"constant": "primary", "multipleWords": False, "name": "routingKeyKind"},
                    {"multipleWords": False, "name": "thingId"},
                    {"multipleWords": True, "name": "reserved"},
                ],
            }
            return self._makeTopicExchange(ref, *args, **kwargs)

    monkeypatch.setattr(taskcluster, "FutureEvents", FutureEvents, raising=False)
    fields = message("exchange/taskcluster-future/v1/thing-happened", "primary.t1._", ()).taskcluster
    assert fields is not None
    assert dict(fields.fields) == {"routingKeyKind": "primary", "thingId": "t1", "reserved": None}


def test_without_the_client_the_built_in_references_are_used(monkeypatch):
    monkeypatch.setitem(sys.modules, "taskcluster", None)  # import taskcluster -> ImportError
    assert client_references() is None
    key, _ = taskcluster_message(task_id="abc")
    fields = message(QUEUE + "task-completed", key).taskcluster
    assert fields is not None and fields["taskId"] == "abc"
    assert exchange_references() is FALLBACK_REFERENCES


def test_a_client_without_readable_references_falls_back_to_the_built_in_ones(monkeypatch):
    monkeypatch.setitem(sys.modules, "taskcluster", types.ModuleType("taskcluster"))
    assert exchange_references() is FALLBACK_REFERENCES


def test_built_in_references_match_the_installed_client():
    assert client_references() == dict(FALLBACK_REFERENCES)
