"""faults_app on a RabbitMQ cluster: the same task, with a Celery queue that survives a node.

CELERY_QUEUE_TYPE=quorum makes Celery's own queues quorum queues (replicated), for a Celery
broker on the cluster: a classic queue lives on one node and is gone while that node is.
"""

import os

from faults_app import app, handle

if os.environ.get("CELERY_QUEUE_TYPE"):
    app.conf.task_default_queue_type = os.environ["CELERY_QUEUE_TYPE"]

__all__ = ["app", "handle"]
