"""The embedded demo: a whole Pulse-to-Celery run in one process, with no broker at all.

Both Pulse and the Celery broker are kombu's in-memory transport. A real Celery worker
(solo pool) starts with the Pulse step; the bundled, real-shaped Taskcluster task events
are published to their exchanges; task-completed events go through ``enqueue`` (a task
message on the Celery broker, then the Pulse ack) and task-failed events through
``complete`` (run here, acked when done). The demo stops once every message is handled
and shows that the Pulse queues are empty.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from importlib import resources
from typing import Any

from celery import Celery
from celery.signals import worker_ready
from kombu import Connection, Exchange

from ..bindings import pulse_binding
from ..pulse.publish import publish
from ..request import pulse_message

COMPLETED = "exchange/taskcluster-queue/v1/task-completed"
FAILED = "exchange/taskcluster-queue/v1/task-failed"

app = Celery("pulse_celery_demo", broker="memory://localhost//")
app.conf.update(
    pulse_url="memory://",
    pulse_user="demo",
    worker_hijack_root_logger=False,
    worker_redirect_stdouts=False,
    broker_connection_retry_on_startup=True,
)

#: (task, Pulse metadata, payload) of every invocation, in order.
handled: list[tuple[str, Any, dict[str, Any]]] = []
_out: Callable[[str], None] = print


@pulse_binding(COMPLETED, "primary.#", queue="demo-builds")
@app.task(bind=True, name="demo.on_task_completed")
def on_task_completed(self: Any, payload: dict[str, Any]) -> None:
    """Enqueue policy: this runs from a task message on the Celery broker."""
    _report("on_task_completed", pulse_message(self.request), payload)


@pulse_binding(FAILED, "primary.#", queue="demo-failures", ack="complete")
@app.task(bind=True, acks_late=True, name="demo.on_task_failed")
def on_task_failed(self: Any, payload: dict[str, Any]) -> None:
    """Complete policy: this runs straight from the Pulse delivery; acked when it returns."""
    _report("on_task_failed", pulse_message(self.request), payload)


def _report(task: str, meta: Any, payload: dict[str, Any]) -> None:
    status = payload["status"]
    routes = ", ".join(r.removeprefix("route.")[:48] for r in meta.routes) or "-"
    _out(
        f"  {task:<18} task {status['taskId']} run {payload['runId']} on {status['workerType']:<20} "
        f"{status['state']:<9} redelivered={meta.redelivered!s:<5} routes: {routes}"
    )
    handled.append((task, meta, payload))


def sample_messages() -> Iterator[dict[str, Any]]:
    """Yield the bundled Taskcluster events: exchange, routing_key, routes, body."""
    text = resources.files("pulse_celery").joinpath("data/taskcluster-sample.jsonl").read_text()
    for line in text.splitlines():
        if line.strip():
            yield json.loads(line)


def _memory() -> Connection:
    return Connection(transport="memory")


def _queue_depth(name: str) -> int:
    with _memory() as conn:
        return conn.default_channel.queue_declare(name, passive=True).message_count


def run(out: Callable[[str], None] = print, timeout: float = 60.0) -> bool:
    """Run the demo; return True when every message was handled once and the queues are empty."""
    global _out
    _out = out
    handled.clear()
    messages = list(sample_messages())
    ready = threading.Event()
    worker_ready.connect(lambda **_: ready.set(), weak=False)

    with _memory() as conn:  # the publishers' exchanges exist before any consumer
        for name in (COMPLETED, FAILED):
            Exchange(name, type="topic", durable=True).declare(channel=conn.default_channel)

    def publish_then_stop() -> None:
        if not ready.wait(timeout):
            out("worker did not start in time")
        else:
            with _memory() as conn:
                for m in messages:
                    publish(conn, m["exchange"], m["routing_key"], m["body"], routes=m["routes"])
            out(f"published {len(messages)} Taskcluster task events to 2 Pulse exchanges\n")
            deadline = time.monotonic() + timeout
            while len(handled) < len(messages) and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.5)  # let the last acks go out
        os.kill(os.getpid(), signal.SIGTERM)  # warm shutdown, as a user's Ctrl-C

    out("pulse-celery demo: Pulse and the Celery broker are both kombu's in-memory transport\n")
    threading.Thread(target=publish_then_stop, daemon=True).start()
    worker = app.Worker(
        pool="solo",
        concurrency=1,
        loglevel="WARNING",
        quiet=True,
        without_heartbeat=True,
        without_mingle=True,
        without_gossip=True,
    )
    worker.start()

    counts = {
        task: sum(1 for h in handled if h[0] == task) for task in ("on_task_completed", "on_task_failed")
    }
    unique = len({h[2]["status"]["taskId"] + str(h[2]["runId"]) for h in handled})
    depths = {q: _queue_depth(q) for q in ("queue/demo/demo-builds", "queue/demo/demo-failures")}
    out(
        f"\n{len(messages)} messages published, {len(handled)} task invocations "
        f"({counts['on_task_completed']} via enqueue, {counts['on_task_failed']} via complete), "
        f"{unique} distinct events"
    )
    out("Pulse queues after shutdown (messages left, acked ones are gone): " + json.dumps(depths))
    ok = len(handled) == len(messages) == unique and not any(depths.values())
    out("demo OK" if ok else "demo FAILED")
    return ok
