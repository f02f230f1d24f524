"""Benchmark pulse_celery against the local RabbitMQ, every way side by side in one run.

    python benchmarks/run.py [--n 20000] [--rate 1000] [--skip-latency] [--skip-rss]

See benchmarks/README.md for what each figure means and how to read the output.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import select
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import amqp
from celery import Celery
from kombu import Connection, Consumer, Queue

from pulse_celery.testing import (
    TLS_CA_CERTS,
    PulseLikeBroker,
    Worker,
    children,
    children_rss_kb,
    queue_counts,
    rabbitmqctl,
    rss_kb,
    taskcluster_message,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

EXCHANGE = "exchange/taskcluster-queue/v1/task-completed"
TASK_NAME = "bench_app.noop"
CELERY_QUEUE = "celery"  # the app's default queue: where task messages go
IDLE_QUEUE = "bench.nobody"  # a Celery queue nobody publishes to (enqueue workers consume only Pulse)
PULSE_PREFETCH = 200  # pulse_prefetch_count's default: what an enqueue worker may hold unacked
SAMPLER_START = 3.0  # seconds the in-broker depth sampler gets to start before publishing
POLL = 0.01  # seconds between two passive queue_declare polls
ALL_PHASES = (
    "ceiling",
    "bare",
    "handwritten",
    "enqueue",
    "complete",
    "celery",
    "ceiling-tls",
    "enqueue-tls",
    "complete-tls",
)
#: The TLS phases: the same work as their plain twins, with the Pulse side over amqps://localhost:5671
#: (scripts/rabbitmq-tls.sh), the certificate and host name verified against the test CA.
TLS_TWINS = {"ceiling-tls": "ceiling", "enqueue-tls": "enqueue", "complete-tls": "complete"}
LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): ")

# Targets from issue 4.
T_ENQUEUE_VS_HAND = 5.0
T_ENQUEUE_VS_CEILING = 0.5
T_COMPLETE_VS_CELERY = 0.9
T_RSS_MB = 50.0
T_DEPTH = 200
T_DEPTH_RATE = 1000
# Target from issue 12: production Pulse is TLS only.
T_ENQUEUE_TLS_VS_PLAIN = 0.9
# The ceiling the issue measured on its 2-core machine, where 1,000 msg/s was the offered rate.
# On a slower or faster machine the latency phase also runs at 1,000 x ceiling / 9,000 (info).
REFERENCE_CEILING = 9000


# -- brokers -----------------------------------------------------------------------


class Brokers:
    """A fresh Pulse-like vhost (and its restricted user) and a fresh Celery vhost."""

    def __init__(
        self, queue_type: str, prefetch_count: int = PULSE_PREFETCH, celery_queue_type: str = "classic"
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        self.queue_type = queue_type
        self.prefetch_count = prefetch_count  # the workers' pulse_prefetch_count (enqueue queues)
        self.celery_queue_type = celery_queue_type  # the app's task_default_queue_type
        self.pulse = PulseLikeBroker(vhost=f"bench-pulse-{tag}", user=f"bench{tag}")
        self.celery_vhost = f"bench-celery-{tag}"
        self.celery_url = f"amqp://guest:guest@127.0.0.1:5672/{self.celery_vhost}"
        self.pulse_conn: amqp.Connection | None = None
        self.celery_conn: amqp.Connection | None = None

    def setup(self) -> Brokers:
        self.pulse.setup([EXCHANGE])
        rabbitmqctl("add_vhost", self.celery_vhost)
        rabbitmqctl("set_permissions", "-p", self.celery_vhost, "guest", ".*", ".*", ".*")
        self.pulse_conn = amqp_connect(self.pulse.vhost)
        self.celery_conn = amqp_connect(self.celery_vhost)
        self.pulse_poll = self.pulse_conn.channel()
        self.celery_poll = self.celery_conn.channel()
        # The Celery queue exactly as Celery declares it, so every phase can count it.
        app = self.celery_app()
        with Connection(self.celery_url) as conn:
            app.amqp.queues[CELERY_QUEUE].bind(conn.default_channel).declare()
        return self

    def teardown(self) -> None:
        for conn in (self.pulse_conn, self.celery_conn):
            try:
                if conn is not None:
                    conn.collect()
            except Exception:
                pass
        self.pulse.teardown()
        try:
            rabbitmqctl("delete_vhost", self.celery_vhost)
        except RuntimeError:
            pass

    def celery_app(self, name: str = "bench_app") -> Celery:
        """A Celery app on the run's Celery vhost, its queues declared as bench_app declares them."""
        app = Celery(name, broker=self.celery_url)
        app.conf.task_default_queue_type = self.celery_queue_type
        return app

    def pulse_over(self, tls: bool) -> PulseLikeBroker:
        """The Pulse-like broker as the app sees it: over TLS (amqps://localhost:5671) or plain."""
        return dataclasses.replace(self.pulse, tls=tls)

    def pulse_queue(self, suffix: str) -> str:
        """Declare queue/<user>/<suffix> exactly as pulse_celery does, bound as bench_app binds it."""
        name = f"queue/{self.pulse.user}/{suffix}"
        arguments = {"x-queue-type": "quorum"} if self.queue_type == "quorum" else {}
        ch = self.pulse_poll
        ch.queue_declare(name, durable=True, auto_delete=False, arguments=arguments)
        ch.queue_bind(name, EXCHANGE, "primary.#")
        return name

    def delete_pulse_queue(self, name: str) -> None:
        self.pulse_poll.queue_delete(name)

    def pulse_ready(self, name: str) -> int:
        return self.pulse_poll.queue_declare(name, passive=True).message_count

    def celery_ready(self, name: str = CELERY_QUEUE) -> int:
        return self.celery_poll.queue_declare(name, passive=True).message_count

    def purge_celery(self) -> None:
        self.celery_poll.queue_purge(CELERY_QUEUE)

    def pulse_counts(self, name: str) -> tuple[int, int] | None:
        return self.pulse.queue_counts(name)

    def celery_counts(self, name: str = CELERY_QUEUE) -> tuple[int, int] | None:
        return queue_counts(self.celery_vhost, name)


