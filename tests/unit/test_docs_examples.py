"""Every Python example of the docs is run, or named with the reason it is not (tests/docs_examples.py).

Here: the lists themselves, the examples that need only ``memory://`` or nothing (run in
process, with the network refused), and the standalone example that must stay the one
examples/standalone/watch.py runs. The examples that need RabbitMQ, and the apps aimed at
production Pulse, run in tests/integration/test_docs_examples.py.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from pulse_celery.bindings import app_bindings
from pulse_celery.config import load_config
from pulse_celery.sources import plan_sources
from tests.docs_examples import GIVEN, LISTS, ROOT, UNIT, Example, all_examples, examples_in


def test_every_example_is_in_exactly_one_list():
    names = [example.name for example in all_examples()]
    placed = {name: [list_name for list_name, listed in LISTS.items() if name in listed] for name in names}
    assert {name: lists for name, lists in placed.items() if len(lists) != 1} == {}


def test_every_listed_example_is_on_a_page():
    names = {example.name for example in all_examples()}
    stale = {list_name: sorted(set(listed) - names) for list_name, listed in LISTS.items()}
    assert {list_name: gone for list_name, gone in stale.items() if gone} == {}
    assert set(GIVEN) <= names


def test_example_names_are_unique():
    names = [example.name for example in all_examples()]
    assert len(names) == len(set(names))


def _refuse_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(sock: socket.socket, address: Any) -> None:
        raise ConnectionRefusedError(f"a unit example may not reach the network (it tried {address!r})")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def _example_dirs(example: Example) -> list[Path]:
    """The examples/ folders an example imports from, as its comments name them."""
    return [
        (ROOT / line.split("#", 1)[1].strip()).parent
        for line in example.code.splitlines()
        if line.startswith("import ") and "# examples/" in line
    ]


@pytest.mark.parametrize("example", examples_in(UNIT), ids=lambda example: example.name)
def test_unit_example_runs_on_the_memory_transport(example, monkeypatch, tmp_path):
    # Given Celery and Pulse on memory:// (CELERY_BROKER_URL wins over an app's broker=),
    # no network, and the examples/ folders the example imports from on sys.path
    monkeypatch.setenv("CELERY_BROKER_URL", "memory://")
    monkeypatch.setenv("PULSE_URL", "memory://")
    for name in ("PULSE_USERNAME", "PULSE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    _refuse_connections(monkeypatch)
    for folder in _example_dirs(example):
        monkeypatch.syspath_prepend(str(folder))
    modules = set(sys.modules)
    namespace: dict[str, Any] = {"__name__": example.module}
    try:
        # When the example runs, after what its page gave it
        if example.name in GIVEN:
            exec(GIVEN[example.name], namespace)
        exec(example.compiled(), namespace)
        # Then each app it made has Pulse settings that load, and bindings that plan into queues
        for app in (value for value in namespace.values() if isinstance(value, Celery)):
            assert app.conf.broker_url == "memory://"
            config = load_config(app.conf)
            bindings = app_bindings(app)
            if bindings:
                assert plan_sources(config, bindings)
    finally:
        for name in set(sys.modules) - modules:
            if str(ROOT / "examples") in str(getattr(sys.modules[name], "__file__", "")):
                del sys.modules[name]


def test_the_standalone_guide_shows_the_example_the_integration_test_runs():
    example = (ROOT / "examples" / "standalone" / "watch.py").read_text()
    watch = example[example.index("def watch(") : example.index("\n\n\ndef main(")]
    main = example[example.index("def main(") : example.index("\n\n\nif __name__")]
    shown = [e for e in all_examples() if e.path.startswith("docs/") and "def watch(" in e.code]
    assert [e.path for e in shown] == ["docs/guides/standalone.md"]
    assert watch in shown[0].code and main in shown[0].code
