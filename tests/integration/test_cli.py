"""The pulse-celery command, run as a real process against a Pulse-like vhost on the local RabbitMQ."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from kombu import Connection, Exchange, Queue

from pulse_celery.testing import _rabbitmqctl, publish, taskcluster_message

from .conftest import TASK_COMPLETED, TASK_FAILED
from .harness import APPS, cli

pytestmark = pytest.mark.rabbitmq

TREEHERDER_ROUTE = "route.tc-treeherder.v2.autoland.918d7c84da371bda26460fb4b50f161d32107880.88554"


def admin_url(pulse) -> str:
    return f"amqp://{pulse.admin_user}:{pulse.admin_password}@{pulse.host}:{pulse.port}/{pulse.vhost}"


def env_for(pulse, **extra: str) -> dict[str, str]:
    return {**os.environ, "PULSE_URL": pulse.url, **extra}


class Listener:
    """A `pulse-celery listen` process, started once its queue is bound."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pulse_celery.cli", "listen", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=APPS,
            env=env,
        )
        assert self.process.stderr is not None
        ready, _, _ = select.select([self.process.stderr], [], [], 30)
        self.banner = self.process.stderr.readline() if ready else ""
        if not self.banner.startswith("listening on "):
            self.process.kill()
            raise AssertionError(f"listen did not start: {self.banner}{self.process.communicate()}")
        #: The anonymous queue, from "listening on QUEUE to EXCHANGE KEYS".
        self.queue = self.banner.split()[2]

    def finish(self, timeout: float = 60) -> tuple[int, list[dict[str, Any]], str]:
        """Wait for the exit; return the status, the JSON lines and stderr."""
        out, err = self.process.communicate(timeout=timeout)
        return self.process.returncode, [json.loads(line) for line in out.splitlines()], err


def publish_as_admin(pulse, messages: list[tuple[str, str, Any, dict[str, Any]]]) -> None:
    with pulse.admin_connection() as conn:
        for exchange, key, body, options in messages:
            publish(conn, exchange, key, body, **options)


# -- listen ---------------------------------------------------------------------------------


def test_listen_prints_each_message_with_exchange_routing_key_cc_routes_and_body(pulse):
    # Given a listener on task-completed, connected as the Pulse user, for one routing key
    listener = Listener(TASK_COMPLETED, "primary.#", "--count", "4", "--timeout", "30", env=env_for(pulse))
    assert listener.queue.startswith(f"queue/{pulse.user}/")
    key, body = taskcluster_message()
    # When another process publishes a Taskcluster event with CC routes, a plain JSON message,
    # a text body and bytes that are not UTF-8, plus one on a key the listener did not bind
    publish_as_admin(
        pulse,
        [
            (TASK_COMPLETED, key, body, {"routes": [TREEHERDER_ROUTE, "route.index.x"]}),
            (TASK_COMPLETED, "other.key", {"skip": True}, {}),
            (TASK_COMPLETED, "primary.b.0", {"n": [1, 2.5, None, "é"]}, {}),
            (TASK_COMPLETED, "primary.c.0", b"hello", {"content_type": "text/plain"}),
            (TASK_COMPLETED, "primary.d.0", b"\xff\xfe", {"content_type": "application/json"}),
        ],
    )
    status, lines, err = listener.finish()
    # Then it prints one line per matching message, in order, and exits 0 after --count
    assert status == 0, err
    assert lines[0] == {
        "exchange": TASK_COMPLETED,
        "routing_key": key,
        "routes": [TREEHERDER_ROUTE, "route.index.x"],
        "redelivered": False,
        "body": body,
    }
    assert lines[1]["body"] == {"n": [1, 2.5, None, "é"]}
    assert lines[1]["routes"] == []
    assert lines[2]["body_text"] == "hello" and "body" not in lines[2]
    assert lines[2]["content_type"] == "text/plain" and "not JSON" in lines[2]["body_error"]
    assert lines[3]["body_base64"] == "//4=" and "UTF-8" in lines[3]["body_error"]
    assert len(lines) == 4
    # and its queue went with it
    assert pulse.queue_counts(listener.queue) is None


def test_listen_with_count_exits_1_when_the_timeout_passes_first(pulse):
    listener = Listener(TASK_COMPLETED, "--count", "2", "--timeout", "1", env=env_for(pulse))
    publish_as_admin(pulse, [(TASK_COMPLETED, "primary.a.0", {"id": 1}, {})])
    status, lines, err = listener.finish()
    assert status == 1
    assert [line["body"] for line in lines] == [{"id": 1}]
    assert "received 1 of 2" in err


