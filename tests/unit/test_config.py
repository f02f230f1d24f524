"""Settings resolve as the Go client's NewConnection does, and never leak the password."""

from __future__ import annotations

import ssl
from urllib.parse import quote

import pytest

from pulse_celery import PRODUCTION_URL, ConfigError, load_config
from pulse_celery.pulse.config import resolve_credentials

NASTY_PASSWORD = "s3cr/t:p@ss%w#rd"
ENV = {"PULSE_USERNAME": "envuser", "PULSE_PASSWORD": "envpass"}


def test_explicit_user_and_password_beat_url_credentials_and_env():
    conf = {
        "pulse_url": "amqps://urluser:urlpass@pulse.mozilla.org:5671",
        "pulse_user": "alice",
        "pulse_password": "explicit",
    }
    config = load_config(conf, environ=ENV)
    assert (config.user, config.password) == ("alice", "explicit")


def test_url_credentials_beat_env():
    config = load_config({"pulse_url": "amqps://urluser:urlpass@pulse.mozilla.org:5671"}, environ=ENV)
    assert (config.user, config.password) == ("urluser", "urlpass")


def test_env_credentials_beat_guest():
    config = load_config({"pulse_url": "amqps://pulse.mozilla.org:5671"}, environ=ENV)
    assert (config.user, config.password) == ("envuser", "envpass")


def test_credentials_default_to_guest():
    config = load_config({}, environ={})
    assert (config.user, config.password) == ("guest", "guest")


def test_user_and_password_resolve_independently():
    url, vhost, user, password = resolve_credentials(
        "amqps://urluser@pulse.mozilla.org:5671/communitytc", None, None, {"PULSE_PASSWORD": "envpass"}
    )
    assert (url, vhost, user, password) == (
        "amqps://pulse.mozilla.org:5671",
        "communitytc",
        "urluser",
        "envpass",
    )


@pytest.mark.parametrize("url", [None, ""])
def test_absent_url_means_production_over_tls(url):
    config = load_config({"pulse_url": url}, environ={})
    assert config.url == PRODUCTION_URL == "amqps://pulse.mozilla.org:5671"
    assert config.vhost == "/"
    assert config.connection_kwargs()["ssl"]["cert_reqs"] == ssl.CERT_REQUIRED


def test_pulse_url_env_var_is_used_when_no_setting():
    config = load_config({}, environ={"PULSE_URL": "amqps://pulse.example.org:5671/communitytc"})
    assert (config.url, config.vhost) == ("amqps://pulse.example.org:5671", "communitytc")


def test_url_encoded_credentials_are_decoded():
    url = f"amqps://{quote('alice', safe='')}:{quote(NASTY_PASSWORD, safe='')}@pulse.mozilla.org:5671"
    config = load_config({"pulse_url": url}, environ={})
    assert (config.user, config.password) == ("alice", NASTY_PASSWORD)


def test_credentials_are_stripped_from_the_url():
    config = load_config({"pulse_url": "amqps://alice:hunter2@pulse.mozilla.org:5671/"}, environ={})
    assert config.url == "amqps://pulse.mozilla.org:5671"


@pytest.mark.parametrize(
    ("url", "vhost"),
    [
        ("amqps://pulse.mozilla.org:5671/communitytc", "communitytc"),
        ("amqps://pulse.mozilla.org:5671/", "/"),
        ("amqps://pulse.mozilla.org:5671", "/"),
        ("amqp://localhost:5672/%2F", "/"),
    ],
)
def test_vhost_comes_from_the_url_path(url, vhost):
    assert load_config({"pulse_url": url}, environ={}).vhost == vhost


def test_password_never_appears_in_repr_str_or_safe_url():
    url = f"amqps://alice:{quote(NASTY_PASSWORD, safe='')}@pulse.mozilla.org:5671/communitytc"
    config = load_config({"pulse_url": url}, environ={})
    assert config.password == NASTY_PASSWORD
    for text in (repr(config), str(config), config.safe_url()):
        assert NASTY_PASSWORD not in text
        assert quote(NASTY_PASSWORD, safe="") not in text


def test_safe_url_shows_user_host_and_vhost():
    config = load_config(
        {"pulse_url": "amqps://pulse.mozilla.org:5671/communitytc", "pulse_user": "alice"},
        environ={"PULSE_PASSWORD": "hunter2"},
    )
    assert config.safe_url() == "amqps://alice@pulse.mozilla.org:5671/communitytc"


def test_tls_connection_checks_the_host_name():
    config = load_config({"pulse_url": "amqps://pulse.example.org"}, environ={})
    kwargs = config.connection_kwargs()
    assert kwargs["hostname"] == "pulse.example.org"
    assert kwargs["port"] == 5671
    assert kwargs["ssl"]["server_hostname"] == "pulse.example.org"
    assert kwargs["ssl"]["cert_reqs"] == ssl.CERT_REQUIRED


def test_connection_uses_taskcluster_heartbeat_and_connect_timeout():
    kwargs = load_config({}, environ={}).connection_kwargs()
    assert (kwargs["heartbeat"], kwargs["connect_timeout"]) == (120.0, 30.0)


def test_plain_amqp_to_a_remote_host_is_refused():
    with pytest.raises(ConfigError, match="amqps://") as raised:
        load_config({"pulse_url": "amqp://pulse.example.org:5672"}, environ={})
    assert "pulse_allow_insecure" in str(raised.value)


