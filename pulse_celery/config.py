"""Resolve ``app.conf.pulse_*`` and ``PULSE_*`` into one frozen, validated :class:`PulseConfig`.

Credentials are resolved as the Go client's ``pulse.NewConnection`` does: the explicit
setting, then the credentials in the URL, then ``PULSE_USERNAME``/``PULSE_PASSWORD``, then
``guest``. An empty URL means production Pulse over TLS with host-name verification.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from .errors import ConfigError

#: Production Pulse (firefox-ci); used when no URL is configured.
PRODUCTION_URL = "amqps://pulse.mozilla.org:5671"

ACK_POLICIES = ("enqueue", "complete")
QUEUE_TYPES = ("quorum", "classic")

# Pulse Guardian's rule for user names.
_USER_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


@dataclass(frozen=True)
class PulseConfig:
    """Everything the worker needs to reach Pulse; the password never shows in its repr."""

    #: Scheme, host and port only: no credentials, no vhost.
    url: str
    user: str
    password: str = field(repr=False)
    vhost: str = "/"
    #: Seconds; the Taskcluster client uses 120.
    heartbeat: float = 120.0
    connect_timeout: float = 30.0
    #: Prefetch of a queue whose bindings hand off with ``enqueue``.
    prefetch_count: int = 200
    #: App-wide ack policy for bindings that do not name one.
    ack_policy: str = "enqueue"
    #: Type of named queues: quorum (what the Taskcluster libraries declare) or classic.
    queue_type: str = "quorum"
    #: Bodies larger than this many bytes are rejected before decoding.
    max_body_size: int = 1024 * 1024
    #: CA bundle for TLS (default: the system's).
    ssl_ca_certs: str | None = None
    #: Allow plain ``amqp://`` to a host that is not loopback.
    allow_insecure: bool = False
    #: ``x-max-length`` of named queues: the broker drops the oldest messages past it,
    #: which keeps Pulse Guardian from deleting the queue. None: no limit.
    queue_max_length: int | None = None
    #: Warn when a queue holds this many messages (ready + in flight here); Guardian warns
    #: its owner at 2,000 and deletes the queue at 8,000 by default.
    queue_warn_depth: int = 1000
    #: Seconds between two depth checks of each queue.
    depth_check_interval: float = 30.0
    #: The broker's consumer_timeout in seconds (RabbitMQ's default: 30 minutes).
    consumer_timeout: float = 1800.0
    #: A message delivered this many times without an ack goes to the dead-letter store
    #: instead of running again (counted by quorum queues: x-delivery-count).
    max_deliveries: int = 5
    #: Port of the Prometheus /metrics endpoint in the worker's main process (needs
    #: prometheus-client); None: no endpoint, Celery events instead.
    metrics_port: int | None = None

    @property
    def use_ssl(self) -> bool:
        return self.url.startswith("amqps://")

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def is_memory(self) -> bool:
        """True for kombu's in-memory transport (the demo and unit tests)."""
        return self.url.startswith("memory://")

    def safe_url(self) -> str:
        """The URL with the user but never the password, fit for logs."""
        scheme, rest = self.url.split("://", 1)
        vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
        return f"{scheme}://{quote(self.user, safe='')}@{rest}/{vhost}"

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :class:`kombu.Connection`."""
        parts = urlsplit(self.url)
        if self.is_memory:
            return {"hostname": "memory://", "virtual_host": self.vhost}
        kwargs: dict[str, Any] = {
            "hostname": parts.hostname,
            "port": parts.port or (5671 if self.use_ssl else 5672),
            "userid": self.user,
            "password": self.password,
            "virtual_host": self.vhost,
            "transport": "pyamqp",
            "heartbeat": self.heartbeat,
            "connect_timeout": self.connect_timeout,
        }
        if self.use_ssl:
            # py-amqp checks the host name only when server_hostname is given.
            sslopts: dict[str, Any] = {
                "server_hostname": parts.hostname,
                "cert_reqs": ssl.CERT_REQUIRED,
            }
            if self.ssl_ca_certs:
                sslopts["ca_certs"] = self.ssl_ca_certs
            kwargs["ssl"] = sslopts
        return kwargs


def _setting(conf: Mapping[str, Any], name: str, default: Any = None) -> Any:
    value = conf.get(f"pulse_{name}")
    return default if value is None else value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_credentials(
    url: str | None,
    user: str | None,
    password: str | None,
    environ: Mapping[str, str],
) -> tuple[str, str, str, str]:
    """Return ``(url_without_credentials, vhost, user, password)`` by the Go client's rules."""
    url = url or PRODUCTION_URL
    try:
        parts = urlsplit(url)
        url_user, url_password = parts.username, parts.password
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"pulse_url is not a valid URL ({exc}); expected e.g. {PRODUCTION_URL}") from None
    if parts.scheme not in ("amqp", "amqps", "memory"):
        raise ConfigError(
            f"pulse_url scheme {parts.scheme!r} is not supported; use amqps://host:5671 "
            "(or amqp:// for a local broker, memory:// for the demo)"
        )
    user = user or (unquote(url_user) if url_user else None) or environ.get("PULSE_USERNAME") or "guest"
    password = (
        password
        or (unquote(url_password) if url_password else None)
        or environ.get("PULSE_PASSWORD")
        or "guest"
    )
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    vhost = unquote(path) if path else "/"
    if parts.scheme == "memory":
        return "memory://", vhost, user, password
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    if port:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}", vhost, user, password


