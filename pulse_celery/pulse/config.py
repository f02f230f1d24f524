"""Where Pulse is and how to consume it: one frozen, validated :class:`PulseConfig`.

Credentials are resolved as the Go client's ``pulse.NewConnection`` does: the explicit
setting, then the credentials in the URL, then ``PULSE_USERNAME``/``PULSE_PASSWORD``, then
``guest``. An empty URL means production Pulse over TLS with host-name verification. The
URL may name several hosts of one cluster, in kombu's failover form (``amqps://h1:5671;
amqps://h2:5671``) or as a list: the engine connects to one and moves to the next (round
robin) whenever a connect fails or the connection is lost. Every
other setting is a field below, defined once (name, type, default, doc); it is read from the
explicit source first, then from the environment as ``PULSE_<NAME>`` (see settings.py).
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

from ..errors import ConfigError, CredentialsUnavailable
from .credentials import ask as ask_credentials
from .settings import at_least, environment, read_settings, setting

#: Production Pulse (firefox-ci); used when no URL is configured.
PRODUCTION_URL = "amqps://pulse.mozilla.org:5671"

QUEUE_TYPES = ("quorum", "classic")

#: Environment variables that do not follow the ``PULSE_<NAME>`` rule (the Go client's names).
ENVIRONMENT_NAMES = {"PULSE_USERNAME": "user", "PULSE_PASSWORD": "password"}

# Pulse Guardian's rule for user names.
_USER_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def _readable_file(path: str) -> str | None:
    if os.access(path, os.R_OK):
        return None
    return "is not a readable file; give the path of a PEM CA bundle, or unset it to use the system's CAs"


@dataclass(frozen=True)
class PulseConfig:
    """Everything needed to reach Pulse and consume from it; the password never shows in its repr."""

    #: Scheme, host and port only: no credentials, no vhost; several hosts are joined by ``;``.
    url: str = field(
        metadata={
            "doc": "Pulse URL; its credentials (URL-encoded) and its path (the vhost, as in "
            "'.../communitytc') are taken out of it; several hosts of one cluster as "
            "'amqps://h1:5671;amqps://h2:5671' or a list: tried in turn (round robin); amqps:// "
            "verifies the certificate chain and the host name",
            "default_doc": f"production Pulse, {PRODUCTION_URL}",
        }
    )
    user: str = field(
        metadata={
            "doc": "Pulse user name; it names the queues (queue/<user>/...)",
            "default_doc": "the URL's user, else 'guest'",
        }
    )
    password: str = field(
        repr=False,
        metadata={
            "doc": "Pulse password; never shown in logs, reprs or error messages",
            "default_doc": "the URL's password, else 'guest'",
        },
    )
    vhost: str = setting(
        "/",
        "Virtual host (firefox-ci: '/', community Taskcluster: 'communitytc')",
        default_doc="the URL's path, else '/'",
    )
    heartbeat: float = setting(
        120.0,
        "Seconds between AMQP heartbeats (the Taskcluster client uses 120)",
        check=at_least(0, "seconds"),
    )
    connect_timeout: float = setting(
        30.0, "Seconds one connect attempt may take", check=at_least(1, "second")
    )
    prefetch_count: int = setting(
        200,
        "Deliveries a queue may hold unacknowledged (the enqueue hand-off's window; the standalone "
        "consume() default)",
        check=at_least(1, "(0 would mean unlimited)"),
    )
    queue_type: Literal["quorum", "classic"] = setting(
        "quorum", "Type of named queues: quorum (what the Taskcluster libraries declare) or classic"
    )
    max_body_size: int = setting(
        1024 * 1024,
        "Bodies larger than this many bytes are refused before decoding",
        check=at_least(1, "byte"),
    )
    ssl_ca_certs: str | None = setting(
        None, "PEM CA bundle for TLS (default: the system's CAs)", check=_readable_file
    )
    allow_insecure: bool = setting(False, "Allow plain amqp:// to a host that is not loopback")
    queue_max_length: int | None = setting(
        None,
        "x-max-length of named queues: the broker drops the oldest messages past it, which keeps "
        "Pulse Guardian from deleting the queue (None: no limit)",
        check=at_least(1, "message, or None"),
    )
    queue_warn_depth: int = setting(
        1000,
        "Warn when a queue holds this many messages (Guardian warns its owner at 2,000 and deletes "
        "the queue at 8,000 by default)",
        check=at_least(1, "message"),
    )
    depth_check_interval: float = setting(
        30.0, "Seconds between two depth checks of each queue", check=at_least(1, "second")
    )
    max_deliveries: int = setting(
        5,
        "A message delivered this many times without an ack is not run again: it goes to the "
        "failure hook or dead-letter store",
        check=at_least(1, "delivery"),
    )

    credentials: Callable[[], tuple[str, str]] | None = setting(
        None,
        "Callable (or 'module:name' of one) returning (user, password), asked on every connect "
        "attempt, in the connect thread (so again after a refused login, and at each recycle): "
        "rotated credentials take "
        "effect without a restart. The user names the queues and must not change; without "
        "pulse_user the provider is asked once when the settings are read, to learn it",
    )
    recycle_interval: float | None = setting(
        3600.0,
        "Seconds after which a connection that is up is replaced by a fresh one, without losing "
        "or repeating a message (the new one consumes before the old one stops); None: never",
        check=at_least(1, "second, or None"),
    )

    @property
    def use_ssl(self) -> bool:
        return self.url.startswith("amqps://")

    @property
    def hosts(self) -> tuple[str, ...]:
        """Each host's URL (scheme, host, port), in the order they are tried."""
        return tuple(self.url.split(";"))

    @property
    def host(self) -> str:
        """The first host's name."""
        return self.host_name(0)

    def host_name(self, index: int) -> str:
        """The name of host ``index`` (taken modulo the number of hosts)."""
        return urlsplit(self.hosts[index % len(self.hosts)]).hostname or ""

    @property
    def is_memory(self) -> bool:
        """True for kombu's in-memory transport (the demo and unit tests)."""
        return self.url.startswith("memory://")

    def safe_url(self, host: int | None = None) -> str:
        """The URL with the user but never the password, fit for logs: host ``host``, or all (``;``)."""
        hosts = self.hosts if host is None else (self.hosts[host % len(self.hosts)],)
        vhost = "" if self.vhost == "/" else quote(self.vhost, safe="")
        safe = []
        for url in hosts:
            scheme, rest = url.split("://", 1)
            safe.append(f"{scheme}://{quote(self.user, safe='')}@{rest}/{vhost}")
        return ";".join(safe)

    def connection_kwargs(self, host: int = 0) -> dict[str, Any]:
        """Keyword arguments for :class:`kombu.Connection` to host ``host`` (modulo the number of hosts)."""
        parts = urlsplit(self.hosts[host % len(self.hosts)])
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
            sslopts: dict[str, Any] = {"server_hostname": parts.hostname, "cert_reqs": ssl.CERT_REQUIRED}
            if self.ssl_ca_certs:
                sslopts["ca_certs"] = self.ssl_ca_certs
            kwargs["ssl"] = sslopts
        return kwargs


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


