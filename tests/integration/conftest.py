"""Fixtures that need the local RabbitMQ: skipped without it on a laptop, a failure in CI."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import kombu.pools
import pytest

from pulse_celery.testing import PulseLikeBroker, port_open

from .harness import ROOT, CeleryVhost

TASK_COMPLETED = "exchange/taskcluster-queue/v1/task-completed"
TASK_FAILED = "exchange/taskcluster-queue/v1/task-failed"


@pytest.fixture(scope="session", autouse=True)
def rabbitmq() -> None:
    """Require the local RabbitMQ: in CI its absence fails the run instead of skipping."""
    if port_open(5672):
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


@pytest.fixture(scope="session")
def tls_listener() -> None:
    """The local RabbitMQ's TLS listener on 127.0.0.1:5671, made by scripts/rabbitmq-tls.sh if missing.

    The script restarts RabbitMQ the first time, so it runs before any test of the session
    that uses TLS (``.ci/run`` runs it even earlier).
    """
    if not port_open(5671):
        subprocess.run([str(ROOT / "scripts" / "rabbitmq-tls.sh")], check=True, timeout=300)
    assert port_open(5671), "no TLS listener on 127.0.0.1:5671 after scripts/rabbitmq-tls.sh"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that run over TLS (``pulse`` parametrized with "tls") so ``-m tls`` selects them."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("pulse") == "tls":
            item.add_marker(pytest.mark.tls)


@pytest.fixture
def pulse(request: pytest.FixtureRequest) -> Iterator[PulseLikeBroker]:
    """A Pulse-like vhost and user (Guardian's permissions) with Taskcluster's exchanges.

    Parametrize it indirectly with ``"plain"`` or ``"tls"``: under TLS the app connects to
    ``amqps://localhost:5671`` and verifies the certificate and host name against the test CA.
    """
    tls = getattr(request, "param", "plain") == "tls"
    if tls:
        request.getfixturevalue("tls_listener")
    broker = PulseLikeBroker(tls=tls).setup([TASK_COMPLETED, TASK_FAILED])
    yield broker
    broker.teardown()


@pytest.fixture
def celery_broker() -> Iterator[CeleryVhost]:
    vhost = CeleryVhost()
    yield vhost
    vhost.delete()
