"""The ``pulse-celery`` command."""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any, NoReturn

import click

from ..errors import PulseCeleryError


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
    from ..worker.deadletters import list_dead_letters

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
    from ..worker.deadletters import list_dead_letters

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
    from ..worker.deadletters import replay

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
    from ..worker.deadletters import drop

    count = _store_call(drop, _load_app(app_name), list(letter_ids))
    click.echo(f"dropped {count} dead letter(s)")


# -- Pulse traffic from a shell (pulse_celery.sniffer) and the app's setup (pulse_celery.inspection)


def _pulse_config(app_name: str | None, url: str | None) -> Any:
    """Load the Pulse settings as the worker would: the app's pulse_*, PULSE_* env, --url on top."""
    from collections import ChainMap

    from ..config import load_config

    conf: Any = _load_app(app_name).conf if app_name else {}
    if url:
        conf = ChainMap({"pulse_url": url}, conf)
    return _run(load_config, conf)


def _run(fun: Any, *args: Any, **kwargs: Any) -> Any:
    """Call ``fun``; a pulse_celery error becomes one line on stderr and exit status 1."""
    try:
        return fun(*args, **kwargs)
    except PulseCeleryError as exc:
        raise click.ClickException(str(exc)) from None


def _log_to_stderr(verbose: bool) -> None:
    """With ``verbose``, the library's log lines on stderr; without, only the command's own lines."""
    import logging

    for name in ("pulse_celery", "amqp"):
        logger = logging.getLogger(name)
        logger.propagate = False
        if verbose:
            handler: logging.Handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            logger.setLevel(logging.INFO)
        else:
            handler = logging.NullHandler()
        logger.addHandler(handler)