def amqp_connect(vhost: str, user: str = "guest", password: str = "guest") -> amqp.Connection:
    conn = amqp.Connection(
        host="127.0.0.1:5672", userid=user, password=password, virtual_host=vhost, heartbeat=0
    )
    conn.connect()
    return conn


class ConfirmingPublisher:
    """A py-amqp channel in confirm mode: publishes without waiting, confirms checked in batches."""

    def __init__(self, conn: amqp.Connection, window: int = 2000) -> None:
        self.conn = conn
        self.window = window
        self.ch = conn.channel()
        self.ch.confirm_select()
        self.published = self.confirmed = self.nacked = 0
        self.ch.events["basic_ack"].add(self._on_ack)
        self.ch.events["basic_nack"].add(self._on_nack)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self.confirmed = max(self.confirmed, tag)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self.nacked += 1
        self.confirmed = max(self.confirmed, tag)

    def publish(self, message: amqp.Message, exchange: str, routing_key: str) -> None:
        self.ch.basic_publish(message, exchange=exchange, routing_key=routing_key, mandatory=True)
        self.published += 1
        while self.published - self.confirmed > self.window:
            self.conn.drain_events(timeout=10)

    def wait(self) -> None:
        while self.confirmed < self.published:
            self.conn.drain_events(timeout=30)
        if self.nacked:
            raise RuntimeError(f"the broker refused {self.nacked} published messages")

    def close(self) -> None:
        self.ch.close()


# -- messages ----------------------------------------------------------------------


def pulse_messages(n: int) -> list[tuple[str, bytes, list[str]]]:
    """N real-shaped Taskcluster task-completed events: (routing key, JSON body, CC routes)."""
    out = []
    for i in range(n):
        key, body = taskcluster_message("completed")
        task_id = body["status"]["taskId"]
        routes = [
            f"route.index.gecko.v2.autoland.revision.{uuid.uuid4().hex}{i:08x}.firefox.linux64-opt",
            f"route.tc-treeherder.v2.autoland.{uuid.uuid4().hex}.{100000 + i}",
            f"route.checks.{task_id}",
        ]
        out.append((key, json.dumps(body).encode(), routes))
    return out


def pulse_amqp_message(body: bytes, routes: list[str]) -> amqp.Message:
    return amqp.Message(
        body,
        content_type="application/json",
        content_encoding="utf-8",
        application_headers={"CC": routes},
        delivery_mode=2,
    )


def prefill_pulse(
    brokers: Brokers, messages: list[tuple[str, bytes, list[str]]], queue: str, in_flight: int = 0
) -> float:
    """Publish every message (confirmed) and wait until ``queue`` has them ready.

    ``in_flight``: how many a (stopped) consumer may already hold unacked, not ready.
    """
    t0 = time.monotonic()
    pub = ConfirmingPublisher(brokers.pulse_conn)
    for key, body, routes in messages:
        pub.publish(pulse_amqp_message(body, routes), EXCHANGE, key)
    pub.wait()
    pub.close()
    deadline = time.monotonic() + 60
    while brokers.pulse_ready(queue) < len(messages) - in_flight:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{queue} never held the {len(messages)} published messages")
        time.sleep(0.05)
    return len(messages) / (time.monotonic() - t0)


def celery_task_messages(
    brokers: Brokers, messages: list[tuple[str, bytes, list[str]]]
) -> list[amqp.Message]:
    """One persistent task message per Pulse payload, as apply_async would build it."""
    app = brokers.celery_app()
    out = []
    for _key, body, _routes in messages:
        task_id = str(uuid.uuid4())
        headers, properties, task_body, _ = app.amqp.as_task_v2(
            task_id, TASK_NAME, args=(json.loads(body),), kwargs={}
        )
        out.append(
            amqp.Message(
                json.dumps(task_body).encode(),
                content_type="application/json",
                content_encoding="utf-8",
                application_headers=headers,
                delivery_mode=2,
                **properties,
            )
        )
    return out


def prefill_celery(brokers: Brokers, messages: list[tuple[str, bytes, list[str]]]) -> None:
    """Publish one task message per Pulse payload to the Celery queue."""
    pub = ConfirmingPublisher(brokers.celery_conn)
    for msg in celery_task_messages(brokers, messages):
        pub.publish(msg, "", CELERY_QUEUE)
    pub.wait()
    pub.close()
    while brokers.celery_ready() < len(messages):
        time.sleep(0.05)


# -- workers -----------------------------------------------------------------------

WORKERS: list[Worker] = []
SIDE_PROCESSES: list[subprocess.Popen[Any]] = []


def start_worker(
    brokers: Brokers,
    workdir: Path,
    name: str,
    policy: str,
    queue: str,
    concurrency: int,
    only_idle_queue: bool,
    record: Path | None = None,
    tls: bool = False,
) -> Worker:
    env = {
        "CELERY_BROKER_URL": brokers.celery_url,
        **brokers.pulse_over(tls).env,
        "BENCH_POLICY": policy,
        "BENCH_QUEUE": queue,
        "BENCH_QUEUE_TYPE": brokers.queue_type,
        "BENCH_PREFETCH_COUNT": str(brokers.prefetch_count),
        "BENCH_CELERY_QUEUE_TYPE": brokers.celery_queue_type,
    }
    if record is not None:
        env["BENCH_RECORD"] = str(record)
    extra = ("-Q", IDLE_QUEUE) if only_idle_queue else ()
    worker = Worker(
        "bench_app",
        cwd=HERE,
        env=env,
        log_path=workdir / f"{name}.log",
        concurrency=concurrency,
        extra_args=extra,
    )
    WORKERS.append(worker)
    return worker.start(wait_for=None)


