"""Real-shaped Taskcluster task events, for tests and benchmarks."""

from __future__ import annotations

import base64
import uuid
from typing import Any


def taskcluster_routing_key(
    task_id: str,
    *,
    run_id: int = 0,
    worker_group: str = "mdc2",
    worker_id: str = "t-linux-1",
    provisioner_id: str = "releng-hardware",
    worker_type: str = "gecko-t-linux",
    scheduler_id: str = "gecko-level-3",
    task_group_id: str = "EJAo7mQyRqS-jmzebhceFA",
) -> str:
    """Return the primary routing key of a Taskcluster task event."""
    return (
        f"primary.{task_id}.{run_id}.{worker_group}.{worker_id}.{provisioner_id}."
        f"{worker_type}.{scheduler_id}.{task_group_id}._"
    )


def slug() -> str:
    """Return a Taskcluster-style 22-character task id."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def taskcluster_message(state: str = "completed", **fields: Any) -> tuple[str, dict[str, Any]]:
    """Return ``(routing key, body)`` of a task-``state`` event shaped like the real ones."""
    task_id = fields.pop("task_id", None) or slug()
    key = taskcluster_routing_key(task_id, **fields)
    _, _, _, worker_group, worker_id, provisioner_id, worker_type, scheduler_id, group, _ = key.split(".")
    body = {
        "version": 1,
        "runId": fields.get("run_id", 0),
        "workerGroup": worker_group,
        "workerId": worker_id,
        "status": {
            "taskId": task_id,
            "provisionerId": provisioner_id,
            "workerType": worker_type,
            "taskQueueId": f"{provisioner_id}/{worker_type}",
            "schedulerId": scheduler_id,
            "projectId": "none",
            "taskGroupId": group,
            "deadline": "2019-06-27T18:07:13.543Z",
            "expires": "2020-06-25T18:07:13.543Z",
            "retriesLeft": 5,
            "state": state,
            "runs": [
                {
                    "runId": fields.get("run_id", 0),
                    "state": state,
                    "reasonCreated": "scheduled",
                    "reasonResolved": state,
                    "workerGroup": worker_group,
                    "workerId": worker_id,
                    "takenUntil": "2019-06-26T19:47:48.234Z",
                    "scheduled": "2019-06-26T19:26:10.905Z",
                    "started": "2019-06-26T19:27:48.307Z",
                    "resolved": "2019-06-26T19:36:10.521Z",
                }
            ],
        },
    }
    return key, body
