"""Ask ``pulse_credentials`` for the user and password of one connect attempt.

A provider is asked on every connect attempt, in the connect thread (never on the loop: it
may read a file or call a secret store), so rotated credentials take effect at the next
connect, after a refused login, and at each recycle (``pulse_recycle_interval``). The user it
returns must be the config's user: queue names are ``queue/<user>/...``, fixed when the
config is built (from ``pulse_user``, the URL, ``PULSE_USERNAME``, or else by asking the
provider once then). Anything else fails that attempt with :class:`CredentialsUnavailable`,
and the link retries with its backoff. The password never shows in an error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import CredentialsUnavailable

Provider = Callable[[], tuple[str, str]]


def provider_name(provider: Provider) -> str:
    """``myapp.secrets:pulse_credentials``, for the log lines."""
    named = provider if hasattr(provider, "__qualname__") else type(provider)
    module = getattr(named, "__module__", None)
    name = getattr(named, "__qualname__", None) or repr(provider)
    return f"{module}:{name}" if module else name


def ask(provider: Provider) -> tuple[str, str]:
    """Call ``provider``; return (user, password), or raise :class:`CredentialsUnavailable` with the fix."""
    try:
        result: Any = provider()
    except Exception as exc:
        raise CredentialsUnavailable(
            f"pulse_credentials ({provider_name(provider)}) raised {type(exc).__name__}: {exc}"
        ) from exc
    if (
        not isinstance(result, (tuple, list))
        or len(result) != 2
        or not all(isinstance(part, str) and part for part in result)
    ):
        shape = type(result).__name__
        raise CredentialsUnavailable(
            f"pulse_credentials ({provider_name(provider)}) returned a {shape}, not (user, password); "
            "return a tuple of two non-empty strings"
        )
    return result[0], result[1]


def current(user: str, password: str, provider: Provider | None) -> tuple[str, str]:
    """The (user, password) to log in with now: the provider's, checked against ``user``; else the given."""
    if provider is None:
        return user, password
    new_user, new_password = ask(provider)
    if new_user != user:
        raise CredentialsUnavailable(
            f"pulse_credentials ({provider_name(provider)}) returned user {new_user!r}, but this "
            f"process consumes queue/{user}/... queues; return {user!r} again, or restart with "
            f"pulse_user = {new_user!r} to move to that user's queues"
        )
    return new_user, new_password
