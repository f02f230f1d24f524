"""Print every resolved Taskcluster task as it happens: a Pulse consumer with no Celery at all.

Run it:  python watch.py        (PULSE_USERNAME / PULSE_PASSWORD from your Pulse account)

One named queue, ``queue/<you>/resolved``, takes two exchanges. Type ``pause`` or ``resume``
(then Enter) to stop and restart deliveries; messages wait in the queue meanwhile. Ctrl-D
or Ctrl-C stops, and the queue keeps what arrives until the next run.
"""

import sys
from collections.abc import Callable

from pulse_celery import Delivery, PulseConnection, PulseQueue

RESOLVED = [
    ("exchange/taskcluster-queue/v1/task-completed", "primary.#"),
    ("exchange/taskcluster-queue/v1/task-failed", "primary.#"),
]


def watch(conn: PulseConnection, out: Callable[[str], object] = print) -> PulseQueue:
    """Consume resolved tasks into ``out``, one line each; return the queue to pause and resume."""

    def on_resolved(payload: dict, delivery: Delivery) -> None:
        status = payload["status"]
        out(f"{status['taskId']} run {payload['runId']} {status['state']} {delivery.routing_key}")

    return conn.consume("resolved", on_resolved, prefetch=20, bindings=RESOLVED)


def main() -> None:
    with PulseConnection() as conn:  # PULSE_URL (default: production Pulse), PULSE_USERNAME, ...
        resolved = watch(conn)
        conn.start()  # consume in a background thread; this one reads the terminal
        for command in sys.stdin:
            if command.strip() in ("pause", "resume"):
                getattr(resolved, command.strip())()
                print(f"{resolved.name}: {resolved.state}", file=sys.stderr)


if __name__ == "__main__":
    main()
