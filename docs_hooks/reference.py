"""MkDocs hook: the reference tables, generated from the code at each build so they cannot drift.

A page asks for a table with a marker line, replaced before the Markdown is rendered:

* ``<!-- reference:connection-settings -->``: the engine's settings (``PulseConfig``), which a
  Celery app, ``PulseConnection`` and a ``pulse_sources`` entry all take;
* ``<!-- reference:worker-settings -->``: the settings only a Celery worker reads (``AppConfig``);
* ``<!-- reference:queue-settings -->``: the keys of a ``pulse_queues`` entry (``QueueOptions``);
* ``<!-- reference:source-keys -->``: what a ``pulse_sources`` entry takes and inherits;
* ``<!-- reference:config-error-example -->``: a ConfigError as the code words it;
* ``<!-- reference:metrics -->``: the Prometheus metric families (``worker.metrics.FAMILIES``);
* ``<!-- reference:error-tree -->``: the exception tree, from the classes themselves;
* ``<!-- reference:error-classes -->``: a mkdocstrings section per exception class;
* ``<!-- reference:error-notes -->``: what errors.py's docstring says after its tree.

An unknown marker, or an error tree in ``errors.py``'s docstring that no longer matches the
classes, is a warning, which fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mkdocs.hooks.reference")

MARKER = re.compile(r"^<!-- reference:([a-z-]+) -->$", re.MULTILINE)


def on_config(config: Any, **_: Any) -> Any:
    _fix_mkdocs_click()
    return config


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        generator = GENERATORS.get(name)
        if generator is None:
            log.warning(
                "%s: unknown marker reference:%s (known: %s)", page.file.src_uri, name, ", ".join(GENERATORS)
            )
            return match.group(0)
        return generator()

    return MARKER.sub(replace, markdown)


# The command line ------------------------------------------------------------------------


def _fix_mkdocs_click() -> None:
    """Two fixes to mkdocs-click 0.9's rendering of the click commands (docs/reference/cli.md).

    * With click >= 8.3 an option without a default has ``Sentinel.UNSET`` as its default,
      which mkdocs-click prints as is; ``to_info_dict()`` gives None, as click did before
      (the fix proposed upstream, mkdocs/mkdocs-click#95).
    * Help texts are Markdown there: ``queue/<user>/...`` would be read as an HTML tag and
      vanish, so ``<`` and ``>`` are escaped.
    """
    from mkdocs_click import _docs

    if getattr(_docs, "_pulse_celery_fixed", False):
        return

    def option_row(option: Any) -> str:
        names = ", ".join(f"`{opt}`" for opt in option.opts)
        if option.secondary_opts:
            names += " / " + ", ".join(f"`{opt}`" for opt in option.secondary_opts)
        description = _cell(option.help) if option.help is not None else "N/A"
        default = option.to_info_dict().get("default")
        if default is None or default == ():
            shown = "_required" if option.required else "None"
        else:
            shown = f"`{default}`"
        return f"| {names} | {_docs._format_table_option_type(option)} | {description} | {shown} |"

    make_description = _docs._make_description

    def description(ctx: Any, remove_ascii_art: bool = False) -> Any:
        for line in make_description(ctx, remove_ascii_art):
            yield html.escape(line, quote=False)

    _docs._format_table_option_row = option_row
    _docs._make_description = description
    _docs._pulse_celery_fixed = True


# Settings ---------------------------------------------------------------------------------


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell: no HTML, no column breaks."""
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    # The tables extension does not split a row at a | inside backticks: no escaping here.
    return f"`{text}`"


def _default(info: Any) -> str:
    if info.default_doc:
        return _cell(info.default_doc)
    if info.default is dataclasses.MISSING or info.default is None:
        return "unset"
    if isinstance(info.default, int) and not isinstance(info.default, bool) and info.default >= 10_000:
        mib, rest = divmod(info.default, 1024 * 1024)
        return _code(f"{info.default}") + (f" ({mib} MiB)" if mib and not rest else f" ({info.default:,})")
    return _code(repr(info.default) if isinstance(info.default, str) else str(info.default))


def _environment(name: str, tp: Any) -> str:
    from pulse_celery.pulse.config import ENVIRONMENT_NAMES

    names = {setting: env for env, setting in ENVIRONMENT_NAMES.items()}
    env = _code(names.get(name, f"PULSE_{name.upper()}"))
    shown = _type(tp)
    if shown.startswith("dict"):
        env += " (JSON)"
    elif "callable" in shown:
        env += " (`module:name`)"
    return env


def _type(tp: Any) -> str:
    from pulse_celery.pulse.settings import type_name

    return type_name(tp)


def _table(head: list[str], rows: list[list[str]], kind: str = "settings") -> str:
    """A Markdown table in a ``reference-table`` block (docs/stylesheets/reference.css styles it)."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return f'<div class="reference-table {kind}" markdown>\n\n' + "\n".join(lines) + "\n\n</div>\n"


def _documented(cls: type) -> Any:
    """``describe(cls)``; a warning (a failed strict build) for a field it leaves out (no doc)."""
    from pulse_celery.pulse.settings import describe

    infos = describe(cls)
    missing = {f.name for f in dataclasses.fields(cls)} - {info.name for info in infos}
    if missing:
        log.warning(
            "%s: field(s) %s have no doc and would be missing from the reference; declare them "
            "with setting(default, doc)",
            cls.__name__,
            ", ".join(sorted(missing)),
        )
    return infos


def _settings_table(infos: Any, *, prefix: str = "pulse_", environment: bool = True) -> str:
    rows = []
    for info in infos:
        name = _code(prefix + info.name)
        if environment:
            name += "<br>" + _environment(info.name, info.type)
        rows.append([name, f"{_code(_type(info.type))}<br>{_default(info)}", _cell(info.doc)])
    head = ["setting<br>environment" if environment else "key", "type<br>default", "meaning"]
    return _table(head, rows)


def connection_settings() -> str:
    from pulse_celery.pulse.config import PulseConfig

    return _settings_table(_documented(PulseConfig))


def worker_settings() -> str:
    from pulse_celery.config import AppConfig
    from pulse_celery.pulse.config import PulseConfig
    from pulse_celery.pulse.settings import describe

    engine = {info.name for info in describe(PulseConfig)}
    return _settings_table(info for info in _documented(AppConfig) if info.name not in engine)


def queue_settings() -> str:
    from pulse_celery.plan import QueueOptions

    return _settings_table(_documented(QueueOptions), prefix="", environment=False)


def source_keys() -> str:
    from pulse_celery.sources import OWN_KEYS, SOURCE_KEYS

    own = ", ".join(_code(key) for key in sorted(OWN_KEYS))
    inherited = ", ".join(_code(key) for key in sorted(SOURCE_KEYS - OWN_KEYS))
    return (
        f"A `pulse_sources` entry takes the connection settings above, without the `pulse_` "
        f"prefix. It gives its own {own} (never taken from the default source), and takes "
        f"{inherited} from the app's `pulse_*` settings unless it sets them.\n"
    )


def config_error_example() -> str:
    """A real ConfigError: the one a binding to another user's queue gets at worker start."""
    from pulse_celery.errors import ConfigError
    from pulse_celery.pulse.topology import queue_name

    try:
        queue_name("alice", "queue/bob/builds")
    except ConfigError as exc:
        return f"```\nConfigError: {exc}\n```\n"
    log.warning("queue_name('alice', 'queue/bob/builds') no longer raises ConfigError: fix the example")
    return ""


# Metrics ----------------------------------------------------------------------------------


def metrics() -> str:
    from pulse_celery.worker.metrics import FAMILIES

    rows = []
    for family in FAMILIES:
        labels = ", ".join(_code(label) for label in family.labels)
        meaning = _cell(family.help)
        if family.values:
            meaning += f"; `{family.labels[-1]}` is one of " + ", ".join(_code(v) for v in family.values)
        rows.append([f"{_code(family.exposed_name)}<br>{family.kind}", labels, meaning])
    return _table(["metric", "labels", "meaning"], rows, kind="metrics")


# Errors -----------------------------------------------------------------------------------


def _error_classes() -> list[tuple[int, type]]:
    """Each exception class of errors.py with its depth in the tree, depth first."""
    from pulse_celery import errors

    found: list[tuple[int, type]] = []

    def walk(cls: type, depth: int) -> None:
        found.append((depth, cls))
        for sub in cls.__subclasses__():
            if sub.__module__ == errors.__name__:
                walk(sub, depth + 1)

    walk(errors.PulseCeleryError, 0)
    return found


def error_tree() -> str:
    from pulse_celery import errors

    def summary(cls: type) -> str:
        return (inspect.getdoc(cls) or "").split("\n", 1)[0]

    found = _error_classes()
    _check_drawn_tree(errors.__doc__ or "", found)
    lines = []
    for depth, cls in found:
        bases = ", ".join(base.__name__ for base in cls.__bases__)
        anchor = f"pulse_celery.errors.{cls.__name__}"
        lines.append(f"{'    ' * depth}- [`{cls.__name__}`](#{anchor}) ({bases}): {_cell(summary(cls))}")
    return "\n".join(lines) + "\n"


def error_classes() -> str:
    """A mkdocstrings section per exception class, in the tree's order."""
    return "\n".join(
        f"::: pulse_celery.errors.{cls.__name__}\n    options:\n      heading_level: 3\n"
        for _, cls in _error_classes()
    )


def error_notes() -> str:
    """What errors.py's docstring says after the tree it draws."""
    from pulse_celery import errors

    after = inspect.cleandoc(errors.__doc__ or "").partition("The tree::")[2].splitlines()
    notes = [line for line in after if line and not line.startswith(" ")] if after else []
    return inspect.cleandoc("\n".join(notes)) + "\n"


def _check_drawn_tree(doc: str, found: list[tuple[int, type]]) -> None:
    """Warn when the tree drawn in errors.py's docstring is not the classes' tree."""
    drawn: dict[str, str | None] = {}
    parents: list[str] = []
    root_column = None
    for line in doc.partition("The tree::")[2].splitlines()[1:]:
        if line and not line.startswith(" "):
            break
        name = re.search(r"[A-Z]\w+", line)
        if name is None:
            continue
        if root_column is None:
            root_column = name.start()
        depth = (name.start() - root_column) // 4
        parents[depth:] = [name.group(0)]
        drawn[name.group(0)] = parents[depth - 1] if depth else None
    actual = {cls.__name__: (cls.__bases__[0].__name__ if depth else None) for depth, cls in found}
    if drawn != actual:
        log.warning(
            "pulse_celery/errors.py: the tree drawn in the docstring (class: parent) %s is not "
            "the classes' tree %s",
            drawn,
            actual,
        )


GENERATORS: dict[str, Callable[[], str]] = {
    "connection-settings": connection_settings,
    "worker-settings": worker_settings,
    "queue-settings": queue_settings,
    "source-keys": source_keys,
    "config-error-example": config_error_example,
    "metrics": metrics,
    "error-tree": error_tree,
    "error-classes": error_classes,
    "error-notes": error_notes,
}
