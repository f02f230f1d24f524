"""Split Pulse ingestion from task execution, and operate the ingest worker from the shell.

Two kinds of worker run this one app:

* ingest:  celery -A app worker -n ingest@%h -P solo -X celery
  consumes the Pulse queue ``queue/<you>/builds`` and puts one task message per event on the
  Celery queue ``builds`` (ack policy ``enqueue``: the Pulse message is acked once the Celery
  broker has confirmed the task message); ``-X celery`` leaves it no Celery queue to run
  tasks from. It serves Prometheus metrics on PULSE_METRICS_PORT (9808 by default here).
* execute: celery -A app worker -n execute@%h --no-pulse -Q builds
  runs the tasks and never talks to Pulse; add as many as the work needs.

``celery -A app control pulse_pause builds`` / ``pulse_resume builds`` / ``inspect
pulse_status`` then steer the ingest worker while the executors keep running.
"""

import json
import os
import time

from celery import Celery

from pulse_celery import pulse_binding, pulse_message

LOG = os.environ.get("BUILDS_LOG", "builds.jsonl")
#: Seconds each task takes, to make a backlog visible.
WORK_SECONDS = float(os.environ.get("WORK_SECONDS", "0.2"))

app = Celery(
    "ingest_execute", broker=os.environ.get("CELERY_BROKER_URL", "amqp://guest:guest@localhost:5672//")
)
# Pulse: PULSE_URL (and PULSE_USERNAME / PULSE_PASSWORD); production Pulse when unset.
app.conf.pulse_ack_policy = "enqueue"
app.conf.pulse_metrics_port = int(os.environ.get("PULSE_METRICS_PORT", "9808"))
# Run by the execute workers only: they consume the Celery queue "builds".
app.conf.task_routes = {"app.on_task_completed": {"queue": "builds"}}


@pulse_binding("exchange/taskcluster-queue/v1/task-completed", "primary.#", queue="builds")
@app.task(bind=True, acks_late=True)
def on_task_completed(self, payload):
    """Append one line per completed task, saying which worker ingested and which ran it."""
    message = pulse_message(self.request)
    time.sleep(WORK_SECONDS)
    record = {
        "taskId": payload.get("status", {}).get("taskId"),
        "routingKey": message.routing_key if message else None,
        "ingestedBy": self.request.origin,
        "ranOn": self.request.hostname,
    }
    with open(LOG, "a") as log:
        log.write(json.dumps(record) + "\n")
