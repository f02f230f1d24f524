"""Every exception pulse_celery raises, in one place.

The tree::

    PulseCeleryError
    ├── ConfigError            settings or bindings that Pulse would refuse; says the fix
    │   └── BindingError       a @pulse_binding that cannot work (pattern, queue, task)
    ├── BadMessage             a Pulse delivery that cannot become a task invocation
    │   ├── ContentRefused     not JSON, compressed, or too large: never decoded
    │   ├── UndecodableBody    JSON that does not parse (bad UTF-8, syntax, depth, huge ints)
    │   ├── NoMatchingBinding  came from an exchange or routing key no binding names
    │   └── PayloadMismatch    JSON that does not fit the binding's payload type (model, dataclass)
    ├── HandoffFailed          the task message did not reach the Celery broker safely
    └── CredentialsUnavailable pulse_credentials raised, or returned what cannot be used

Errors raised by the Pulse connection itself stay inside the worker step: they are
logged, the connection is re-established, and they never stop the Celery worker.
"""

from __future__ import annotations


class PulseCeleryError(Exception):
    """Base of every pulse_celery error."""


class ConfigError(PulseCeleryError):
    """A setting or binding Pulse would refuse; the message says how to fix it."""


class BindingError(ConfigError):
    """A ``@pulse_binding`` that cannot work as written."""


class BadMessage(PulseCeleryError):
    """A Pulse delivery that cannot be turned into a task invocation.

    It is rejected without requeue and logged once; the worker goes on.
    """

    #: Short machine-readable reason, used in logs and (later) dead letters.
    reason = "bad-message"


class ContentRefused(BadMessage):
    """A body that is never decoded: not JSON, compressed, or over the size limit."""

    reason = "content-refused"


class UndecodableBody(BadMessage):
    """A JSON body that does not parse."""

    reason = "undecodable"


class NoMatchingBinding(BadMessage):
    """A delivery from an exchange or routing key that no declared binding names."""

    reason = "no-binding"


class PayloadMismatch(BadMessage):
    """A decoded payload that does not fit the ``payload=`` type of its binding.

    At ingest it is dead-lettered before any task message exists; raised inside a task (a
    payload sent the ordinary Celery way, or replayed), it fails that task.
    """

    reason = "payload-mismatch"


class HandoffFailed(PulseCeleryError):
    """The task message was not confirmed by the Celery broker (nacked, returned or lost)."""


class CredentialsUnavailable(PulseCeleryError):
    """``pulse_credentials`` raised, or returned something other than this config's (user, password).

    It fails that one connect attempt: the next one (after the backoff) asks the provider again.
    """
