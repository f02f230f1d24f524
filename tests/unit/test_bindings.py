"""@pulse_binding accepts every way Pulse clients name a binding and attaches it to a Celery task."""

from __future__ import annotations

import pytest
import taskcluster
from kombu import Exchange
from kombu.utils.imports import symbol_by_name

import pulse_celery
from pulse_celery import Binding, BindingError, app_bindings, pulse_binding

COMPLETED = "exchange/taskcluster-queue/v1/task-completed"
FAILED = "exchange/taskcluster-queue/v1/task-failed"
queue_events = taskcluster.QueueEvents({"rootUrl": "https://tc.example.com"})


def only_binding(app) -> Binding:
    [binding] = app_bindings(app)
    return binding


def bind(app, *args, **kwargs):
    """Decorate a fresh task of ``app`` with ``pulse_binding(*args, **kwargs)``."""

    @pulse_binding(*args, **kwargs)
    @app.task(shared=False)
    def on_message(payload):
        return payload

    return on_message


def test_exchange_and_routing_key_make_a_binding(app):
    bind(app, COMPLETED, "primary.#", queue="builds", ack="complete")
    assert only_binding(app) == Binding(
        COMPLETED, "primary.#", "builds", "complete", task_name="test_bindings.on_message"
    )


def test_taskcluster_reference_dict_makes_a_binding(app):
    bind(app, {"exchange": FAILED, "routingKeyPattern": "primary.*.#"}, queue="failures")
    assert (only_binding(app).exchange, only_binding(app).routing_key) == (FAILED, "primary.*.#")


def test_taskcluster_client_reference_makes_a_binding(app):
    reference = queue_events.taskFailed({"workerType": "gecko-t-osx-1014"})
    bind(app, reference, queue="failures")
    binding = only_binding(app)
    assert binding.exchange == FAILED
    assert binding.routing_key == "primary.*.*.*.*.*.gecko-t-osx-1014.*.*.#"


def test_object_with_binding_methods_makes_a_binding(app):
    class GoStyleBinding:
        def exchange_name(self):
            return COMPLETED

        def routing_key(self):
            return "primary.#"

    bind(app, GoStyleBinding(), queue="builds")
    assert (only_binding(app).exchange, only_binding(app).routing_key) == (COMPLETED, "primary.#")


def test_object_with_binding_attributes_makes_a_binding(app):
    class AttributeBinding:
        exchange_name = COMPLETED
        routing_key = "primary.#"

    bind(app, AttributeBinding(), queue="builds")
    assert (only_binding(app).exchange, only_binding(app).routing_key) == (COMPLETED, "primary.#")


def test_kombu_exchange_names_the_exchange(app):
    bind(app, Exchange(COMPLETED, type="topic"), "primary.#", queue="builds")
    assert only_binding(app).exchange == COMPLETED


def test_reference_dict_plus_routing_key_is_refused():
    with pytest.raises(BindingError, match="inside the Taskcluster reference"):
        pulse_binding(queue_events.taskCompleted({}), "primary.#", queue="builds")


def test_reference_dict_without_pattern_is_refused():
    with pytest.raises(BindingError, match="routingKeyPattern"):
        pulse_binding({"exchange": COMPLETED}, queue="builds")


def test_missing_routing_key_is_refused_with_an_example():
    with pytest.raises(BindingError, match=r"primary\.#"):
        pulse_binding(COMPLETED, queue="builds")


def test_object_without_binding_fields_is_refused():
    with pytest.raises(BindingError, match="no exchange name and routing key"):
        pulse_binding(object(), queue="builds")


def test_binding_a_plain_function_says_to_put_it_above_app_task():
    def not_a_task(payload):
        return payload

    with pytest.raises(BindingError, match=r"above @app\.task"):
        pulse_binding(COMPLETED, "primary.#", queue="builds")(not_a_task)


@pytest.mark.parametrize("ack", ["ack", "late", "Enqueue"])
def test_unknown_ack_policy_is_refused(ack):
    with pytest.raises(BindingError, match="ack="):
        pulse_binding(COMPLETED, "primary.#", queue="builds", ack=ack)


@pytest.mark.parametrize("queue", ["", "  ", "my queue", "a\nb", "q" * 201])
def test_unusable_queue_name_is_refused(queue):
    with pytest.raises(BindingError, match="queue"):
        pulse_binding(COMPLETED, "primary.#", queue=queue)


def test_bare_hash_needs_all_messages(app):
    with pytest.raises(BindingError, match="all_messages=True"):
        pulse_binding(COMPLETED, "#", queue="builds")
    bind(app, COMPLETED, "#", queue="builds", all_messages=True)
    assert only_binding(app).routing_key == "#"


def test_queue_is_a_required_keyword():
    with pytest.raises(TypeError):
        pulse_binding(COMPLETED, "primary.#")  # type: ignore[call-arg]


def stacked(app):
    @pulse_binding(COMPLETED, "primary.#", queue="builds")
    @pulse_binding(FAILED, "primary.#", queue="builds")
    @pulse_binding(COMPLETED, "route.tc-treeherder.#", queue="builds")
    @app.task(shared=False)
    def on_message(payload):
        return payload

    return on_message


SOURCE_ORDER = [
    (COMPLETED, "primary.#"),
    (FAILED, "primary.#"),
    (COMPLETED, "route.tc-treeherder.#"),
]


def test_stacked_decorators_keep_source_order_before_finalize(app):
    stacked(app)
    assert [(b.exchange, b.routing_key) for b in app_bindings(app)] == SOURCE_ORDER


def test_stacked_decorators_keep_source_order_after_finalize(app):
    app.finalize()
    task = stacked(app)
    assert isinstance(task, app.Task)
    assert [(b.exchange, b.routing_key) for b in app_bindings(app)] == SOURCE_ORDER


def test_decorating_does_not_finalize_or_configure_the_app(app):
    stacked(app)
    assert app.finalized is False
    assert app.configured is False


def test_app_bindings_name_each_task(app):
    @pulse_binding(COMPLETED, "primary.#", queue="completed")
    @app.task(shared=False, name="tasks.completed")
    def completed(payload):
        return payload

    @pulse_binding(FAILED, "primary.#", queue="failed")
    @app.task(shared=False, name="tasks.failed")
    def failed(payload):
        return payload

    @app.task(shared=False, name="tasks.unbound")
    def unbound():
        return None

    assert [(b.task_name, b.exchange) for b in app_bindings(app)] == [
        ("tasks.completed", COMPLETED),
        ("tasks.failed", FAILED),
    ]


def test_app_without_bindings_has_none(app):
    @app.task(shared=False)
    def plain():
        return None

    assert app_bindings(app) == []


def test_decorating_installs_the_worker_step_and_option_once(app):
    stacked(app)
    bind(app, FAILED, "primary.#", queue="other")
    # Named, not imported, so that decorating never loads the worker; Celery resolves the name.
    [step] = app.steps["consumer"]
    assert symbol_by_name(step) is pulse_celery.PulseStep
    options = [o for o in app.user_options["worker"] if "--pulse" in o.opts]
    assert len(options) == 1
    assert options[0].secondary_opts == ["--no-pulse"]
    assert options[0].default is True


def test_binding_matches_primary_key_or_any_cc_route():
    binding = Binding(COMPLETED, "route.tc-treeherder.#", queue="builds")
    routes = ["primary.abc.0._._._._._._._", "route.tc-treeherder.v2.try.abc.1"]
    assert binding.matches(COMPLETED, routes)
    assert not binding.matches(COMPLETED, routes[:1])
    assert not binding.matches(FAILED, routes)
