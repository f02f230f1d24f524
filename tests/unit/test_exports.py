"""``pulse_celery.__all__`` exports what users need, and nothing that does not exist."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pulse_celery
from pulse_celery import errors


def imported_public_names() -> set[str]:
    tree = ast.parse(Path(pulse_celery.__file__).read_text())
    return {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names
        if not (alias.asname or alias.name).startswith("_")
    }


def test_every_name_in_all_exists():
    missing = [name for name in pulse_celery.__all__ if not hasattr(pulse_celery, name)]
    assert missing == []


def test_every_public_import_is_in_all():
    assert imported_public_names() - set(pulse_celery.__all__) == set()


def test_all_has_no_duplicates():
    assert len(pulse_celery.__all__) == len(set(pulse_celery.__all__))


def test_every_exception_is_exported():
    exceptions = {
        name
        for name, obj in vars(errors).items()
        if inspect.isclass(obj) and issubclass(obj, pulse_celery.PulseCeleryError)
    }
    assert exceptions - set(pulse_celery.__all__) == set()


def test_decorator_config_and_metadata_helpers_are_exported():
    assert {
        "pulse_binding",
        "app_bindings",
        "Binding",
        "load_config",
        "PulseConfig",
        "PulseMessage",
        "pulse_message",
        "PulseStep",
        "install",
    } <= set(pulse_celery.__all__)


def test_binding_error_is_a_config_error():
    assert issubclass(pulse_celery.BindingError, pulse_celery.ConfigError)
    for bad in (pulse_celery.ContentRefused, pulse_celery.UndecodableBody, pulse_celery.NoMatchingBinding):
        assert issubclass(bad, pulse_celery.BadMessage)
