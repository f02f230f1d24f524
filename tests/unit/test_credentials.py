"""pulse_credentials: asked on every connect attempt, in the connect thread; its user names the queues.

No broker: attempts go to a port nothing listens on, so each one asks the provider and
then fails (or fails in the provider), and the engine retries with its backoff.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from pulse_celery.errors import ConfigError, CredentialsUnavailable
from pulse_celery.pulse.config import PulseConfig, build_config
from pulse_celery.pulse.connection import PulseConnection
from pulse_celery.pulse.credentials import current
from pulse_celery.pulse.engine import open_any_host

NOWHERE = "amqp://127.0.0.1:9/"


class Provider:
    """Returns ``answers`` in turn (the last one again and again); records the thread of each call."""

    def __init__(self, *answers: tuple[str, str] | BaseException) -> None:
        self.answers = list(answers)
        self.threads: list[str] = []

    def __call__(self) -> tuple[str, str]:
        self.threads.append(threading.current_thread().name)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def config(provider: Callable[[], tuple[str, str]], **given: object) -> PulseConfig:
    built: PulseConfig = build_config(
        PulseConfig, {"url": NOWHERE, "credentials": provider, "heartbeat": 0, **given}, environ={}
    )
    return built


def wait_until(done: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_without_pulse_user_the_provider_is_asked_once_for_the_user_that_names_the_queues() -> None:
    provider = Provider(("alice", "s3cret"))
    built = config(provider)
    assert (built.user, len(provider.threads)) == ("alice", 1)


def test_with_pulse_user_the_provider_is_not_asked_when_the_settings_are_read() -> None:
    provider = Provider(RuntimeError("vault is down"))
    built = config(provider, user="alice")
    assert (built.user, provider.threads) == ("alice", [])


def test_a_provider_that_fails_while_the_user_is_learnt_is_a_config_error_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match="user so that the user is known"):
        config(Provider(RuntimeError("vault is down")))


def test_another_user_than_the_queues_is_refused_and_the_password_never_shows() -> None:
    with pytest.raises(CredentialsUnavailable) as caught:
        current("alice", "", Provider(("bob", "hunter2")))
    assert "pulse_user = 'bob'" in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize("answer", [("alice",), ("alice", ""), "alice:pw", None])
def test_a_provider_returning_no_user_and_password_pair_is_refused(answer: object) -> None:
    with pytest.raises(CredentialsUnavailable, match="not \\(user, password\\)"):
        current("alice", "", lambda: answer)  # type: ignore[arg-type,return-value]


def test_a_one_off_connection_asks_the_provider() -> None:
    provider = Provider(("alice", "s3cret"))
    built = config(provider, user="alice", connect_timeout=1)
    with pytest.raises(Exception, match="refused"):
        open_any_host(built)
    assert len(provider.threads) == 1


def test_every_connect_attempt_asks_again_in_the_connect_thread_and_a_failure_backs_off() -> None:
    provider = Provider(RuntimeError("vault is down"), ("alice", "s3cret"))
    connection = PulseConnection.from_config(config(provider, user="alice", connect_timeout=1))
    engine = connection.engine
    engine.link.backoff.first = 0.05
    connection.start()
    try:
        wait_until(lambda: len(provider.threads) >= 3)
        wait_until(
            lambda: engine.stats.last_error is not None and "refused" in engine.stats.last_error.lower()
        )
    finally:
        connection.close()
    assert all(name.startswith("pulse-celery-connect-") for name in provider.threads)
    assert engine.stats.connects == 0
    assert engine.link.backoff.attempt >= 3 or engine.link.state == "stopped"


def test_a_provider_error_is_the_attempts_error() -> None:
    provider = Provider(RuntimeError("vault is down"))
    connection = PulseConnection.from_config(config(provider, user="alice", connect_timeout=1))
    connection.start()
    try:
        wait_until(lambda: engine_error(connection) is not None)
    finally:
        connection.close()
    error = engine_error(connection)
    assert error is not None and "pulse_credentials" in error and "vault is down" in error


def engine_error(connection: PulseConnection) -> str | None:
    return connection.engine.stats.last_error