def split_urls(url: str | Sequence[str] | None, option: str = "pulse_url") -> list[str]:
    """The URLs in ``url``: kombu's failover form (``;`` between them) or a list; [] if none."""
    if url is None:
        return []
    if isinstance(url, str):
        items = url.split(";")
    elif isinstance(url, Sequence) and all(isinstance(u, str) for u in url):
        items = [part for u in url for part in u.split(";")]
    else:
        raise ConfigError(
            f"{option} {url!r} is not a URL; give a string such as {PRODUCTION_URL!r}, several "
            "joined by ';', or a list of them"
        )
    return [item.strip() for item in items if item.strip()]


def resolve_urls(
    url: str | Sequence[str] | None,
    user: str | None,
    password: str | None,
    environ: Mapping[str, str],
    option: str = "pulse_url",
) -> tuple[str, str, str, str]:
    """Like :func:`resolve_credentials` for one URL or several (a failover list).

    The first URL gives the credentials and vhost; a later one may repeat them or leave them
    out, never differ, and every URL has the same scheme. Returns the hosts joined by ``;``.
    """
    urls = split_urls(url, option)
    if len(urls) <= 1:
        return resolve_credentials(urls[0] if urls else None, user, password, environ)
    first_url, vhost, user_, password_ = resolve_credentials(urls[0], user, password, environ)
    hosts = [first_url]
    first = urlsplit(urls[0])
    scheme = first.scheme
    if scheme == "memory":
        raise ConfigError(f"{option}: memory:// names no host; give it alone, without other URLs")
    for n, other in enumerate(urls[1:], start=2):
        parts = urlsplit(other)
        host_url, other_vhost, _, _ = resolve_credentials(other, user_, password_, {})
        where = f"{option} host {n} ({host_url})"
        if parts.scheme != scheme:
            raise ConfigError(
                f"{where} uses {parts.scheme}:// but host 1 uses {scheme}://; give every host of "
                "the cluster the same scheme"
            )
        if (parts.username or parts.password) and (parts.username, parts.password) != (
            first.username,
            first.password,
        ):
            raise ConfigError(
                f"{where} has other credentials than host 1; a cluster has one set: give them "
                "once, in the first URL or in pulse_user/pulse_password"
            )
        if parts.path not in ("", "/") and other_vhost != vhost:
            raise ConfigError(
                f"{where} names vhost {other_vhost!r} but host 1 names {vhost!r}; give the vhost "
                "once, in the first URL or in pulse_vhost"
            )
        hosts.append(host_url)
    if len(set(hosts)) != len(hosts):
        raise ConfigError(f"{option} names the same host twice: {';'.join(hosts)}")
    return ";".join(hosts), vhost, user_, password_


