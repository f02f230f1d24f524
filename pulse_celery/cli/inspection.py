"""Inspect an app's Pulse setup against the broker without consuming or creating anything lasting.

* :func:`queue_rows` and :func:`queue_states`: every queue the app's bindings declare, and
  whether each named queue exists, its ready messages and its consumers (``bindings``);
* :func:`run_checks`: configuration, credentials, exchanges and queue permissions, one
  :class:`Check` at a time (``check``).

Queues are looked at with passive declares, one fresh channel per queue, because a
``NOT_FOUND`` reply closes the channel it came on.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery import Celery
from kombu import Connection

from ..bindings import Binding, complete_without_acks_late
from ..config import AppConfig, load_config
from ..errors import ConfigError, PulseCeleryError
from ..plan import QueuePlan
from ..pulse.config import PulseConfig
from ..pulse.diagnose import describe_error
from ..pulse.topology import owns_exchange, queue_name
from ..sources import DEFAULT, SourcePlan, plan_sources
from .client import BROKER_ERRORS, open_connection


@dataclass(frozen=True)
class QueueState:
    """What a passive declare says about one named queue."""

    exists: bool
    #: Messages ready for delivery (delivered but unacknowledged ones are not counted).
    messages: int | None = None
    consumers: int | None = None
    #: Why the state could not be read (e.g. access refused); None when it was.
    error: str | None = None


def _passive_queue(connection: Connection, name: str, config: PulseConfig) -> QueueState:
    channel = connection.channel()
    try:
        _, messages, consumers = channel.queue_declare(name, passive=True)
    except BROKER_ERRORS as exc:
        if getattr(exc, "code", None) == 404:
            return QueueState(exists=False)
        return QueueState(exists=False, error=describe_error(exc, config))
    finally:
        try:
            channel.close()
        except BROKER_ERRORS:
            pass
    return QueueState(exists=True, messages=messages, consumers=consumers)


def queue_states(
    connection: Connection, config: PulseConfig, plans: Iterable[QueuePlan]
) -> dict[str, QueueState]:
    """Return the state of each named queue; anonymous queues are left out (their names are fresh)."""
    return {plan.name: _passive_queue(connection, plan.name, config) for plan in plans if not plan.anonymous}


def queue_rows(
    config: AppConfig,
    plans: Sequence[QueuePlan],
    states: Mapping[str, QueueState] | None,
    source: str = DEFAULT,
) -> list[dict[str, Any]]:
    """Return one JSON-able row per queue: its bindings, task, ack policy and broker state.

    ``states`` None means the broker was not asked (``exists``, ``messages`` and ``consumers``
    are then None); an anonymous queue is named ``anonymous`` since each connection makes a
    new one. A queue of a source other than ``default`` shows as ``<source>:<queue>``.
    """
    rows = []
    at = "" if source == DEFAULT else f"{source}:"
    for plan in plans:
        state = None if states is None or plan.anonymous else states.get(plan.name)
        rows.append(
            {
                "queue": at + ("anonymous" if plan.anonymous else plan.name),
                "source": source,
                "task": plan.task_name,
                "bindings": [
                    {
                        "exchange": b.exchange,
                        "routing_key": b.routing_key,
                        "ack": b.policy(config.ack_policy),
                    }
                    for b in plan.bindings
                ],
                "queue_type": plan.queue_type if not plan.anonymous else "exclusive",
                "exists": state.exists if state else None,
                "messages": state.messages if state else None,
                "consumers": state.consumers if state else None,
                "error": state.error if state else None,
            }
        )
    return rows


TABLE_COLUMNS = ("QUEUE", "EXCHANGE", "ROUTING KEY", "TASK", "ACK", "STATE", "READY", "CONSUMERS")


def _state_cell(row: Mapping[str, Any]) -> str:
    if row["queue"].endswith("anonymous"):
        return "per-connection"
    if row["error"]:
        return "unknown"
    if row["exists"] is None:
        return "?"
    return "exists" if row["exists"] else "missing"


def _count_cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Return the lines of a plain-text table, one line per binding, columns aligned."""
    cells = [list(TABLE_COLUMNS)]
    for row in rows:
        for binding in row["bindings"]:
            cells.append(
                [
                    row["queue"],
                    binding["exchange"],
                    binding["routing_key"],
                    row["task"],
                    binding["ack"],
                    _state_cell(row),
                    _count_cell(row["messages"]),
                    _count_cell(row["consumers"]),
                ]
            )
    widths = [max(len(line[i]) for line in cells) for i in range(len(TABLE_COLUMNS))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in cells
    ]