def test_listen_without_count_exits_0_when_the_timeout_passes(pulse):
    listener = Listener(TASK_COMPLETED, "--timeout", "0.5", env=env_for(pulse))
    status, lines, err = listener.finish()
    assert (status, lines) == (0, [])
    assert "received 0 message(s)" in err


def test_listen_to_a_missing_exchange_fails_in_one_line(pulse):
    result = cli("listen", "exchange/nobody/v1/nothing", "--timeout", "1", env=env_for(pulse))
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1
    assert "NOT_FOUND" in result.stderr and "does not exist" in result.stderr


# -- publish and replay ---------------------------------------------------------------------


def test_publish_piped_into_listen_round_trips_body_and_routes(pulse):
    # Given a listener, and a publisher with the rights to write the exchange (a broker we own)
    listener = Listener(TASK_COMPLETED, "--count", "2", "--timeout", "30", env=env_for(pulse))
    env = env_for(pulse, PULSE_URL=admin_url(pulse))
    # When one message is published with its body on the command line, one from stdin
    first = cli(
        "publish", TASK_COMPLETED, "primary.x.0", '{"id": 1}', "-r", "route.a", "--route", "route.b", env=env
    )
    second = cli("publish", TASK_COMPLETED, "primary.y.0", "-", env=env, stdin='{"id": 2, "s": "ü"}\n')
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "the broker confirmed it" in first.stdout
    # Then the listener sees both, routes included
    status, lines, _ = listener.finish()
    assert status == 0
    assert [(m["routing_key"], m["routes"], m["body"]) for m in lines] == [
        ("primary.x.0", ["route.a", "route.b"], {"id": 1}),
        ("primary.y.0", [], {"id": 2, "s": "ü"}),
    ]


def test_publish_refuses_a_body_that_is_not_json(pulse):
    result = cli("publish", TASK_COMPLETED, "k", "{not json", env=env_for(pulse, PULSE_URL=admin_url(pulse)))
    assert result.returncode == 1
    assert "the body is not JSON" in result.stderr


def test_publish_to_a_missing_exchange_fails_and_declare_creates_it(pulse):
    env = env_for(pulse, PULSE_URL=admin_url(pulse))
    missing = cli("publish", "exchange/dev/v1/mine", "k", "{}", env=env)
    assert missing.returncode == 1
    assert "does not exist" in missing.stderr and "--declare" in missing.stderr
    declared = cli("publish", "--declare", "exchange/dev/v1/mine", "k", "{}", env=env)
    assert declared.returncode == 0, declared.stderr
    with pulse.admin_connection() as conn:
        Exchange("exchange/dev/v1/mine", type="topic", passive=True).declare(channel=conn.channel())


def test_publish_as_the_pulse_user_to_another_users_exchange_says_why_it_is_refused(pulse):
    result = cli("publish", TASK_COMPLETED, "k", "{}", env=env_for(pulse))
    assert result.returncode == 1
    assert f"write only to exchange/{pulse.user}/" in result.stderr


def test_replay_of_a_recorded_stream_reproduces_it(pulse, tmp_path: Path):
    # Given a recording made by listen of varied messages
    recorder = Listener(TASK_COMPLETED, "--count", "5", "--timeout", "30", env=env_for(pulse))
    messages = [taskcluster_message() for _ in range(3)]
    publish_as_admin(
        pulse,
        [
            (TASK_COMPLETED, key, body, {"routes": [f"route.index.{i}"]})
            for i, (key, body) in enumerate(messages)
        ]
        + [
            (TASK_COMPLETED, "primary.t.0", b"plain text", {"content_type": "text/plain"}),
            (TASK_COMPLETED, "primary.z.0", b"\x1f\x8b\x00", {"content_type": "application/octet-stream"}),
        ],
    )
    status, recorded, _ = recorder.finish()
    assert status == 0 and len(recorded) == 5
    recording = tmp_path / "stream.jsonl"
    recording.write_text("".join(json.dumps(line) + "\n" for line in recorded) + "\n")
    # When it is replayed while another listener runs
    listener = Listener(TASK_COMPLETED, "--count", "5", "--timeout", "30", env=env_for(pulse))
    result = cli("replay", str(recording), env=env_for(pulse, PULSE_URL=admin_url(pulse)))
    # Then the second listener prints the same stream
    assert result.returncode == 0, result.stderr
    assert "replayed 5 message(s)" in result.stdout
    status, replayed, _ = listener.finish()
    assert status == 0
    assert replayed == recorded