def log_time(worker: Worker, text: str, timeout: float = 60) -> float:
    """Wall-clock time of the worker's first log line containing ``text`` (its own timestamp)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in worker.log().splitlines():
            if text in line:
                m = LOG_TIME.match(line)
                if m:
                    return datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                return time.time()
        if not worker.alive:
            break
        time.sleep(0.005)
    raise RuntimeError(f"worker did not log {text!r}:\n{worker.log()[-3000:]}")


def stop_worker(worker: Worker) -> None:
    try:
        worker.stop(timeout=30)
    except AssertionError:
        pass
    if worker in WORKERS:
        WORKERS.remove(worker)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rabbitmq_pid() -> int | None:
    """The RabbitMQ server's Erlang VM: the oldest beam.smp (rabbitmqctl starts newer ones)."""
    found = subprocess.run(["pgrep", "-o", "beam.smp"], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


class CpuMeter:
    """How much CPU the consumer and RabbitMQ used during a timed phase.

    Two figures per process: its share of one core (near 100% is what limits the phase; two
    well below it mean the phase waits on round trips or on a machine with no core to spare)
    and its CPU time per message, which does not depend on how busy the machine was. The
    phases' ratios follow from the per-message figures when the two cores are the limit.
    """

    def __init__(self, pid: int, name: str = "worker main process") -> None:
        self.pids = {name: [pid], "RabbitMQ": [p for p in [rabbitmq_pid()] if p]}
        if name == "worker main process":  # the prefork pool's children (they run the tasks)
            self.pids["pool children"] = children(pid)
        self.t0 = time.monotonic()
        self.start = {name: self._cpu(name) for name in self.pids}
        self.wall = 0.0
        self.used: dict[str, float] = {}

    def _cpu(self, name: str) -> float:
        return sum(cpu_seconds(p) for p in self.pids[name])

    def stop(self) -> CpuMeter:
        self.wall = time.monotonic() - self.t0
        self.used = {name: self._cpu(name) - self.start[name] for name, pids in self.pids.items() if pids}
        return self

    def report(self, n: int) -> str:
        """The figures of the phase, which :meth:`stop` ended, for ``n`` messages."""
        parts = [
            f"{name} {100 * used / self.wall:.0f}% of a core, {1e6 * used / n:.0f} us/msg"
            for name, used in self.used.items()
        ]
        return "CPU: " + ", ".join(parts)


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = POLL, tick=None) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if tick is not None:
            tick()
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def verify_empty(counts: Callable[[], tuple[int, int] | None], timeout: float = 20) -> tuple[bool, Any]:
    """Ask rabbitmqctl (exact, but slower and lagging for quorum queues) for (ready, unacked)."""
    last: Any = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        last = counts()
        if last == (0, 0):
            return True, last
        time.sleep(0.3)
    return False, last


def drain_timeout(n: int) -> float:
    return max(120.0, n / 50)


# -- profiling (optional) -------------------------------------------------------------


