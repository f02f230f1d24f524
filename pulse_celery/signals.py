"""Celery-style signals of the Pulse side of a worker.

``pulse_connected`` is sent in the worker's main process each time a Pulse connection comes
up, with:

* ``source``: the Pulse source's name (``"default"`` for the single-source settings);
* ``queues``: a tuple of :class:`~pulse_celery.pulse.events.ConnectedQueue` (``name``,
  ``anonymous``) to be consumed on it;
* ``first``: True for the first connect of this worker's consumer;
* ``reconnect``: True after a loss: anonymous queues missed what was published meanwhile;
* ``recycled``: True when it replaces a live connection (``pulse_recycle_interval``);
* ``event``: the whole :class:`~pulse_celery.pulse.events.Connected`.

The sender is the Celery app. Receivers run on the worker's event loop: keep them short (send
a task to do the resync), since no Pulse message is handled while one runs::

    from pulse_celery.signals import pulse_connected

    @pulse_connected.connect
    def resync(sender, source, queues, reconnect, **kwargs):
        if reconnect and any(q.anonymous for q in queues):
            catch_up.delay(source)
"""

from __future__ import annotations

from celery.utils.dispatch import Signal

__all__ = ["pulse_connected"]

pulse_connected = Signal(name="pulse_connected")
