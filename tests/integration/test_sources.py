"""Two Pulse sources in one worker: each has its own connection; one's trouble does not touch the other.

The default source is the ``pulse`` fixture; "community" is a second Pulse-like vhost with a
user of its own (as firefox-ci's Pulse and community Taskcluster's are two services).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections import Counter
from urllib.parse import quote

import pytest

from pulse_celery.testing import PulseLikeBroker

from .conftest import TASK_COMPLETED
from .harness import RecordTail, RetryingPublisher, app_worker, cli, wait_until, worker_status
from .proxy import TcpProxy

N = 1000
PACE = 0.012  # a steady stream of about 12 s, so that the ten faults land during the run


@pytest.fixture
def community():
    broker = PulseLikeBroker().setup([TASK_COMPLETED])
    yield broker
    broker.teardown()


def sources_worker(pulse, community, celery_broker, tmp_path, **env):
    return app_worker(
        "sources_app", pulse, celery_broker, tmp_path, concurrency=2, COMMUNITY_URL=community.url, **env
    )


@pytest.fixture
def proxy():
    p = TcpProxy()
    yield p
    p.close()


class Handled:
    """How often each id was handled, per source, kept up to date from the worker's records."""

    def __init__(self, path):
        self.tail = RecordTail(path)
        self.counts = {"default": Counter(), "community": Counter()}
        self.lock = threading.Lock()

    def __call__(self, source):
        with self.lock:
            for r in self.tail.new():
                if r["event"] == "done":
                    self.counts[r["source"]][r["id"]] += 1
            return Counter(self.counts[source])


_handled = {}


def done(tmp_path, source):
    """The ids handled for ``source`` (polled every 20-50 ms while the worker is measured)."""
    handled = _handled.setdefault(tmp_path, Handled(tmp_path / "records.jsonl"))
    return handled(source)


def message(offset):
    return lambda i: (TASK_COMPLETED, f"primary.task{offset + i}.0", {"id": offset + i})


def cut_once(proxy, consumed):
    """Cut the connection through ``proxy`` once it delivers (the worker reconnects between faults).

    A cut in the test process rather than ``rabbitmqctl close_connection``: each rabbitmqctl
    starts an Erlang VM, whose CPU on this 2-core machine would slow the other source too and
    blur what is measured here. ``consumed()`` counts the source's handled messages: a cut
    waits for it to grow, so that it hits a connection that is up, not one still logging in.
    """
    before = consumed()
    if not wait_until(lambda: proxy.connections > 0 and consumed() > before, timeout=30, interval=0.02):
        return 0
    proxy.cut()
    proxy.restore()
    return 1


def run_both(pulse, community, tmp_path, offset, proxy, faults=0):
    """Publish N messages to each source at once; return each source's run time (to its last task)."""
    started = time.monotonic()
    publishers = {
        "default": RetryingPublisher(pulse, N, pace=PACE, message=message(offset)),
        "community": RetryingPublisher(community, N, pace=PACE, message=message(offset)),
    }
    for p in publishers.values():
        p.start()
    closed = []

    def inject() -> None:
        rng = random.Random(20261206)
        for _ in range(faults):
            time.sleep(rng.uniform(0.1, 0.4))
            closed.append(cut_once(proxy, lambda: len(done(tmp_path, "default"))))

    injector = threading.Thread(target=inject, daemon=True)
    injector.start()
    want = set(range(offset, offset + N))
    took = {}
    deadline = started + 300
    while len(took) < 2 and time.monotonic() < deadline:
        for source in ("default", "community"):
            if source not in took and set(done(tmp_path, source)) >= want:
                took[source] = time.monotonic() - started
        time.sleep(0.05)
    for p in publishers.values():
        p.join(timeout=60)
    injector.join(timeout=180)
    return took, sum(closed)


