"""A test app with two named queues and an anonymous one, for queue isolation, pulse_queues,
binding pruning and the pulse_connected signal.

``queue/<user>/builds`` <- BUILDS_EXCHANGE ``primary.build.#`` (and EXTRA_EXCHANGE ``primary.#``
when set); ``queue/<user>/tests`` <- task-completed ``primary.test.#``; an anonymous queue
<- task-failed ``primary.#``. PULSE_QUEUES (JSON) sets per-queue settings.
RECORD: JSON lines; each task appends {"event": "done", "queue": ..., "id": ...}, and each
pulse_connected signal {"event": "connected", "source", "first", "reconnect", "queues"}.
"""

import json
import os

from celery import Celery

from pulse_celery import pulse_binding, pulse_connected

TASK_COMPLETED = "exchange/taskcluster-queue/v1/task-completed"
TASK_FAILED = "exchange/taskcluster-queue/v1/task-failed"
BUILDS_EXCHANGE = os.environ.get("BUILDS_EXCHANGE", TASK_COMPLETED)
EXTRA_EXCHANGE = os.environ.get("EXTRA_EXCHANGE")

app = Celery("queues", broker=os.environ["CELERY_BROKER_URL"])
app.conf.pulse_url = os.environ["PULSE_URL"]
app.conf.pulse_heartbeat = 10
app.conf.pulse_queue_type = "classic"
RECORD = os.environ.get("RECORD", os.devnull)


def record(**fields):
    with open(RECORD, "a") as f:
        f.write(json.dumps(fields) + "\n")


@pulse_connected.connect
def on_connected(sender, source, queues, first, reconnect, **kwargs):
    record(
        event="connected",
        source=source,
        first=first,
        reconnect=reconnect,
        queues=[[q.name, q.anonymous] for q in queues],
    )


@pulse_binding(BUILDS_EXCHANGE, "primary.build.#", queue="builds")
@app.task
def on_build(payload):
    record(event="done", queue="builds", id=payload.get("id"))


if EXTRA_EXCHANGE:
    pulse_binding(EXTRA_EXCHANGE, "primary.#", queue="builds")(on_build)


@pulse_binding(TASK_COMPLETED, "primary.test.#", queue="tests")
@app.task
def on_test(payload):
    record(event="done", queue="tests", id=payload.get("id"))


@pulse_binding(TASK_FAILED, "primary.#", queue=None)
@app.task
def on_failure(payload):
    record(event="done", queue="anonymous", id=payload.get("id"))
