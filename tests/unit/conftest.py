"""Fixtures shared by the unit tests: a throw-away Celery app and a real Taskcluster message."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from celery import Celery


@dataclass(frozen=True)
class RecordedMessage:
    exchange: str
    routing_key: str
    cc: tuple[str, ...]
    body: bytes


#: A task-completed message from Treeherder's public test data (see PULSE.md).
TASK_COMPLETED = RecordedMessage(
    exchange="exchange/taskcluster-queue/v1/task-completed",
    routing_key=(
        "primary.B3EheQ-IQ5aPzw34KS_a6g.0.mdc2.t-mojave-r7-153.releng-hardware.gecko-t-osx-1014."
        "gecko-level-3.EJAo7mQyRqS-jmzebhceFA._"
    ),
    cc=("route.tc-treeherder.v2.autoland.918d7c84da371bda26460fb4b50f161d32107880.88554",),
    body=(
        b'{"version":1,"runId":0,"workerGroup":"mdc2","workerId":"t-mojave-r7-153","status":'
        b'{"taskId":"B3EheQ-IQ5aPzw34KS_a6g","provisionerId":"releng-hardware","workerType":'
        b'"gecko-t-osx-1014","schedulerId":"gecko-level-3","taskGroupId":"EJAo7mQyRqS-jmzebhceFA",'
        b'"deadline":"2019-06-27T18:07:13.543Z","expires":"2020-06-25T18:07:13.543Z","retriesLeft":5,'
        b'"state":"completed","runs":[{"runId":0,"state":"completed","reasonCreated":"scheduled",'
        b'"reasonResolved":"completed","workerGroup":"mdc2","workerId":"t-mojave-r7-153",'
        b'"takenUntil":"2019-06-26T19:47:48.234Z","scheduled":"2019-06-26T19:26:10.905Z",'
        b'"started":"2019-06-26T19:27:48.307Z","resolved":"2019-06-26T19:36:10.521Z"}]}}'
    ),
)


@pytest.fixture
def task_completed() -> RecordedMessage:
    return TASK_COMPLETED


@pytest.fixture
def app() -> Celery:
    """A Celery app on the in-memory broker, not finalized and not the current app."""
    return Celery("unit", broker="memory://", set_as_current=False)
