"""Real processes for the integration tests: `celery worker` subprocesses and their logs."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Connection

from pulse_celery import control
from pulse_celery.testing import CeleryVhost, Worker, publish, rabbitmqctl, wait_until

__all__ = [
    "APPS",
    "ROOT",
    "CeleryVhost",
    "RetryingPublisher",
    "Worker",
    "app_worker",
    "cli",
    "read_records",
    "user_connections_tls",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[2]


APPS = ROOT / "tests" / "integration" / "apps"


def app_worker(
    app: str,
    pulse: Any,
    celery_broker: Any,
    tmp_path: Path,
    pool: str = "prefork",
    concurrency: int = 2,
    **env: Any,
) -> Worker:
    """A worker of the test app ``app`` (tests/integration/apps) on ``pulse`` and ``celery_broker``.

    The app records what its tasks did in ``tmp_path/records.jsonl``; ``env`` steers it.
    """
    return Worker(
        app,
        cwd=APPS,
        env={
            **pulse.env,
            "CELERY_BROKER_URL": celery_broker.url,
            "RECORD": str(tmp_path / "records.jsonl"),
            **{k: str(v) for k, v in env.items()},
        },
        log_path=tmp_path / "worker.log",
        pool=pool,
        concurrency=concurrency,
    )


def cli(*args: str, env: dict[str, str] | None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``pulse-celery ARGS`` as a user would, from the test apps' folder."""
    return subprocess.run(
        [sys.executable, "-m", "pulse_celery.cli", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        cwd=APPS,
        env=env,
        check=False,
    )


def worker_status(celery_broker: Any) -> dict[str, Any]:
    """The pulse_status reply of the one worker on ``celery_broker``, as an operator gets it."""
    app = Celery("client", broker=celery_broker.url, set_as_current=False)
    try:
        replies = control.status(app, limit=1, timeout=10.0)
    finally:
        app.close()
    assert len(replies) == 1, replies
    return next(iter(replies.values()))


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RecordTail:
    """A worker's JSON-lines records, read from where the last read stopped: cheap to poll often.

    A poll that re-reads and parses the whole file costs the test process CPU in proportion to
    the records so far; on a 2-core machine that CPU is taken from the worker being measured.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._lock = threading.Lock()

    def new(self) -> list[dict[str, Any]]:
        """The complete records appended since the last call (safe from several threads)."""
        with self._lock:
            try:
                with self.path.open("rb") as f:
                    f.seek(self._offset)
                    chunk = f.read()
            except FileNotFoundError:
                return []
            end = chunk.rfind(b"\n") + 1
            self._offset += end
            return [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]


def user_connections_tls(user: str) -> list[bool]:
    """Whether each of ``user``'s connections on the broker is TLS, as RabbitMQ reports it."""
    out = rabbitmqctl("list_connections", "user", "ssl")
    return [
        fields[1] == "true" for fields in (line.split("\t") for line in out.splitlines()) if fields[0] == user
    ]


TASK_COMPLETED = "exchange/taskcluster-queue/v1/task-completed"

#: ``message(i) -> (exchange, routing key, body)`` of the i-th message a publisher sends.
Message = Callable[[int], tuple[str, str, Any]]


def numbered(i: int) -> tuple[str, str, Any]:
    return TASK_COMPLETED, f"primary.task{i}.0", {"id": i}


class RetryingPublisher(threading.Thread):
    """Publish messages 0..n-1 in order; each one is retried until the broker confirms it."""

    def __init__(self, pulse: Any, n: int, pace: float = 0.0, message: Message = numbered) -> None:
        super().__init__(daemon=True)
        self.pulse, self.n, self.pace, self.message = pulse, n, pace, message
        self.sent = 0
        self.retries = 0

    def run(self) -> None:
        conn: Connection | None = None
        i = 0
        while i < self.n:
            try:
                if conn is None:
                    conn = self.pulse.admin_connection()
                    conn.ensure_connection(max_retries=1)
                publish(conn, *self.message(i))
                i += 1
                self.sent = i
                if self.pace:
                    time.sleep(self.pace)
            except Exception:
                self.retries += 1
                if conn is not None:
                    conn.collect()
                conn = None
                time.sleep(0.5)
        if conn is not None:
            conn.release()
