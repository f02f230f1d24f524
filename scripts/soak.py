#!/usr/bin/env python3
"""Long soak test of pulse_celery under real faults, kept out of CI.

    python scripts/soak.py --minutes 60 --policy enqueue [--tls] [--own-node PORT] [--dedupe [REDIS_URL]]

It makes a fresh Pulse-like vhost and user (Guardian's permissions, Taskcluster's
task-completed exchange) and a fresh Celery vhost on the local RabbitMQ, starts one
``tests/integration/apps/faults_app`` worker, and for ``--minutes`` offers ``--rate``
Taskcluster-shaped messages a second, each with a unique ``id``. The publisher retries every
message until the broker confirms it, as a real Pulse publisher does, so it rides out broker
restarts. With ``--tls`` the worker reaches Pulse as production Pulse is reached: over
``amqps://localhost:5671`` (scripts/rabbitmq-tls.sh), verifying the certificate and host name
against the test CA. With ``--own-node PORT`` it starts a RabbitMQ node of its own
(``pulse_celery.testing.RabbitNode``: AMQP on PORT, TLS on PORT+1), runs everything there and
stops it at the end, so that its faults touch nothing else on this machine; two soaks can then
run side by side. With ``--dedupe`` the binding dedupes (store: the local Redis, or the URL
given) and 0 duplicates becomes a target. Every ``--fault-every MIN MAX`` seconds (uniform,
seeded) it injects one real fault:

- ``close_all_connections``: ``rabbitmqctl close_all_connections --global`` (every connection on
  the node, those of other users of this RabbitMQ too);
- ``broker_restart``: ``rabbitmqctl stop_app``, 3 s, ``start_app``, ``await_startup``;
- ``close_pulse_connections``: ``rabbitmqctl close_connection`` on the Pulse user's connections;
- ``worker_sigkill``: SIGKILL of the worker's process group, then a new worker;
- ``worker_sigterm``: SIGTERM (warm shutdown), wait for it, then a new worker.

Then it stops publishing, waits (bounded) until every published id has a ``done`` record and
the Pulse queue holds 0 ready and 0 unacked, stops the worker, removes the vhosts and the user,
and prints its figures with PASS/FAIL next to each target. The exit status is 0 only on PASS.

Everything goes to 127.0.0.1. The run stops hard at ``--minutes`` + 10 minutes, and Ctrl-C
(or SIGTERM) cleans up: a stopped broker is started again, the worker is stopped and the
vhosts and user are deleted. The worker log and the task records stay in the directory that
is printed at the start.
"""

from __future__ import annotations

import _thread
import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Any

from kombu import Connection, Exchange, Producer

from pulse_celery.testing import (
    CeleryVhost,
    PulseLikeBroker,
    RabbitNode,
    Worker,
    children_rss_kb,
    rss_kb,
    taskcluster_message,
)

ROOT = Path(__file__).resolve().parents[1]
#: The app under test is the fault tests' own (run by `celery -A`, not imported here).
APPS = ROOT / "tests" / "integration" / "apps"
TASK_COMPLETED = "exchange/taskcluster-queue/v1/task-completed"
LOOPBACK = "127.0.0.1"
FAULTS = (
    "close_all_connections",
    "broker_restart",
    "close_pulse_connections",
    "worker_sigkill",
    "worker_sigterm",
)
HARD_STOP_EXTRA = 600.0  # the run ends, whatever happens, this long after --minutes
DRAIN_LIMIT = 300.0  # the most we wait, after publishing stops, for everything to be handled
CLEANUP_RESERVE = 180.0  # kept free before the hard stop for stopping the worker and tearing down
WORKER_START_TIMEOUT = 90.0
WARM_STOP_TIMEOUT = 120.0
PROGRESS_EVERY = 30.0

T0 = time.monotonic()


def log(message: str) -> None:
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    print(f"[{stamp} +{time.monotonic() - T0:7.1f}s] {message}", flush=True)


#: The node the soak runs on (``rabbitmqctl -n``); None: the local default node.
NODE: str | None = None


