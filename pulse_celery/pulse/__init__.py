"""The Pulse engine: everything about consuming Pulse, and nothing about Celery.

Two hosts run it: :class:`~pulse_celery.pulse.connection.PulseConnection` on an event loop
of its own, and the Celery worker step (:mod:`pulse_celery.worker`) on the worker's hub.
Nothing below this package imports Celery (a test checks it).
"""
