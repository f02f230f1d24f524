"""The docs' examples that need a broker, run against the local RabbitMQ (lists in tests/docs_examples.py).

* RABBITMQ: each example runs on a Pulse-like vhost, driven as its page says a user would.
* PRODUCTION: each app aimed at production Pulse is imported as written (its imports and its
  configuration load), its tasks run in process on Taskcluster events of the exchanges they
  bind, then it is pointed at a Pulse-like vhost per source, where the exchanges its bindings
  name exist as Pulse has them (topic, durable), and ``pulse-celery check`` passes.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import taskcluster
from amqp.exceptions import NotFound
from kombu import Exchange

from pulse_celery.bindings import app_bindings
from pulse_celery.config import load_config
from pulse_celery.sources import DEFAULT, plan_sources
from pulse_celery.testing import PulseLikeBroker, deliver, publish, taskcluster_message, wait_until
from tests.docs_examples import GIVEN, PRODUCTION, RABBITMQ, ROOT, Example, examples_in

from .conftest import TASK_COMPLETED
from .harness import cli

pytestmark = pytest.mark.rabbitmq


@pytest.fixture
def as_written(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No PULSE_* or CELERY_* variable of the test run leaks into an example; its modules are dropped."""
    for name in list(os.environ):
        if name.startswith(("PULSE_", "CELERY_")):
            monkeypatch.delenv(name)
    modules = set(sys.modules)
    yield
    for name in set(sys.modules) - modules:
        if name.startswith("docs_example_"):
            del sys.modules[name]


def _write_module(example: Example, folder: Path) -> Path:
    path = folder / f"{example.module}.py"
    path.write_text(GIVEN.get(example.name, "") + example.code)
    return path


# -- examples run on a Pulse-like vhost ---------------------------------------------------------


class Terminal:
    """What a user types, one line at a time, each once ``ready()`` says so."""

    def __init__(self, steps: list[tuple[Callable[[], Any], str]]) -> None:
        self.steps = steps
        self.typed: list[str] = []

    def __iter__(self) -> Iterator[str]:
        for ready, line in self.steps:
            assert wait_until(ready, timeout=30), f"never ready to type {line!r}"
            self.typed.append(line)
            yield line


def _consumers(broker: PulseLikeBroker, queue: str) -> int:
    with broker.admin_connection() as conn:
        try:
            return conn.channel().queue_declare(queue, passive=True).consumer_count
        except NotFound:
            return 0


def _standalone_main(
    namespace: dict[str, Any], pulse: PulseLikeBroker, capsys: Any, monkeypatch: Any
) -> None:
    """Run main() as the page says: a resolved task is printed; ``pause`` and ``resume`` are typed."""
    queue = f"queue/{pulse.user}/resolved"
    key, body = taskcluster_message("completed", task_id="docsexampleTaskIdAAAAA")
    out, err = [], []

    def published() -> bool:
        with pulse.admin_connection() as conn:
            publish(conn, TASK_COMPLETED, key, body)
        return True

    def printed() -> bool:
        captured = capsys.readouterr()
        out.append(captured.out)
        err.append(captured.err)
        return "docsexampleTaskIdAAAAA" in "".join(out)

    terminal = Terminal(
        [
            (lambda: _consumers(pulse, queue) == 1, "\n"),
            (published, "\n"),
            (printed, "pause\n"),
            (lambda: True, "resume\n"),
        ]
    )
    monkeypatch.setattr(sys, "stdin", terminal)
    runner = threading.Thread(target=namespace["main"], daemon=True)
    runner.start()
    runner.join(timeout=60)
    printed()
    assert not runner.is_alive(), "main() did not return when stdin ended"
    assert terminal.typed[-2:] == ["pause\n", "resume\n"]
    assert f"docsexampleTaskIdAAAAA run 0 completed {key}\n" in "".join(out)
    # the queue's state after each command, as main() prints it ("<queue name>: <state>")
    states = [line.rsplit(": ", 1) for line in "".join(err).splitlines()]
    assert [state for name, state in states if name.endswith("resolved")] == ["paused", "consuming"]
    assert pulse.queue_counts(queue) == (0, 0)


#: How a user drives each RABBITMQ example once it has run, as its page says.
DRIVERS: dict[str, Callable[..., None]] = {
    "guides/standalone#without-celery-pulseconnection": _standalone_main,
}


@pytest.mark.parametrize("example", examples_in(RABBITMQ), ids=lambda example: example.name)
def test_rabbitmq_example_runs_on_a_pulse_like_vhost(
    example, pulse, capsys, monkeypatch, tmp_path, as_written
):
    assert example.name in DRIVERS, "say in DRIVERS how a user runs this example"
    # Given the environment the example reads, pointing at a Pulse-like vhost
    monkeypatch.setenv("PULSE_URL", pulse.url)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": example.module}
    # When the example runs, and a user drives it as its page says, then it does what the page says
    exec(example.compiled(), namespace)
    DRIVERS[example.name](namespace, pulse, capsys, monkeypatch)


# -- apps aimed at production Pulse, checked on a Pulse-like vhost ------------------------------

