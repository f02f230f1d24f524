"""Open one short-lived Pulse connection for a command, or fail with one line that says the fix.

The worker's connection lives on its event loop and reconnects forever; a command such as
``pulse-celery listen`` or ``check`` makes one attempt and reports what went wrong, in the
words :func:`pulse_celery.pulse.diagnose.describe_error` uses for the worker's log.
"""

from __future__ import annotations

from typing import Any

from amqp.exceptions import AMQPError
from kombu import Connection
from kombu.exceptions import KombuError

from ..errors import PulseCeleryError
from ..pulse.config import PulseConfig
from ..pulse.diagnose import describe_error
from ..pulse.engine import open_any_host

#: What a failed connect, declare or publish raises, for the callers' ``except`` clauses.
BROKER_ERRORS: tuple[type[BaseException], ...] = (AMQPError, KombuError, OSError)


def broker_failure(what: str, exc: BaseException, config: PulseConfig) -> PulseCeleryError:
    """Return the error to raise when ``what`` failed with ``exc``: one line, password masked."""
    return PulseCeleryError(f"{what}: {describe_error(exc, config)}")


def open_connection(config: PulseConfig, *, confirm_publish: bool = False) -> Connection:
    """Connect once to the configured Pulse; publishes wait for the broker's confirm if asked."""
    if config.is_memory:
        raise PulseCeleryError("pulse_url memory:// exists only inside one process; give an amqp(s):// URL")
    options: dict[str, Any] = {}
    if confirm_publish:
        options["transport_options"] = {"confirm_publish": True}
    try:
        return open_any_host(config, **options)  # each host of a failover pulse_url, in turn
    except BROKER_ERRORS as exc:
        raise broker_failure(f"cannot connect to Pulse at {config.safe_url()}", exc, config) from exc
