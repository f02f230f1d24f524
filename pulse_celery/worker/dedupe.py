"""The dedupe store: which Pulse messages' tasks were already enqueued or already succeeded.

A Redis database (``pulse_dedupe_url``, redis-py: ``pip install 'pulse-celery[dedupe]'``).
One key per message and queue, ``pulse_celery:dedupe:<queue>:<task id>`` (the task id is the
message's stable id, :func:`~pulse_celery.pulse.identity.message_id`), holding ``enqueued``
or ``succeeded``, expiring after ``pulse_dedupe_ttl`` seconds. ``succeeded`` overwrites
``enqueued``; ``enqueued`` never overwrites anything (``SET NX``). While a copy of the
message runs, ``<key>:running`` holds that run's lease (lease.py), so that a second copy
waits for it instead of running at the same moment.

Without ``pulse_dedupe_url`` the Celery result backend serves when it is Redis
(``redis://``, ``rediss://``): the keys are namespaced, and the backend's own keys
(``celery-task-meta-*``) are not touched. Any other backend, or none, fails the worker
start with a :class:`~pulse_celery.errors.ConfigError` saying the fix.

When the store cannot be reached, messages are handled **without** dedupe (at least once,
as with dedupe off) rather than held: a Pulse queue that is not consumed grows until Pulse
Guardian deletes it with its bindings, and a lost queue loses messages; a duplicate is the
smaller harm. Every store call has a short timeout, and after a failure the store is not
asked again for :attr:`DedupeStore.retry_after` seconds, so an outage costs the worker's
event loop at most one timeout per interval. Each message handled so is counted
(``dedupe_unavailable`` in its queue's ``pulse_status``), and the outage and its end are
logged once each.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

from ..errors import ConfigError

logger = logging.getLogger(__name__)

ENQUEUED = "enqueued"
SUCCEEDED = "succeeded"
PREFIX = "pulse_celery:dedupe:"
#: Task-message header set on the messages of bindings with dedupe on (read in the pool).
DEDUPE_HEADER = "pulse_dedupe"

# A lease is released or renewed only by the run that holds it (its token): a run whose lease
# expired must not delete or extend the lease a copy took since.
_IF_HELD = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call({}) end return 0"
RELEASE_LEASE = _IF_HELD.format("'del', KEYS[1]")
RENEW_LEASE = _IF_HELD.format("'pexpire', KEYS[1], ARGV[2]")


class StoreUnavailable(Exception):
    """The dedupe store could not be asked (down, timed out, or resting after a failure)."""


def dedupe_key(queue: str, task_id: str) -> str:
    """The store's key of one message (``task_id``) consumed from ``queue``."""
    return f"{PREFIX}{queue}:{task_id}"


def lease_key(key: str) -> str:
    """The key of the running lease of the message whose entry is ``key``."""
    return f"{key}:running"


def _text(value: Any) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


def store_url(dedupe_url: str | None, result_backend: Any) -> str:
    """The dedupe store's URL: ``pulse_dedupe_url``, else a Redis result backend's; else ConfigError."""
    if dedupe_url:
        if not dedupe_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                f"pulse_dedupe_url must be a Redis URL (redis://host:6379/0), not "
                f"{dedupe_url.split('://', 1)[0]}://..."
            )
        return dedupe_url
    backend = result_backend if isinstance(result_backend, str) else ""
    if backend.startswith(("redis://", "rediss://")):
        return backend
    raise ConfigError(
        "dedupe is on (pulse_dedupe or @pulse_binding(dedupe=True)) but there is no dedupe store: "
        "set pulse_dedupe_url to a Redis URL (redis://host:6379/0), or use a redis:// result backend"
    )


def require_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigError(
            "dedupe is on but redis-py is not installed; pip install 'pulse-celery[dedupe]'"
        ) from None
    return redis


