"""The ``pulse-celery`` command."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

import click

from .errors import PulseCeleryError


def _load_app(name: str) -> Any:
    """Load a Celery app the way ``celery -A`` does; fail with one clear line."""
    from celery.app.utils import find_app

    sys.path.insert(0, ".")
    try:
        return find_app(name)
    except Exception as exc:
        raise click.ClickException(f"cannot load the Celery app {name!r}: {exc}") from None


app_option = click.option(
    "-A", "--app", "app_name", required=True, help="The Celery app, as for celery -A (module or module:attr)."
)


@click.group()
@click.version_option(package_name="pulse-celery")
def main() -> None:
    """Consume Mozilla Pulse messages as Celery tasks."""


@main.command()
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to wait for the messages.")
def demo(timeout: float) -> None:
    """Run the whole Pulse-to-Celery path in-process, with no broker, on bundled Taskcluster events."""
    from . import demo as demo_module

    ok = demo_module.run(out=click.echo, timeout=timeout)
    sys.exit(0 if ok else 1)


@main.group("dead-letters")
def dead_letters() -> None:
    """List, inspect, replay and drop the Pulse messages kept in the dead-letter store."""


def _store_call(fun: Any, *args: Any) -> Any:
    try:
        return fun(*args)
    except PulseCeleryError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach the Celery broker: {exc}") from None


@dead_letters.command("list")
@app_option
@click.option("--limit", type=int, default=None, help="Show at most this many.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line, body included.")
def list_command(app_name: str, limit: int | None, as_json: bool) -> None:
    """Show the dead letters, oldest first (they stay in the store)."""
    from .deadletters import list_dead_letters

    letters = _store_call(list_dead_letters, _load_app(app_name), limit)
    for letter in letters:
        if as_json:
            click.echo(letter.as_json())
            continue
        when = datetime.datetime.fromtimestamp(letter.stored_at, datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S"
        )
        click.echo(f"{letter.id}  {when}  {letter.reason:<20} {letter.exchange}  {letter.routing_key}")
    if not as_json:
        click.echo(f"{len(letters)} dead letter(s)", err=True)


@dead_letters.command("show")
@app_option
@click.argument("letter_id")
def show_command(app_name: str, letter_id: str) -> None:
    """Print one dead letter: why it is there, where it came from, its headers and body."""
    from .deadletters import list_dead_letters

    for letter in _store_call(list_dead_letters, _load_app(app_name)):
        if letter.id == letter_id:
            record = json.loads(letter.as_json())
            record["body"] = letter.body.decode("utf-8", "replace")
            del record["body_base64"]
            click.echo(json.dumps(record, indent=2, sort_keys=True))
            return
    raise click.ClickException(f"no dead letter {letter_id}")


@dead_letters.command("replay")
@app_option
@click.argument("letter_ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter whose body decodes.")
def replay_command(app_name: str, letter_ids: tuple[str, ...], replay_all: bool) -> None:
    """Send dead letters' payloads to their tasks again (through the Celery broker)."""
    from .deadletters import replay

    if not letter_ids and not replay_all:
        raise click.ClickException("name dead letters to replay, or pass --all")
    count = _store_call(replay, _load_app(app_name), list(letter_ids) or None)
    click.echo(f"replayed {count} dead letter(s)")
    if letter_ids and count < len(letter_ids):
        raise click.ClickException(
            f"{len(letter_ids) - count} not replayed: unknown id, unknown task, or a body that is not JSON"
        )


@dead_letters.command("drop")
@app_option
@click.argument("letter_ids", nargs=-1, required=True)
def drop_command(app_name: str, letter_ids: tuple[str, ...]) -> None:
    """Remove dead letters for good."""
    from .deadletters import drop

    count = _store_call(drop, _load_app(app_name), list(letter_ids))
    click.echo(f"dropped {count} dead letter(s)")


if __name__ == "__main__":
    main()
