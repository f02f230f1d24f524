"""Several Pulse services in one app: ``pulse_sources``, and the bindings grouped by source.

The single-source settings (``pulse_url``, ``pulse_user`` ...) are the source ``"default"``.
``app.conf.pulse_sources = {"community": {...}}`` adds more, each a dict of the connection
settings a :class:`~pulse_celery.pulse.config.PulseConfig` has (``url``, ``user``,
``password``, ``vhost``, ``credentials``, ``heartbeat``, ``ssl_ca_certs`` ...), resolved by
the same rules: the entry's value, then the credentials in its URL, then ``guest``; an
empty URL is production Pulse. What an entry leaves out of the other settings (heartbeat,
queue type, prefetch ...) follows the app-wide ``pulse_*`` setting; credentials never do,
and the environment's ``PULSE_USERNAME``/``PULSE_PASSWORD`` are the default source's only.
``@pulse_binding(..., source="community")`` puts a binding's queue on that source; queue
names follow the source's user (``queue/<user>/<queue>``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass

from .bindings import Binding
from .config import AppConfig
from .errors import ConfigError
from .plan import QueuePlan, plan_queues
from .pulse.config import PulseConfig, build_config
from .pulse.topology import queue_name, validate_queue_suffix

#: The source of the single-source settings, and of bindings that name none.
DEFAULT = "default"

#: What a pulse_sources entry may set: the connection's settings.
SOURCE_KEYS = frozenset(f.name for f in dataclasses.fields(PulseConfig))
#: What every source takes from its own entry or its URL, never from the default source.
OWN_KEYS = frozenset({"url", "user", "password", "vhost", "credentials"})


def source_configs(config: AppConfig) -> dict[str, AppConfig]:
    """Each source's settings by name: ``"default"`` first (``config`` itself), then ``pulse_sources``."""
    configs = {DEFAULT: config}
    for name, entry in (config.sources or {}).items():
        option = f"pulse_sources[{name!r}]"
        if not isinstance(name, str) or not name or name == DEFAULT:
            raise ConfigError(
                f"{option}: name each source with a non-empty word other than {DEFAULT!r} (the "
                "pulse_* settings are the default source)"
            )
        if not isinstance(entry, dict):
            raise ConfigError(f"{option} is {entry!r}; give a dict such as {{'url': ..., 'user': ...}}")
        unknown = set(entry) - SOURCE_KEYS
        if unknown:
            raise ConfigError(
                f"{option} has unknown keys {', '.join(sorted(map(str, unknown)))}; a source takes "
                f"the connection settings: {', '.join(sorted(SOURCE_KEYS))}"
            )
        inherited = {
            f.name: getattr(config, f.name)
            for f in dataclasses.fields(AppConfig)
            if f.name not in OWN_KEYS and f.name not in ("sources", "queues")
        }
        source: AppConfig = build_config(
            AppConfig, {**inherited, **entry}, environ={}, option_prefix=f"{option}."
        )
        configs[name] = source
    return configs


@dataclass(frozen=True)
class SourcePlan:
    """One Pulse source of the app: its settings and the queues its bindings declare on it."""

    name: str
    config: AppConfig
    plans: tuple[QueuePlan, ...]


def plan_sources(config: AppConfig, bindings: Iterable[Binding]) -> list[SourcePlan]:
    """Group the app's bindings by source, then into queues; only sources with bindings.

    Raises ConfigError with the fix for a binding naming an unknown source, or a
    ``pulse_queues`` entry naming no queue of any source.
    """
    configs = source_configs(config)
    by_source: dict[str, list[Binding]] = {}
    for b in bindings:
        if b.source not in configs:
            known = ", ".join(repr(n) for n in configs)
            raise ConfigError(
                f"task {b.task_name} binds {b.exchange} on source {b.source!r}, which pulse_sources "
                f"does not define; the sources are: {known}"
            )
        by_source.setdefault(b.source, []).append(b)
    sources = []
    for name, group in by_source.items():
        source = configs[name]
        plans = plan_queues(source, group, config.queues, check_unused=False)
        sources.append(SourcePlan(name, source, tuple(plans)))
    named = {p.name for s in sources for p in s.plans if not p.anonymous}
    for key in config.queues or {}:
        suffix = validate_queue_suffix(key)
        if not any(queue_name(s.config.user, suffix) in named for s in sources if _may_name(s, suffix)):
            raise ConfigError(
                f"pulse_queues names {key!r}, which no @pulse_binding(queue=...) of this app uses; "
                f"the app's named queues are: {', '.join(sorted(named)) or 'none'}"
            )
    return sources


def _may_name(source: SourcePlan, suffix: str) -> bool:
    # A full name under another user's prefix belongs to another source.
    return not suffix.startswith("queue/") or suffix.startswith(f"queue/{source.config.user}/")
