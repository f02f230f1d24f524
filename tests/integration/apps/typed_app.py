"""A test app whose task takes Taskcluster task-completed payloads as a dataclass.

RECORD: JSON-lines file; the task appends what it received. ACK_POLICY: the binding's policy.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from celery import Celery

from pulse_celery import pulse_binding, pulse_message

app = Celery("typed", broker=os.environ["CELERY_BROKER_URL"])
app.conf.pulse_url = os.environ["PULSE_URL"]
RECORD = os.environ["RECORD"]


@dataclass
class Run:
    runId: int
    state: str


@dataclass
class Status:
    taskId: str
    state: str
    runs: list[Run]


@dataclass
class TaskCompleted:
    runId: int
    workerGroup: str
    workerId: str
    status: Status


@pulse_binding(
    "exchange/taskcluster-queue/v1/task-completed",
    "primary.#",
    queue="typed",
    ack=os.environ.get("ACK_POLICY", "enqueue"),
    payload=TaskCompleted,
)
@app.task(bind=True, acks_late=True)
def handle(self, payload):
    meta = pulse_message(self.request)
    key = meta.taskcluster if meta else None
    line = {
        "type": type(payload).__name__,
        "is_instance": isinstance(payload, TaskCompleted),
        "run_type": type(payload.status.runs[0]).__name__,
        "taskId": payload.status.taskId,
        "runId": payload.runId,
        "fields": dict(key.fields) if key else None,
        "routes": list(key.routes) if key else None,
    }
    with open(RECORD, "a") as f:
        f.write(json.dumps(line) + "\n")
