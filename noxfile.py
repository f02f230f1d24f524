"""The Python x Celery matrix: ``nox`` runs it all, ``nox -l`` lists it, ``nox -s NAME`` runs one.

* ``unit-3.10`` ... ``unit-3.13``: the unit tests on each supported Python, with the newest
  Celery, kombu and py-amqp that pip resolves.
* ``docs``: the docs site, built with ``mkdocs build --strict`` (not in the default list:
  .ci/run builds it in its own venv).
* ``celery-lowest`` and ``celery-highest``: the end-to-end and ack tests against the local
  RabbitMQ on the lowest and the highest supported Celery, each pinned with its kombu and
  py-amqp (the lowest session runs the unit tests too: they cover pulse_celery._compat's
  fallbacks, which only the lowest versions take; its end-to-end tests run over plain AMQP).

Interpreters come from pyenv when it is there (this machine and CI); a missing one fails
its session instead of skipping it.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]

#: The lowest and highest versions pyproject.toml allows, each a set that installs together.
LOWEST = ["celery==5.4.0", "kombu==5.3.5", "amqp==5.1.1"]
HIGHEST = ["celery==5.7.0", "kombu==5.7.0", "amqp==5.4.2"]

INTEGRATION = ["tests/integration/test_end_to_end.py", "tests/integration/test_acks.py"]

nox.options.error_on_missing_interpreters = True
# uv (in the test extra) makes each session's virtualenv and installs into it: about 20 s less
# per session than pip on the CI machine, where .ci/run's time is kept under 45 minutes.
nox.options.default_venv_backend = "uv"
nox.options.reuse_existing_virtualenvs = False
nox.options.sessions = [f"unit-{python}" for python in PYTHONS] + ["celery-lowest", "celery-highest"]


def _put_pyenv_pythons_on_path() -> None:
    """Let ``python3.X`` name pyenv's newest 3.X, for each supported X, before any other on PATH."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    found = []
    for python in PYTHONS:
        candidates = sorted(
            root.glob(f"{python}.*/bin/python{python}"),
            key=lambda path: [int(part) for part in path.parts[-3].split(".") if part.isdigit()],
        )
        if candidates:
            found.append(str(candidates[-1].parent))
    if found:
        os.environ["PATH"] = os.pathsep.join([*found, os.environ.get("PATH", "")])


_put_pyenv_pythons_on_path()


@nox.session(python=PYTHONS)
def unit(session: nox.Session) -> None:
    """The unit tests on one Python."""
    session.install("-e", ".[test]")
    session.run("pytest", "tests/unit", *session.posargs)


@nox.session(name="celery-lowest", python=PYTHONS[0])
def celery_lowest(session: nox.Session) -> None:
    """The end-to-end and ack tests (and the unit tests) on the lowest supported Celery."""
    session.install("-e", ".[test]", *LOWEST)
    _check_installed(session, LOWEST)
    # The end-to-end tests over plain AMQP only: the main run has them over TLS on the newest
    # versions, and the unit tests here read real TLS sockets through py-amqp 5.1.1's transport.
    session.run("pytest", "tests/unit", *INTEGRATION, "-m", "not tls", *session.posargs)


@nox.session(name="celery-highest", python=PYTHONS[-1])
def celery_highest(session: nox.Session) -> None:
    """The end-to-end and ack tests on the highest supported Celery (unit-3.13 has its unit tests)."""
    session.install("-e", ".[test]", *HIGHEST)
    _check_installed(session, HIGHEST)
    session.run("pytest", *INTEGRATION, *session.posargs)


@nox.session(python=PYTHONS[1])
def docs(session: nox.Session) -> None:
    """Build the docs site with --strict (a broken link or reference fails); ``-- serve`` serves it."""
    session.install("-e", ".[docs]")
    if session.posargs[:1] == ["serve"]:
        session.run("mkdocs", "serve", *session.posargs[1:])
    else:
        session.run("mkdocs", "build", "--strict", "-d", session.create_tmp() + "/site", *session.posargs)


def _check_installed(session: nox.Session, pins: list[str]) -> None:
    """Fail unless the pinned versions are the ones installed (a resolver could pick others)."""
    wanted = dict(pin.split("==") for pin in pins)
    session.run(
        "python",
        "-c",
        "import sys, importlib.metadata as m; wanted = dict(a.split('=') for a in sys.argv[1:]); "
        "found = {n: m.version(n) for n in wanted}; "
        "sys.exit(0 if found == wanted else f'installed {found}, wanted {wanted}')",
        *(f"{name}={version}" for name, version in wanted.items()),
    )
