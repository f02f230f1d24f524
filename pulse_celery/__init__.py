"""Consume Mozilla Pulse messages as Celery tasks.

Decorate a task with :func:`pulse_binding`; ``celery -A app worker`` then consumes the
Pulse queues it declares and invokes the task once per message, acking the Pulse message
only when the task message is safe on the Celery broker (``enqueue``) or the task has
finished (``complete``).
"""

from .bindings import Binding, app_bindings, pulse_binding
from .bootstep import PulseStep, install
from .config import PRODUCTION_URL, PulseConfig, load_config
from .errors import (
    BadMessage,
    BindingError,
    ConfigError,
    ContentRefused,
    HandoffFailed,
    NoMatchingBinding,
    PayloadMismatch,
    PulseCeleryError,
    UndecodableBody,
)
from .message import PulseMessage, pulse_message
from .taskcluster import TaskclusterKey, routing_fields

__version__ = "0.1.0"

__all__ = [
    "PRODUCTION_URL",
    "BadMessage",
    "Binding",
    "BindingError",
    "ConfigError",
    "ContentRefused",
    "HandoffFailed",
    "NoMatchingBinding",
    "PayloadMismatch",
    "PulseCeleryError",
    "PulseConfig",
    "PulseMessage",
    "PulseStep",
    "TaskclusterKey",
    "UndecodableBody",
    "__version__",
    "app_bindings",
    "install",
    "load_config",
    "pulse_binding",
    "pulse_message",
    "routing_fields",
]
