"""What you need to test a Pulse consumer, with a broker or without one.

Without a broker:

* :class:`FakePulseConnection`: :class:`~pulse_celery.PulseConnection`'s API in process;
  ``publish()`` delivers to your callbacks through the real callback runner.
* :func:`deliver` and :func:`apply_task`: run a bound Celery task in process with its Pulse
  metadata, so ``pulse_message()`` and typed payloads work in a unit test.
* :func:`taskcluster_message`: a real-shaped Taskcluster task event.

With a local RabbitMQ (``rabbitmqctl`` on this machine):

* :class:`PulseLikeBroker`: a vhost and a user with exactly Pulse Guardian's permissions;
* :class:`CeleryVhost`: a fresh vhost for a Celery broker;
* :func:`publish`: send a Pulse-shaped message (JSON, CC routes);
* :class:`Worker`: a real ``celery worker`` process, with its log;
* :class:`RabbitNode` and :class:`RabbitCluster`: more RabbitMQ nodes on this machine (alone,
  or three joined into a cluster), to stop, kill and fail on purpose.
"""

from __future__ import annotations

from ..pulse.publish import publish
from .broker import TLS_CA_CERTS, CeleryVhost, PulseLikeBroker, queue_counts, rabbitmqctl
from .cluster import QueueInfo, RabbitCluster, RabbitNode, port_open
from .fake import FakePulseConnection, FakeQueue
from .messages import slug, taskcluster_message, taskcluster_routing_key
from .processes import Worker, children, children_rss_kb, rss_kb, wait_until
from .tasks import apply_task, deliver

#: The name the tests have always used.
_rabbitmqctl = rabbitmqctl

__all__ = [
    "TLS_CA_CERTS",
    "CeleryVhost",
    "FakePulseConnection",
    "FakeQueue",
    "PulseLikeBroker",
    "QueueInfo",
    "RabbitCluster",
    "RabbitNode",
    "Worker",
    "apply_task",
    "children",
    "children_rss_kb",
    "deliver",
    "port_open",
    "publish",
    "queue_counts",
    "rabbitmqctl",
    "rss_kb",
    "slug",
    "taskcluster_message",
    "taskcluster_routing_key",
    "wait_until",
]
