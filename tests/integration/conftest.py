"""Fixtures that need the local RabbitMQ: skipped without it on a laptop, a failure in CI."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import kombu.pools
import pytest

from pulse_celery.testing import PulseLikeBroker

from .harness import CeleryVhost

TASK_COMPLETED = "exchange/taskcluster-queue/v1/task-completed"
TASK_FAILED = "exchange/taskcluster-queue/v1/task-failed"


def _rabbitmq_reachable() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def rabbitmq() -> None:
    """Require the local RabbitMQ: in CI its absence fails the run instead of skipping."""
    if _rabbitmq_reachable():
        return
    if os.environ.get("CI"):
        pytest.fail("RabbitMQ is not reachable on 127.0.0.1:5672, and CI must run these tests")
    pytest.skip("RabbitMQ is not reachable on 127.0.0.1:5672 (start it: rabbitmq-server -detached)")


@pytest.fixture(autouse=True)
def _close_broadcast_connections() -> Iterator[None]:
    """Close the connections ``app.control.broadcast`` leaves open after each test.

    Celery's remote control (``pulse_celery.control``, ``celery inspect``) publishes and reads
    replies through kombu's process-wide connection and producer pools, which ``app.close()``
    does not touch: without this, two sockets per broadcasting test stay open until the
    interpreter exits and print "ResourceWarning: unclosed socket" there.
    """
    yield
    kombu.pools.reset()


@pytest.fixture
def pulse() -> Iterator[PulseLikeBroker]:
    """A Pulse-like vhost and user (Guardian's permissions) with Taskcluster's exchanges."""
    broker = PulseLikeBroker().setup([TASK_COMPLETED, TASK_FAILED])
    yield broker
    broker.teardown()


@pytest.fixture
def celery_broker() -> Iterator[CeleryVhost]:
    vhost = CeleryVhost()
    yield vhost
    vhost.delete()
