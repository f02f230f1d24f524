"""A small app for the command-line tests: two named queues, one anonymous, two exchanges.

PULSE_URL: the Pulse URL. EXTRA_EXCHANGE: bind one more exchange (to test a missing one).
"""

import os

from celery import Celery

from pulse_celery import pulse_binding

app = Celery("cli_app", broker="memory://")
app.conf.pulse_url = os.environ["PULSE_URL"]

COMPLETED = "exchange/taskcluster-queue/v1/task-completed"
FAILED = "exchange/taskcluster-queue/v1/task-failed"


@pulse_binding(COMPLETED, "primary.#", queue="builds")
@pulse_binding(FAILED, "primary.#", queue="builds")
@app.task
def on_build(payload):
    return payload


@pulse_binding(COMPLETED, "route.index.#", queue="indexed", ack="complete")
@app.task(acks_late=True)
def on_indexed(payload):
    return payload


@pulse_binding(os.environ.get("EXTRA_EXCHANGE", COMPLETED), "primary.*.0.#", queue=None)
@app.task
def on_live(payload):
    return payload
