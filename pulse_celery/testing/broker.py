"""A local RabbitMQ set up as Pulse: vhosts, a user with Pulse Guardian's permissions, queue depths.

* :class:`PulseLikeBroker` creates, with ``rabbitmqctl``, a vhost and a user restricted
  exactly as Pulse Guardian restricts one, plus the publishers' exchanges;
* :class:`CeleryVhost` is a fresh vhost to serve as a Celery broker;
* :func:`queue_counts` reads a queue's ready and unacknowledged messages.

They need ``rabbitmqctl`` on this machine and the right to run it (root, or the node's cookie).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import quote

from kombu import Connection, Exchange

#: The test CA that ``scripts/rabbitmq-tls.sh`` makes for the local TLS listener (127.0.0.1:5671).
TLS_DIR = os.environ.get("PULSE_CELERY_TLS_DIR", "/etc/rabbitmq/pulse-celery-tls")
#: That CA's PEM bundle: give it as ``ssl_ca_certs`` to trust the local TLS listener.
TLS_CA_CERTS = os.path.join(TLS_DIR, "ca.pem")


def rabbitmqctl(*args: str, node: str | None = None, timeout: float = 120) -> str:
    """Run ``rabbitmqctl -q ARGS`` on the local node, or on ``node`` (``-n``).

    RuntimeError with rabbitmqctl's message if it fails.
    """
    target = ["-n", node] if node else []
    result = subprocess.run(
        ["rabbitmqctl", "-q", *target, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        where = f" -n {node}" if node else ""
        raise RuntimeError(
            f"rabbitmqctl{where} {' '.join(args)} failed: {result.stderr.strip() or result.stdout}"
        )
    return result.stdout


def queue_counts(vhost: str, name: str, node: str | None = None) -> tuple[int, int] | None:
    """Return ``(ready, unacknowledged)`` for queue ``name`` in ``vhost``, or None if it does not exist."""
    out = rabbitmqctl(
        "list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged", node=node
    )
    for line in out.splitlines():
        parts = line.split("\t")
        if parts and parts[0] == name:
            return int(parts[1]), int(parts[2])
    return None


@dataclass
class PulseLikeBroker:
    """A vhost on a local RabbitMQ with a user that has exactly Pulse Guardian's permissions.

    ``admin_url`` (guest by default) declares the publishers' exchanges and publishes;
    ``user``/``password`` is what the app under test connects as. On another node than the
    main one (a :class:`~pulse_celery.testing.RabbitNode`), give its ``node`` name and
    ``port``; with ``failover_ports`` (a cluster's other nodes) :attr:`url` names every node
    in kombu's failover form and the admin connection fails over too.
    """

    vhost: str = field(default_factory=lambda: f"pulse-test-{uuid.uuid4().hex[:8]}")
    user: str = field(default_factory=lambda: f"alice{uuid.uuid4().hex[:6]}")
    #: Deliberately full of characters that must be URL-encoded.
    password: str = "p/ss:w@rd%?#"
    host: str = "127.0.0.1"
    port: int = 5672
    admin_user: str = "guest"
    admin_password: str = "guest"
    #: Connect the app over TLS (``amqps://localhost:5671``), verifying the certificate and the
    #: host name against :data:`TLS_CA_CERTS`, as a user of production Pulse does.
    tls: bool = False
    tls_port: int = 5671
    #: The node ``rabbitmqctl`` manages (``-n``); None: the local default node.
    node: str | None = None
    #: More ports of the same host (a cluster's other nodes), tried in turn after :attr:`port`.
    failover_ports: tuple[int, ...] = ()
    #: TLS ports of those nodes, likewise, after :attr:`tls_port`.
    failover_tls_ports: tuple[int, ...] = ()

    def _ctl(self, *args: str) -> str:
        return rabbitmqctl(*args, node=self.node)

    def setup(self, exchanges: Iterable[str] = ()) -> PulseLikeBroker:
        self._ctl("add_vhost", self.vhost)
        self._ctl("add_user", self.user, self.password)
        own = f"^(queue/{self.user}/.*|exchange/{self.user}/.*)"
        read = f"^(queue/{self.user}/.*|exchange/.*)"
        self._ctl("set_permissions", "-p", self.vhost, self.user, own, own, read)
        self._ctl("set_permissions", "-p", self.vhost, self.admin_user, ".*", ".*", ".*")
        with self.admin_connection() as conn:
            for name in exchanges:
                Exchange(name, type="topic", durable=True).declare(channel=conn.default_channel)
        return self

    def teardown(self) -> None:
        for args in (("delete_vhost", self.vhost), ("delete_user", self.user)):
            try:
                self._ctl(*args)
            except RuntimeError:
                pass

    @property
    def url(self) -> str:
        """The Pulse URL for the restricted user, credentials URL-encoded (``amqps://`` if :attr:`tls`)."""
        if self.tls:
            scheme, host, ports = "amqps", "localhost", (self.tls_port, *self.failover_tls_ports)
        else:
            scheme, host, ports = "amqp", self.host, (self.port, *self.failover_ports)
        return ";".join(
            f"{scheme}://{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
            f"{host}:{port}/{quote(self.vhost, safe='')}"
            for port in ports
        )

    @property
    def env(self) -> dict[str, str]:
        """The environment that points an app at this broker: ``PULSE_URL``, and the CA under TLS."""
        env = {"PULSE_URL": self.url}
        if self.tls:
            env["PULSE_SSL_CA_CERTS"] = TLS_CA_CERTS
        return env

    def admin_connection(self) -> Connection:
        """A connection with full rights on the vhost; publishes on it wait for the confirm."""
        if self.failover_ports:
            # kombu's failover form; each URL carries everything, as kombu switches whole URLs.
            user, password = quote(self.admin_user, safe=""), quote(self.admin_password, safe="")
            urls = ";".join(
                f"amqp://{user}:{password}@{self.host}:{port}/{quote(self.vhost, safe='')}"
                for port in (self.port, *self.failover_ports)
            )
            return Connection(urls, transport_options={"confirm_publish": True})
        return Connection(
            hostname=self.host,
            port=self.port,
            userid=self.admin_user,
            password=self.admin_password,
            virtual_host=self.vhost,
            transport_options={"confirm_publish": True},
        )

    def queue_counts(self, name: str) -> tuple[int, int] | None:
        """Return ``(ready, unacknowledged)`` for queue ``name``, or None if it does not exist."""
        return queue_counts(self.vhost, name, node=self.node)


class CeleryVhost:
    """A fresh vhost on the local RabbitMQ to serve as the Celery broker of one test.

    On another node, give its ``node`` name and ``port``; ``failover_ports`` (a cluster's
    other nodes) make :attr:`url` kombu's failover form, as Celery's ``broker_url`` takes it.
    """

    def __init__(
        self, *, node: str | None = None, port: int = 5672, failover_ports: tuple[int, ...] = ()
    ) -> None:
        self.name = f"celery-test-{uuid.uuid4().hex[:8]}"
        self.node = node
        rabbitmqctl("add_vhost", self.name, node=node)
        rabbitmqctl("set_permissions", "-p", self.name, "guest", ".*", ".*", ".*", node=node)
        self.url = ";".join(f"amqp://guest:guest@127.0.0.1:{p}/{self.name}" for p in (port, *failover_ports))

    def delete(self) -> None:
        try:
            rabbitmqctl("delete_vhost", self.name, node=self.node)
        except RuntimeError:
            pass