class Profiler:
    """py-spy record (non-blocking) on a worker's main process; prints the hottest functions."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.proc = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--nonblocking", "--rate", "250", "--format", "raw",
             "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        SIDE_PROCESSES.append(self.proc)

    def stop_and_report(self, top: int = 25) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        SIDE_PROCESSES.remove(self.proc)
        if not self.out.exists():
            print(
                "  py-spy wrote nothing:",
                self.proc.stderr.read().decode()[-500:] if self.proc.stderr else "",
            )
            return
        inclusive: Counter[str] = Counter()
        own: Counter[str] = Counter()
        total = 0
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack:
                continue
            n = int(count)
            frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
            if frames and frames[0].startswith("process"):
                frames = frames[1:]
            if frames and frames[0].startswith("thread"):
                frames = frames[1:]
            total += n
            for f in set(frames):
                inclusive[f] += n
            if frames:
                own[frames[-1]] += n
        print(f"  py-spy: {total} samples of the worker's main process ({self.out})")
        print("  hottest functions, inclusive (% of samples):")
        for f, n in inclusive.most_common(top):
            print(f"    {100 * n / total:5.1f}%  {f}")
        print("  hottest functions, self:")
        for f, n in own.most_common(top):
            print(f"    {100 * n / total:5.1f}%  {f}")


# -- phases --------------------------------------------------------------------------


def consume_timed(
    brokers: Brokers, queue: str, on_message: Any, more: Any, prefetch: int, tls: bool = False
) -> float:
    """Consume ``queue`` with a plain kombu consumer while ``more()``; return the seconds taken."""
    options: Any = False
    if tls:  # verified as pulse_celery verifies: the test CA, the host name
        options = {"ca_certs": TLS_CA_CERTS, "cert_reqs": ssl.CERT_REQUIRED, "server_hostname": "localhost"}
    with Connection(brokers.pulse_over(tls).url, ssl=options) as conn:
        ch = conn.channel()
        ch.basic_qos(0, prefetch, False)
        consumer = Consumer(ch, queues=[Queue(queue, no_declare=True)], on_message=on_message)
        t0 = time.monotonic()
        consumer.consume()
        while more():
            conn.drain_events(timeout=30)
        elapsed = time.monotonic() - t0
        consumer.cancel()
    return elapsed


def phase_ceiling(brokers: Brokers, messages: list, prefetch: int = 200, tls: bool = False) -> float:
    """A bare kombu consumer on the Pulse queue that acks each message and does nothing else."""
    queue = brokers.pulse_queue("bench-ceiling")
    prefill_pulse(brokers, messages, queue)
    n = len(messages)
    count = 0

    def on_message(message: Any) -> None:
        nonlocal count
        message.ack()
        count += 1

    cpu = CpuMeter(os.getpid(), "consumer (this process)")
    elapsed = consume_timed(brokers, queue, on_message, lambda: count < n, prefetch, tls)
    cpu.stop()
    ok, counts = verify_empty(lambda: brokers.pulse_counts(queue))
    brokers.delete_pulse_queue(queue)
    return report_rate("ceiling-tls" if tls else "ceiling", n, elapsed, ok, counts, cpu.report(n))


def phase_bare(brokers: Brokers, messages: list) -> float:
    """The enqueue work with nothing around it but py-amqp: what the broker gives a hand-off.

    Consumes the Pulse queue at the enqueue workers' prefetch, publishes to the Celery queue a
    task message built before the clock starts for each delivery (persistent, mandatory,
    publisher confirms pipelined), and acks the Pulse deliveries with ``multiple=True`` as the
    confirms come in: the frames pulse_celery sends, with no Celery, no decoding and no
    building. Set beside the ceiling, it shows how much of the ceiling the broker's confirm
    path leaves to any hand-off; set beside ``enqueue``, what pulse_celery adds.
    """
    queue = brokers.pulse_queue("bench-bare")
    prefill_pulse(brokers, messages, queue)
    brokers.purge_celery()
    task_messages = celery_task_messages(brokers, messages)
    n = len(messages)
    pulse = amqp_connect(brokers.pulse.vhost, brokers.pulse.user, brokers.pulse.password)
    celery = amqp_connect(brokers.celery_vhost)
    pulse_ch, celery_ch = pulse.channel(), celery.channel()
    celery_ch.confirm_select()
    pulse_ch.basic_qos(0, brokers.prefetch_count, False)
    #: publish sequence number -> Pulse delivery tag, in publish (= delivery) order
    delivery_of: dict[int, int] = {}
    state = {"published": 0, "settled": 0, "failed": 0}

    def on_delivery(message: amqp.Message) -> None:
        state["published"] += 1
        delivery_of[state["published"]] = message.delivery_tag
        celery_ch.basic_publish(
            task_messages[state["published"] - 1], exchange="", routing_key=CELERY_QUEUE, mandatory=True
        )

    def on_confirm(seq: int, multiple: bool, nacked: bool = False) -> None:
        if multiple:
            done = []
            while delivery_of and next(iter(delivery_of)) <= seq:
                done.append(delivery_of.pop(next(iter(delivery_of))))
        else:
            done = [delivery_of.pop(seq)] if seq in delivery_of else []
        if done:  # a multiple confirm settles a prefix of the deliveries: ack it the same way
            pulse_ch.basic_ack(done[-1], multiple=multiple)
        state["settled"] += len(done)
        if nacked:
            state["failed"] += len(done)

    celery_ch.events["basic_ack"].add(on_confirm)
    celery_ch.events["basic_nack"].add(lambda seq, multiple: on_confirm(seq, multiple, nacked=True))

    def on_return(*args: Any) -> None:
        state["failed"] += 1

    celery_ch.events["basic_return"].add(on_return)
    pulse_ch.basic_consume(queue, callback=on_delivery)
    sockets = {pulse.sock: pulse, celery.sock: celery}
    cpu = CpuMeter(os.getpid(), "consumer (this process)")
    t0 = time.monotonic()
    try:
        while state["settled"] < n and time.monotonic() - t0 < drain_timeout(n):
            readable, _, _ = select.select(list(sockets), [], [], 0.001)
            # All of them after a timeout too: py-amqp may hold a whole frame already read.
            for sock in readable or list(sockets):
                while True:
                    try:
                        sockets[sock].drain_events(timeout=0)
                    except TimeoutError:
                        break
        elapsed = time.monotonic() - t0
        cpu.stop()
    finally:
        for conn in (pulse, celery):
            conn.close()
    ok, counts = verify_empty(lambda: brokers.pulse_counts(queue))
    handed = brokers.celery_ready()
    brokers.delete_pulse_queue(queue)
    brokers.purge_celery()
    extra = f"task messages on the Celery broker: {handed} (expected {n}); {cpu.report(n)}"
    return report_rate("bare", n, elapsed, ok and handed == n and not state["failed"], counts, extra)


def phase_handwritten(brokers: Brokers, messages: list, prefetch: int = 200) -> float:
    """A kombu consumer calling task.apply_async((payload,)) with confirm_publish, then acking."""
    queue = brokers.pulse_queue("bench-handwritten")
    prefill_pulse(brokers, messages, queue)
    brokers.purge_celery()
    app = brokers.celery_app("handwritten")
    app.conf.broker_transport_options = {"confirm_publish": True}

    @app.task(name=TASK_NAME)
    def noop(payload: Any) -> None:  # never runs here
        return None

    n = len(messages)
    count = 0

    def on_message(message: Any) -> None:
        nonlocal count
        payload = json.loads(message.body)
        noop.apply_async((payload,))
        message.ack()
        count += 1

    cpu = CpuMeter(os.getpid(), "consumer (this process)")
    elapsed = consume_timed(brokers, queue, on_message, lambda: count < n, prefetch)
    cpu.stop()
    ok, counts = verify_empty(lambda: brokers.pulse_counts(queue))
    handed = brokers.celery_ready()
    app.close()
    brokers.delete_pulse_queue(queue)
    brokers.purge_celery()
    extra = f"task messages on the Celery broker: {handed}; {cpu.report(n)}"
    return report_rate("handwritten", n, elapsed, ok, counts, extra)


def phase_enqueue(
    brokers: Brokers, messages: list, workdir: Path, concurrency: int, profile: bool, tls: bool = False
) -> float:
    """pulse_celery enqueue in a real worker that consumes only Pulse (-Q names an idle queue)."""
    name = "enqueue-tls" if tls else "enqueue"
    queue = brokers.pulse_queue("bench-enqueue")
    prefill_pulse(brokers, messages, queue)
    brokers.purge_celery()
    n = len(messages)
    worker = start_worker(brokers, workdir, name, "enqueue", "bench-enqueue", concurrency, True, tls=tls)
    profiler = None
    if profile:
        time.sleep(0.3)  # let the interpreter come up before py-spy attaches
        profiler = Profiler(worker.process.pid, workdir / f"{name}.pyspy.txt")
    start = log_time(worker, "Connected to Pulse")
    cpu = CpuMeter(worker.process.pid)
    drained = wait_until(
        lambda: brokers.pulse_ready(queue) == 0 and brokers.celery_ready() >= n, drain_timeout(n)
    )
    end = time.time()
    cpu_use = cpu.stop().report(n)
    if profiler is not None:
        profiler.stop_and_report()
    ok, counts = verify_empty(lambda: brokers.pulse_counts(queue))
    handed = brokers.celery_ready()
    stop_worker(worker)
    brokers.delete_pulse_queue(queue)
    brokers.purge_celery()
    if not drained:
        print(f"  {name}: did not drain within {drain_timeout(n):.0f} s ({worker.log_path})")
        return 0.0
    return report_rate(
        name,
        n,
        end - start,
        ok and handed == n,
        counts,
        f"task messages on the Celery broker: {handed} (expected {n}); {cpu_use}",
    )


def phase_complete(
    brokers: Brokers, messages: list, workdir: Path, concurrency: int, profile: bool, tls: bool = False
) -> float:
    """pulse_celery complete: the no-op task runs in this worker's prefork pool."""
    name = "complete-tls" if tls else "complete"
    queue = brokers.pulse_queue("bench-complete")
    prefill_pulse(brokers, messages, queue)
    brokers.purge_celery()
    n = len(messages)
    worker = start_worker(brokers, workdir, name, "complete", "bench-complete", concurrency, False, tls=tls)
    profiler = None
    if profile:
        time.sleep(0.3)  # let the interpreter come up before py-spy attaches
        profiler = Profiler(worker.process.pid, workdir / f"{name}.pyspy.txt")
    start = log_time(worker, "Connected to Pulse")
    cpu = CpuMeter(worker.process.pid)
    drained = wait_until(lambda: brokers.pulse_ready(queue) == 0, drain_timeout(n))
    end = time.time()
    cpu_use = cpu.stop().report(n)
    if profiler is not None:
        profiler.stop_and_report()
    ok, counts = verify_empty(lambda: brokers.pulse_counts(queue))
    stop_worker(worker)
    brokers.delete_pulse_queue(queue)
    if not drained:
        print(f"  {name}: did not drain within {drain_timeout(n):.0f} s ({worker.log_path})")
        return 0.0
    return report_rate(name, n, end - start, ok, counts, cpu_use)


