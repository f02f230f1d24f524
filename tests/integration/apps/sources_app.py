"""A test app that consumes two Pulse sources: the default one (PULSE_URL) and "community".

COMMUNITY_URL: the community source's URL, credentials in it; COMMUNITY_VHOST its vhost.
Both sources bind task-completed ``primary.#`` into a queue named ``builds`` (each under its
own user). RECORD: JSON lines {"event": "done", "source": ..., "id": ...}.
"""

import json
import os

from celery import Celery

from pulse_celery import pulse_binding, pulse_message

TASK_COMPLETED = "exchange/taskcluster-queue/v1/task-completed"

app = Celery("sources", broker=os.environ["CELERY_BROKER_URL"])
app.conf.pulse_url = os.environ["PULSE_URL"]
app.conf.pulse_heartbeat = 10
app.conf.pulse_queue_type = "classic"
app.conf.pulse_sources = {
    "community": {"url": os.environ["COMMUNITY_URL"], "heartbeat": 10},
}
RECORD = os.environ["RECORD"]
ACK = os.environ.get("ACK_POLICY", "enqueue")


def record(source, payload):
    meta = pulse_message()
    with open(RECORD, "a") as f:
        queue = meta.queue if meta else None
        line = {"event": "done", "source": source, "id": payload.get("id"), "queue": queue}
        f.write(json.dumps(line) + "\n")


@pulse_binding(TASK_COMPLETED, "primary.#", queue="builds", ack=ACK)
@app.task(acks_late=True)
def on_firefoxci(payload):
    record("default", payload)


@pulse_binding(TASK_COMPLETED, "primary.#", queue="builds", ack=ACK, source="community")
@app.task(acks_late=True)
def on_community(payload):
    record("community", payload)
