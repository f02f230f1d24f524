"""Consume Mozilla Pulse messages: as Celery tasks, or with a plain callback.

Celery: decorate a task with :func:`pulse_binding`; ``celery -A app worker`` then consumes
the Pulse queues it declares and invokes the task once per message, acking the Pulse
message only when the task message is safe on the Celery broker (``enqueue``) or the task
has finished (``complete``).

Standalone: :class:`PulseConnection` is the Go ``pulse`` client's API, with no Celery
broker: ``PulseConnection(user, password, url).consume(queue, callback, ...)``.

The layers, each in its folder: ``pulse/`` the engine (its modules import no Celery), ``worker/`` the
Celery worker step, ``cli/`` the ``pulse-celery`` command, ``testing/`` helpers for your
tests. Importing this package or decorating a task never loads the worker step.
"""

from __future__ import annotations

from typing import Any

from .bindings import Binding, app_bindings, install, pulse_binding
from .config import PRODUCTION_URL, AppConfig, PulseConfig, load_config
from .errors import (
    BadMessage,
    BindingError,
    ConfigError,
    ContentRefused,
    CredentialsUnavailable,
    HandoffFailed,
    NoMatchingBinding,
    PayloadMismatch,
    PulseCeleryError,
    UndecodableBody,
)
from .pulse.connection import PulseConnection, PulseQueue
from .pulse.delivery import Delivery
from .pulse.events import Connected, ConnectedQueue
from .pulse.message import PulseMessage
from .pulse.taskcluster import TaskclusterKey, routing_fields
from .request import pulse_message
from .signals import pulse_connected

__version__ = "0.1.0"

__all__ = [
    "PRODUCTION_URL",
    "AppConfig",
    "BadMessage",
    "Binding",
    "BindingError",
    "ConfigError",
    "Connected",
    "ConnectedQueue",
    "ContentRefused",
    "CredentialsUnavailable",
    "Delivery",
    "HandoffFailed",
    "NoMatchingBinding",
    "PayloadMismatch",
    "PulseCeleryError",
    "PulseConfig",
    "PulseConnection",
    "PulseMessage",
    "PulseQueue",
    "PulseStep",
    "TaskclusterKey",
    "UndecodableBody",
    "__version__",
    "app_bindings",
    "install",
    "load_config",
    "pulse_binding",
    "pulse_connected",
    "pulse_message",
    "routing_fields",
]


def __getattr__(name: str) -> Any:
    # The worker step loads the whole Celery host: only when asked for by name.
    if name == "PulseStep":
        from .worker.step import PulseStep

        return PulseStep
    raise AttributeError(f"module 'pulse_celery' has no attribute {name!r}")