def test_replay_from_stdin_to_another_exchange(pulse):
    line = {
        "exchange": TASK_COMPLETED,
        "routing_key": "primary.q.0",
        "routes": ["route.r"],
        "body": {"id": 7},
    }
    listener = Listener(TASK_FAILED, "--count", "1", "--timeout", "30", env=env_for(pulse))
    result = cli(
        "replay",
        "--exchange",
        TASK_FAILED,
        "-",
        env=env_for(pulse, PULSE_URL=admin_url(pulse)),
        stdin=json.dumps(line) + "\n",
    )
    assert result.returncode == 0, result.stderr
    status, lines, _ = listener.finish()
    assert status == 0
    assert lines == [{**line, "exchange": TASK_FAILED, "redelivered": False}]


def test_replay_stops_at_a_bad_line_and_says_which(pulse, tmp_path: Path):
    good = json.dumps({"exchange": TASK_COMPLETED, "routing_key": "k", "body": {}})
    recording = tmp_path / "bad.jsonl"
    recording.write_text(f"{good}\n{good}\n{{oops\n{good}\n")
    result = cli("replay", str(recording), env=env_for(pulse, PULSE_URL=admin_url(pulse)))
    assert result.returncode == 1
    assert "line 3 is not JSON" in result.stderr
    assert "2 message(s) replayed before it" in result.stderr


# -- bindings -------------------------------------------------------------------------------


def test_bindings_shows_existing_and_missing_queues_with_depth_and_consumers(pulse):
    # Given the app's "builds" queue as the worker declares it (quorum), holding 3 messages of
    # which 1 is delivered to a consumer that has not acked it; "indexed" does not exist
    builds, indexed = f"queue/{pulse.user}/builds", f"queue/{pulse.user}/indexed"
    with Connection(pulse.url) as consumer_conn:
        channel = consumer_conn.channel()
        Queue(
            builds,
            exchange=Exchange(TASK_COMPLETED, type="topic", passive=True),
            routing_key="primary.#",
            durable=True,
            queue_arguments={"x-queue-type": "quorum"},
        ).bind(channel).declare()
        publish_as_admin(pulse, [(TASK_COMPLETED, f"primary.{i}.0", {"id": i}, {}) for i in range(3)])
        channel.basic_qos(0, 1, False)
        channel.basic_consume(builds, callback=lambda message: None, no_ack=False)
        consumer_conn.drain_events(timeout=10)
        # When bindings runs, as text and as JSON
        text = cli("bindings", "-A", "cli_app", env=env_for(pulse))
        as_json = cli("bindings", "-A", "cli_app", "--json", env=env_for(pulse))
    # Then every queue and binding is listed with its task and ack policy, and the named
    # queues with their state on the broker
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    rows = {row["queue"]: row for row in map(json.loads, as_json.stdout.splitlines())}
    assert set(rows) == {builds, indexed, "anonymous"}
    assert rows[builds]["task"] == "cli_app.on_build"
    assert [(b["exchange"], b["routing_key"], b["ack"]) for b in rows[builds]["bindings"]] == [
        (TASK_COMPLETED, "primary.#", "enqueue"),
        (TASK_FAILED, "primary.#", "enqueue"),
    ]
    assert (rows[builds]["exists"], rows[builds]["messages"], rows[builds]["consumers"]) == (True, 2, 1)
    assert rows[indexed]["bindings"][0]["ack"] == "complete"
    assert (rows[indexed]["exists"], rows[indexed]["messages"], rows[indexed]["consumers"]) == (
        False,
        None,
        None,
    )
    assert rows["anonymous"]["task"] == "cli_app.on_live" and rows["anonymous"]["exists"] is None
    table = [line.split() for line in text.stdout.splitlines()]
    assert table[0] == ["QUEUE", "EXCHANGE", "ROUTING", "KEY", "TASK", "ACK", "STATE", "READY", "CONSUMERS"]
    assert [builds, TASK_FAILED, "primary.#", "cli_app.on_build", "enqueue", "exists", "2", "1"] in table
    assert [
        indexed,
        TASK_COMPLETED,
        "route.index.#",
        "cli_app.on_indexed",
        "complete",
        "missing",
        "-",
        "-",
    ] in table
    # and nothing was created
    assert pulse.queue_counts(indexed) is None