class DedupeStore:
    """Read and write message states in Redis; every failure is :class:`StoreUnavailable`."""

    #: Seconds each Redis call may take (connect, or read a reply).
    timeout = 0.5
    #: Seconds the store is left alone after a failure.
    retry_after = 5.0

    def __init__(self, url: str, ttl: float, *, client: Any = None, name: str = "dedupe store") -> None:
        self.url = url
        self.ttl_ms = max(1, int(ttl * 1000))
        self.name = name
        self._client = client
        self._pid = os.getpid() if client is not None else None
        self._down_until = 0.0
        #: failures since the store was last reachable (0: it is)
        self.failures = 0

    @property
    def available(self) -> bool:
        return self.failures == 0

    def _redis(self) -> Any:
        # A client per process: a prefork child must not share its parent's sockets.
        if self._client is None or self._pid != os.getpid():
            redis = require_redis()
            self._client = redis.Redis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
            self._pid = os.getpid()
        return self._client

    def _call(self, what: str, fun: Any) -> Any:
        if self.failures and time.monotonic() < self._down_until:
            raise StoreUnavailable(f"{self.name} unreachable; next try in a few seconds")
        try:
            result = fun(self._redis())
        except Exception as exc:
            self._down_until = time.monotonic() + self.retry_after
            self.failures += 1
            if self.failures == 1:
                logger.warning(
                    "Dedupe store unreachable (%s: %r); Pulse messages are handled without dedupe "
                    "(a redelivery may run again) until it is back; next try in %.0f s",
                    what,
                    exc,
                    self.retry_after,
                )
            raise StoreUnavailable(f"{self.name}: {exc!r}") from exc
        if self.failures:
            logger.warning(
                "Dedupe store reachable again after %d failed calls; dedupe resumes", self.failures
            )
            self.failures = 0
        return result

    def state(self, key: str) -> str | None:
        """``enqueued``, ``succeeded``, or None when the store has no entry for ``key``."""
        return _text(self._call("read", lambda r: r.get(key)))

    def claim(self, key: str, token: str, lease_ms: int) -> tuple[bool, str | None]:
        """Take ``key``'s running lease for ``token`` if it is free; and ``key``'s state, read after.

        One round trip. The state is read after the lease is taken: a run that released the
        lease had written ``succeeded`` before, so a copy that takes it then sees the success.
        """

        def claim(r: Any) -> Any:
            pipe = r.pipeline(transaction=False)
            pipe.set(lease_key(key), token, px=lease_ms, nx=True)
            pipe.get(key)
            return pipe.execute()

        taken, state = self._call("claim", claim)
        return bool(taken), _text(state)

    def finish(self, key: str, token: str | None, succeeded: bool) -> None:
        """Record ``succeeded`` (if it did), then release ``token``'s lease; one round trip."""

        def finish(r: Any) -> Any:
            pipe = r.pipeline(transaction=False)
            if succeeded:
                pipe.set(key, SUCCEEDED, px=self.ttl_ms)
            if token is not None:
                pipe.eval(RELEASE_LEASE, 1, lease_key(key), token)
            return pipe.execute()

        if succeeded or token is not None:
            self._call("finish", finish)

    def renew(self, leases: dict[str, str], lease_ms: int) -> list[str]:
        """Extend each lease (key -> token) to ``lease_ms``; return the keys whose lease is gone."""

        def renew(r: Any) -> Any:
            pipe = r.pipeline(transaction=False)
            for key, token in leases.items():
                pipe.eval(RENEW_LEASE, 1, lease_key(key), token, lease_ms)
            return pipe.execute()

        results = self._call("renew", renew) if leases else []
        return [key for key, renewed in zip(leases, results, strict=True) if not renewed]

    def record(self, keys: Iterable[str], state: str) -> None:
        """Record ``state`` for every key in one round trip (``enqueued`` only where none is)."""
        keys = list(keys)
        if not keys:
            return

        def write(r: Any) -> Any:
            pipe = r.pipeline(transaction=False)
            for key in keys:
                pipe.set(key, state, px=self.ttl_ms, nx=state == ENQUEUED)
            return pipe.execute()

        self._call("write", write)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            try:
                client.close()
            except Exception:
                pass
