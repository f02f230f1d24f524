"""The ``pulse-celery`` command."""

from __future__ import annotations

import sys

import click


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


if __name__ == "__main__":
    main()