# -- check ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One verdict of ``pulse-celery check``; ``detail`` says the fix when it failed."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def _exchange_check(connection: Connection, config: PulseConfig, name: str) -> tuple[bool, Check]:
    """Return whether exchange ``name`` exists, and the verdict on it."""
    channel = connection.channel()
    try:
        channel.exchange_declare(name, "topic", passive=True)
        return True, Check(f"exchange {name}", True, "exists")
    except BROKER_ERRORS as exc:
        if getattr(exc, "code", None) == 404 and owns_exchange(config.user, name):
            return False, Check(f"exchange {name}", True, "missing; the worker declares it (it is yours)")
        return False, Check(f"exchange {name}", False, describe_error(exc, config))
    finally:
        try:
            channel.close()
        except BROKER_ERRORS:
            pass


def _permission_check(
    connection: Connection, config: PulseConfig, bindings: Iterable[Binding], exchanges_ok: set[str]
) -> Check:
    """Prove the user may declare, read, bind and delete queues under ``queue/<user>/``."""
    name = queue_name(config.user, f"pulse-celery-check-{uuid.uuid4().hex[:8]}")
    channel = connection.channel()
    step = "declare"
    try:
        channel.queue_declare(name, exclusive=True, auto_delete=True, durable=False)
        step = "read"
        channel.basic_get(name, no_ack=True)  # the queue is new and unbound: nothing to take
        bound = 0
        for b in bindings:
            if b.exchange in exchanges_ok:
                step = f"bind to {b.exchange} {b.routing_key!r}"
                channel.queue_bind(name, b.exchange, b.routing_key)
                bound += 1
        step = "delete"
        channel.queue_delete(name)
    except BROKER_ERRORS as exc:
        return Check("queue permissions", False, f"{step} of {name} refused: {describe_error(exc, config)}")
    finally:
        try:
            channel.close()
        except BROKER_ERRORS:
            pass
    return Check(
        "queue permissions",
        True,
        f"declared, read, bound ({bound} binding(s)) and deleted the throwaway queue {name}",
    )


def run_checks(
    conf: Mapping[str, Any], bindings: Sequence[Binding], app: Celery | None = None
) -> Iterator[Check]:
    """Check what a worker of this app needs from Pulse, stopping at the first check others need.

    Nothing is consumed and nothing lasting is created: exchanges and the app's queues are
    declared passively, and permissions are proven on an exclusive throwaway queue
    ``queue/<user>/pulse-celery-check-<random>`` that is deleted at once.
    """
    try:
        config = load_config(conf)
    except ConfigError as exc:
        yield Check("configuration", False, str(exc))
        return
    yield Check("configuration", True, f"Pulse at {config.safe_url()}, ack policy {config.ack_policy}")
    if not bindings:
        yield Check(
            "bindings",
            False,
            "no task has a @pulse_binding; check that -A names the app and that it imports the task modules",
        )
        return
    if app is not None:
        problems = complete_without_acks_late(app, config.ack_policy, bindings)
        fine = "every task bound under ack='complete' has acks_late"
        yield Check("ack policies", not problems, problems[0] if problems else fine)
    try:
        sources = plan_sources(config, bindings)
    except ConfigError as exc:
        yield Check("queue names", False, str(exc))
        return
    for source in sources:
        # One source's failure (down, login refused) does not stop the checks of the others.
        yield from _source_checks(source)


def _source_checks(source: SourcePlan) -> Iterator[Check]:
    """The checks of one Pulse source: its queue names, login, exchanges, permissions and queues."""
    config, plans = source.config, source.plans
    bindings = [b for plan in plans for b in plan.bindings]
    at = "" if source.name == DEFAULT else f"[{source.name}] "
    named = [p.name for p in plans if not p.anonymous]
    anonymous = len(plans) - len(named)
    names = ", ".join(named) + (f" and {anonymous} anonymous" if anonymous else "")
    yield Check(f"{at}queue names", True, names if at == "" else f"{names} at {config.safe_url()}")
    try:
        connection = open_connection(config)
    except PulseCeleryError as exc:  # already one line with the fix
        yield Check(f"{at}connection", False, str(exc))
        return
    with connection:
        yield Check(f"{at}connection", True, f"logged in as {config.user}")
        exchanges_ok = set()
        for name in sorted({b.exchange for b in bindings}):
            exists, check = _exchange_check(connection, config, name)
            if exists:
                exchanges_ok.add(name)
            yield Check(at + check.name, check.ok, check.detail)
        permissions = _permission_check(connection, config, bindings, exchanges_ok)
        yield Check(at + permissions.name, permissions.ok, permissions.detail)
        for name, state in queue_states(connection, config, plans).items():
            if state.error:
                yield Check(f"{at}queue {name}", False, state.error)
            elif state.exists:
                yield Check(
                    f"{at}queue {name}",
                    True,
                    f"exists, {state.messages} ready, {state.consumers} consumer(s)",
                )
            else:
                yield Check(f"{at}queue {name}", True, "does not exist yet; the worker declares it")
