"""A test app with two Pulse queues, for the remote-control and metrics tests.

``queue/<user>/builds`` feeds ``control_app.on_build``, ``queue/<user>/tests`` feeds
``control_app.on_test``, both from task-completed events (``primary.#``, split by the routing
key's second word: ``primary.build...`` / ``primary.test...``).
RECORD: JSON-lines file; each task appends {"event": "start"|"done", "queue": ..., "id": ...}.
TASK_SECONDS: how long each task sleeps. ACK_POLICY: both bindings' ack policy.
"""

import json
import os
import time

from celery import Celery

from pulse_celery import pulse_binding

EXCHANGE = "exchange/taskcluster-queue/v1/task-completed"

app = Celery("control", broker=os.environ["CELERY_BROKER_URL"])
app.conf.pulse_url = os.environ["PULSE_URL"]
app.conf.pulse_heartbeat = float(os.environ.get("PULSE_HEARTBEAT", "10"))
app.conf.pulse_queue_type = os.environ.get("PULSE_QUEUE_TYPE", "classic")
app.conf.worker_prefetch_multiplier = int(os.environ.get("PREFETCH_MULTIPLIER", "4"))
RECORD = os.environ.get("RECORD", os.devnull)  # unset in `celery control` clients
SECONDS = float(os.environ.get("TASK_SECONDS", "0"))
ACK = os.environ.get("ACK_POLICY", "enqueue")


def record(event, queue, payload):
    with open(RECORD, "a") as f:
        f.write(json.dumps({"event": event, "queue": queue, "id": payload.get("id")}) + "\n")


@pulse_binding(EXCHANGE, "primary.build.#", queue="builds", ack=ACK)
@app.task(acks_late=True)
def on_build(payload):
    record("start", "builds", payload)
    time.sleep(SECONDS)
    record("done", "builds", payload)


@pulse_binding(EXCHANGE, "primary.test.#", queue="tests", ack=ACK)
@app.task(acks_late=True)
def on_test(payload):
    record("start", "tests", payload)
    time.sleep(SECONDS)
    record("done", "tests", payload)
