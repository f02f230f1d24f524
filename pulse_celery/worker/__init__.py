"""The Celery host: the worker step that runs the Pulse engine on the worker's hub.

Loaded by Celery when a worker of a Pulse app starts (the step is named, not imported, by
``@pulse_binding``). Deliveries become task invocations (dispatch.py) under an ack policy:
``enqueue`` hands task messages to the Celery broker (handoff.py, taskmessage.py);
``complete`` runs them through Celery's own strategy (celery_message.py). Bad input goes to
the dead-letter store (deadletters.py); remote control and metrics show each queue.
"""
