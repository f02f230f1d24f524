"""A real worker refuses a Pulse server whose certificate is not for the host it asked for.

The local RabbitMQ's TLS listener (scripts/rabbitmq-tls.sh) presents a certificate for
``localhost`` and ``127.0.0.1``, signed by the test CA. A proxy on 127.0.0.2 forwards to it:
to a worker that connects to ``amqps://127.0.0.2``, that is a certificate for another host.
The worker must refuse it (no AMQP connection, no queue), say why with the fix, keep running
its Celery tasks, and keep retrying.
"""

from __future__ import annotations

from collections import Counter

import pytest

from pulse_celery.testing import TLS_CA_CERTS

from .harness import user_connections_tls, wait_until
from .proxy import TcpProxy
from .test_acks import done_ids, faults_worker, publish_ids
from .test_worker_step import send_celery_task


@pytest.fixture
def other_host_proxy(tls_listener):
    """127.0.0.2:<port> -> the TLS listener, whose certificate names only localhost and 127.0.0.1."""
    proxy = TcpProxy(target=("127.0.0.1", 5671), listen="127.0.0.2")
    yield proxy
    proxy.close()


@pytest.mark.rabbitmq
@pytest.mark.tls
def test_a_certificate_for_another_host_is_refused_by_a_real_worker(
    pulse, celery_broker, tmp_path, other_host_proxy
):
    worker = faults_worker(pulse, celery_broker, tmp_path, PULSE_SSL_CA_CERTS=TLS_CA_CERTS)
    worker.env["PULSE_URL"] = other_host_proxy.url(pulse.user, pulse.password, pulse.vhost, tls=True)
    assert worker.env["PULSE_URL"].startswith("amqps://") and "@127.0.0.2:" in worker.env["PULSE_URL"]
    worker.start(wait_for="ready.")
    try:
        # The refusal says what is wrong, for which host, and what to check.
        assert worker.wait_for_log("certificate is not trusted for '127.0.0.2'", timeout=30), worker.log()
        assert "IP address mismatch" in worker.log() or "doesn't match" in worker.log(), worker.log()[-2000:]
        assert "pulse_ssl_ca_certs" in worker.log()
        # It is refused before any AMQP: the broker never sees the user, the queue is never made.
        assert user_connections_tls(pulse.user) == []
        assert pulse.queue_counts(f"queue/{pulse.user}/faults") is None
        # The worker stays up, runs its Celery tasks, and keeps trying.
        send_celery_task(celery_broker, {"id": 99})
        assert wait_until(lambda: done_ids(tmp_path) == Counter({99: 1}), timeout=30), worker.log()
        assert worker.wait_for_log("certificate is not trusted", timeout=60, count=2), worker.log()[-2000:]
        assert worker.alive
    finally:
        worker.stop()
    assert pulse.password not in worker.log()


@pytest.mark.rabbitmq
@pytest.mark.tls
@pytest.mark.parametrize("pulse", ["tls"], indirect=True)
def test_a_private_ca_is_refused_unless_pulse_ssl_ca_certs_names_it(pulse, celery_broker, tmp_path):
    # Without pulse_ssl_ca_certs the system's CAs are used, and they do not know the test CA.
    worker = faults_worker(pulse, celery_broker, tmp_path)
    del worker.env["PULSE_SSL_CA_CERTS"]
    worker.start(wait_for="ready.")
    try:
        assert worker.wait_for_log("certificate is not trusted for 'localhost'", timeout=30), worker.log()
        assert user_connections_tls(pulse.user) == []
    finally:
        worker.stop()
    # With it, the same worker connects and consumes over TLS.
    worker.env["PULSE_SSL_CA_CERTS"] = TLS_CA_CERTS
    worker.start()
    try:
        publish_ids(pulse, range(20))
        assert wait_until(lambda: set(done_ids(tmp_path)) == set(range(20)), timeout=60), worker.log()
    finally:
        worker.stop()
