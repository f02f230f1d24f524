"""A pulse_url naming several hosts of one cluster: parsed once, tried in turn, never leaking the password."""

from __future__ import annotations

import ssl
from typing import Any
from unittest import mock

import pytest
from celery import Celery
from kombu import Connection

from pulse_celery import ConfigError, PulseConnection, load_config
from pulse_celery.pulse import engine as engine_module
from pulse_celery.pulse.engine import Engine
from pulse_celery.worker.handoff import Handoff

HOSTS = "amqp://alice:s3cr%2Ft@127.0.0.1:5681/pulse;amqp://127.0.0.1:5682;amqp://127.0.0.1:5683/pulse"


def test_kombu_failover_form_names_every_host_with_the_first_hosts_credentials_and_vhost():
    config = load_config({"pulse_url": HOSTS}, environ={})
    assert config.hosts == ("amqp://127.0.0.1:5681", "amqp://127.0.0.1:5682", "amqp://127.0.0.1:5683")
    assert (config.user, config.password, config.vhost) == ("alice", "s3cr/t", "pulse")
    assert [config.connection_kwargs(i)["port"] for i in range(4)] == [5681, 5682, 5683, 5681]
    assert {config.connection_kwargs(i)["userid"] for i in range(3)} == {"alice"}


def test_a_list_in_app_conf_is_the_same_as_the_failover_form():
    listed = load_config({"pulse_url": HOSTS.split(";")}, environ={})
    assert listed == load_config({"pulse_url": HOSTS}, environ={})


def test_the_failover_form_in_the_environment_is_read_too():
    config = load_config({}, environ={"PULSE_URL": HOSTS})
    assert len(config.hosts) == 3


def test_one_url_keeps_its_single_host():
    config = load_config({"pulse_url": "amqps://pulse.mozilla.org:5671"}, environ={})
    assert config.hosts == ("amqps://pulse.mozilla.org:5671",)
    assert config.connection_kwargs(5)["hostname"] == "pulse.mozilla.org"


def test_blank_entries_are_ignored():
    config = load_config({"pulse_url": "amqp://127.0.0.1:5681; ;amqp://127.0.0.1:5682;"}, environ={})
    assert config.hosts == ("amqp://127.0.0.1:5681", "amqp://127.0.0.1:5682")


def test_safe_url_names_every_host_or_one_and_never_the_password():
    config = load_config({"pulse_url": HOSTS}, environ={})
    assert config.safe_url() == (
        "amqp://alice@127.0.0.1:5681/pulse;amqp://alice@127.0.0.1:5682/pulse;amqp://alice@127.0.0.1:5683/pulse"
    )
    assert config.safe_url(1) == "amqp://alice@127.0.0.1:5682/pulse"
    assert "s3cr" not in repr(config) and "s3cr" not in config.safe_url()


def test_tls_checks_each_hosts_own_name():
    config = load_config(
        {"pulse_url": "amqps://u:p@pulse1.example.org:5671;amqps://pulse2.example.org:5671"}, environ={}
    )
    assert config.connection_kwargs(0)["ssl"]["server_hostname"] == "pulse1.example.org"
    assert config.connection_kwargs(1)["ssl"]["server_hostname"] == "pulse2.example.org"
    assert config.connection_kwargs(1)["ssl"]["cert_reqs"] == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("url", "fix"),
    [
        ("amqps://u:p@h1:5671;amqp://h2:5672", "the same scheme"),
        ("amqps://u:p@h1:5671;amqps://bob:p@h2:5671", "pulse_user/pulse_password"),
        ("amqps://u:p@h1:5671/a;amqps://h2:5671/b", "pulse_vhost"),
        ("amqps://u:p@h1:5671;amqps://h1:5671", "same host twice"),
        ("memory://;amqp://127.0.0.1:5672", "give it alone"),
        ("amqp://u:p@127.0.0.1:5672;amqp://pulse.example.org:5672", "allow_insecure"),
    ],
)
def test_hosts_that_cannot_be_one_cluster_are_refused_with_the_fix(url, fix):
    with pytest.raises(ConfigError, match=fix):
        load_config({"pulse_url": url}, environ={})


def test_a_url_list_of_something_else_is_refused():
    with pytest.raises(ConfigError, match="several joined by ';', or a list"):
        load_config({"pulse_url": [5681, 5682]}, environ={})


def test_the_standalone_connection_takes_the_failover_form():
    conn = PulseConnection(url=HOSTS)
    assert len(conn.config.hosts) == 3


def test_each_connect_attempt_goes_to_the_next_host_round_robin(monkeypatch):
    # Given an engine on three hosts
    config = load_config({"pulse_url": HOSTS}, environ={})
    engine = Engine(config, None)
    tried: list[int] = []

    def fake_open(config: Any, host: int = 0) -> Any:
        tried.append(host)
        return mock.Mock()

    monkeypatch.setattr(engine_module, "open_connection", fake_open)
    # When it makes four attempts (a failure or a loss before each new one)
    for _ in range(4):
        engine._prepare()()
    # Then they go to hosts 1, 2, 3, then 1 again
    assert tried == [0, 1, 2, 0]


def test_the_handoff_starts_each_attempt_at_the_next_broker_host_and_tries_them_all(monkeypatch):
    # Given a Celery app whose broker_url is a failover list of three nodes
    app = Celery(
        "t", broker="amqp://g:g@127.0.0.1:5681//;amqp://g:g@127.0.0.1:5682//;amqp://g:g@127.0.0.1:5683//"
    )
    handoff = Handoff(app, None, lambda ready: None)
    attempts: list[tuple[int | None, int | None]] = []

    def refuse(self: Connection, max_retries: int | None = None, **kwargs: Any) -> None:
        attempts.append((self.port, max_retries))
        raise ConnectionRefusedError()

    monkeypatch.setattr(Connection, "ensure_connection", refuse)
    # When three connect attempts fail
    for _ in range(3):
        with pytest.raises(ConnectionRefusedError):
            handoff._connect()
    # Then each began at the next host, and each may try every host once
    assert attempts == [(5681, 2), (5682, 2), (5683, 2)]


def test_the_handoff_with_one_broker_host_tries_it_once(monkeypatch):
    handoff = Handoff(Celery("t", broker="amqp://g:g@127.0.0.1:5681//"), None, lambda ready: None)
    seen: list[int | None] = []

    def refuse(self: Connection, max_retries: int | None = None, **kwargs: Any) -> None:
        seen.append(max_retries)
        raise ConnectionRefusedError()

    monkeypatch.setattr(Connection, "ensure_connection", refuse)
    with pytest.raises(ConnectionRefusedError):
        handoff._connect()
    assert seen == [0]


def test_an_untrusted_certificate_is_reported_for_the_host_that_presented_it():
    from pulse_celery.pulse.diagnose import describe_error

    config = load_config({"pulse_url": "amqps://alice:secret@node1:5671;amqps://node2:5671"}, environ={})
    error = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    assert "not trusted for 'node2'" in describe_error(error, config, host=1)
    assert "not trusted for 'node1'" in describe_error(error, config)