@pytest.mark.rabbitmq
@pytest.mark.parametrize("policy", ["enqueue", "complete"])
def test_one_source_closed_ten_times_loses_nothing_and_does_not_slow_the_other(
    pulse, community, celery_broker, tmp_path, policy, proxy
):
    # Given a worker on two sources, the default one reached through a TCP proxy
    worker = sources_worker(pulse, community, celery_broker, tmp_path, ACK_POLICY=policy)
    worker.env["PULSE_URL"] = proxy.pulse_url(pulse)
    worker.start()
    try:
        assert wait_until(lambda: worker.log().count("Connected to Pulse") >= 2, timeout=30), worker.log()
        # A run without faults, for the community source's time
        calm, _ = run_both(pulse, community, tmp_path, 0, proxy)
        assert set(calm) == {"default", "community"}, (calm, worker.log()[-3000:])

        # When the default source's connection is closed ten times during the next run
        faulted, closed = run_both(pulse, community, tmp_path, N, proxy, faults=10)

        # Then nothing is lost on either source
        assert set(faulted) == {"default", "community"}, (faulted, worker.log()[-3000:])
        both = set(range(2 * N))
        assert set(done(tmp_path, "default")) == both and set(done(tmp_path, "community")) == both
        duplicates = {s: sum(done(tmp_path, s).values()) - 2 * N for s in ("default", "community")}
        # and the community source's run took no more than 20% longer than without faults
        ratio = faulted["community"] / calm["community"]
        print(
            f"\n[{policy}] default closed {closed} times; run time calm/faulted: default "
            f"{calm['default']:.2f}/{faulted['default']:.2f} s, community {calm['community']:.2f}/"
            f"{faulted['community']:.2f} s (x{ratio:.2f}); duplicates {duplicates}"
        )
        assert closed >= 10
        assert ratio <= 1.2, (calm, faulted)
        assert duplicates["community"] == 0  # nothing happened to it
        assert pulse.queue_counts(f"queue/{pulse.user}/builds") == (0, 0)
        assert community.queue_counts(f"queue/{community.user}/builds") == (0, 0)
        # and pulse_status shows each source's connection: only the default one was lost
        status = worker_status(celery_broker)
        assert status["sources"]["default"]["losses"] >= 10, status["sources"]
        assert status["sources"]["community"]["losses"] == 0, status["sources"]
        assert status["queues"][f"community:queue/{community.user}/builds"]["source"] == "community"
    finally:
        worker.stop()


@pytest.mark.rabbitmq
def test_a_source_that_refuses_the_login_does_not_stop_the_other(pulse, community, celery_broker, tmp_path):
    wrong = community.url.replace(quote(community.password, safe=""), "wrong")
    worker = app_worker(
        "sources_app", pulse, celery_broker, tmp_path, concurrency=2, COMMUNITY_URL=wrong
    ).start()
    try:
        publisher = RetryingPublisher(pulse, 200, message=message(0))
        publisher.run()
        assert wait_until(lambda: set(done(tmp_path, "default")) == set(range(200)), timeout=60), worker.log()
        status = worker_status(celery_broker)
        assert status["sources"]["community"]["state"] == "lost", status["sources"]
        assert "ACCESS_REFUSED" in status["sources"]["community"]["last_error"], status["sources"]
        assert status["sources"]["default"]["state"] == "consuming", status["sources"]
        assert "wrong" not in worker.log()  # the password is never logged
    finally:
        worker.stop()


@pytest.mark.rabbitmq
def test_check_and_bindings_show_each_source_and_one_failing_source_does_not_hide_the_other(
    pulse, community, celery_broker, tmp_path
):
    wrong = community.url.replace(quote(community.password, safe=""), "wrong")
    env = {
        **os.environ,
        **pulse.env,
        "CELERY_BROKER_URL": celery_broker.url,
        "RECORD": str(tmp_path / "r.jsonl"),
    }
    result = cli("check", "-A", "sources_app", env={**env, "COMMUNITY_URL": wrong})
    lines = {
        line.split(": ", 1)[0][6:]: line
        for line in result.stdout.splitlines()
        if line[:4] in ("ok  ", "FAIL")
    }
    assert result.returncode == 1, result.stdout + result.stderr
    assert lines["connection"].startswith("ok"), lines
    assert lines[f"queue queue/{pulse.user}/builds"].startswith("ok"), lines
    assert (
        lines["[community] connection"].startswith("FAIL")
        and "ACCESS_REFUSED" in lines["[community] connection"]
    )
    assert "1 of" in result.stderr and "wrong" not in result.stdout + result.stderr

    result = cli("check", "-A", "sources_app", env={**env, "COMMUNITY_URL": community.url})
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"[community] queue queue/{community.user}/builds" in result.stdout

    result = cli("bindings", "-A", "sources_app", "--json", env={**env, "COMMUNITY_URL": community.url})
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {(r["source"], r["queue"]) for r in rows} == {
        ("default", f"queue/{pulse.user}/builds"),
        ("community", f"community:queue/{community.user}/builds"),
    }, result.stdout + result.stderr