def _metrics_port(value: Any) -> int | None:
    if value is None or value == "":
        return None
    try:
        port = int(value)
    except (TypeError, ValueError):
        port = -1
    if not 0 < port < 65536:
        raise ConfigError(
            f"pulse_metrics_port {value!r} is not a TCP port (1-65535); set it to a free port for "
            "the /metrics endpoint, or leave it unset"
        )
    return port


def load_config(conf: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> PulseConfig:
    """Build the :class:`PulseConfig` from a Celery app's ``conf`` and the environment.

    Raises :class:`ConfigError` with the fix when a setting cannot work.
    """
    environ = os.environ if environ is None else environ
    url, vhost, user, password = resolve_credentials(
        _setting(conf, "url") or environ.get("PULSE_URL"),
        _setting(conf, "user"),
        _setting(conf, "password"),
        environ,
    )
    vhost = _setting(conf, "vhost", vhost)
    if user[0] not in _USER_CHARS - set("0123456789._-") or not set(user) <= _USER_CHARS:
        raise ConfigError(
            f"Pulse user {user!r} is not a valid Pulse user name (letters, digits, '.', '_', '-', "
            "starting with a letter); set pulse_user or PULSE_USERNAME"
        )
    config = PulseConfig(
        url=url,
        user=user,
        password=password,
        vhost=vhost,
        heartbeat=float(_setting(conf, "heartbeat", 120.0)),
        connect_timeout=float(_setting(conf, "connect_timeout", 30.0)),
        prefetch_count=int(_setting(conf, "prefetch_count", 200)),
        ack_policy=_setting(conf, "ack_policy", "enqueue"),
        queue_type=_setting(conf, "queue_type", "quorum"),
        max_body_size=int(_setting(conf, "max_body_size", 1024 * 1024)),
        ssl_ca_certs=_setting(conf, "ssl_ca_certs"),
        allow_insecure=bool(_setting(conf, "allow_insecure", False)),
        queue_max_length=_setting(conf, "queue_max_length"),
        queue_warn_depth=int(_setting(conf, "queue_warn_depth", 1000)),
        depth_check_interval=float(_setting(conf, "depth_check_interval", 30.0)),
        consumer_timeout=float(_setting(conf, "consumer_timeout", 1800.0)),
        max_deliveries=int(_setting(conf, "max_deliveries", 5)),
        metrics_port=_metrics_port(_setting(conf, "metrics_port", environ.get("PULSE_METRICS_PORT"))),
    )
    if config.ack_policy not in ACK_POLICIES:
        raise ConfigError(f"pulse_ack_policy {config.ack_policy!r} is not one of {ACK_POLICIES}")
    if config.queue_type not in QUEUE_TYPES:
        raise ConfigError(f"pulse_queue_type {config.queue_type!r} is not one of {QUEUE_TYPES}")
    if config.ssl_ca_certs and not os.access(config.ssl_ca_certs, os.R_OK):
        raise ConfigError(
            f"pulse_ssl_ca_certs {config.ssl_ca_certs!r} is not a readable file; give the path of a "
            "PEM CA bundle, or unset it to use the system's CAs"
        )
    if config.queue_max_length is not None and int(config.queue_max_length) < 1:
        raise ConfigError("pulse_queue_max_length must be a positive number of messages, or None")
    if config.prefetch_count < 1:
        raise ConfigError("pulse_prefetch_count must be at least 1 (0 would mean unlimited)")
    if url.startswith("amqp://") and not _is_loopback(config.host) and not config.allow_insecure:
        raise ConfigError(
            f"pulse_url {url!r} sends the Pulse password in clear text to a remote host; "
            "use amqps://... on port 5671, or set pulse_allow_insecure = True if you mean it"
        )
    return config