def ctl(*args: str, timeout: float = 120) -> str:
    """Run ``rabbitmqctl -q ARGS`` in its own session, so a Ctrl-C meant for us does not kill it."""
    result = subprocess.run(
        ["rabbitmqctl", "-q", *(["-n", NODE] if NODE else []), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        start_new_session=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip() or result.stdout}")
    return result.stdout


class Interrupted(Exception):
    """Ctrl-C, SIGTERM or the hard stop."""


# --------------------------------------------------------------------------------------------
# Publisher


class PacedPublisher(threading.Thread):
    """Offer ids 0, 1, ... at ``rate`` a second for ``duration`` seconds.

    Message ``i`` is due at ``start + i / rate``. It is retried until the broker confirms it,
    so ids ``0 .. confirmed - 1`` are all confirmed. After an outage the messages that fell
    due meanwhile go out as fast as the broker confirms them.
    """

    def __init__(self, pulse: PulseLikeBroker, rate: float, duration: float) -> None:
        super().__init__(name="publisher", daemon=True)
        self.pulse, self.rate, self.duration = pulse, rate, duration
        self.confirmed = 0
        self.failed_attempts = 0
        self.outages = 0
        self.longest_outage = 0.0
        self.unconfirmed_id: int | None = None  # the id in flight when we had to give up
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.error: str | None = None
        self._abort = threading.Event()

    @property
    def offered(self) -> int:
        return int(self.duration * self.rate)

    def abort(self) -> None:
        self._abort.set()

    def _connection(self) -> Connection:
        assert self.pulse.host == LOOPBACK
        return Connection(
            hostname=self.pulse.host,
            port=self.pulse.port,
            userid=self.pulse.admin_user,
            password=self.pulse.admin_password,
            virtual_host=self.pulse.vhost,
            connect_timeout=5,
            transport_options={"confirm_publish": True},
        )

    @staticmethod
    def _publish(conn: Connection, key: str, body: dict[str, Any], routes: list[str]) -> None:
        # As pulse_celery.testing.publish, plus timeouts: a broker that neither confirms nor
        # closes (a resource alarm, say) must not hang the soak.
        Producer(conn.default_channel).publish(
            json.dumps(body).encode(),
            exchange=Exchange(TASK_COMPLETED, type="topic", passive=True),
            routing_key=key,
            content_type="application/json",
            content_encoding="utf-8",
            headers={"CC": routes},
            delivery_mode=2,
            declare=[],
            retry=False,
            timeout=10,
            confirm_timeout=10,
        )

    def run(self) -> None:
        try:
            self._run()
        except Exception:
            self.error = traceback.format_exc()
            log(f"publisher crashed:\n{self.error}")
        finally:
            self.finished_at = time.monotonic()

    def _run(self) -> None:
        conn: Connection | None = None
        self.started_at = start = time.monotonic()
        for i in range(self.offered):
            due = start + i / self.rate
            while not self._abort.is_set() and time.monotonic() < due:
                time.sleep(min(0.05, max(0.0, due - time.monotonic())))
            if self._abort.is_set():
                break
            key, body = taskcluster_message("completed", worker_type="gecko-t-soak")
            body["id"] = i
            routes = [f"route.tc-treeherder.v2.soak.{body['status']['taskId']}.0"]
            down_since: float | None = None
            while True:
                if self._abort.is_set():
                    self.unconfirmed_id = i
                    break
                try:
                    if conn is None:
                        conn = self._connection()
                        conn.ensure_connection(max_retries=1)
                    self._publish(conn, key, body, routes)
                except Exception as exc:
                    self.failed_attempts += 1
                    if down_since is None:
                        down_since = time.monotonic()
                        self.outages += 1
                        log(f"publisher: id {i} not confirmed ({type(exc).__name__}: {exc}); retrying")
                    if conn is not None:
                        conn.collect()
                    conn = None
                    self._abort.wait(0.5)
                    continue
                if down_since is not None:
                    outage = time.monotonic() - down_since
                    self.longest_outage = max(self.longest_outage, outage)
                    log(f"publisher: confirmed again after {outage:.1f} s (id {i})")
                self.confirmed = i + 1
                break
            if self.unconfirmed_id is not None:
                break
        if conn is not None:
            try:
                conn.release()
            except Exception:
                conn.collect()


# --------------------------------------------------------------------------------------------
# Task records


class Records:
    """Read the app's JSON-lines RECORD file incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.done: Counter[int] = Counter()
        self.starts = 0
        self.done_redelivered = 0
        self.bad_lines = 0

    def update(self) -> Records:
        if not self.path.exists():
            return self
        with open(self.path, "rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                self.bad_lines += 1
                continue
            if record.get("event") == "done":
                self.done[record.get("id")] += 1
                if record.get("redelivered"):
                    self.done_redelivered += 1
            elif record.get("event") == "start":
                self.starts += 1
        return self

    def missing(self, n: int) -> list[int]:
        return [i for i in range(n) if i not in self.done]


# --------------------------------------------------------------------------------------------
# The soak


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.duration = args.minutes * 60.0
        self.hard_deadline = T0 + self.duration + HARD_STOP_EXTRA
        self.workdir = Path(tempfile.mkdtemp(prefix=f"pulse-celery-soak-{args.policy}-"))
        self.records = Records(self.workdir / "records.jsonl")
        self.pulse: PulseLikeBroker | None = None
        self.node: RabbitNode | None = None
        self.celery: CeleryVhost | None = None
        self.worker: Worker | None = None
        self.publisher: PacedPublisher | None = None
        self.queue = ""
        # state the clean-up needs
        self.broker_stopped = False
        self.worker_down_on_purpose = False
        self._cleaned = False
        self._cleanup_lock = threading.Lock()
        # figures
        self.faults: Counter[str] = Counter()
        self.fault_failures: list[str] = []
        self.deliberate_restarts = 0
        self.unexpected_deaths: list[str] = []
        self.slow_starts = 0
        self.warm_stops: list[tuple[str, int | None, float]] = []  # (when, exit code, seconds)
        self.publish_started: float | None = None
        self.publish_ended: float | None = None
        self.drained = False
        self.drain_seconds: float | None = None
        self.final_counts: tuple[int, int] | None = None
        self.celery_queues: dict[str, tuple[int, int]] = {}
        self.worker_alive_at_end = False
        self.final_stop_code: int | None = None
        self.worker_log_errors: Counter[str] = Counter()
        self.interrupted: str | None = None
        #: RSS samples (main process + pool children, MB) per worker pid, in order
        self.rss: dict[int, list[tuple[float, float]]] = {}

    # ---------------------------------------------------------------- setup and teardown

    def setup(self) -> None:
        log(f"work directory (worker log, task records): {self.workdir}")
        if self.args.own_node:
            global NODE
            port = self.args.own_node
            self.node = RabbitNode(name=f"pulse-soak-{port}", port=port, tls_port=port + 1)
            log(f"starting a RabbitMQ node of our own: {self.node.node}, AMQP {port}, TLS {port + 1}")
            self.node.start()
            NODE = self.node.node
            self.pulse = PulseLikeBroker(
                host=LOOPBACK, tls=self.args.tls, node=NODE, port=port, tls_port=port + 1
            )
        else:
            self.pulse = PulseLikeBroker(host=LOOPBACK, tls=self.args.tls)
        self._warn_about_other_users()
        log(f"creating Pulse-like vhost {self.pulse.vhost} and user {self.pulse.user}")
        self.pulse.setup([TASK_COMPLETED])
        self.queue = f"queue/{self.pulse.user}/faults"
        self.celery = CeleryVhost(node=NODE, port=self.pulse.port)
        pulse_host = "localhost" if self.args.tls else LOOPBACK
        assert f"@{LOOPBACK}:" in self.celery.url and f"@{pulse_host}:" in self.pulse.url
        log(
            f"the worker reaches Pulse at {self.pulse.url.split('@')[1]}"
            + (" (TLS, verified)" if self.args.tls else "")
        )
        log(f"created Celery vhost {self.celery.name}")
        self.worker = Worker(
            "faults_app",
            cwd=APPS,
            env={
                **self.pulse.env,
                "CELERY_BROKER_URL": self.celery.url,
                "RECORD": str(self.records.path),
                "ACK_POLICY": self.args.policy,
                "TASK_SECONDS": "0",
                "PULSE_HEARTBEAT": "10",
                **({"DEDUPE": "1", "PULSE_DEDUPE_URL": self.args.dedupe} if self.args.dedupe else {}),
            },
            log_path=self.workdir / "worker.log",
        )
        self.start_worker("initial start")

    def _warn_about_other_users(self) -> None:
        try:
            out = ctl("list_connections", "vhost", "user", timeout=30)
        except Exception:
            return
        others = [line for line in out.splitlines() if line.strip() and not line.startswith("vhost\t")]
        if others:
            log(
                f"note: {len(others)} other connection(s) on this RabbitMQ; close_all_connections "
                "--global and broker restarts will hit them too"
            )

    def cleanup(self) -> None:
        """Idempotent: stop publishing, restart a stopped broker, stop the worker, delete vhosts."""
        with self._cleanup_lock:
            if self._cleaned:
                return
            self._cleaned = True
            if self.publisher is not None and self.publisher.is_alive():
                self.publisher.abort()
                self.publisher.join(timeout=15)
            if self.broker_stopped:
                log("clean-up: starting the stopped RabbitMQ app again")
                self._start_broker_app()
            if self.worker is not None and self.worker.alive:
                self.worker_down_on_purpose = True
                log("clean-up: stopping the worker (SIGTERM, then SIGKILL after 60 s)")
                try:
                    self.worker.stop(timeout=60)
                except AssertionError:
                    log("clean-up: worker did not stop within 60 s; killed it")
                except Exception as exc:
                    log(f"clean-up: stopping the worker failed: {exc!r}; killing it")
                    self.worker.kill()
            if self.pulse is not None:
                for args in (("delete_vhost", self.pulse.vhost), ("delete_user", self.pulse.user)):
                    try:
                        ctl(*args, timeout=60)
                    except Exception as exc:
                        log(f"clean-up: rabbitmqctl {' '.join(args)}: {exc}")
            if self.celery is not None:
                try:
                    ctl("delete_vhost", self.celery.name, timeout=60)
                except Exception as exc:
                    log(f"clean-up: rabbitmqctl delete_vhost {self.celery.name}: {exc}")
            log("clean-up done: vhosts and user deleted")
            if self.node is not None:
                log(f"clean-up: stopping our node {self.node.node}")
                try:
                    self.node.stop()
                except Exception as exc:
                    log(f"clean-up: stopping {self.node.node} failed ({exc!r}); killing it")
                    self.node.kill()

    def emergency_stop(self) -> None:
        """The hard stop: kill what we started and remove what we made, then exit."""
        log("HARD STOP: the run exceeded --minutes + 10; killing the worker and tearing down")
        if self.publisher is not None:
            self.publisher.abort()
        if self.worker is not None and self.worker.process is not None:
            try:
                os.killpg(self.worker.process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if self.broker_stopped:
            self._start_broker_app()
        for args in (
            ("delete_vhost", self.pulse.vhost) if self.pulse else None,
            ("delete_user", self.pulse.user) if self.pulse else None,
            ("delete_vhost", self.celery.name) if self.celery else None,
        ):
            if args:
                try:
                    ctl(*args, timeout=20)
                except Exception:
                    pass
        if self.node is not None:
            self.node.kill()
        print("RESULT: FAIL (hard stop)", flush=True)
        os._exit(3)

    def _start_broker_app(self) -> None:
        for attempt in range(3):
            try:
                ctl("start_app", timeout=120)
                ctl("await_startup", timeout=120)
                self.broker_stopped = False
                return
            except Exception as exc:
                log(f"start_app attempt {attempt + 1} failed: {exc}")
                time.sleep(2)

    # ---------------------------------------------------------------- the worker

    def start_worker(self, why: str) -> None:
        assert self.worker is not None
        for attempt in range(1, 4):
            self._check_time()
            try:
                self.worker.start(timeout=WORKER_START_TIMEOUT)
                pid = self.worker.process.pid if self.worker.process else None
                log(f"worker started ({why}), pid {pid}")
                break
            except AssertionError:
                if self.worker.alive:
                    self.slow_starts += 1
                    log(
                        f"worker started ({why}) but did not log 'Connected to Pulse' within "
                        f"{WORKER_START_TIMEOUT:.0f} s; going on"
                    )
                    break
                code = self.worker.process.returncode if self.worker.process else None
                self.unexpected_deaths.append(f"exited with {code} at start ({why}, attempt {attempt})")
                log(f"worker exited with {code} while starting ({why}):\n{self.worker.log()[-3000:]}")
        else:
            raise RuntimeError("the worker failed to start three times")
        self.worker_down_on_purpose = False

    def check_worker(self) -> None:
        """Restart (and count) a worker that died without being told to."""
        assert self.worker is not None
        if self.worker_down_on_purpose or self.worker.alive:
            return
        code = self.worker.process.returncode if self.worker.process else None
        self.unexpected_deaths.append(f"exited with {code} at +{time.monotonic() - T0:.0f}s")
        log(f"WORKER DIED unexpectedly (exit status {code}); log tail:\n{self.worker.log()[-3000:]}")
        self.start_worker("after an unexpected death")

    # ---------------------------------------------------------------- faults

    def inject(self, kind: str) -> None:
        assert self.worker is not None and self.pulse is not None
        log(f"FAULT #{sum(self.faults.values()) + 1}: {kind}")
        started = time.monotonic()
        if kind == "close_all_connections":
            ctl("close_all_connections", "--global", "pulse_celery soak: fault injected")
        elif kind == "broker_restart":
            self.broker_stopped = True
            ctl("stop_app")
            time.sleep(3)
            ctl("start_app")
            ctl("await_startup")
            self.broker_stopped = False
        elif kind == "close_pulse_connections":
            out = ctl("list_connections", "user", "pid")
            pids = [
                parts[1]
                for parts in (line.split("\t") for line in out.splitlines())
                if len(parts) >= 2 and parts[0] == self.pulse.user
            ]
            if not pids:
                log("  no connection of the Pulse user was open at this moment")
            for pid in pids:
                try:
                    ctl("close_connection", pid, "pulse_celery soak: Pulse connection closed")
                except RuntimeError as exc:  # it may have gone meanwhile
                    log(f"  close_connection {pid}: {exc}")
            log(f"  closed {len(pids)} connection(s) of {self.pulse.user}")
        elif kind == "worker_sigkill":
            self.worker_down_on_purpose = True
            self.check_alive_before_deliberate_stop()
            self.worker.kill()
            self.deliberate_restarts += 1
            self.start_worker("after SIGKILL")
        elif kind == "worker_sigterm":
            self.worker_down_on_purpose = True
            self.check_alive_before_deliberate_stop()
            began = time.monotonic()
            try:
                code: int | None = self.worker.stop(timeout=WARM_STOP_TIMEOUT)
            except AssertionError:
                code = None
                log(f"  warm shutdown did not finish within {WARM_STOP_TIMEOUT:.0f} s; the worker was killed")
            took = time.monotonic() - began
            self.warm_stops.append((f"+{began - T0:.0f}s", code, took))
            log(f"  warm shutdown: exit status {code} after {took:.1f} s")
            self.deliberate_restarts += 1
            self.start_worker("after SIGTERM")
        else:
            raise ValueError(kind)
        self.faults[kind] += 1
        log(f"  {kind} done in {time.monotonic() - started:.1f} s")

    def check_alive_before_deliberate_stop(self) -> None:
        assert self.worker is not None
        if not self.worker.alive:
            code = self.worker.process.returncode if self.worker.process else None
            self.unexpected_deaths.append(f"found dead (status {code}) before a deliberate stop")
            log(f"WORKER was already dead (exit status {code}) before the deliberate stop")

    # ---------------------------------------------------------------- the run

    def _check_time(self) -> None:
        if time.monotonic() > self.hard_deadline - CLEANUP_RESERVE / 2:
            raise Interrupted("time budget (--minutes + 10) nearly used up")

    def progress(self) -> None:
        assert self.publisher is not None and self.pulse is not None
        self.records.update()
        try:
            counts: object = self.pulse.queue_counts(self.queue)
        except Exception as exc:
            counts = f"unavailable ({type(exc).__name__})"
        published = self.publisher.confirmed
        handled = sum(1 for i in self.records.done if isinstance(i, int) and i < published)
        rss = self.sample_rss()
        log(
            f"progress: published {published}, handled {handled} (backlog {published - handled}), "
            f"done records {sum(self.records.done.values())}, Pulse queue (ready, unacked) {counts}, "
            f"publisher failed attempts {self.publisher.failed_attempts}, "
            f"worker {'alive' if self.worker and self.worker.alive else 'DOWN'}"
            + (f", RSS {rss:.1f} MB" if rss is not None else "")
        )

    def sample_rss(self) -> float | None:
        """The worker's RSS now (main process and pool children, MB), recorded under its pid."""
        if self.worker is None or self.worker.process is None or not self.worker.alive:
            return None
        pid = self.worker.process.pid
        total = (rss_kb(pid) + children_rss_kb(pid)) / 1024
        if not total:
            return None  # gone meanwhile
        self.rss.setdefault(pid, []).append((time.monotonic() - T0, total))
        return total

    def rss_summary(self) -> str:
        """First and last RSS of the first and the last worker process, and of the longest-lived one."""
        if not self.rss:
            return "no samples"
        lives = list(self.rss.values())
        first, last = lives[0], lives[-1]
        longest = max(lives, key=lambda samples: samples[-1][0] - samples[0][0])
        return (
            f"start {first[0][1]:.1f} MB (+{first[0][0]:.0f}s), "
            f"end {last[-1][1]:.1f} MB (+{last[-1][0]:.0f}s); "
            f"longest-lived process ({longest[-1][0] - longest[0][0]:.0f} s): {longest[0][1]:.1f} -> "
            f"{longest[-1][1]:.1f} MB; {len(lives)} worker processes sampled (main + pool children)"
        )

    def run(self) -> None:
        assert self.pulse is not None
        self.publisher = PacedPublisher(self.pulse, self.args.rate, self.duration)
        lo, hi = self.args.fault_every
        self.publisher.start()
        self.publish_started = time.monotonic()
        end = self.publish_started + self.duration
        log(
            f"publishing {self.publisher.offered} messages at {self.args.rate:g}/s for "
            f"{self.duration:.0f} s; a fault every {lo:g}-{hi:g} s; policy {self.args.policy}"
        )
        next_fault = self.publish_started + self.rng.uniform(lo, hi)
        next_progress = self.publish_started + PROGRESS_EVERY
        while time.monotonic() < end:
            self._check_time()
            self.check_worker()
            now = time.monotonic()
            if now >= next_fault:
                kind = self.rng.choice(FAULTS)
                try:
                    self.inject(kind)
                except (Interrupted, KeyboardInterrupt):
                    raise
                except Exception as exc:
                    self.fault_failures.append(f"{kind}: {exc}")
                    log(f"  fault {kind} failed: {exc!r}")
                    if self.broker_stopped:
                        self._start_broker_app()
                next_fault = time.monotonic() + self.rng.uniform(lo, hi)
            if now >= next_progress:
                self.progress()
                next_progress = now + PROGRESS_EVERY
            time.sleep(0.5)
        log("publishing time is over; waiting for the publisher to send what fell due")
        self.publisher.join(
            timeout=max(1.0, min(120.0, self.hard_deadline - CLEANUP_RESERVE - time.monotonic()))
        )
        if self.publisher.is_alive():
            log("publisher still retrying after 120 s; giving up on the message in flight")
            self.publisher.abort()
            self.publisher.join(timeout=15)
        self.publish_ended = time.monotonic()
        log(f"publisher stopped: {self.publisher.confirmed} of {self.publisher.offered} offered confirmed")

    def drain(self) -> None:
        assert self.publisher is not None and self.pulse is not None and self.worker is not None
        published = self.publisher.confirmed
        began = time.monotonic()
        limit = min(began + DRAIN_LIMIT, self.hard_deadline - CLEANUP_RESERVE)
        log(f"waiting up to {limit - began:.0f} s for {published} ids to be done and the Pulse queue (0, 0)")
        next_counts = next_report = began
        counts: tuple[int, int] | None = None
        missing: list[int] = []
        while time.monotonic() < limit:
            self.check_worker()
            missing = self.records.update().missing(published)
            now = time.monotonic()
            if not missing and now >= next_counts:
                counts = self.pulse.queue_counts(self.queue)
                next_counts = now + 2
                if counts == (0, 0):
                    self.drained = True
                    break
            if now >= next_report:
                log(f"  draining: {len(missing)} ids not done yet; Pulse queue {counts}")
                next_report = now + 15
            time.sleep(0.5)
        self.drain_seconds = time.monotonic() - began
        log(f"drain {'complete' if self.drained else 'TIMED OUT'} after {self.drain_seconds:.1f} s")
        self.final_counts = self.pulse.queue_counts(self.queue)
        self.celery_queues = self._celery_queue_counts()
        self.worker_alive_at_end = self.worker.alive
        self.sample_rss()  # the end figure: the worker as the run leaves it
        self.worker_down_on_purpose = True
        log("stopping the worker (warm shutdown)")
        try:
            self.final_stop_code = self.worker.stop(timeout=WARM_STOP_TIMEOUT)
        except AssertionError:
            self.final_stop_code = None
            log(f"  the worker did not stop within {WARM_STOP_TIMEOUT:.0f} s; killed it")
        log(f"  worker exit status {self.final_stop_code}")
        self.records.update()

    def _celery_queue_counts(self) -> dict[str, tuple[int, int]]:
        assert self.celery is not None
        try:
            out = ctl(
                "list_queues", "-p", self.celery.name, "name", "messages_ready", "messages_unacknowledged"
            )
        except Exception:
            return {}
        queues = {}
        for line in out.splitlines():
            parts = line.split("\t")
            if len(parts) == 3 and parts[1].isdigit():
                queues[parts[0]] = (int(parts[1]), int(parts[2]))
        return queues

    def scan_worker_log(self) -> None:
        path = self.workdir / "worker.log"
        if not path.exists():
            return
        with open(path, errors="replace") as f:
            for line in f:
                for needle in ("Unrecoverable error", "Traceback", "CRITICAL", "ERROR"):
                    if needle in line:
                        self.worker_log_errors[needle] += 1

    # ---------------------------------------------------------------- the report

    def report(self) -> bool:
        pub = self.publisher
        published = pub.confirmed if pub else 0
        self.records.update()
        self.scan_worker_log()
        done = self.records.done
        handled = sum(1 for i in done if isinstance(i, int) and 0 <= i < published)
        lost = self.records.missing(published)
        duplicates = sum(c - 1 for i, c in done.items() if isinstance(i, int) and 0 <= i < published)
        extra_ids = [i for i in done if not (isinstance(i, int) and 0 <= i < published)]
        pub_seconds = (self.publish_ended or time.monotonic()) - (self.publish_started or T0)
        dead_letters = self.celery_queues.get("pulse_celery.dead_letters")

        print("\n" + "=" * 78, flush=True)
        print(
            f"pulse_celery soak: policy {self.args.policy}, seed {self.args.seed}, "
            f"rate {self.args.rate:g}/s, fault every {self.args.fault_every[0]:g}-"
            f"{self.args.fault_every[1]:g} s, Pulse over {'TLS' if self.args.tls else 'plain AMQP'}"
            + (f", own node {self.node.node}" if self.node else "")
        )
        if self.interrupted:
            print(f"INTERRUPTED: {self.interrupted}")
        print(
            f"duration:              {time.monotonic() - T0:.1f} s in all; publishing {pub_seconds:.1f} s; "
            f"drain {self.drain_seconds or 0:.1f} s"
        )
        if pub:
            print(
                f"messages published:    {published} confirmed of {pub.offered} offered "
                f"({published / max(pub_seconds, 1e-9):.1f}/s achieved); publisher failed attempts "
                f"{pub.failed_attempts} in {pub.outages} outage(s), longest {pub.longest_outage:.1f} s"
                + (f"; id {pub.unconfirmed_id} never confirmed" if pub.unconfirmed_id is not None else "")
            )
        kinds = ", ".join(f"{k} {self.faults[k]}" for k in FAULTS)
        print(f"faults injected:       {sum(self.faults.values())} ({kinds})")
        if self.fault_failures:
            print(f"faults that failed:    {len(self.fault_failures)}: {self.fault_failures}")
        print(
            f"messages handled:      {handled} distinct ids done; {sum(done.values())} done records, "
            f"{self.records.starts} starts, {self.records.done_redelivered} done with redelivered=True"
        )
        print(f"lost:                  {len(lost)}" + (f" (first: {lost[:20]})" if lost else ""))
        pct = 100.0 * duplicates / published if published else 0.0
        print(f"duplicates:            {duplicates} ({pct:.2f}% of published)")
        if extra_ids:
            print(f"done but not counted as published: {len(extra_ids)} {extra_ids[:10]}")
        if self.records.bad_lines:
            print(f"unreadable record lines: {self.records.bad_lines}")
        print(f"final Pulse queue:     {self.queue} (ready, unacked) = {self.final_counts}")
        print(f"Celery vhost queues:   {self.celery_queues or '{}'}; dead letters {dead_letters or (0, 0)}")
        print(
            f"worker restarts:       {self.deliberate_restarts} deliberate, "
            f"{len(self.unexpected_deaths)} after unexpected deaths {self.unexpected_deaths or ''}; "
            f"slow starts {self.slow_starts}"
        )
        if self.warm_stops:
            print(f"warm shutdowns (fault): {[(w, c, round(s, 1)) for w, c, s in self.warm_stops]}")
        print(f"worker RSS:            {self.rss_summary()}")
        print(f"final warm shutdown:   exit status {self.final_stop_code}")
        print(
            f"worker log:            {dict(self.worker_log_errors) or 'no ERROR/Traceback lines'} "
            f"({self.workdir / 'worker.log'})"
        )

        checks = [
            (
                "lost == 0",
                not lost and published > 0 and not self.interrupted,
                f"lost {len(lost)}" + (" (run interrupted: not a complete soak)" if self.interrupted else ""),
            ),
            ("Pulse queue (0 ready, 0 unacked)", self.final_counts == (0, 0), f"{self.final_counts}"),
            (
                "worker alive when not deliberately killed",
                not self.unexpected_deaths and self.worker_alive_at_end,
                f"unexpected deaths {len(self.unexpected_deaths)}, alive at end {self.worker_alive_at_end}",
            ),
            (
                "warm shutdowns finish (exit 0)",
                all(code == 0 for _, code, _ in self.warm_stops) and self.final_stop_code == 0,
                f"{[code for _, code, _ in self.warm_stops] + [self.final_stop_code]}",
            ),
            ("every fault injected", not self.fault_failures, f"{len(self.fault_failures)} failed"),
        ]
        if self.args.dedupe:
            checks.append(("duplicates == 0 (dedupe on)", duplicates == 0, f"duplicates {duplicates}"))
        print("-" * 78)
        for name, ok, detail in checks:
            print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}")
        ok = all(ok for _, ok, _ in checks)
        print(f"RESULT: {'PASS' if ok else 'FAIL'}")
        print("=" * 78, flush=True)
        return ok


# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="how long to publish (default 60)")
    parser.add_argument("--policy", choices=["enqueue", "complete"], default="enqueue", help="ack policy")
    parser.add_argument("--rate", type=float, default=50.0, help="messages/s offered (default 50)")
    parser.add_argument(
        "--fault-every",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=[30.0, 120.0],
        help="seconds between faults, uniform in [MIN, MAX] (default 30 120)",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault schedule")
    parser.add_argument(
        "--tls",
        action="store_true",
        help="the worker reaches Pulse over amqps://localhost:5671, verified (scripts/rabbitmq-tls.sh)",
    )
    parser.add_argument(
        "--own-node",
        type=int,
        metavar="PORT",
        help="run on a RabbitMQ node of our own (AMQP on PORT, TLS on PORT+1), stopped at the end",
    )
    parser.add_argument(
        "--dedupe",
        nargs="?",
        const="redis://127.0.0.1:6379/5",
        metavar="REDIS_URL",
        help="the binding dedupes (store: REDIS_URL; default: the local Redis, db 5); target: 0 duplicates",
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.rate <= 0:
        parser.error("--minutes and --rate must be positive")
    lo, hi = args.fault_every
    if not 0 < lo <= hi:
        parser.error("--fault-every needs 0 < MIN <= MAX")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(2**31)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soak = Soak(args)

    def on_signal(signum: int, _frame: Any) -> None:
        if soak.interrupted or soak._cleaned:
            log(f"{signal.Signals(signum).name}: already stopping, please wait for the clean-up")
            return
        soak.interrupted = f"{signal.Signals(signum).name} received"
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    def watchdog() -> None:
        time.sleep(max(0.0, soak.hard_deadline - 90 - time.monotonic()))
        if not soak._cleaned:
            soak.interrupted = soak.interrupted or "hard stop at --minutes + 10"
            _thread.interrupt_main()
        time.sleep(max(0.0, soak.hard_deadline - time.monotonic()))
        soak.emergency_stop()

    threading.Thread(target=watchdog, name="watchdog", daemon=True).start()
    log(f"soak: policy {args.policy}, {args.minutes:g} min, {args.rate:g} msg/s, seed {args.seed}")
    try:
        soak.setup()
        soak.run()
        soak.drain()
    except (KeyboardInterrupt, Interrupted) as exc:
        soak.interrupted = soak.interrupted or str(exc) or type(exc).__name__
        log(f"interrupted: {soak.interrupted}; cleaning up")
    except Exception:
        soak.interrupted = "error: " + traceback.format_exc().strip().splitlines()[-1]
        log(f"the soak itself failed:\n{traceback.format_exc()}")
    finally:
        soak.cleanup()
    ok = soak.report()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
