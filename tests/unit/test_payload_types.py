"""A binding's payload type: checked at ingest, delivered to the task as an instance."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytest

from pulse_celery import (
    BadMessage,
    Binding,
    BindingError,
    PayloadMismatch,
    PulseConfig,
    PulseMessage,
    app_bindings,
    pulse_binding,
)
from pulse_celery.plan import plan_queues
from pulse_celery.pulse.message import RawDelivery
from pulse_celery.pulse.payloads import check_payload, to_payload_type
from pulse_celery.testing import taskcluster_message
from pulse_celery.worker.dispatch import Dispatcher

pydantic = pytest.importorskip("pydantic")

COMPLETED = "exchange/taskcluster-queue/v1/task-completed"
FAILED = "exchange/taskcluster-queue/v1/task-failed"


@dataclass
class Run:
    runId: int
    state: Literal["pending", "running", "completed", "failed", "exception"]
    workerId: Optional[str] = None  # noqa: UP045 - the typing spelling must work too


@dataclass
class Status:
    taskId: str
    state: str
    runs: list[Run]
    retriesLeft: int = 0


@dataclass
class TaskCompleted:
    runId: int
    status: Status
    workerGroup: str | None = None
    version: float = 1.0
    labels: dict[str, str] = field(default_factory=dict)


class TaskCompletedModel(pydantic.BaseModel):
    runId: int
    workerId: str
    status: dict[str, Any]


def body(**changes: Any) -> dict[str, Any]:
    _, payload = taskcluster_message(task_id="abc", run_id=0)
    return {**payload, **changes}


# --- dataclasses -------------------------------------------------------------------------


def test_dataclass_is_filled_by_field_name_with_nested_dataclasses():
    payload = to_payload_type(TaskCompleted, body())
    assert isinstance(payload, TaskCompleted)
    assert payload.status.taskId == "abc"
    assert payload.status.runs == [Run(runId=0, state="completed", workerId="t-linux-1")]
    assert payload.version == 1.0 and isinstance(payload.version, float)


def test_keys_the_dataclass_does_not_name_are_ignored():
    data = body(newField={"added": "by a newer schema"})
    assert {"newField", "workerId"} <= set(data) and "taskQueueId" in data["status"]
    assert to_payload_type(TaskCompleted, data).runId == 0


def test_optional_fields_take_their_default_when_absent():
    data = body()
    del data["workerGroup"]
    assert to_payload_type(TaskCompleted, data).workerGroup is None


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        ({}, "payload.runId is missing"),
        (body(runId="zero"), "payload.runId is a string ('zero'), not an integer"),
        (body(runId=True), "payload.runId is a boolean"),
        (body(runId=0.5), "payload.runId is a number"),
        (body(status={"taskId": 7, "state": "x", "runs": []}), "payload.status.taskId is a number"),
        (body(status={"taskId": "a", "state": "x"}), "payload.status.runs is missing"),
        (body(status={"taskId": "a", "state": "x", "runs": {}}), "payload.status.runs is an object"),
        (
            body(status={"taskId": "a", "state": "x", "runs": [{"runId": 0, "state": "lost"}]}),
            "payload.status.runs[0].state",
        ),
        (body(labels={"a": 1}), "payload.labels.a is a number"),
        (body(workerGroup=3), "not str or null"),
        ([1, 2], "payload is an array, not an object for TaskCompleted"),
        ("text", "payload is a string"),
        (None, "payload is null"),
    ],
)
def test_payload_that_does_not_fit_the_dataclass_is_a_mismatch(data, detail):
    with pytest.raises(PayloadMismatch) as caught:
        check_payload(TaskCompleted, data)
    assert detail in str(caught.value)
    assert caught.value.reason == "payload-mismatch"
    assert isinstance(caught.value, BadMessage)


def test_post_init_may_refuse_a_payload():
    @dataclass
    class Positive:
        n: int

        def __post_init__(self) -> None:
            if self.n <= 0:
                raise ValueError("n must be positive")

    assert to_payload_type(Positive, {"n": 1}) == Positive(1)
    with pytest.raises(PayloadMismatch, match="n must be positive"):
        check_payload(Positive, {"n": 0})


# --- pydantic ----------------------------------------------------------------------------


def test_pydantic_model_is_validated_by_pydantic():
    payload = to_payload_type(TaskCompletedModel, body())
    assert isinstance(payload, TaskCompletedModel)
    assert (payload.runId, payload.workerId, payload.status["taskId"]) == (0, "t-linux-1", "abc")


@pytest.mark.parametrize(
    ("data", "detail"),
    [
        (body(runId="zero"), "payload.runId: Input should be a valid integer"),
        ({"runId": 0}, "payload.workerId: Field required"),
        ([], "payload: Input should be a valid dictionary"),
    ],
)
def test_payload_that_does_not_fit_the_pydantic_model_is_a_mismatch(data, detail):
    with pytest.raises(PayloadMismatch, match="does not fit TaskCompletedModel") as caught:
        check_payload(TaskCompletedModel, data)
    assert detail in str(caught.value)


class StatusModel(pydantic.BaseModel):
    taskId: str


@dataclass
class WithModelInside:
    status: StatusModel


def test_nested_pydantic_model_inside_a_dataclass_is_validated():
    assert to_payload_type(WithModelInside, body()).status.taskId == "abc"
    with pytest.raises(PayloadMismatch, match=r"payload\.status\.taskId"):
        check_payload(WithModelInside, body(status={"taskId": None}))


def test_validator_failing_its_own_way_is_still_a_mismatch():
    @dataclass
    class Picky:
        n: int

        def __post_init__(self) -> None:
            raise KeyError("surprise")

    with pytest.raises(PayloadMismatch, match="Picky refused it"):
        check_payload(Picky, {"n": 1})


# --- bindings ----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [dict, {"runId": int}, TaskCompleted(0, Status("a", "b", [])), int])
def test_binding_refuses_a_payload_that_is_not_a_dataclass_or_model(app, bad):
    with pytest.raises(BindingError, match="neither a dataclass nor a pydantic model"):
        pulse_binding(COMPLETED, "primary.#", queue="q", payload=bad)


def test_binding_refuses_a_dataclass_whose_field_types_cannot_be_resolved(app):
    @dataclass
    class Local:
        pass

    @dataclass
    class Outer:
        inner: Local  # a string under postponed annotations, and Local is not a module global

    with pytest.raises(BindingError, match="define the classes its fields name at module level"):
        pulse_binding(COMPLETED, "primary.#", queue="q", payload=Outer)


def test_payload_type_is_kept_on_the_apps_bindings(app):
    @pulse_binding(COMPLETED, "primary.#", queue="q", payload=TaskCompleted)
    @app.task(shared=False)
    def on_completed(payload):
        return payload

    [binding] = app_bindings(app)
    assert binding == Binding(COMPLETED, "primary.#", "q", task_name=binding.task_name, payload=TaskCompleted)
    assert binding.task_name.endswith("on_completed")


def test_bindings_of_one_task_with_different_payload_types_are_refused(app):
    with pytest.raises(BindingError, match="same payload="):

        @pulse_binding(FAILED, "primary.#", queue="q", payload=TaskCompletedModel)
        @pulse_binding(COMPLETED, "primary.#", queue="q", payload=TaskCompleted)
        @app.task(shared=False)
        def on_event(payload):
            return payload

        app.finalize()  # @app.task on an app not finalized applies bindings then


# --- the task ----------------------------------------------------------------------------


def typed_task(app, payload_type=TaskCompleted, bind=False):
    @pulse_binding(FAILED, "primary.#", queue="q", payload=payload_type)
    @pulse_binding(COMPLETED, "primary.#", queue="q", payload=payload_type)
    @app.task(shared=False, bind=bind)
    def on_event(*args):
        payload = args[-1]
        return type(payload).__name__, payload

    return on_event


@pytest.mark.parametrize("payload_type", [TaskCompleted, TaskCompletedModel])
def test_task_receives_an_instance_when_it_runs(app, payload_type):
    task = typed_task(app, payload_type)
    name, payload = task.apply((body(),)).get()  # the worker's tracer calls task.run too
    assert name == payload_type.__name__
    assert payload == to_payload_type(payload_type, body())


def test_bound_task_receives_an_instance(app):
    task = typed_task(app, bind=True)
    assert task(body())[0] == "TaskCompleted"


def test_direct_call_with_an_instance_passes_it_as_it_is(app):
    task = typed_task(app)
    instance = to_payload_type(TaskCompleted, body())
    assert task(instance)[1] is instance


def test_payload_that_does_not_fit_fails_the_task_when_sent_the_ordinary_way(app):
    task = typed_task(app)
    result = task.apply(({"runId": "zero"},))
    assert isinstance(result.result, PayloadMismatch)


def test_stacked_bindings_convert_once(app):
    task = typed_task(app)
    assert not hasattr(task.run.__wrapped__, "__pulse_payload__")


def test_task_without_a_payload_type_still_receives_the_json_object(app):
    @pulse_binding(COMPLETED, "primary.#", queue="q")
    @app.task(shared=False)
    def plain(payload):
        return payload

    assert plain(body()) == body()


# --- ingest (Dispatcher._decode) -----------------------------------------------------------


def decode(app, data: Any):
    config = PulseConfig(url="amqps://pulse.mozilla.org:5671", user="alice", password="hunter2")
    [plan] = plan_queues(config, app_bindings(app))
    dispatcher = Dispatcher(app, config, consumer=None, handoff=None, on_handoff_failed=lambda exc: None)  # type: ignore[arg-type]
    key, _ = taskcluster_message()
    raw = RawDelivery(json.dumps(data).encode(), "application/json", "utf-8", {}, {}, 1)
    return dispatcher._decode(raw, PulseMessage(COMPLETED, key, (), False, plan.name), plan)


def test_ingest_checks_the_payload_and_keeps_the_json_object_for_the_task_message(app):
    typed_task(app)
    binding, payload = decode(app, body())
    assert binding.payload is TaskCompleted
    assert payload == body()  # JSON on the Celery broker; the instance is made when the task runs


def test_ingest_refuses_a_payload_that_does_not_fit(app):
    typed_task(app)
    with pytest.raises(PayloadMismatch, match=r"payload\.runId"):
        decode(app, body(runId="zero"))