LOCAL_APP = """\
from {module} import app

# The example's own settings, then a Pulse-like vhost on the local RabbitMQ for each source.
app.conf.pulse_url = {url!r}
app.conf.pulse_user = {user!r}
app.conf.pulse_password = {password!r}
app.conf.pulse_vhost = {vhost!r}
app.conf.pulse_credentials = None
app.conf.pulse_ssl_ca_certs = None
LOCAL_SOURCES = {sources!r}
if app.conf.get("pulse_sources"):
    app.conf.pulse_sources = {{
        name: {{**entry, **LOCAL_SOURCES[name]}} for name, entry in app.conf.pulse_sources.items()
    }}
"""


def _local(broker: PulseLikeBroker) -> dict[str, Any]:
    return {
        "url": broker.url,
        "user": broker.user,
        "password": broker.password,
        "vhost": broker.vhost,
        "credentials": None,
        "ssl_ca_certs": None,
    }


def _taskcluster_exchanges() -> set[str]:
    """Every exchange the Taskcluster services publish on, as the taskcluster client names them."""
    names = set()
    for events in (getattr(taskcluster, name) for name in dir(taskcluster) if name.endswith("Events")):
        client = events({"rootUrl": "https://tc.example.com"})
        for name, member in vars(events).items():
            if inspect.isfunction(member) and not name.startswith("_"):
                names.add(getattr(client, name)({})["exchange"])
    return names


#: The exchanges production Pulse has, as far as the examples go: a typo in an example's
#: exchange is not declared, and fails the check as it would on Pulse.
PULSE_EXCHANGES = _taskcluster_exchanges()


def _declare(broker: PulseLikeBroker, exchanges: set[str]) -> None:
    """Declare the exchanges as Pulse has them: topic, durable (Pulse's publishers declare them)."""
    with broker.admin_connection() as conn:
        for name in sorted(exchanges & PULSE_EXCHANGES):
            Exchange(name, type="topic", durable=True).declare(channel=conn.default_channel)


#: The Taskcluster queue's task events, which taskcluster_message() makes (``task-<state>``).
TASK_EVENTS = "exchange/taskcluster-queue/v1/task-"
ROUTE = "route.tc-treeherder.v2.autoland.918d7c84da371bda26460fb4b50f161d32107880.88554"


class PulseVhosts:
    """A Pulse-like vhost per source name, made on first use; ``check`` leaves nothing on them."""

    def __init__(self) -> None:
        self.brokers: dict[str, PulseLikeBroker] = {}

    def __getitem__(self, source: str) -> PulseLikeBroker:
        if source not in self.brokers:
            self.brokers[source] = PulseLikeBroker().setup()
        return self.brokers[source]

    def teardown(self) -> None:
        for broker in self.brokers.values():
            broker.teardown()


@pytest.fixture(scope="module")
def pulse_vhosts() -> Iterator[PulseVhosts]:
    vhosts = PulseVhosts()
    yield vhosts
    vhosts.teardown()


@pytest.mark.parametrize("example", examples_in(PRODUCTION), ids=lambda example: example.name)
def test_production_app_example_runs_its_tasks_and_passes_pulse_celery_check_on_a_pulse_like_vhost(
    example, pulse_vhosts, monkeypatch, tmp_path, as_written
):
    # Given the example as a module, imported as written: its settings load and plan queues
    _write_module(example, tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    app = importlib.import_module(example.module).app
    sources = plan_sources(load_config(app.conf), app_bindings(app))
    assert sources and all(source.config.use_ssl for source in sources), "not aimed at production Pulse"
    exchanges = {
        source.name: {b.exchange for plan in source.plans for b in plan.bindings} for source in sources
    }
    # and each bound task runs, in process, on a real-shaped event of the Taskcluster queue
    # exchange it binds (with a CC route), as a worker would run it
    for source in sources:
        for binding in (b for plan in source.plans for b in plan.bindings):
            if binding.exchange.startswith(TASK_EVENTS):
                key, body = taskcluster_message(binding.exchange.removeprefix(TASK_EVENTS))
                result = deliver(app, binding.exchange, key, body, routes=[ROUTE], source=source.name)
                assert result.successful()
    # and a Pulse-like vhost for each of its sources, with the Pulse exchanges its bindings name
    for name, names in exchanges.items():
        _declare(pulse_vhosts[name], names)
    others = {name: _local(pulse_vhosts[name]) for name in app.conf.get("pulse_sources") or {}}
    (tmp_path / f"{example.module}_local.py").write_text(
        LOCAL_APP.format(module=example.module, sources=others, **_local(pulse_vhosts[DEFAULT]))
    )
    # When pulse-celery check runs on the app pointed at them
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = cli("check", "-A", f"{example.module}_local:app", env=env)
    # Then every check passes, each source logged in, and each bound exchange was found there
    assert result.returncode == 0, result.stdout + result.stderr
    verdicts = {line[6:].split(": ", 1)[0]: line[:4] for line in result.stdout.splitlines()}
    for name, names in exchanges.items():
        at = "" if name == DEFAULT else f"[{name}] "
        assert verdicts[f"{at}connection"] == "ok  "
        assert {verdicts.get(f"{at}exchange {exchange}") for exchange in names} == {"ok  "}
