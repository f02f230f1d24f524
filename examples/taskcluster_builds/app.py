"""Record every resolved Taskcluster task of one worker type, as a Pulse consumer in Celery.

Run it:  celery -A app worker            (PULSE_USERNAME / PULSE_PASSWORD from your Pulse account)

Two bindings feed one queue, ``queue/<you>/builds``: task-completed events matched by a
hand-written routing-key pattern, and task-failed events through the Taskcluster client's
own exchange reference. Each event becomes one ``on_task_resolved`` call that appends a line
to a JSON-lines log (BUILDS_LOG), with where the event came from.
"""

import json
import os

import taskcluster
from celery import Celery

from pulse_celery import pulse_binding, pulse_message

WORKER_TYPE = os.environ.get("BUILDS_WORKER_TYPE", "gecko-t-linux")
LOG = os.environ.get("BUILDS_LOG", "resolved-tasks.jsonl")

app = Celery("builds", broker=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//"))
# Pulse: production (amqps://pulse.mozilla.org:5671) unless PULSE_URL says otherwise;
# credentials from PULSE_USERNAME / PULSE_PASSWORD.
app.conf.pulse_ack_policy = os.environ.get("BUILDS_ACK_POLICY", "enqueue")

queue_events = taskcluster.QueueEvents({"rootUrl": "https://firefox-ci-tc.services.mozilla.com"})


@pulse_binding(
    "exchange/taskcluster-queue/v1/task-completed",
    f"primary.*.*.*.*.*.{WORKER_TYPE}.#",
    queue="builds",
)
@pulse_binding(queue_events.taskFailed({"workerType": WORKER_TYPE}), queue="builds")
@app.task(bind=True, acks_late=True)
def on_task_resolved(self, payload):
    """Append one line per resolved task; safe to run twice for the same event."""
    message = pulse_message(self.request)
    status = payload["status"]
    record = {
        "taskId": status["taskId"],
        "runId": payload["runId"],
        "state": status["state"],
        "workerType": status["workerType"],
        "exchange": message.exchange,
        "routingKey": message.routing_key,
        "routes": list(message.routes),
        "redelivered": message.redelivered,
        "pid": os.getpid(),
    }
    with open(LOG, "a") as log:  # one short line per write: appends from processes do not interleave
        log.write(json.dumps(record) + "\n")
