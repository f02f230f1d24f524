"""Routing-key patterns are checked and matched exactly as RabbitMQ's topic exchange does."""

from __future__ import annotations

import pytest
import taskcluster

from pulse_celery import BindingError
from pulse_celery.pulse.routing_keys import topic_matches, validate_pattern

TC_KEY = (
    "primary.B3EheQ-IQ5aPzw34KS_a6g.0.mdc2.t-mojave-r7-153.releng-hardware.gecko-t-osx-1014."
    "gecko-level-3.EJAo7mQyRqS-jmzebhceFA._"
)
TC_ROUTE = "route.tc-treeherder.v2.autoland.918d7c84da371bda26460fb4b50f161d32107880.88554"

_queue_events = taskcluster.QueueEvents({"rootUrl": "https://tc.example.com"})


def _tc(method: str, **fields: object) -> str:
    return getattr(_queue_events, method)(fields)["routingKeyPattern"]


CASES = [
    # '*' is exactly one word
    ("a.*", "a.b", True),
    ("a.*", "a", False),
    ("a.*", "a.b.c", False),
    ("primary.*.*", "primary.x", False),
    ("*", "a", True),
    ("*", "", False),  # RabbitMQ splits an empty key into zero words
    ("a.*.c", "a..c", True),  # an empty word is still a word
    # '#' is zero or more words
    ("a.#", "a", True),
    ("a.#", "a.b.c", True),
    ("#.b", "b", True),
    ("#.b", "a.b", True),
    ("#.b", "a.b.c", False),
    ("a.#.c", "a.c", True),
    ("a.#.c", "a.b.b.c", True),
    ("a.#.#.c", "a.c", True),
    ("#", "", True),
    ("#.*", "", False),
    ("#.*", "a", True),
    # literal words
    ("a.b", "a.b", True),
    ("a.b", "a.bb", False),
    ("try", "try", True),
    # the real Taskcluster key against the Taskcluster client's own patterns
    (_tc("taskCompleted", workerType="gecko-t-osx-1014"), TC_KEY, True),
    (_tc("taskCompleted", workerType="gecko-t-linux"), TC_KEY, False),
    (_tc("taskCompleted", taskGroupId="EJAo7mQyRqS-jmzebhceFA"), TC_KEY, True),
    (_tc("taskCompleted", taskId="B3EheQ-IQ5aPzw34KS_a6g", runId=0), TC_KEY, True),
    (_tc("taskCompleted", taskId="B3EheQ-IQ5aPzw34KS_a6g", runId=1), TC_KEY, False),
    (_tc("taskCompleted"), TC_KEY, True),
    (_tc("taskCompleted"), TC_ROUTE, False),
    ("route.tc-treeherder.v2.autoland.#", TC_ROUTE, True),
    ("route.tc-treeherder.v2.try.#", TC_ROUTE, False),
]


@pytest.mark.parametrize(
    ("pattern", "key", "expected"), CASES, ids=[f"{p}~{k or '(empty)'}" for p, k, _ in CASES]
)
def test_topic_matches_agrees_with_rabbitmq(pattern, key, expected):
    assert topic_matches(pattern, key) is expected


def test_taskcluster_client_patterns_end_with_the_reserved_hash():
    assert _tc("taskCompleted", workerType="gecko-t-osx-1014") == "primary.*.*.*.*.*.gecko-t-osx-1014.*.*.#"


@pytest.mark.parametrize("pattern", ["#", "#.#"])
def test_pattern_taking_every_message_needs_allow_all(pattern):
    with pytest.raises(BindingError, match="all_messages=True"):
        validate_pattern(pattern)
    assert validate_pattern(pattern, allow_all=True) == pattern


def test_wildcard_inside_a_word_is_refused():
    with pytest.raises(BindingError, match="must stand alone between dots"):
        validate_pattern("a*.b")


def test_empty_pattern_is_refused_with_a_suggestion():
    with pytest.raises(BindingError, match=r"primary\.#"):
        validate_pattern("")


def test_pattern_over_255_bytes_is_refused():
    validate_pattern("a" * 255)
    with pytest.raises(BindingError, match="255 bytes"):
        validate_pattern("é" * 128)  # 128 characters, 256 bytes


def test_pattern_must_be_a_string():
    with pytest.raises(BindingError, match="must be a string"):
        validate_pattern(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("pattern", ["primary.#", "primary.*.*.*.*.*.gecko-t-osx-1014.*.*.#", "try", "#.b"])
def test_ordinary_patterns_are_accepted(pattern):
    assert validate_pattern(pattern) == pattern
