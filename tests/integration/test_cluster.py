"""A three-node RabbitMQ cluster loses a node while messages flow: nothing is lost, the worker goes on.

The module starts its own cluster once (``pulse-c1..3@localhost`` on 127.0.0.1:5681-5683,
:class:`~pulse_celery.testing.RabbitCluster`), never touching the main node. The worker's
``pulse_url`` names the three nodes in kombu's failover form, the node under test first, so
the worker connects there and the Pulse queue (a quorum queue) gets its leader there.

Each scenario publishes a numbered stream (the publisher retries each message until a node
confirms it, failing over too), injects the fault, and checks: every message ran at least
once, duplicates stay within the deliveries in flight, the Pulse queue ends with 0 ready and
0 unacked, the worker is alive. It prints how long the worker took to consume again.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from pulse_celery.testing import CeleryVhost, PulseLikeBroker, RabbitCluster, RabbitNode

from .conftest import TASK_COMPLETED
from .harness import APPS, RetryingPublisher, Worker, wait_until
from .test_acks import done_ids

pytestmark = [pytest.mark.rabbitmq, pytest.mark.cluster]

N = 600
#: pulse_prefetch_count (enqueue's window) and Celery's prefetch (2 processes x 4): what one
#: fault can put back in flight on the Pulse side, plus the Celery deliveries it can redeliver.
PREFETCH = 200
CELERY_PREFETCH = 2 * 4
#: The most seconds a fault may keep the worker from consuming Pulse again (see the notes
#: for the figures measured; the reconnect backoff's first delay is 0.5 to 1 s).
RECOVERY_BOUND = 10.0
#: The same when the Celery broker was on the killed node too. Celery's DelayedDelivery step
#: (included with quorum Celery queues) sets up on every host of a failover broker_url, the
#: dead one included, retrying it three times with 1 + 3 + 5 s of sleep in the worker's main
#: thread at every consumer restart; the hub, and the Pulse connection on it, wait meanwhile.
RECOVERY_BOUND_WITH_CELERY = 30.0

_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/MainProcess\] (.*)$")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RabbitCluster]:
    """Three nodes joined into a cluster; what a crashed earlier run left is killed first."""
    c = RabbitCluster(3)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _heal(cluster: RabbitCluster) -> None:
    """Every node up and in the cluster again, for the next scenario."""
    for node in cluster:
        if not node.running:
            node.start(fresh=False)
    for node in cluster:
        try:
            node.ctl("await_startup", timeout=10)
        except Exception:
            node.start_app()
    assert wait_until(lambda: len(cluster.running_nodes()) == 3, timeout=60), cluster.running_nodes()


def _pulse_on(cluster: RabbitCluster, first: RabbitNode) -> PulseLikeBroker:
    """A Pulse-like vhost and user on the cluster, its URL naming ``first`` first."""
    others = tuple(n.port for n in cluster if n is not first)
    return PulseLikeBroker(node=first.node, port=first.port, failover_ports=others).setup([TASK_COMPLETED])


class Progress(threading.Thread):
    """Samples the handled count every 0.1 s, to see when handling stalls and resumes."""

    def __init__(self, tmp_path: Path) -> None:
        super().__init__(daemon=True)
        self.tmp_path = tmp_path
        self.samples: list[tuple[float, int]] = []
        self.running = True

    def run(self) -> None:
        while self.running:
            self.samples.append((time.time(), sum(done_ids(self.tmp_path).values())))
            time.sleep(0.1)

    def resumed_after(self, since: float) -> float | None:
        """Seconds from ``since`` until the count first grows after it (None if it never does)."""
        base = next((count for t, count in self.samples if t >= since), None)
        return next((t - since for t, count in self.samples if t >= since and count > (base or 0)), None)

    def longest_stall(self, start: float, end: float) -> float:
        """The longest time between two growths of the count within [start, end]."""
        longest, last_t, last_count = 0.0, start, None
        for t, count in self.samples:
            if t < start or t > end:
                continue
            if last_count is not None and count > last_count:
                longest, last_t = max(longest, t - last_t), t
            last_count = count
        return max(longest, (min(end, self.samples[-1][0]) - last_t) if self.samples else 0.0)


def _reconnected_after(worker: Worker, since: float) -> float | None:
    """Seconds from ``since`` (a time.time()) to the worker's first "Connected to Pulse" after it."""
    for line in worker.log().splitlines():
        m = _LOG_TIME.match(line)
        if m and m.group(2).startswith("Connected to Pulse"):
            at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if at >= since:
                return at - since
    return None


def _worker(pulse: PulseLikeBroker, celery_url: str, tmp_path: Path, policy: str, **env: str) -> Worker:
    return Worker(
        "cluster_app",
        cwd=APPS,
        env={
            **pulse.env,
            "CELERY_BROKER_URL": celery_url,
            "RECORD": str(tmp_path / "records.jsonl"),
            "ACK_POLICY": policy,
            "PULSE_HEARTBEAT": "5",
            "PULSE_CONNECT_TIMEOUT": "5",
            **env,
        },
        log_path=tmp_path / "worker.log",
    )


def _assert_nothing_lost(
    cluster: RabbitCluster, pulse: PulseLikeBroker, worker: Worker, tmp_path: Path
) -> int:
    """Every id handled, the queue empty, the worker alive; return the duplicates."""
    queue = f"queue/{pulse.user}/faults"
    assert wait_until(lambda: set(done_ids(tmp_path)) >= set(range(N)), timeout=180), (
        sorted(set(range(N)) - set(done_ids(tmp_path)))[:20],
        worker.log()[-4000:],
    )

    def empty() -> bool:
        info = cluster.queue(pulse.vhost, queue)
        return info is not None and (info.ready, info.unacked) == (0, 0)

    assert wait_until(empty, timeout=60), cluster.queue(pulse.vhost, queue)
    assert worker.alive
    assert "Unrecoverable error" not in worker.log()
    duplicates = sum(count - 1 for count in done_ids(tmp_path).values())
    assert duplicates <= PREFETCH + CELERY_PREFETCH, duplicates
    return duplicates


