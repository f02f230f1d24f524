"""Helpers for testing a pulse_celery app against a local RabbitMQ, as Pulse would behave.

* :func:`publish` sends a Pulse-shaped message (JSON body, CC routes) to an exchange.
* :class:`PulseLikeBroker` creates, with ``rabbitmqctl``, a vhost and a user restricted
  exactly as Pulse Guardian restricts one, plus the publishers' exchanges.
* :func:`taskcluster_message` builds a real-shaped Taskcluster task event.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from kombu import Connection, Exchange, Producer


def publish(
    connection: Connection,
    exchange: str,
    routing_key: str,
    body: Any,
    *,
    routes: Sequence[str] = (),
    content_type: str = "application/json",
    content_encoding: str = "utf-8",
    headers: dict[str, Any] | None = None,
) -> None:
    """Publish ``body`` as Pulse publishers do; ``routes`` go in the ``CC`` header.

    ``body`` is JSON-encoded unless it is already ``bytes`` (to send bad input on purpose).
    On a connection made with ``transport_options={"confirm_publish": True}`` (as
    :meth:`PulseLikeBroker.admin_connection` makes it) this returns once the broker has the
    message.
    """
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = dict(headers or {})
    if routes:
        all_headers["CC"] = list(routes)
    producer = Producer(connection.default_channel)
    producer.publish(
        data,
        exchange=Exchange(exchange, type="topic", passive=True),
        routing_key=routing_key,
        content_type=content_type,
        content_encoding=content_encoding,
        headers=all_headers,
        delivery_mode=2,
        declare=[],
        retry=False,
    )


def taskcluster_routing_key(
    task_id: str,
    *,
    run_id: int = 0,
    worker_group: str = "mdc2",
    worker_id: str = "t-linux-1",
    provisioner_id: str = "releng-hardware",
    worker_type: str = "gecko-t-linux",
    scheduler_id: str = "gecko-level-3",
    task_group_id: str = "EJAo7mQyRqS-jmzebhceFA",
) -> str:
    """Return the primary routing key of a Taskcluster task event."""
    return (
        f"primary.{task_id}.{run_id}.{worker_group}.{worker_id}.{provisioner_id}."
        f"{worker_type}.{scheduler_id}.{task_group_id}._"
    )


def slug() -> str:
    """Return a Taskcluster-style 22-character task id."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def taskcluster_message(state: str = "completed", **fields: Any) -> tuple[str, dict[str, Any]]:
    """Return ``(routing key, body)`` of a task-``state`` event shaped like the real ones."""
    task_id = fields.pop("task_id", None) or slug()
    key = taskcluster_routing_key(task_id, **fields)
    _, _, _, worker_group, worker_id, provisioner_id, worker_type, scheduler_id, group, _ = key.split(".")
    body = {
        "version": 1,
        "runId": fields.get("run_id", 0),
        "workerGroup": worker_group,
        "workerId": worker_id,
        "status": {
            "taskId": task_id,
            "provisionerId": provisioner_id,
            "workerType": worker_type,
            "taskQueueId": f"{provisioner_id}/{worker_type}",
            "schedulerId": scheduler_id,
            "projectId": "none",
            "taskGroupId": group,
            "deadline": "2019-06-27T18:07:13.543Z",
            "expires": "2020-06-25T18:07:13.543Z",
            "retriesLeft": 5,
            "state": state,
            "runs": [
                {
                    "runId": fields.get("run_id", 0),
                    "state": state,
                    "reasonCreated": "scheduled",
                    "reasonResolved": state,
                    "workerGroup": worker_group,
                    "workerId": worker_id,
                    "takenUntil": "2019-06-26T19:47:48.234Z",
                    "scheduled": "2019-06-26T19:26:10.905Z",
                    "started": "2019-06-26T19:27:48.307Z",
                    "resolved": "2019-06-26T19:36:10.521Z",
                }
            ],
        },
    }
    return key, body


def _rabbitmqctl(*args: str) -> str:
    result = subprocess.run(
        ["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip() or result.stdout}")
    return result.stdout


def queue_counts(vhost: str, name: str) -> tuple[int, int] | None:
    """Return ``(ready, unacknowledged)`` for queue ``name`` in ``vhost``, or None if it does not exist."""
    out = _rabbitmqctl("list_queues", "-p", vhost, "name", "messages_ready", "messages_unacknowledged")
    for line in out.splitlines():
        parts = line.split("\t")
        if parts and parts[0] == name:
            return int(parts[1]), int(parts[2])
    return None


@dataclass
class PulseLikeBroker:
    """A vhost on a local RabbitMQ with a user that has exactly Pulse Guardian's permissions.

    ``admin_url`` (guest by default) declares the publishers' exchanges and publishes;
    ``user``/``password`` is what the app under test connects as.
    """

    vhost: str = field(default_factory=lambda: f"pulse-test-{uuid.uuid4().hex[:8]}")
    user: str = field(default_factory=lambda: f"alice{uuid.uuid4().hex[:6]}")
    #: Deliberately full of characters that must be URL-encoded.
    password: str = "p/ss:w@rd%?#"
    host: str = "127.0.0.1"
    port: int = 5672
    admin_user: str = "guest"
    admin_password: str = "guest"

    def setup(self, exchanges: Iterable[str] = ()) -> PulseLikeBroker:
        _rabbitmqctl("add_vhost", self.vhost)
        _rabbitmqctl("add_user", self.user, self.password)
        own = f"^(queue/{self.user}/.*|exchange/{self.user}/.*)"
        read = f"^(queue/{self.user}/.*|exchange/.*)"
        _rabbitmqctl("set_permissions", "-p", self.vhost, self.user, own, own, read)
        _rabbitmqctl("set_permissions", "-p", self.vhost, self.admin_user, ".*", ".*", ".*")
        with self.admin_connection() as conn:
            for name in exchanges:
                Exchange(name, type="topic", durable=True).declare(channel=conn.default_channel)
        return self

    def teardown(self) -> None:
        for args in (("delete_vhost", self.vhost), ("delete_user", self.user)):
            try:
                _rabbitmqctl(*args)
            except RuntimeError:
                pass

    @property
    def url(self) -> str:
        """The Pulse URL for the restricted user, credentials URL-encoded."""
        return (
            f"amqp://{quote(self.user, safe='')}:{quote(self.password, safe='')}@"
            f"{self.host}:{self.port}/{quote(self.vhost, safe='')}"
        )

    def admin_connection(self) -> Connection:
        """A connection with full rights on the vhost; publishes on it wait for the confirm."""
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
        return queue_counts(self.vhost, name)
