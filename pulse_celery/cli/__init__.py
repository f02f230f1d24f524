"""The ``pulse-celery`` command: demo, listen, publish, replay, bindings, check, dead-letters.

``main.py`` holds the click commands; each command's logic lives in a module of its own
(``sniffer.py``: listen, publish, replay; ``inspection.py``: bindings, check; ``demo.py``).
"""

from .main import main

__all__ = ["main"]