def check_user(user: str) -> None:
    if user[0] not in _USER_CHARS - set("0123456789._-") or not set(user) <= _USER_CHARS:
        raise ConfigError(
            f"Pulse user {user!r} is not a valid Pulse user name (letters, digits, '.', '_', '-', "
            "starting with a letter); set pulse_user or PULSE_USERNAME"
        )


def _user_named(url: Any, user: str | None, environ: Mapping[str, str]) -> bool:
    """Whether the settings name the user (the setting, the URL's, ``PULSE_USERNAME``)."""
    if user or environ.get("PULSE_USERNAME"):
        return True
    urls = split_urls(url) if url else []
    try:
        return bool(urls) and bool(urlsplit(urls[0]).username)
    except ValueError:
        return False


def build_config(
    cls: type[PulseConfig],
    given: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    *,
    option_prefix: str = "pulse_",
) -> Any:
    """Build ``cls`` (PulseConfig or a subclass) from explicit values, then the environment.

    ``given`` maps setting names (``heartbeat``, ``url``, ``user``...) to what the user set;
    None means unset. Raises :class:`ConfigError` with the fix when a setting cannot work.
    """
    environ = os.environ if environ is None else environ
    env = environment(environ, ENVIRONMENT_NAMES)
    url, vhost, user, password = resolve_urls(
        given.get("url") or env.get("url"),
        given.get("user"),
        given.get("password"),
        environ,
        option=option_prefix + "url",
    )
    values = read_settings(
        cls,
        [given, env],
        option=lambda name: option_prefix + name,
        skip=frozenset({"url", "user", "password"}),
    )
    provider = values.get("credentials")
    if provider is not None and not _user_named(
        given.get("url") or env.get("url"), given.get("user"), environ
    ):
        # The user fixes the queue names (queue/<user>/...): learn it once, now.
        try:
            user, password = ask_credentials(provider)
        except CredentialsUnavailable as exc:
            raise ConfigError(
                f"{exc}; it was asked for the Pulse user, which names the queues: fix it, or set "
                f"{option_prefix}user so that the user is known without asking"
            ) from exc
    check_user(user)
    values.setdefault("vhost", vhost)
    config = cls(url=url, user=user, password=password, **values)
    remote = [config.host_name(i) for i in range(len(config.hosts)) if not _is_loopback(config.host_name(i))]
    if url.startswith("amqp://") and remote and not config.allow_insecure:
        raise ConfigError(
            f"{option_prefix}url {url!r} sends the Pulse password in clear text to a remote host "
            f"({remote[0]}); "
            f"use amqps://... on port 5671, or set {option_prefix}allow_insecure = True if you mean it"
        )
    return config