def phase_celery(brokers: Brokers, messages: list, workdir: Path, concurrency: int, profile: bool) -> float:
    """Celery's own: the same no-op task, N task messages pre-published to the Celery queue."""
    brokers.purge_celery()
    prefill_celery(brokers, messages)
    n = len(messages)
    worker = start_worker(brokers, workdir, "celery", "none", "unused", concurrency, False)
    profiler = None
    if profile:
        time.sleep(0.3)  # let the interpreter come up before py-spy attaches
        profiler = Profiler(worker.process.pid, workdir / "celery.pyspy.txt")
    start = log_time(worker, " ready.")
    cpu = CpuMeter(worker.process.pid)
    drained = wait_until(lambda: brokers.celery_ready() == 0, drain_timeout(n))
    end = time.time()
    cpu.stop()
    if profiler is not None:
        profiler.stop_and_report()
    ok, counts = verify_empty(lambda: brokers.celery_counts())
    stop_worker(worker)
    brokers.purge_celery()
    if not drained:
        print(f"  celery: did not drain within {drain_timeout(n):.0f} s ({worker.log_path})")
        return 0.0
    return report_rate("celery", n, end - start, ok, counts, cpu.report(n))


def report_rate(name: str, n: int, elapsed: float, ok: bool, counts: Any, extra: str = "") -> float:
    rate = n / elapsed if elapsed > 0 else 0.0
    state = "verified 0 ready / 0 unacked" if ok else f"NOT VERIFIED (rabbitmqctl: {counts})"
    print(
        f"  {name}: {n} messages in {elapsed:.2f} s = {rate:,.0f} msg/s; {state}"
        + (f"; {extra}" if extra else "")
    )
    sys.stdout.flush()
    return rate if ok else 0.0


def phase_rss(brokers: Brokers, messages: list, workdir: Path, concurrency: int) -> dict[str, float]:
    """Idle RSS of an enqueue worker, then its peak while a backlog of N waits and drains.

    The worker's main process is stopped (SIGSTOP) while the backlog is published, so the
    whole backlog is really waiting when it resumes (SIGCONT).
    """
    queue = brokers.pulse_queue("bench-rss")
    brokers.purge_celery()
    n = len(messages)
    worker = start_worker(brokers, workdir, "rss", "enqueue", "bench-rss", concurrency, True)
    pid = worker.process.pid
    log_time(worker, "Connected to Pulse")
    time.sleep(2.0)
    idle_main = idle_kids = 0
    for _ in range(10):
        idle_main = max(idle_main, rss_kb(pid))
        idle_kids = max(idle_kids, children_rss_kb(pid))
        time.sleep(0.1)
    os.kill(pid, signal.SIGSTOP)
    try:
        prefill_pulse(brokers, messages, queue, in_flight=brokers.prefetch_count)
        backlog = brokers.pulse_ready(queue)
    finally:
        os.kill(pid, signal.SIGCONT)
    t0 = time.monotonic()
    peak = {"main": idle_main, "kids": idle_kids}

    def sample() -> None:
        peak["main"] = max(peak["main"], rss_kb(pid))
        peak["kids"] = max(peak["kids"], children_rss_kb(pid))

    drained = wait_until(
        lambda: brokers.pulse_ready(queue) == 0 and brokers.celery_ready() >= n, drain_timeout(n), tick=sample
    )
    elapsed = time.monotonic() - t0
    for _ in range(10):  # a little after the drain, too
        sample()
        time.sleep(0.05)
    after_main = rss_kb(pid)
    stop_worker(worker)
    brokers.delete_pulse_queue(queue)
    brokers.purge_celery()
    result = {
        "backlog": backlog,
        "idle_main_mb": idle_main / 1024,
        "peak_main_mb": peak["main"] / 1024,
        "after_main_mb": after_main / 1024,
        "idle_kids_mb": idle_kids / 1024,
        "peak_kids_mb": peak["kids"] / 1024,
        "drained": drained,
        "drain_rate": n / elapsed if drained else 0.0,
    }
    print(
        f"  rss: backlog {backlog} ready (+ up to {brokers.prefetch_count} prefetched); "
        f"main idle {result['idle_main_mb']:.1f} MB, peak "
        f"{result['peak_main_mb']:.1f} MB, after {result['after_main_mb']:.1f} MB; children idle "
        f"{result['idle_kids_mb']:.1f} MB, peak {result['peak_kids_mb']:.1f} MB; drained after SIGCONT "
        f"at {result['drain_rate']:,.0f} msg/s"
    )
    return result


