"""Horizontal scale: several workers on one named Pulse queue are competing consumers.

Given three `celery worker` processes of the same app, all consuming the named Pulse queue
``queue/<user>/scale``,
when 3,000 real-shaped Taskcluster task-completed events are published (each confirmed),
then every event runs the task exactly once, and each of the three workers took a real share
of them from Pulse (at least 10%), under both ack policies.

Prefetch decides how evenly the broker shares: RabbitMQ hands each delivery to the next consumer
that has room under its prefetch limit. Under ``complete`` the Pulse prefetch is Celery's own
(concurrency x multiplier = 2 x 4 = 8 here); under ``enqueue`` it is ``pulse_prefetch_count``,
left at its default of 200. Handing a message to the Celery broker is fast, so no worker fills
that window and the three take turns; the test waits until all three consume before publishing,
since a worker alone on a backlog would take 200 at once. Under ``enqueue`` the worker that took
a message from Pulse need not be the one that runs its task: the share is measured on the
ingesting worker, which is the task message's ``origin``.

The ingest/execute split: one worker consumes Pulse and only hands off (``-X celery`` keeps it
off the Celery queue), another runs with ``--no-pulse`` and only executes; every event runs
exactly once, all of them on the executing worker.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from pulse_celery.testing import _rabbitmqctl, publish, taskcluster_message

from .conftest import TASK_COMPLETED
from .harness import APPS, Worker, read_records, wait_until

pytestmark = pytest.mark.rabbitmq

N = 3000
#: Each of three workers must have taken at least this fraction (a fair share is a third).
MIN_SHARE = 0.10


def consumers(vhost: str, queue: str) -> int:
    out = _rabbitmqctl("list_queues", "-p", vhost, "name", "consumers")
    for line in out.splitlines():
        name, _, count = line.partition("\t")
        if name == queue:
            return int(count)
    return 0


def publish_events(pulse, n: int) -> set[str]:
    """Publish ``n`` task-completed events, each confirmed by the broker; return their taskIds."""
    task_ids = set()
    with pulse.admin_connection() as conn:
        for i in range(n):
            key, body = taskcluster_message("completed")
            publish(conn, TASK_COMPLETED, key, body, routes=[f"route.tc-treeherder.v2.autoland.{i:040x}.{i}"])
            task_ids.add(body["status"]["taskId"])
    return task_ids


def all_records(paths: list[Path]) -> list[dict]:
    return [r for path in paths for r in read_records(path)]


def scale_worker(name: str, pulse, celery_broker, tmp_path: Path, env: dict[str, str], **kwargs) -> Worker:
    return Worker(
        "scale_app",
        cwd=APPS,
        env={
            "PULSE_URL": pulse.url,
            "CELERY_BROKER_URL": celery_broker.url,
            "RECORD": str(tmp_path / f"{name}.jsonl"),
            **env,
        },
        log_path=tmp_path / f"{name}.log",
        **kwargs,
    )


def assert_exactly_once(records: list[dict], expected: set[str]) -> None:
    counts = Counter(r["taskId"] for r in records)
    assert set(counts) == expected, (
        f"{len(expected - set(counts))} events lost, {len(set(counts) - expected)} unexpected"
    )
    duplicates = [t for t, n in counts.items() if n > 1]
    assert not duplicates, f"{len(duplicates)} events ran more than once, e.g. {duplicates[:3]}"
    assert not any(r["redelivered"] for r in records), "a delivery was redelivered though nothing failed"


def stop_all(workers: list[Worker]) -> None:
    """Warm-shut the workers down together (one after the other would take three times as long)."""
    for worker in workers:
        if worker.alive:
            worker.process.send_signal(signal.SIGTERM)
    stuck = []
    for worker in workers:
        if worker.process is None:
            continue
        try:
            worker.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            stuck.append(f"{worker.log_path.name}:\n{stacks(worker)}{worker.log()[-3000:]}")
            worker.kill()
    assert not stuck, "workers did not stop within 60 s of SIGTERM:\n" + "\n".join(stuck)


def stacks(worker: Worker) -> str:
    """The Python stacks of a stuck worker and its pool processes, when py-spy is at hand."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if worker.process is None or not Path(py_spy).exists():
        return ""
    result = subprocess.run(
        [py_spy, "dump", "--subprocesses", "--pid", str(worker.process.pid)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout + result.stderr


def check_logs(workers: list[Worker], pulse) -> None:
    for worker in workers:
        log = worker.full_log()
        assert "Traceback" not in log, log[-4000:]
        assert pulse.password not in log


@pytest.mark.parametrize("policy", ["complete", "enqueue"])
def test_three_workers_on_one_named_queue_share_it_and_run_each_event_once(
    pulse, celery_broker, tmp_path, policy
):
    queue = f"queue/{pulse.user}/scale"
    env = {"ACK_POLICY": policy}
    workers = [scale_worker(f"w{i}", pulse, celery_broker, tmp_path, env) for i in range(3)]
    try:
        # Given three workers consuming the same named queue (started together: startup is slow)
        for worker in workers:
            worker.start(wait_for=None)
        for worker in workers:
            assert worker.wait_for_log("Connected to Pulse", timeout=90), worker.log()[-4000:]
        assert wait_until(lambda: consumers(pulse.vhost, queue) == 3, timeout=60), "not consuming"

        # When 3,000 events are published
        expected = publish_events(pulse, N)

        # Then each runs once, and the queue ends with nothing ready and nothing unacked
        paths = [tmp_path / f"w{i}.jsonl" for i in range(3)]
        wait_until(lambda: len(all_records(paths)) >= N, timeout=150, interval=0.5)
        assert wait_until(lambda: pulse.queue_counts(queue) == (0, 0), timeout=30), pulse.queue_counts(queue)
        assert all(w.alive for w in workers)
    finally:
        stop_all(workers)

    records = all_records(paths)
    assert_exactly_once(records, expected)
    assert {r["queue"] for r in records} == {queue}
    ingest = Counter(r["ingest"] for r in records)
    executors = Counter(r["executor"] for r in records)
    print(f"{policy}: taken from Pulse {sorted(ingest.values())}, run {sorted(executors.values())}")
    if policy == "complete":
        # The worker that takes a message from Pulse runs it.
        assert all(r["ingest"] == r["executor"] for r in records)
    assert len(ingest) == 3, f"only {len(ingest)} workers took messages from Pulse: {ingest}"
    assert min(ingest.values()) >= MIN_SHARE * N, f"a worker took less than {MIN_SHARE:.0%}: {ingest}"
    check_logs(workers, pulse)


def test_an_ingest_only_worker_hands_off_and_a_no_pulse_worker_runs_every_event_once(
    pulse, celery_broker, tmp_path
):
    queue = f"queue/{pulse.user}/scale"
    ingest_name = f"ingest-{uuid.uuid4().hex[:6]}@localhost"
    execute_name = f"execute-{uuid.uuid4().hex[:6]}@localhost"
    # Given a worker that only takes Pulse messages and puts their tasks on the Celery queue
    # (-X celery: it consumes no Celery queue, so the solo pool never runs a task) ...
    ingest = scale_worker(
        "ingest",
        pulse,
        celery_broker,
        tmp_path,
        {"ACK_POLICY": "enqueue"},
        pool="solo",
        concurrency=1,
        extra_args=("-X", "celery", "-n", ingest_name),
    )
    # ... and one that only runs tasks from the Celery queue
    execute = scale_worker(
        "execute",
        pulse,
        celery_broker,
        tmp_path,
        {"ACK_POLICY": "enqueue"},
        extra_args=("--no-pulse", "-n", execute_name),
    )
    workers = [ingest, execute]
    try:
        ingest.start(wait_for=None)
        execute.start(wait_for=None)
        assert ingest.wait_for_log("Connected to Pulse", timeout=90), ingest.log()[-4000:]
        assert execute.wait_for_log(" ready.", timeout=90), execute.log()[-4000:]
        assert wait_until(lambda: consumers(pulse.vhost, queue) == 1, timeout=60), "not consuming"

        # When 3,000 events are published
        expected = publish_events(pulse, N)

        # Then every event runs once, all on the executing worker, from the ingest worker
        paths = [tmp_path / "ingest.jsonl", tmp_path / "execute.jsonl"]
        wait_until(lambda: len(all_records(paths)) >= N, timeout=150, interval=0.5)
        assert wait_until(lambda: pulse.queue_counts(queue) == (0, 0), timeout=30), pulse.queue_counts(queue)
        assert all(w.alive for w in workers)
    finally:
        stop_all(workers)

    assert read_records(tmp_path / "ingest.jsonl") == []
    records = read_records(tmp_path / "execute.jsonl")
    assert_exactly_once(records, expected)
    assert Counter(r["executor"] for r in records) == {execute_name: N}
    assert Counter(r["ingest"] for r in records) == {ingest_name: N}
    assert "Connected to Pulse" not in execute.full_log()
    check_logs(workers, pulse)
