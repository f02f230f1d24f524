"""The ``@pulse_binding`` decorator, :class:`Binding`, and the bindings an app declares.

A binding says: deliver messages published to *exchange* whose routing key (or one of whose
CC routes) matches *routing_key* into the Pulse queue *queue*, and run *task* for each.
Bindings live on the task object (``task.pulse_bindings``), so the app's task registry is
the registry of bindings: :func:`app_bindings` reads them back.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import click
from celery import Celery, Task

from . import _compat
from .config import ACK_POLICIES
from .errors import BindingError
from .pulse.bindings import Binding as PulseBinding
from .pulse.bindings import normalize_reference
from .pulse.payloads import check_payload, check_payload_type, converter
from .pulse.routing_keys import validate_pattern
from .pulse.topology import validate_queue_suffix

#: Attribute that holds the bindings on a task (or on a plain function under ``@app.task``).
BINDINGS_ATTRIBUTE = "pulse_bindings"
#: Attribute of a wrapped ``run`` that names the type it converts to.
WRAPPED_ATTRIBUTE = "__pulse_payload__"
_STEP_INSTALLED = "_pulse_celery_installed"

_T = TypeVar("_T")


@dataclass(frozen=True)
class Binding(PulseBinding):
    """One exchange and routing-key pattern feeding one task through one Pulse queue."""

    #: Queue suffix (``queue/<user>/<queue>``), or None for an anonymous queue.
    queue: str | None
    #: Ack policy, or None for the app-wide default (``pulse_ack_policy``).
    ack: str | None = None
    #: Name of the bound task; filled in when the app's bindings are read.
    task_name: str = ""
    #: Type the task receives instead of the JSON object (a dataclass or pydantic model), or None.
    payload: type | None = None
    #: Name of the Pulse source (``pulse_sources``) the queue is on; ``"default"``: the
    #: single-source settings (``pulse_url``, ``pulse_user`` ...).
    source: str = "default"
    #: Skip redeliveries whose task was already enqueued or run (True, False), or None for
    #: the app-wide ``pulse_dedupe``.
    dedupe: bool | None = None

    def policy(self, default: str) -> str:
        """The ack policy of this binding: its own, or the app's ``default``."""
        return self.ack or default

    def check_payload(self, data: Any) -> None:
        """Raise :class:`~pulse_celery.errors.PayloadMismatch` if ``data`` does not fit ``payload``."""
        if self.payload is not None:
            check_payload(self.payload, data)


def pulse_binding(
    exchange: Any,
    routing_key: str | None = None,
    *,
    queue: str | None,
    ack: str | None = None,
    all_messages: bool = False,
    payload: type | None = None,
    source: str = "default",
    dedupe: bool | None = None,
) -> Callable[[_T], _T]:
    """Bind the decorated Celery task to a Pulse exchange and routing-key pattern.

    Stack the decorator to add bindings; bindings that name the same ``queue`` share one
    Pulse queue. ``queue=None`` gives an anonymous queue that lives as long as the worker's
    connection. ``ack`` is ``"enqueue"`` (ack once the task message is confirmed by the
    Celery broker) or ``"complete"`` (run the task in this worker and ack when it finishes);
    the default is ``app.conf.pulse_ack_policy``. A pattern of only ``#`` must be asked for
    with ``all_messages=True``.

    ``payload`` (a dataclass or pydantic v2 model) makes the task receive an instance of it
    instead of the JSON object; a message whose payload does not fit it is dead-lettered as
    bad input (``payload-mismatch``) and never reaches the task. Every binding of one task
    names the same ``payload`` (see :mod:`pulse_celery.payloads`).

    ``source`` names the Pulse service the queue is on: a key of ``app.conf.pulse_sources``,
    or ``"default"`` for the single-source settings. ``dedupe=True`` acks, without running
    the task again, a redelivery of a message whose task was already enqueued (``enqueue``)
    or already succeeded (``complete``); None follows ``app.conf.pulse_dedupe``.
    """
    name, pattern = normalize_reference(exchange, routing_key)
    validate_pattern(pattern, allow_all=all_messages)
    if queue is not None:
        validate_queue_suffix(queue)
    if ack is not None and ack not in ACK_POLICIES:
        raise BindingError(f"ack={ack!r} is not one of {ACK_POLICIES}")
    if payload is not None:
        check_payload_type(payload)
    if not isinstance(source, str) or not source:
        raise BindingError(
            f"source={source!r} must name a Pulse source: a key of pulse_sources, or 'default'"
        )
    if dedupe not in (None, True, False):
        raise BindingError(f"dedupe={dedupe!r} must be True, False or None (the app-wide pulse_dedupe)")
    binding = Binding(
        exchange=name,
        routing_key=pattern,
        queue=queue,
        ack=ack,
        payload=payload,
        source=source,
        dedupe=dedupe,
    )

    def decorate(target: _T) -> _T:
        _attach(target, binding)
        return target

    return decorate


