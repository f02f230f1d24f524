"""A test app whose behaviour the fault tests steer through the environment.

RECORD: JSON-lines file; the task appends {"event": "start"|"done", "id": ..., ...}.
TASK_SECONDS: how long each task sleeps between start and done.
A payload with "crash" kills the pool process running it, every time; "crash_first" only on
the message's first delivery.
ACK_POLICY: the binding's ack policy. ANONYMOUS=1: bind through an anonymous queue.
DEDUPE=1: the binding dedupes (store: PULSE_DEDUPE_URL).
"""

import json
import os
import time

from celery import Celery

from pulse_celery import pulse_binding, pulse_message

app = Celery("faults", broker=os.environ["CELERY_BROKER_URL"])
app.conf.pulse_url = os.environ["PULSE_URL"]
app.conf.pulse_heartbeat = float(os.environ.get("PULSE_HEARTBEAT", "10"))
app.conf.pulse_connect_timeout = float(os.environ.get("PULSE_CONNECT_TIMEOUT", "30"))
app.conf.pulse_max_deliveries = int(os.environ.get("PULSE_MAX_DELIVERIES", "5"))
app.conf.pulse_queue_warn_depth = int(os.environ.get("PULSE_QUEUE_WARN_DEPTH", "1000"))
app.conf.pulse_depth_check_interval = float(os.environ.get("PULSE_DEPTH_CHECK_INTERVAL", "30"))
app.conf.worker_prefetch_multiplier = int(os.environ.get("PREFETCH_MULTIPLIER", "4"))
if os.environ.get("BROKER_CONFIRM_PUBLISH"):
    # What celery#5410 advises; pulse_celery must still collect its confirms asynchronously.
    app.conf.broker_transport_options = {"confirm_publish": True}
RECORD = os.environ["RECORD"]
SECONDS = float(os.environ.get("TASK_SECONDS", "0"))
QUEUE = None if os.environ.get("ANONYMOUS") else "faults"
EXCHANGE = os.environ.get("EXCHANGE", "exchange/taskcluster-queue/v1/task-completed")


def record(event, payload, **extra):
    meta = pulse_message()  # None when the task was sent the ordinary Celery way
    line = {
        "event": event,
        "id": payload.get("id"),
        "redelivered": meta.redelivered if meta else None,
        "routes": list(meta.routes) if meta else None,
        "pid": os.getpid(),
        "at": time.time(),
        **extra,
    }
    with open(RECORD, "a") as f:
        f.write(json.dumps(line) + "\n")


DEDUPE = True if os.environ.get("DEDUPE") else None


@pulse_binding(EXCHANGE, "primary.#", queue=QUEUE, ack=os.environ.get("ACK_POLICY", "enqueue"), dedupe=DEDUPE)
@app.task(acks_late=True, reject_on_worker_lost=True)
def handle(payload):
    record("start", payload)
    if payload.get("crash") or (payload.get("crash_first") and not pulse_message().redelivered):
        os._exit(1)  # the pool process dies mid-task, as with a segfault or the OOM killer
    time.sleep(SECONDS)
    record("done", payload)
