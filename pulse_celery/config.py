"""A Celery app's Pulse settings: ``app.conf.pulse_*`` and ``PULSE_*`` as one frozen :class:`AppConfig`.

:class:`AppConfig` is the engine's :class:`~pulse_celery.pulse.config.PulseConfig` (where Pulse
is, how to consume it) plus what only a Celery worker needs (ack policy, metrics, dead
letters). Every setting is defined once, as a field; ``app.conf.pulse_<name>`` sets it, then
``PULSE_<NAME>`` in the environment, then its default.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .pulse.config import ENVIRONMENT_NAMES, PRODUCTION_URL, PulseConfig, build_config
from .pulse.settings import at_least, environment, prefixed, read_one, setting

__all__ = ["ACK_POLICIES", "PRODUCTION_URL", "AppConfig", "PulseConfig", "app_setting", "load_config"]

ACK_POLICIES = ("enqueue", "complete")


def _tcp_port(value: Any) -> str | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return None
    return "is not a TCP port (1-65535); set it to a free port for the /metrics endpoint, or leave it unset"


@dataclass(frozen=True)
class AppConfig(PulseConfig):
    """The Pulse settings of a Celery app: the engine's, and the worker's own."""

    ack_policy: Literal["enqueue", "complete"] = setting(
        "enqueue",
        "Ack policy of bindings that name none: enqueue (ack once the task message is confirmed "
        "by the Celery broker) or complete (run here, ack when the task finishes)",
    )
    consumer_timeout: float = setting(
        1800.0,
        "The broker's consumer_timeout in seconds (RabbitMQ's default: 30 minutes); longer task "
        "time limits under complete are warned about at start",
        check=at_least(1, "second"),
    )
    metrics_port: int | None = setting(
        None,
        "Port of the Prometheus /metrics endpoint in the worker's main process (needs "
        "prometheus-client); unset: Celery events instead",
        check=_tcp_port,
    )
    dead_letter_queue: str = setting(
        "pulse_celery.dead_letters", "Queue of the dead-letter store, on the Celery broker"
    )
    dedupe: bool = setting(
        False,
        "Default of @pulse_binding(dedupe=...): ack without running again a redelivery whose task "
        "was already enqueued (enqueue) or already succeeded (complete); needs a dedupe store",
    )
    dedupe_url: str | None = setting(
        None, "Redis URL of the dedupe store (redis://host:6379/0); see the dedupe guide"
    )
    dedupe_ttl: float = setting(
        86400.0,
        "Seconds a message's entry stays in the dedupe store (a redelivery later than this runs again)",
        check=at_least(1, "second"),
    )
    queues: dict[str, dict[str, Any]] | None = setting(
        None,
        "Per-queue settings by queue name: {'builds': {'prefetch': 50, 'max_length': 100_000, "
        "'expires': 7 * 86400}}; unset keys follow the app-wide settings",
    )
    sources: dict[str, dict[str, Any]] | None = setting(
        None,
        "More Pulse services by name: {'community': {'url': ..., 'user': ..., 'password': ..., "
        "'vhost': 'communitytc'}}; bindings pick one with source=; the pulse_* settings are "
        "source 'default'",
    )


def app_setting(conf: Mapping[str, Any], name: str, environ: Mapping[str, str] | None = None) -> Any:
    """Read one of the app's Pulse settings alone (``dead_letter_queue``), parsed and checked."""
    env = environment(os.environ if environ is None else environ, ENVIRONMENT_NAMES)
    return read_one(AppConfig, name, [prefixed(conf, "pulse_"), env], option=lambda n: f"pulse_{n}")


def load_config(conf: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> AppConfig:
    """Build the :class:`AppConfig` from a Celery app's ``conf`` and the environment.

    Raises :class:`~pulse_celery.errors.ConfigError` with the fix when a setting cannot work.
    """
    config: AppConfig = build_config(AppConfig, prefixed(conf, "pulse_"), environ)
    return config