def _owning_app(target: Any) -> Celery:
    if _compat.is_unevaluated_task(target):
        # ``@app.task`` on an app not finalized yet returns a proxy; reading the app from it
        # avoids forcing the app to load its configuration now.
        return _compat.app_of_task_proxy(target)
    if isinstance(target, Task):
        return target.app
    raise BindingError(f"@pulse_binding decorates a Celery task: put it above @app.task, not on {target!r}")


def _attach(target: Any, binding: Binding) -> None:
    def add(obj: Any) -> None:
        existing = tuple(getattr(obj, BINDINGS_ATTRIBUTE, ()))
        # One conversion when the task runs, whichever binding the message came through.
        others = {b.payload for b in existing} - {binding.payload}
        if others:
            named = sorted(getattr(t, "__name__", "None") for t in {binding.payload, *others})
            raise BindingError(
                f"the bindings of task {obj.name} name different payload types ({', '.join(named)}); "
                "give every @pulse_binding of one task the same payload="
            )
        # Decorators apply bottom-up: prepend to keep the order they are written in.
        setattr(obj, BINDINGS_ATTRIBUTE, (binding, *existing))
        if binding.payload is not None:
            _convert_payloads(obj, binding.payload)

    install(_owning_app(target))
    if _compat.is_unevaluated_task(target):
        target.__then__(add, target)
    else:
        add(target)


def _convert_payloads(task: Any, model: type) -> None:
    """Make ``task`` receive its first argument as a ``model`` instance when it runs.

    An argument that already is an instance is passed as it is, so ``task(instance)`` and
    ``task.apply((instance,))`` work; a dict sent the ordinary Celery way is converted too.
    """
    current = task.run
    wrapped = getattr(current, WRAPPED_ATTRIBUTE, None)
    if wrapped is model:
        return
    if wrapped is not None:
        raise BindingError(
            f"task {task.name} already receives {wrapped.__name__} payloads; one task takes one payload type"
        )
    convert = converter(model)

    @functools.wraps(current)
    def run(*args: Any, **kwargs: Any) -> Any:
        if args and not isinstance(args[0], model):
            args = (convert(args[0]), *args[1:])
        return current(*args, **kwargs)

    setattr(run, WRAPPED_ATTRIBUTE, model)
    # An instance attribute, as Celery's own autoretry wrapper does: the worker's tracer and
    # Task.__call__ both call task.run.
    task.run = run


#: The Pulse step, by name: decorating a task must not import the worker (worker/step.py).
STEP = "pulse_celery.worker.step:PulseStep"


def install(app: Celery) -> None:
    """Add the Pulse step and the ``--pulse/--no-pulse`` worker option to ``app`` (idempotent).

    The step is named, not imported: Celery loads it when a worker starts. The remote-control
    commands are registered here, since ``celery control pulse_pause`` checks the name
    against Celery's registry in the process that sends it.
    """
    from . import control  # noqa: F401  (registers pulse_pause, pulse_resume, pulse_delete, pulse_status)

    if getattr(app, _STEP_INSTALLED, False):
        return
    setattr(app, _STEP_INSTALLED, True)
    app.steps["consumer"].add(STEP)
    app.user_options["worker"].add(
        click.Option(
            ["--pulse/--no-pulse"],
            default=True,
            show_default=True,
            help="Consume the Pulse queues this app's tasks are bound to.",
        )
    )


def task_bindings(task: Task) -> tuple[Binding, ...]:
    """Return the bindings declared on ``task``."""
    return tuple(getattr(task, BINDINGS_ATTRIBUTE, ()))


def app_bindings(app: Celery) -> list[Binding]:
    """Return every binding of ``app``'s tasks, each with its task name, in a stable order."""
    found: list[Binding] = []
    for name in sorted(app.tasks):
        for binding in task_bindings(app.tasks[name]):
            found.append(replace(binding, task_name=name))
    return found


def complete_without_acks_late(app: Celery, default_policy: str, bindings: Iterable[Binding]) -> list[str]:
    """Say, per binding, why ``ack='complete'`` cannot hold for its task (acks_late is off)."""
    problems = []
    for binding in bindings:
        if binding.policy(default_policy) == "complete" and not app.tasks[binding.task_name].acks_late:
            problems.append(
                f"task {binding.task_name} has a Pulse binding with ack='complete' but acks_late is "
                "off, so Celery would ack the Pulse message when the task starts; declare it with "
                "@app.task(acks_late=True)"
            )
    return problems