def _write_line(line: str) -> None:
    # Flushed per line, so that `listen | jq` or `listen > file` sees each message at once.
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _quiet_broken_pipe() -> NoReturn:
    """End quietly when the reader of stdout has gone (``listen | head -1``)."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(0)


url_option = click.option(
    "--url",
    default=None,
    help="Pulse URL, e.g. amqps://pulse.mozilla.org:5671 (default: the app's pulse_url, else PULSE_URL).",
)
optional_app_option = click.option(
    "-A", "--app", "app_name", default=None, help="Take the Pulse settings (pulse_*) from this Celery app."
)


@main.command()
@click.argument("exchange")
@click.argument("routing_keys", nargs=-1)
@click.option("--count", type=click.IntRange(min=1), default=None, help="Stop after this many messages.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop after this many seconds without a message.",
)
@click.option(
    "-v", "--verbose", is_flag=True, help="Log what the connection does (reconnects, ...) on stderr."
)
@url_option
@optional_app_option
def listen(
    exchange: str,
    routing_keys: tuple[str, ...],
    count: int | None,
    timeout: float | None,
    verbose: bool,
    url: str | None,
    app_name: str | None,
) -> None:
    """Print each message of EXCHANGE as one JSON line (routing keys default to #).

    An exclusive, auto-delete queue queue/<user>/anonymous.listen.<random> is bound for the
    life of the command; a lost connection is made again, with a new queue. Exit status 0
    when it stops on --count or on --timeout; 1 when --timeout ends it before --count
    messages came.
    """
    from .sniffer import listen as listen_to

    _log_to_stderr(verbose)
    config = _pulse_config(app_name, url)
    keys = routing_keys or ("#",)

    def ready(queue: str) -> None:
        click.echo(f"listening on {queue} to {exchange} {' '.join(keys)}", err=True)

    try:
        result = _run(
            listen_to, config, exchange, keys, _write_line, count=count, timeout=timeout, on_ready=ready
        )
    except BrokenPipeError:
        _quiet_broken_pipe()
    except KeyboardInterrupt:
        sys.exit(130)
    if result.timed_out and count is not None:
        raise click.ClickException(
            f"{timeout} s passed without a message; received {result.received} of {count}"
        )
    click.echo(f"received {result.received} message(s)", err=True)


@main.command()
@click.argument("exchange")
@click.argument("routing_key")
@click.argument("body", default="{}")
@click.option(
    "-r", "--route", "routes", multiple=True, help="A CC route (repeat for more), e.g. route.index.x."
)
@click.option(
    "--declare", is_flag=True, help="Declare EXCHANGE (durable topic) if missing: for brokers you own."
)
@url_option
@optional_app_option
def publish(
    exchange: str,
    routing_key: str,
    body: str,
    routes: tuple[str, ...],
    declare: bool,
    url: str | None,
    app_name: str | None,
) -> None:
    """Publish one persistent JSON message (BODY, or - for stdin; default {}) and wait for the confirm."""
    from .sniffer import Outgoing, Publisher, parse_body

    config = _pulse_config(app_name, url)
    payload = _run(parse_body, sys.stdin.read() if body == "-" else body)
    message = Outgoing(exchange, routing_key, payload, routes)
    with _run(Publisher, config, declare=declare) as publisher:
        _run(publisher.send, message)
    click.echo(
        f"published to {exchange} {routing_key} with {len(routes)} CC route(s); the broker confirmed it"
    )


@main.command()
@click.argument("file", type=click.File("r", encoding="utf-8"))
@click.option("--exchange", default=None, help="Publish every message to this exchange instead of its own.")
@click.option("--declare", is_flag=True, help="Declare each exchange (durable topic) if missing.")
@url_option
@optional_app_option
def replay(file: Any, exchange: str | None, declare: bool, url: str | None, app_name: str | None) -> None:
    """Publish again each message of FILE (- for stdin), JSON lines as listen writes them.

    Each message goes to its exchange and routing key with its CC routes, and is confirmed
    by the broker before the next is sent.
    """
    from .sniffer import Publisher, read_records

    config = _pulse_config(app_name, url)
    lines: Any = file
    progress = None
    if file is not sys.stdin and sys.stderr.isatty():
        total = sum(1 for line in file if line.strip())
        file.seek(0)
        progress = click.progressbar(length=total, label="replaying", file=sys.stderr)
    with _run(Publisher, config, declare=declare) as publisher:
        try:
            for message in read_records(lines, exchange=exchange):
                publisher.send(message)
                if progress is not None:
                    progress.update(1)
        except PulseCeleryError as exc:
            raise click.ClickException(f"{exc} ({publisher.sent} message(s) replayed before it)") from None
        finally:
            if progress is not None:
                progress.render_finish()
    click.echo(f"replayed {publisher.sent} message(s)")


@main.command("bindings")
@app_option
@url_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object per queue and line.")
@click.option("--offline", is_flag=True, help="Do not ask the broker about the queues.")
def bindings_command(app_name: str, url: str | None, as_json: bool, offline: bool) -> None:
    """Show every queue, binding, task and ack policy of the app, and each queue on the broker.

    Queues are looked up with passive declares: nothing is created. READY counts the messages
    waiting in the queue (not those delivered and unacknowledged).
    """
    from ..bindings import app_bindings
    from ..sources import plan_sources
    from .client import open_connection
    from .inspection import format_table, queue_rows, queue_states

    app = _load_app(app_name)
    config = _pulse_config(app_name, url)
    sources = _run(plan_sources, config, app_bindings(app))
    if not sources:
        raise click.ClickException(f"the app {app_name!r} has no task with a @pulse_binding")
    rows = []
    for source in sources:  # a source that cannot be reached still shows its queues
        states = None
        if not offline:
            try:
                with open_connection(source.config) as connection:
                    states = queue_states(connection, source.config, source.plans)
            except PulseCeleryError as exc:
                where = "" if source.name == "default" else f" for source {source.name!r}"
                click.echo(f"queue state not shown{where}: {exc}", err=True)
        rows.extend(queue_rows(source.config, source.plans, states, source.name))
    if as_json:
        for row in rows:
            click.echo(json.dumps(row))
    else:
        for line in format_table(rows):
            click.echo(line)


@main.command()
@app_option
@url_option
def check(app_name: str, url: str | None) -> None:
    """Check the app's Pulse settings, credentials, exchanges and permissions; consume nothing.

    Permissions are proven on a throwaway exclusive queue queue/<user>/pulse-celery-check-<random>,
    declared, bound and deleted at once. Exit status 1 when a check fails.
    """
    from collections import ChainMap

    from ..bindings import app_bindings
    from .inspection import run_checks

    app = _load_app(app_name)
    conf: Any = ChainMap({"pulse_url": url}, app.conf) if url else app.conf
    total = failed = 0
    for result in run_checks(conf, app_bindings(app), app):
        total += 1
        failed += not result.ok
        click.echo(result.line())
    if failed:
        raise click.ClickException(f"{failed} of {total} checks failed")
    click.echo(f"all {total} checks passed")