@pytest.mark.parametrize(
    ("policy", "celery_on_cluster"), [("enqueue", True), ("complete", False)], ids=["enqueue", "complete"]
)
def test_sigkill_of_the_node_the_worker_uses_and_the_queue_leader_loses_nothing(
    cluster, tmp_path, policy, celery_on_cluster
):
    # Given a worker connected to a node that also leads the Pulse queue (and, under enqueue,
    # serves the Celery broker: a failover broker_url, quorum Celery queues), messages flowing
    victim = cluster.nodes[0] if policy == "enqueue" else cluster.nodes[1]
    survivors = [n for n in cluster if n is not victim]
    pulse = _pulse_on(cluster, victim)
    if celery_on_cluster:
        others = tuple(n.port for n in survivors)
        celery = CeleryVhost(node=victim.node, port=victim.port, failover_ports=others)
        worker = _worker(pulse, celery.url, tmp_path, policy, CELERY_QUEUE_TYPE="quorum").start()
    else:
        celery = CeleryVhost()
        worker = _worker(pulse, celery.url, tmp_path, policy).start()
    progress = Progress(tmp_path)
    progress.start()
    publisher = RetryingPublisher(pulse, N, pace=0.005)
    publisher.start()
    queue = f"queue/{pulse.user}/faults"
    try:
        info = cluster.queue(pulse.vhost, queue)
        assert info is not None and info.type == "quorum", info
        assert info.leader == victim.node, info
        assert sorted(info.members) == sorted(n.node for n in cluster), info
        assert wait_until(lambda: len(done_ids(tmp_path)) >= 100, timeout=60), worker.log()[-3000:]
        # When that node's VM is killed with SIGKILL
        fault = time.time()
        victim.kill()
        pulse.node = survivors[0].node  # rabbitmqctl must ask a node that is up
        if celery_on_cluster:
            celery.node = survivors[0].node
        # Then the worker reconnects to another node, and every message is handled
        assert worker.wait_for_log("Connected to Pulse", timeout=60, count=2), worker.log()[-3000:]
        publisher.join(timeout=180)
        duplicates = _assert_nothing_lost(cluster, pulse, worker, tmp_path)
        reconnected = _reconnected_after(worker, fault)
        resumed = progress.resumed_after(fault + (reconnected or 0))
        new_leader = cluster.queue(pulse.vhost, queue)
        print(
            f"\nCLUSTER sigkill policy={policy} node={victim.node} celery_on_cluster={celery_on_cluster}: "
            f"Pulse reconnected after "
            f"{reconnected:.2f} s, first task handled {resumed} s after that; duplicates {duplicates}; "
            f"publisher retries {publisher.retries}; new leader {new_leader.leader if new_leader else None}"
        )
        bound = RECOVERY_BOUND_WITH_CELERY if celery_on_cluster else RECOVERY_BOUND
        assert reconnected is not None and reconnected <= bound, reconnected
        assert new_leader is not None and new_leader.leader != victim.node
    finally:
        _clean_up(cluster, progress, worker, pulse, celery)


def _clean_up(cluster, progress, worker, pulse, celery) -> None:
    progress.running = False
    worker.stop(timeout=120)
    _heal(cluster)
    pulse.teardown()
    celery.delete()


@pytest.mark.parametrize("policy", ["enqueue", "complete"])
def test_stop_app_of_a_follower_loses_nothing_and_does_not_stop_consumption(cluster, tmp_path, policy):
    # Given a worker connected to the leader's node, its Celery broker the main node
    leader = cluster.nodes[2]
    follower = cluster.nodes[0]
    pulse = _pulse_on(cluster, leader)
    celery = CeleryVhost()
    worker = _worker(pulse, celery.url, tmp_path, policy).start()
    progress = Progress(tmp_path)
    progress.start()
    publisher = RetryingPublisher(pulse, N, pace=0.02)  # flows all through the fault
    publisher.start()
    queue = f"queue/{pulse.user}/faults"
    try:
        info = cluster.queue(pulse.vhost, queue)
        assert info is not None and info.leader == leader.node and len(info.members) == 3, info
        assert wait_until(lambda: len(done_ids(tmp_path)) >= 100, timeout=60), worker.log()[-3000:]
        # When a follower's RabbitMQ application stops for five seconds, then starts again
        fault = time.time()
        follower.stop_app()
        time.sleep(5)
        follower.start_app()
        back = time.time()
        # Then the worker never loses Pulse, handles every message, and the follower is a member again
        publisher.join(timeout=180)
        duplicates = _assert_nothing_lost(cluster, pulse, worker, tmp_path)
        stall = progress.longest_stall(fault, back)
        print(
            f"\nCLUSTER stop_app policy={policy} follower={follower.node}: longest stall while it was "
            f"down {stall:.2f} s; Pulse reconnects {worker.log().count('Connected to Pulse') - 1}; "
            f"duplicates {duplicates}; publisher retries {publisher.retries}"
        )
        assert worker.log().count("Connected to Pulse") == 1
        assert stall <= RECOVERY_BOUND, stall
        info = cluster.queue(pulse.vhost, queue)
        assert info is not None and follower.node in info.members, info
    finally:
        _clean_up(cluster, progress, worker, pulse, celery)
