"""The Python examples of the docs site and the README, and how the tests run each one.

Every ```python block of ``docs/**/*.md`` and ``README.md`` is one :class:`Example`, named
``<page>#<anchor>``: the page without ``.md`` (``guides/testing``, ``README``) and the anchor
MkDocs gives the nearest heading above the block, with ``-2``, ``-3`` ... when that heading has
several blocks (``guides/testing#testing-your-app-2``). The name is the test's id in pytest's
output and, pasted after the site's URL, the place of the block on the site.

Each example is in exactly one of the named lists below, with the reason
(``test_every_example_is_in_exactly_one_list`` fails on a new block until it is placed):

* :data:`UNIT`: run in process with Celery and Pulse on ``memory://`` and no network
  (tests/unit/test_docs_examples.py);
* :data:`RABBITMQ`: run against a Pulse-like vhost on the local RabbitMQ
  (tests/integration/test_docs_examples.py);
* :data:`PRODUCTION`: an app aimed at production Pulse: imported as a module as written (its
  imports and configuration), its tasks run in process on Taskcluster events, then pointed at
  a Pulse-like vhost per source, with the exchanges it binds declared there as Pulse has them,
  and checked with ``pulse-celery check`` (tests/integration/test_docs_examples.py);
* :data:`NOT_RUN`: not run, and why.

A fragment that uses what its page set up earlier (an ``app``) names it in :data:`GIVEN`.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import CodeType

ROOT = Path(__file__).resolve().parents[1]

# -- what surrounds a fragment -----------------------------------------------------------------

#: What a fragment takes from its page, by example name: code run before it, in its namespace.
#: Empty while every example is whole, as a reader copies it.
GIVEN: dict[str, str] = {}

# -- how each example is run -------------------------------------------------------------------

UNIT: dict[str, str] = {
    "guides/testing#testing-your-app": "FakePulseConnection runs the standalone example's watch() in process",
    "guides/testing#testing-your-app-2": "deliver() runs a bound task in process; the app is on memory://",
    "guides/sources#resync-after-a-reconnect-pulse_connected": "an app with no binding: a signal handler",
    "guides/credentials#credentials-that-change": (
        "an app with no binding (check needs one): its provider is a callable load_config accepts"
    ),
    "guides/scaling#several-hosts-in-pulse_url-and-what-a-cluster-losing-a-node-did": (
        "an app with no binding: the failover forms of pulse_url, parsed by load_config"
    ),
}

RABBITMQ: dict[str, str] = {
    "guides/standalone#without-celery-pulseconnection": (
        "main() on a Pulse-like vhost: a resolved task is printed, pause and resume typed on stdin"
    ),
}

PRODUCTION: dict[str, str] = {
    "README#what-you-write": "the README's app (the index's): production Pulse, a Taskcluster client binding",
    "index#what-you-write": "an app on production Pulse with a Taskcluster client binding",
    "guides/ack-policies#ack-policies-what-is-guaranteed": (
        "an app on production Pulse; check proves acks_late where ack='complete'"
    ),
    "guides/dedupe#exactly-once-effects-dedupe": (
        "an app on production Pulse (the dedupe store, Redis, is not what check looks at)"
    ),
    "guides/queues#per-queue-settings": "an app on production Pulse; pulse_queues names its bound queue",
    "guides/sources#several-pulse-sources": "an app on production Pulse with a second source (communitytc)",
    "guides/taskcluster-routing-keys#taskcluster-routing-keys": "an app on production Pulse (the default)",
    "guides/typed-payloads#typed-payloads": "an app on production Pulse (the default)",
}

NOT_RUN: dict[str, str] = {}

LISTS: dict[str, dict[str, str]] = {
    "UNIT": UNIT,
    "RABBITMQ": RABBITMQ,
    "PRODUCTION": PRODUCTION,
    "NOT_RUN": NOT_RUN,
}

# -- finding the examples ----------------------------------------------------------------------

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*(?:\{#(?P<id>[\w-]+)[^}]*\})?\s*$")
_SNIPPET = re.compile(r"""^\s*--8<--\s+["'](?P<path>[^"':]+)(?::(?P<start>\d*):(?P<end>\d*))?["']\s*$""")


@dataclass(frozen=True)
class Example:
    """One ```python block of a page, as the site renders it (snippets included)."""

    #: ``docs/guides/testing.md`` or ``README.md``, from the repository's root.
    path: str
    #: ``guides/testing#testing-your-app-2``: unique, stable while the page's headings are.
    name: str
    #: The line of the block's first line of code in :attr:`path` (1-based).
    line: int
    code: str

    @property
    def module(self) -> str:
        """A module name for the example: ``docs_example_guides_testing_testing_your_app_2``."""
        return "docs_example_" + re.sub(r"\W+", "_", self.name).strip("_").lower()

    def compiled(self) -> CodeType:
        """The code, compiled so that a traceback shows the page and its line numbers."""
        return compile("\n" * (self.line - 1) + self.code, str(ROOT / self.path), "exec")


def slugify(heading: str) -> str:
    """The anchor MkDocs (Python-Markdown's toc) gives a heading."""
    text = re.sub(r"`|\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^\w\s-]", "", text).strip().lower()
    return re.sub(r"[-\s]+", "-", text)


def _snippet(line: str) -> str | None:
    """The lines ``--8<-- "path[:start:end]"`` includes (pymdownx.snippets, base path the root)."""
    match = _SNIPPET.match(line)
    if match is None:
        return None
    lines = (ROOT / match["path"]).read_text().splitlines()
    start, end = int(match["start"] or 1), int(match["end"] or len(lines))
    return "\n".join(lines[start - 1 : end])


def page_examples(path: Path) -> Iterator[Example]:
    """Yield the ```python blocks of one Markdown page, in order."""
    relative = path.relative_to(ROOT).as_posix()
    page = relative.removeprefix("docs/").removesuffix(".md")
    anchor = "top"
    counts: dict[str, int] = {}
    blocks: list[tuple[str, int, str]] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            heading = _HEADING.match(lines[i])
            if heading:
                anchor = heading["id"] or slugify(heading[2])
            i += 1
            continue
        indent, marker, lang = fence["indent"], fence["fence"], fence["lang"].lower()
        body: list[str] = []
        start = i + 2
        i += 1
        while i < len(lines):
            closing = lines[i].strip()
            if closing.startswith(marker) and set(closing) == {marker[0]}:
                break
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i].lstrip())
            i += 1
        i += 1
        if lang not in ("python", "py", "python3"):
            continue
        code = "\n".join(_snippet(line) or line for line in body) + "\n"
        counts[anchor] = counts.get(anchor, 0) + 1
        blocks.append((anchor, start, code))
    seen: dict[str, int] = {}
    for anchor, start, code in blocks:
        seen[anchor] = seen.get(anchor, 0) + 1
        suffix = f"-{seen[anchor]}" if seen[anchor] > 1 else ""
        yield Example(relative, f"{page}#{anchor}{suffix}", start, code)


def pages() -> list[Path]:
    """README.md, then every page under docs/, in path order."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def all_examples() -> list[Example]:
    return [example for path in pages() for example in page_examples(path)]


def examples_in(listed: dict[str, str]) -> list[Example]:
    """The examples one list names, for ``pytest.mark.parametrize(..., ids=...)``."""
    return [example for example in all_examples() if example.name in listed]
