"""The running lease: one copy of a deduped Pulse message runs at a time, on any worker.

Two copies of one message can reach pool processes at the same moment:

* under ``enqueue``, the Celery broker's connection lost between a task message's publish
  and its confirm: the hand-off requeues the Pulse message, it is enqueued again, and both
  task messages are on the Celery broker;
* a publisher's repeat (unflagged) consumed by two workers at once;
* under ``complete``, a redelivery taken by another worker while the first run, whose
  channel was lost, goes on.

Before a deduped task runs, its process takes the message's lease in the dedupe store
(``<key>:running``: ``SET NX`` with a token of its own, expiring after
:attr:`Leases.seconds`) and reads the message's state in the same round trip:

* lease taken, state not ``succeeded``: the task runs. A thread of the process renews the
  lease every :attr:`Leases.renew_every` seconds while it runs. When the task returns,
  ``succeeded`` is written and the lease released in one round trip; when it raises, only
  the lease is released;
* state ``succeeded``: the task is not run (the guard ends it as Celery's ``Ignore``);
* the lease held by another run: this copy waits (polling, from 50 ms up to 1 s apart),
  holding its pool slot, until it can take the lease; then it runs only if the state is
  still not ``succeeded`` (the other run failed, retried, or its process died).

A process killed mid-run stops renewing: its lease expires within :attr:`Leases.seconds`
and a copy runs then (at least once, as without dedupe). A run whose renewals are held up
for longer than the lease (a thread starved for 10 s) could overlap a copy: the renewal
that finds the lease gone logs a WARNING. The store down: the task runs without a lease.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from functools import partial

from .dedupe import SUCCEEDED, DedupeStore, StoreUnavailable

logger = logging.getLogger(__name__)


class Leases:
    """Take, renew and release the running leases of the deduped tasks this process runs."""

    #: Seconds a lease lasts without renewal (a killed run's copy waits at most this long).
    seconds = 10.0
    #: Seconds between renewals of the leases held.
    renew_every = 2.5
    #: Seconds between a waiting copy's tries: the first, and the most.
    poll_first, poll_most = 0.05, 1.0

    def __init__(self, store: DedupeStore) -> None:
        self.store = store
        self._pid = 0
        self._held: dict[str, str] = {}
        self._lock = threading.Lock()
        os.register_at_fork(after_in_child=partial(_forked, weakref.ref(self)))

    @property
    def lease_ms(self) -> int:
        return int(self.seconds * 1000)

    def acquire(self, key: str, on_wait: Callable[[], None]) -> tuple[str | None, bool]:
        """Wait for ``key``'s lease: (token, already succeeded); token None if the store is down.

        ``on_wait`` is called once, when a copy holds the lease and this one waits.
        """
        token = os.urandom(8).hex()
        pause = self.poll_first
        while True:
            try:
                taken, state = self.store.claim(key, token, self.lease_ms)
            except StoreUnavailable:
                return None, False  # run it: at least once (dedupe.py says why)
            if state == SUCCEEDED:
                if taken:
                    self.release(key, token, succeeded=False)
                return None, True
            if taken:
                self._hold(key, token)
                return token, False
            if pause == self.poll_first:
                on_wait()
            time.sleep(pause)
            pause = min(pause * 2, self.poll_most)

    def release(self, key: str, token: str | None, succeeded: bool) -> None:
        """Stop renewing; record ``succeeded`` if the run did; release the lease (one round trip)."""
        with self._lock:
            self._held.pop(key, None)
        self.store.finish(key, token, succeeded)

    def _hold(self, key: str, token: str) -> None:
        with self._lock:
            if self._pid != os.getpid():  # the first lease in this process
                self._pid = os.getpid()
                self._held = {}
                threading.Thread(target=self._renew_forever, name="pulse-dedupe-lease", daemon=True).start()
            self._held[key] = token

    def _renew_forever(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            time.sleep(self.renew_every)
            with self._lock:
                held = dict(self._held)
            try:
                lost = self.store.renew(held, self.lease_ms)
            except StoreUnavailable:
                continue  # the store is down: copies run without leases anyway
            for key in lost:
                with self._lock:
                    if self._held.get(key) != held[key]:
                        continue  # released meanwhile
                logger.warning(
                    "The running lease of %s expired before its run ended (renewals held up for over "
                    "%.0f s); a copy of its Pulse message may run at the same time",
                    key,
                    self.seconds,
                )


def _forked(ref: weakref.ref[Leases]) -> None:
    """In a prefork child: none of the parent's leases, and no lock its renewal thread held."""
    leases = ref()
    if leases is not None:
        leases._pid = 0
        leases._held = {}
        leases._lock = threading.Lock()