def test_bindings_without_a_reachable_broker_still_lists_the_bindings(pulse):
    result = cli("bindings", "-A", "cli_app", "--url", "amqp://u:p@127.0.0.1:1/", env=env_for(pulse))
    assert result.returncode == 0
    assert "queue state not shown" in result.stderr and "Connection refused" in result.stderr
    assert f"queue/{pulse.user}/builds" not in result.stdout  # the user now comes from --url
    assert "queue/u/builds" in result.stdout and " ? " in result.stdout


# -- check ----------------------------------------------------------------------------------


def check_lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Map each check's name to its line."""
    return {
        line.split(": ", 1)[0][6:]: line
        for line in result.stdout.splitlines()
        if line[:4] in ("ok  ", "FAIL")
    }


def test_check_passes_on_a_good_setup_and_leaves_nothing_behind(pulse):
    result = cli("check", "-A", "cli_app", env=env_for(pulse))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = check_lines(result)
    assert all(line.startswith("ok  ") for line in lines.values())
    assert set(lines) >= {
        "configuration",
        "ack policies",
        "queue names",
        "connection",
        f"exchange {TASK_COMPLETED}",
        f"exchange {TASK_FAILED}",
        "queue permissions",
        f"queue queue/{pulse.user}/builds",
    }
    assert f"throwaway queue queue/{pulse.user}/pulse-celery-check-" in lines["queue permissions"]
    assert "all 9 checks passed" in result.stdout
    assert _rabbitmqctl("list_queues", "-p", pulse.vhost, "name").strip() == ""


def test_check_skips_a_dead_first_host_of_a_failover_pulse_url(pulse):
    # The first host refuses connections (nothing listens on port 9); the second is the broker.
    dead_first = pulse.url.replace(f"@{pulse.host}:{pulse.port}/", f"@{pulse.host}:9/") + ";" + pulse.url
    result = cli("check", "-A", "cli_app", env={**env_for(pulse), "PULSE_URL": dead_first})
    assert result.returncode == 0, result.stdout + result.stderr
    assert check_lines(result)["connection"].startswith("ok")
    assert check_lines(result)[f"queue queue/{pulse.user}/builds"].startswith("ok")


def test_check_fails_with_the_fix_on_a_wrong_password(pulse):
    wrong = pulse.url.replace(quote(pulse.password, safe=""), "wrong")
    result = cli("check", "-A", "cli_app", env={**env_for(pulse), "PULSE_URL": wrong})
    assert result.returncode == 1
    assert "ACCESS_REFUSED" in check_lines(result)["connection"]
    assert check_lines(result)["connection"].startswith("FAIL")
    assert "check pulse_user/pulse_password" in result.stdout
    assert "wrong" not in result.stdout + result.stderr
    assert "checks failed" in result.stderr and "Traceback" not in result.stderr


def test_check_fails_with_the_fix_when_a_bound_exchange_is_missing(pulse):
    pending = "exchange/taskcluster-queue/v1/task-pending"
    result = cli("check", "-A", "cli_app", env=env_for(pulse, EXTRA_EXCHANGE=pending))
    assert result.returncode == 1
    lines = check_lines(result)
    assert lines[f"exchange {pending}"].startswith("FAIL")
    assert "does not exist on this Pulse vhost" in lines[f"exchange {pending}"]
    assert lines[f"exchange {TASK_COMPLETED}"].startswith("ok")
    assert "1 of 10 checks failed" in result.stderr


def test_check_fails_when_the_user_may_not_configure_its_queues(pulse):
    # Given a user whose configure permission does not cover queue/<user>/...
    read = f"^(queue/{pulse.user}/.*|exchange/.*)"
    _rabbitmqctl("set_permissions", "-p", pulse.vhost, pulse.user, "^$", f"^queue/{pulse.user}/.*", read)
    result = cli("check", "-A", "cli_app", env=env_for(pulse))
    assert result.returncode == 1
    line = check_lines(result)["queue permissions"]
    assert line.startswith("FAIL") and "declare of" in line and "ACCESS_REFUSED" in line