def test_plain_amqp_to_a_remote_host_is_allowed_when_asked():
    conf = {"pulse_url": "amqp://pulse.example.org:5672", "pulse_allow_insecure": True}
    config = load_config(conf, environ={})
    assert "ssl" not in config.connection_kwargs()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "[::1]"])
def test_plain_amqp_to_loopback_is_allowed(host):
    config = load_config({"pulse_url": f"amqp://{host}:5672"}, environ={})
    assert config.connection_kwargs()["port"] == 5672
    assert "ssl" not in config.connection_kwargs()


@pytest.mark.parametrize("user", ["1alice", "al/ice", "_alice", "alice bob", "alicé"])
def test_invalid_user_name_is_refused(user):
    with pytest.raises(ConfigError, match="pulse_user"):
        load_config({"pulse_user": user}, environ={})


def test_invalid_user_name_in_the_url_is_refused():
    with pytest.raises(ConfigError, match="not a valid Pulse user name"):
        load_config({"pulse_url": "amqps://al%2Fice:pw@pulse.mozilla.org:5671"}, environ={})


def test_user_name_with_dots_dashes_and_underscores_is_accepted():
    assert load_config({"pulse_user": "a1.b-c_d"}, environ={}).user == "a1.b-c_d"


def test_unsupported_scheme_is_refused():
    with pytest.raises(ConfigError, match="amqps://"):
        load_config({"pulse_url": "https://pulse.mozilla.org"}, environ={})


@pytest.mark.parametrize(
    ("setting", "value"),
    [("pulse_ack_policy", "later"), ("pulse_queue_type", "stream"), ("pulse_prefetch_count", 0)],
)
def test_bad_setting_is_refused_naming_the_setting(setting, value):
    with pytest.raises(ConfigError, match=setting):
        load_config({setting: value}, environ={})


def test_config_is_frozen():
    config = load_config({}, environ={})
    with pytest.raises(AttributeError):
        config.password = "changed"  # type: ignore[misc]


def test_guardian_protection_settings_are_read_and_checked():
    conf = {
        "pulse_url": "amqps://pulse.mozilla.org:5671",
        "pulse_queue_max_length": 5000,
        "pulse_queue_warn_depth": 300,
        "pulse_max_deliveries": 3,
    }
    config = load_config(conf, environ={})
    assert (config.queue_max_length, config.queue_warn_depth, config.max_deliveries) == (5000, 300, 3)
    with pytest.raises(ConfigError, match="pulse_queue_max_length"):
        load_config({**conf, "pulse_queue_max_length": 0}, environ={})
    with pytest.raises(ConfigError, match="pulse_ssl_ca_certs"):
        load_config({**conf, "pulse_ssl_ca_certs": "/nonexistent/ca.pem"}, environ={})


# -- one definition per setting, strings parsed as users mean them ---------------------------


def test_settings_given_as_strings_parse_as_users_expect():
    conf = {
        "pulse_prefetch_count": "20",
        "pulse_allow_insecure": "false",
        "pulse_heartbeat": "60",
        "pulse_queue_max_length": "",
        "pulse_ack_policy": "complete",
    }
    config = load_config(conf, environ={})
    assert (config.prefetch_count, config.allow_insecure, config.heartbeat) == (20, False, 60.0)
    assert config.queue_max_length is None
    assert config.ack_policy == "complete"


def test_every_setting_can_come_from_the_environment_and_the_app_wins_over_it():
    env = {"PULSE_PREFETCH_COUNT": "50", "PULSE_ALLOW_INSECURE": "yes", "PULSE_QUEUE_TYPE": "classic"}
    config = load_config({"pulse_url": "amqp://pulse.example.org:5672"}, environ=env)
    assert (config.prefetch_count, config.allow_insecure, config.queue_type) == (50, True, "classic")
    assert load_config({"pulse_prefetch_count": 7}, environ=env).prefetch_count == 7


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("pulse_prefetch_count", "twenty"),
        ("pulse_allow_insecure", "maybe"),
        ("pulse_heartbeat", "soon"),
        ("pulse_prefetch_count", 2.5),
        ("pulse_max_deliveries", True),
    ],
)
def test_a_value_that_does_not_parse_is_a_config_error_naming_the_setting(setting, value):
    with pytest.raises(ConfigError, match=setting):
        load_config({setting: value}, environ={})


def test_each_setting_is_defined_once_with_its_type_default_and_doc():
    from pulse_celery.config import AppConfig
    from pulse_celery.pulse.settings import describe

    infos = describe(AppConfig)
    names = [info.name for info in infos]
    assert len(names) == len(set(names))
    assert {"heartbeat", "prefetch_count", "ack_policy", "metrics_port", "dead_letter_queue"} <= set(names)
    assert all(info.doc for info in infos)
    defaults = {info.name: info.default for info in infos}
    assert load_config({}, environ={}).prefetch_count == defaults["prefetch_count"]


def test_the_standalone_connection_takes_the_same_settings_as_keywords(monkeypatch):
    from pulse_celery import PulseConnection

    monkeypatch.delenv("PULSE_USERNAME", raising=False)
    conn = PulseConnection(
        "alice", "hunter2", "amqps://pulse.example.org:5671", heartbeat="30", prefetch_count=5
    )
    assert (conn.config.user, conn.config.heartbeat, conn.config.prefetch_count) == ("alice", 30.0, 5)
    with pytest.raises(ConfigError, match="heartbeat"):
        PulseConnection("alice", "x", "amqps://pulse.example.org:5671", heartbeat="often")
