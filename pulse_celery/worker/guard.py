"""Run a deduped Pulse task once: one copy at a time; skipped once it succeeded; success recorded at once.

Installed on every task that a binding with dedupe on invokes, it wraps the task's ``run``
in the process that runs it (a prefork child, a thread, or the worker itself):

* before the task runs, it takes the message's running lease (lease.py), which makes a copy
  that arrives while it runs wait; a task whose entry is ``succeeded`` is not run: it ends
  as Celery's ``Ignore`` (acked, no result stored over the first run's). Every deduped task
  is looked up here, not only redeliveries: a publisher that lost a confirm and published
  again sends the same message unflagged (the fault tests' publisher does, when its
  connection is closed), and this costs the pool process one Redis round trip, never the
  worker's event loop;
* as soon as the task returns, its entry becomes ``succeeded`` and its lease is released,
  from that process, before the worker's main process even learns of the result, so before
  any ack: a SIGKILL of the worker after this point cannot make the task run again.

Only task messages with the ``pulse_dedupe`` header are touched (a task called the ordinary
Celery way runs as always). What remains: a task killed between its last effect and the
write of its entry (microseconds) runs again; a task that died mid-run runs again, once
its lease has expired. When the store is down the task runs and its success is not
recorded (see dedupe.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial, wraps
from typing import Any

from celery import Celery
from celery.exceptions import Ignore

from .. import _compat
from ..request import pulse_message
from .dedupe import DEDUPE_HEADER, DedupeStore, StoreUnavailable, dedupe_key
from .lease import Leases

logger = logging.getLogger(__name__)


def install_guard(app: Celery, task_names: set[str], store: DedupeStore) -> None:
    """Wrap the ``run`` of each of ``task_names`` with the guard (once per task)."""
    leases = Leases(store)
    for name in sorted(task_names):
        task = app.tasks[name]
        _compat.wrap_task_run(task, partial(guarded, task, leases=leases))


def _dedupe_requested(request: Any) -> bool:
    # Where the worker puts a header (request.<name>), and where an eager apply does.
    headers = getattr(request, "headers", None)
    return bool(
        getattr(request, DEDUPE_HEADER, None) or (isinstance(headers, dict) and headers.get(DEDUPE_HEADER))
    )


def guarded(task: Any, run: Callable[..., Any], *, leases: Leases) -> Callable[..., Any]:
    """``run``, alone (under its lease) and skipped once succeeded, recording success when it returns."""

    @wraps(run)
    def run_once(*args: Any, **kwargs: Any) -> Any:
        request = task.request
        meta = pulse_message(request) if _dedupe_requested(request) else None
        if meta is None or not request.id:
            return run(*args, **kwargs)

        def on_wait() -> None:
            logger.info(
                "Task %s[%s] for the Pulse message from %s (%s) is running elsewhere (a copy of the "
                "same message); this copy waits: not run if that one succeeds, run if it fails or dies",
                task.name,
                request.id,
                meta.exchange,
                meta.routing_key,
            )

        key = dedupe_key(meta.queue, request.id)
        token, succeeded = leases.acquire(key, on_wait)
        if succeeded:
            logger.info(
                "Task %s[%s] for the Pulse message from %s (%s) already succeeded (dedupe store); "
                "not run again, its message is acked",
                task.name,
                request.id,
                meta.exchange,
                meta.routing_key,
            )
            raise Ignore()
        try:
            result = run(*args, **kwargs)
        except BaseException:
            _finish(leases, key, token, False, task, request.id)
            raise
        _finish(leases, key, token, True, task, request.id)
        return result

    return run_once


def _finish(leases: Leases, key: str, token: str | None, succeeded: bool, task: Any, task_id: str) -> None:
    try:
        leases.release(key, token, succeeded)
    except StoreUnavailable:
        if succeeded:
            logger.warning(
                "Task %s[%s] succeeded but the dedupe store did not record it; a redelivery of its "
                "Pulse message would run it again",
                task.name,
                task_id,
            )