# Runs inside RabbitMQ (one ``rabbitmqctl eval``): every 50 ms until End (ms since the epoch),
# the queue's ready + unacked, exact. A quorum queue is asked through its Raft state machine;
# ``list_queues`` would give its metrics, which lag by seconds.
QUEUE_DEPTH_SAMPLER = """
{ok, Q} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"~VHOST~">>, queue, <<"~QUEUE~">>)),
Depth = case amqqueue:get_type(Q) of
    rabbit_quorum_queue ->
        fun() ->
            {ok, {_, N}, _} = ra:local_query(amqqueue:get_pid(Q), fun rabbit_fifo:query_messages_total/1),
            N
        end;
    _ -> fun() -> [{messages, N}] = rabbit_amqqueue:info(Q, [messages]), N end
end,
Now = fun() -> erlang:system_time(millisecond) end,
Loop = fun L(Max, Count, First) ->
    case Now() < ~END~ of
        false -> {Max, Count, First};
        true -> D = Depth(), timer:sleep(50), L(max(Max, D), Count + 1, First)
    end
end,
Loop(0, 0, Now()).
"""


class DepthSampler:
    """Max depth of a Pulse queue while a worker consumes it, measured so as not to disturb it.

    Guardian counts ready + unacked. That is sampled inside RabbitMQ every 50 ms by one
    ``rabbitmqctl eval`` started before the phase, when its Erlang VM's start (about half a
    second of CPU) costs the worker nothing. Sampling instead with a ``rabbitmqctl
    list_queues`` every 2 s, measured at 450 msg/s under ``complete``, took the latency p99
    from 6-10 ms to 49 ms and the peak from 0-2 ready to 24; back to back, it once took the
    peak at 1,000 msg/s to 694. A passive ``queue.declare`` every 20 ms gives the ready
    messages alone, as a cross-check.
    """

    def __init__(self, brokers: Brokers, queue: str, seconds: float) -> None:
        self.brokers = brokers
        self.queue = queue
        self.max_ready = 0
        self.samples = 0
        self.max_total: int | None = None
        self.total_samples = 0
        self.started_ms = 0
        self.end_ms = int(1000 * (time.time() + seconds))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._passive, daemon=True)
        expr = (
            QUEUE_DEPTH_SAMPLER.replace("~VHOST~", brokers.pulse.vhost)
            .replace("~QUEUE~", queue)
            .replace("~END~", str(self.end_ms))
        )
        self._ctl = subprocess.Popen(
            ["nice", "-n", "19", "rabbitmqctl", "-q", "eval", expr],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        SIDE_PROCESSES.append(self._ctl)

    def __enter__(self) -> DepthSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        try:
            out, _ = self._ctl.communicate(timeout=max(5.0, self.end_ms / 1000 - time.time() + 30))
        except subprocess.TimeoutExpired:
            self._ctl.kill()
            out = ""
        SIDE_PROCESSES.remove(self._ctl)
        found = re.fullmatch(r"\{(\d+),(\d+),(\d+)\}", out.strip())
        if found:
            self.max_total, self.total_samples, self.started_ms = (int(g) for g in found.groups())
        else:
            print(f"  the in-broker depth sampler failed: {out.strip()[:300]}")

    def _passive(self) -> None:
        conn = amqp_connect(self.brokers.pulse.vhost)
        ch = conn.channel()
        try:
            while not self._stop.is_set():
                self.max_ready = max(self.max_ready, ch.queue_declare(self.queue, passive=True).message_count)
                self.samples += 1
                time.sleep(0.02)
        finally:
            conn.collect()


def phase_latency(
    brokers: Brokers, workdir: Path, policy: str, rate: float, seconds: float, concurrency: int
) -> dict[str, Any]:
    """Publish at a steady rate for a while; the task records publish -> start; sample queue depth."""
    suffix = f"bench-latency-{policy}"
    queue = brokers.pulse_queue(suffix)
    brokers.purge_celery()
    record = workdir / f"latency-{policy}.txt"
    record.unlink(missing_ok=True)
    # Under enqueue the same worker also runs the tasks from the Celery queue.
    worker = start_worker(brokers, workdir, f"latency-{policy}", policy, suffix, concurrency, False, record)
    log_time(worker, "Connected to Pulse")
    log_time(worker, " ready.")
    total = int(rate * seconds)
    template = pulse_messages(1)[0]
    body = json.loads(template[1])
    ch = brokers.pulse_conn.channel()  # no confirms: pacing must not wait; the records prove arrival
    # The in-broker sampler's Erlang VM starts while the worker is still idle.
    with DepthSampler(brokers, queue, SAMPLER_START + seconds + 5) as depth:
        time.sleep(SAMPLER_START)
        published_from_ms = time.time() * 1000
        t0 = time.monotonic()
        for i in range(total):
            target = t0 + i / rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            body["bench_published_at"] = time.time()
            ch.basic_publish(
                pulse_amqp_message(json.dumps(body).encode(), template[2]),
                exchange=EXCHANGE,
                routing_key=template[0],
            )
        publish_elapsed = time.monotonic() - t0

        def done() -> int:
            if not record.exists():
                return 0
            with open(record) as f:
                return sum(1 for _ in f)

        arrived = wait_until(lambda: done() >= total, 60, interval=0.1)
    ch.close()
    latencies = sorted(float(x) for x in record.read_text().split()) if record.exists() else []
    stop_worker(worker)
    brokers.delete_pulse_queue(queue)
    brokers.purge_celery()

    def pct(p: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000 if latencies else float("nan")
        )

    result = {
        "policy": policy,
        "offered": total / publish_elapsed,
        "sent": total,
        "ran": len(latencies),
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
        "max_ready": depth.max_ready,
        "max_total": depth.max_total,
        "complete": arrived,
    }
    if depth.max_total is None:
        total_text = "ready + unacked not measured"
    else:
        late = depth.started_ms - published_from_ms
        total_text = f"{depth.max_total} ready + unacked ({depth.total_samples} samples inside RabbitMQ" + (
            f", from {late:.0f} ms after publishing began)" if late > 0 else ")"
        )
    print(
        f"  latency {policy}: offered {result['offered']:,.0f} msg/s for {publish_elapsed:.1f} s; "
        f"{len(latencies)}/{total} tasks ran; p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, "
        f"max {result['max_ms']:.1f} ms; Pulse queue depth max {total_text}; {depth.max_ready} ready "
        f"({depth.samples} passive declares)"
    )
    return result


# -- main ------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def ratio(a: float | None, b: float | None) -> float | None:
    if not a or not b:
        return None
    return a / b


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def parse_args(argv: Iterable[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=20000, help="messages per throughput phase (default 20000)")
    p.add_argument(
        "--rate", type=float, default=1000, help="offered msg/s in the latency phase (default 1000)"
    )
    p.add_argument(
        "--latency-seconds", type=float, default=10, help="length of the latency phase (default 10)"
    )
    p.add_argument("--latency-policies", default="enqueue,complete", help="default: enqueue,complete")
    p.add_argument("--concurrency", type=int, default=2, help="prefork pool size (default 2)")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="run the throughput phases this many times, interleaved, and report the medians (default 3)",
    )
    p.add_argument("--queue-type", choices=("quorum", "classic"), default="quorum", help="Pulse queue type")
    p.add_argument(
        "--celery-queue-type",
        choices=("classic", "quorum"),
        default="classic",
        help="the Celery app's task_default_queue_type (default classic, Celery's)",
    )
    p.add_argument(
        "--pulse-prefetch-count",
        type=int,
        default=PULSE_PREFETCH,
        help=f"the workers' pulse_prefetch_count, the prefetch of enqueue queues (default {PULSE_PREFETCH})",
    )
    p.add_argument(
        "--phases", default=",".join(ALL_PHASES), help=f"throughput phases (default {','.join(ALL_PHASES)})"
    )
    p.add_argument("--skip-latency", action="store_true")
    p.add_argument("--skip-rss", action="store_true")
    p.add_argument(
        "--py-spy", action="store_true", help="profile the enqueue, celery and complete workers (slow)"
    )
    p.add_argument("--workdir", type=Path, help="where worker logs go (default: a temporary directory)")
    return p.parse_args(argv)


def round_order(phases: list[str], round_number: int) -> list[str]:
    """The phases of one round: each TLS phase beside its plain twin, the twin first in odd rounds.

    Side by side, so that both see the same machine; swapped every round, so that neither
    always runs second (a second slot ran faster in the engine-split series).
    """
    order: list[str] = []
    for name in ("ceiling", "bare", "handwritten", "enqueue", "celery", "complete"):
        tls_name = f"{name}-tls"
        pair = [p for p in (name, tls_name) if p in phases]
        order += pair if round_number % 2 else pair[::-1]
    return order


def main(argv: Iterable[str] | None = None) -> int:
    args = parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = set(phases) - set(ALL_PHASES)
    if unknown:
        raise SystemExit(f"unknown phases: {', '.join(sorted(unknown))}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="pulse-celery-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    import celery
    import kombu

    import pulse_celery

    print(
        f"pulse_celery benchmark: N={args.n}, {os.cpu_count()} CPUs, prefork -c {args.concurrency}, "
        f"Pulse queue {args.queue_type}, enqueue prefetch {args.pulse_prefetch_count}, "
        f"Celery queue {args.celery_queue_type}, "
        f"pulse_celery {pulse_celery.__version__}, "
        f"celery {celery.__version__}, "
        f"kombu {kombu.__version__}, py-amqp {amqp.__version__}, Python {sys.version.split()[0]}"
    )
    print(f"worker logs: {workdir}")
    brokers = Brokers(args.queue_type, args.pulse_prefetch_count, args.celery_queue_type)
    rates: dict[str, float] = {}
    runs: dict[str, list[float]] = {}
    rss: dict[str, Any] | None = None
    latency: list[dict[str, Any]] = []
    scaled: list[dict[str, Any]] = []  # the latency phase at the load the issue meant, scaled
    try:
        brokers.setup()
        print(
            f"vhosts: {brokers.pulse.vhost} (Pulse-like, user {brokers.pulse.user}), "
            f"{brokers.celery_vhost} (Celery)"
        )
        messages = pulse_messages(args.n)
        print(
            f"{args.n} Taskcluster task-completed messages, {len(messages[0][1])} bytes of JSON each, "
            "3 CC routes"
        )
        sys.stdout.flush()
        run_phase: dict[str, Callable[[], float]] = {
            "ceiling": lambda: phase_ceiling(brokers, messages),
            "ceiling-tls": lambda: phase_ceiling(brokers, messages, tls=True),
            "bare": lambda: phase_bare(brokers, messages),
            "handwritten": lambda: phase_handwritten(brokers, messages),
            "enqueue": lambda: phase_enqueue(brokers, messages, workdir, args.concurrency, args.py_spy),
            "enqueue-tls": lambda: phase_enqueue(
                brokers, messages, workdir, args.concurrency, args.py_spy, tls=True
            ),
            "celery": lambda: phase_celery(brokers, messages, workdir, args.concurrency, args.py_spy),
            "complete": lambda: phase_complete(brokers, messages, workdir, args.concurrency, args.py_spy),
            "complete-tls": lambda: phase_complete(
                brokers, messages, workdir, args.concurrency, args.py_spy, tls=True
            ),
        }
        for round_number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"round {round_number} of {args.rounds}")
            for name in round_order(phases, round_number):
                runs.setdefault(name, []).append(run_phase[name]())
        # The median of the rounds: one slow or fast round (another process on the machine,
        # a quorum-queue snapshot) moves no figure.
        rates = {name: statistics.median(values) for name, values in runs.items()}
        if not args.skip_rss:
            rss = phase_rss(brokers, messages, workdir, args.concurrency)
        if not args.skip_latency:
            policies = [p.strip() for p in args.latency_policies.split(",") if p.strip()]
            for policy in policies:
                latency.append(
                    phase_latency(brokers, workdir, policy, args.rate, args.latency_seconds, args.concurrency)
                )
            if rates.get("ceiling"):
                scaled_rate = round(T_DEPTH_RATE * rates["ceiling"] / REFERENCE_CEILING)
                if abs(scaled_rate - args.rate) > 0.15 * args.rate:
                    print(
                        f"  this machine's ceiling is {rates['ceiling']:,.0f} msg/s, the issue's "
                        f"{REFERENCE_CEILING:,}: the same load here is {scaled_rate:,} msg/s"
                    )
                    for policy in policies:
                        scaled.append(
                            phase_latency(
                                brokers, workdir, policy, scaled_rate, args.latency_seconds, args.concurrency
                            )
                        )
    except KeyboardInterrupt:
        print("interrupted: cleaning up")
        return 130
    finally:
        for proc in list(SIDE_PROCESSES):
            proc.kill()
        for worker in list(WORKERS):
            worker.kill()
        brokers.teardown()

    print()
    what = f"median of {args.rounds} rounds, " if args.rounds > 1 else ""
    print(f"Throughput, N={args.n} ({what}msg/s; ratio to the ceiling, phase 1)")
    labels = {
        "ceiling": "1  ceiling: bare kombu consumer, ack each (prefetch 200)",
        "bare": f"1b bare hand-off: py-amqp, confirms pipelined (prefetch {args.pulse_prefetch_count})",
        "handwritten": "2  hand-written: apply_async + confirm_publish, then ack",
        "enqueue": f"3  pulse_celery enqueue, celery worker -c {args.concurrency}",
        "celery": f"4a Celery's own: no-op task from a Celery queue, -c {args.concurrency}",
        "complete": f"4b pulse_celery complete: no-op task, prefork -c {args.concurrency}",
    }
    ceiling = rates.get("ceiling")
    labels.update(
        {
            "ceiling-tls": "1t ceiling over TLS (amqps://, verified)",
            "enqueue-tls": "3t pulse_celery enqueue, Pulse over TLS",
            "complete-tls": "4t pulse_celery complete, Pulse over TLS",
        }
    )
    shown = ("ceiling", "ceiling-tls", "bare", "handwritten", "enqueue", "enqueue-tls", "celery", "complete")
    for key in (*shown, "complete-tls"):
        if key in rates:
            each = ", ".join(f"{value:,.0f}" for value in runs[key]) if args.rounds > 1 else ""
            print(
                f"  {labels[key]:<64} {rates[key]:>8,.0f}  {fmt_ratio(ratio(rates[key], ceiling)):>7}"
                + (f"  (rounds: {each})" if each else "")
            )
    print()
    print("Targets (issue 4)")
    failed = False

    def line(ok: bool, text: str) -> None:
        nonlocal failed
        failed = failed or not ok
        print(f"  {verdict(ok)}  {text}")

    r = ratio(rates.get("enqueue"), rates.get("handwritten"))
    if r is not None or ("enqueue" in phases and "handwritten" in phases):
        line(
            r is not None and r >= T_ENQUEUE_VS_HAND,
            f"enqueue / hand-written = {fmt_ratio(r)} (target >= {T_ENQUEUE_VS_HAND:g}x)",
        )
    r = ratio(rates.get("enqueue"), rates.get("ceiling"))
    if r is not None or ("enqueue" in phases and "ceiling" in phases):
        line(
            r is not None and r >= T_ENQUEUE_VS_CEILING,
            f"enqueue / ceiling = {fmt_ratio(r)} (target >= {T_ENQUEUE_VS_CEILING:g}x)",
        )
    r = ratio(rates.get("enqueue"), rates.get("bare"))
    if r is not None:
        print(
            f"  info  enqueue / bare hand-off (1b) = {fmt_ratio(r)}; bare hand-off / ceiling = "
            f"{fmt_ratio(ratio(rates.get('bare'), rates.get('ceiling')))}"
        )
    r = ratio(rates.get("complete"), rates.get("celery"))
    if r is not None or ("complete" in phases and "celery" in phases):
        line(
            r is not None and r >= T_COMPLETE_VS_CELERY,
            f"complete / Celery's own = {fmt_ratio(r)} (target >= {T_COMPLETE_VS_CELERY:g}x)",
        )
    if any(name in rates for name in TLS_TWINS):
        print(
            "  info  TLS / plain, side by side: "
            + "; ".join(
                f"{plain} {fmt_ratio(ratio(rates.get(tls), rates.get(plain)))}"
                for tls, plain in TLS_TWINS.items()
                if tls in rates
            )
        )
    r = ratio(rates.get("enqueue-tls"), rates.get("enqueue"))
    if r is not None or ("enqueue-tls" in phases and "enqueue" in phases):
        line(
            r is not None and r >= T_ENQUEUE_TLS_VS_PLAIN,
            f"enqueue over TLS / enqueue plain = {fmt_ratio(r)} "
            f"(target >= {T_ENQUEUE_TLS_VS_PLAIN:g}x, issue 12)",
        )
    if rss is not None:
        delta = rss["peak_main_mb"] - rss["idle_main_mb"]
        line(
            rss["drained"] and delta <= T_RSS_MB,
            f"worker main process RSS, backlog {rss['backlog']} ready: peak "
            f"{rss['peak_main_mb']:.1f} MB vs idle {rss['idle_main_mb']:.1f} MB = +{delta:.1f} MB "
            f"(target <= +{T_RSS_MB:g} MB; the issue's backlog is 100,000)",
        )
        print(
            f"  info  pool children RSS (sum): idle {rss['idle_kids_mb']:.1f} MB, "
            f"peak {rss['peak_kids_mb']:.1f} MB "
            f"(+{rss['peak_kids_mb'] - rss['idle_kids_mb']:.1f} MB)"
        )
    for lat in latency:
        note = "" if args.rate == T_DEPTH_RATE else f"; the target is defined at {T_DEPTH_RATE:,} msg/s"
        depth = lat["max_total"] if lat["max_total"] is not None else float("inf")
        line(
            lat["complete"] and lat["ran"] >= lat["sent"] and depth < T_DEPTH,
            f"{lat['policy']}: Pulse queue depth at {lat['offered']:,.0f} msg/s offered: max {depth} "
            f"(target < {T_DEPTH}{note}); {lat['ran']}/{lat['sent']} ran",
        )
        print(
            f"  info  {lat['policy']}: latency publish -> task start p50 {lat['p50_ms']:.1f} ms, "
            f"p99 {lat['p99_ms']:.1f} ms (no target)"
        )
    for lat in scaled:
        ran = lat["ran"] >= lat["sent"] and lat["complete"]
        print(
            f"  info  {lat['policy']}: at {lat['offered']:,.0f} msg/s offered (1,000 x this machine's "
            f"ceiling / {REFERENCE_CEILING:,}): depth max {lat['max_total']}, p50 {lat['p50_ms']:.1f} ms, "
            f"p99 {lat['p99_ms']:.1f} ms; {lat['ran']}/{lat['sent']} ran" + ("" if ran else " (NOT ALL)")
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
