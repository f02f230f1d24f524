"""The Celery app the benchmark runs in real ``celery worker`` processes (see run.py).

Steered by the environment:

* ``CELERY_BROKER_URL``: the Celery broker (a fresh vhost of the run).
* ``BENCH_POLICY``: ``enqueue`` or ``complete`` binds the task to the Pulse queue
  ``queue/<user>/<BENCH_QUEUE>`` with that ack policy; ``none`` (default) makes a plain
  Celery app with no Pulse binding at all (Celery's own throughput).
* ``PULSE_URL``: the Pulse-like broker, with credentials.
* ``BENCH_QUEUE_TYPE``, ``BENCH_PREFETCH_COUNT``, ``BENCH_CELERY_QUEUE_TYPE``:
  ``pulse_queue_type``, ``pulse_prefetch_count`` and ``task_default_queue_type``; unset, the
  library's and Celery's defaults apply.
* ``BENCH_RECORD``: if set, the task appends ``time.time() - payload["bench_published_at"]``
  (seconds, publish to task start) to this file, one line per task.
"""

from __future__ import annotations

import os
import time

from celery import Celery

from pulse_celery import pulse_binding

EXCHANGE = "exchange/taskcluster-queue/v1/task-completed"
POLICY = os.environ.get("BENCH_POLICY", "none")
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
RECORD = os.environ.get("BENCH_RECORD")

app = Celery("bench_app", broker=os.environ["CELERY_BROKER_URL"])
if "BENCH_CELERY_QUEUE_TYPE" in os.environ:
    app.conf.task_default_queue_type = os.environ["BENCH_CELERY_QUEUE_TYPE"]
if POLICY != "none":
    app.conf.pulse_url = os.environ["PULSE_URL"]
    if "BENCH_QUEUE_TYPE" in os.environ:
        app.conf.pulse_queue_type = os.environ["BENCH_QUEUE_TYPE"]
    if "BENCH_PREFETCH_COUNT" in os.environ:
        app.conf.pulse_prefetch_count = int(os.environ["BENCH_PREFETCH_COUNT"])


def noop(payload: dict) -> None:
    """Do nothing; under BENCH_RECORD, note how long ago the message was published."""
    if RECORD:
        published = payload.get("bench_published_at")
        if published is not None:
            latency = time.time() - published
            with open(RECORD, "a") as f:
                f.write(f"{latency:.6f}\n")


task = app.task(name="bench_app.noop", acks_late=True)(noop)
if POLICY in ("enqueue", "complete"):
    task = pulse_binding(EXCHANGE, "primary.#", queue=QUEUE, ack=POLICY)(task)
