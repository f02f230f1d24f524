"""Check AMQP topic routing-key patterns and match routing keys against them, as RabbitMQ does.

``*`` matches exactly one word, ``#`` zero or more words; words are separated by ``.``.
kombu's in-memory topic matcher treats ``a.#`` as not matching ``a``; RabbitMQ does match it,
and the dispatcher must agree with the broker, hence this small matcher.
"""

from __future__ import annotations

from functools import lru_cache

from ..errors import BindingError

#: RabbitMQ's limit for a routing key (AMQP shortstr).
MAX_ROUTING_KEY_LENGTH = 255


def validate_pattern(pattern: str, *, allow_all: bool = False) -> str:
    """Return ``pattern`` if RabbitMQ would bind it as meant, else raise :class:`BindingError`."""
    if not isinstance(pattern, str):
        raise BindingError(f"routing key pattern must be a string, not {type(pattern).__name__}")
    if len(pattern.encode()) > MAX_ROUTING_KEY_LENGTH:
        raise BindingError(
            f"routing key pattern {pattern[:40]!r}... is over RabbitMQ's 255 bytes; "
            "shorten it, e.g. end it with '#' instead of naming every word"
        )
    if pattern == "":
        raise BindingError(
            "an empty routing key pattern matches only messages with an empty key; "
            "Taskcluster keys start with 'primary.' (bind 'primary.#' for all of them)"
        )
    for word in pattern.split("."):
        if word in ("*", "#"):
            continue
        if "*" in word or "#" in word:
            raise BindingError(
                f"routing key pattern {pattern!r}: wildcard inside the word {word!r} is taken "
                "literally by RabbitMQ; '*' and '#' must stand alone between dots"
            )
    if set(pattern.split(".")) == {"#"} and not allow_all:
        raise BindingError(
            f"routing key pattern {pattern!r} takes every message on the exchange, which can "
            "fill the queue past Pulse Guardian's limit; pass all_messages=True if you mean it"
        )
    return pattern


@lru_cache(maxsize=4096)
def _split(text: str) -> tuple[str, ...]:
    # RabbitMQ reads an empty key as no words at all, not as one empty word.
    return tuple(text.split(".")) if text else ()


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Return True when RabbitMQ's topic exchange would route ``routing_key`` by ``pattern``."""
    return _match(_split(pattern), 0, _split(routing_key), 0)


def _match(pat: tuple[str, ...], i: int, key: tuple[str, ...], j: int) -> bool:
    while i < len(pat):
        word = pat[i]
        if word == "#":
            # Collapse runs of '#', then try every split point.
            while i + 1 < len(pat) and pat[i + 1] == "#":
                i += 1
            if i + 1 == len(pat):
                return True
            return any(_match(pat, i + 1, key, k) for k in range(j, len(key) + 1))
        if j >= len(key):
            return False
        if word != "*" and word != key[j]:
            return False
        i += 1
        j += 1
    return j == len(key)
