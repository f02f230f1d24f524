"""A test app whose Pulse password comes from a provider reading a file the test rewrites.

PASSWORD_FILE: the file holding the current password (pulse_credentials reads it on every
connect). PULSE_RECYCLE_INTERVAL (read by the settings): recycle the connection every so many
seconds. RECORD, TASK_SECONDS, ACK_POLICY: as in faults_app.
"""

import json
import os
import time
from urllib.parse import unquote, urlsplit

from celery import Celery

from pulse_celery import pulse_binding, pulse_message

app = Celery("rotation", broker=os.environ["CELERY_BROKER_URL"])
app.conf.pulse_url = os.environ["PULSE_URL"]  # names the user (and a password the provider overrides)
app.conf.pulse_heartbeat = 10
app.conf.pulse_credentials = "rotation_app:credentials"
RECORD = os.environ["RECORD"]
SECONDS = float(os.environ.get("TASK_SECONDS", "0"))
USER = unquote(urlsplit(os.environ["PULSE_URL"]).username or "")


def credentials():
    """Return the Pulse user and the password the test wrote last."""
    with open(os.environ["PASSWORD_FILE"]) as f:
        return USER, f.read().strip()


@pulse_binding(
    "exchange/taskcluster-queue/v1/task-completed",
    "primary.#",
    queue="rotation",
    ack=os.environ.get("ACK_POLICY", "enqueue"),
)
@app.task(acks_late=True, reject_on_worker_lost=True)
def handle(payload):
    time.sleep(SECONDS)
    meta = pulse_message()
    with open(RECORD, "a") as f:
        f.write(json.dumps({"event": "done", "id": payload["id"], "redelivered": meta.redelivered}) + "\n")
