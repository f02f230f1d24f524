"""A test app for the horizontal-scale tests: one named Pulse queue, a task that records who ran it.

RECORD: JSON-lines file this worker's task appends
{"taskId": ..., "ingest": <worker that took it from Pulse>, "executor": <worker that ran it>}.
The ingesting worker is the task message's ``origin``, which pulse_celery sets to the
hostname of the worker that consumed the Pulse message; the executor is ``request.hostname``.
ACK_POLICY: the binding's ack policy. PULSE_PREFETCH_COUNT: pulse_prefetch_count.
"""

import json
import os

from celery import Celery

from pulse_celery import pulse_binding, pulse_message

app = Celery("scale", broker=os.environ["CELERY_BROKER_URL"])
app.conf.pulse_url = os.environ["PULSE_URL"]
app.conf.pulse_prefetch_count = int(os.environ.get("PULSE_PREFETCH_COUNT", "200"))
app.conf.worker_prefetch_multiplier = int(os.environ.get("PREFETCH_MULTIPLIER", "4"))
RECORD = os.environ.get("RECORD", os.devnull)


@pulse_binding(
    "exchange/taskcluster-queue/v1/task-completed",
    "primary.#",
    queue="scale",
    ack=os.environ.get("ACK_POLICY", "enqueue"),
)
@app.task(bind=True, acks_late=True)
def handle(self, payload):
    meta = pulse_message(self.request)
    line = {
        "taskId": payload["status"]["taskId"],
        "ingest": self.request.origin,
        "executor": self.request.hostname,
        "queue": meta.queue if meta else None,
        "redelivered": meta.redelivered if meta else None,
    }
    with open(RECORD, "a") as f:
        f.write(json.dumps(line) + "\n")
