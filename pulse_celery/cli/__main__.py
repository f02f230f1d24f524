"""``python -m pulse_celery.cli``: the ``pulse-celery`` command."""

from .main import main

main()
