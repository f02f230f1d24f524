"""The queues of one engine, by key: what the engine does to all of them at once, and their figures."""

from __future__ import annotations

from typing import Any

from .consumer import QueueConsumer
from .events import ConnectedQueue
from .loop import guarded
from .session import Session
from .topology import QueueSpec


class Consumers(dict[str, QueueConsumer]):
    """Each queue consumer of an engine, by its key (which outlives an anonymous queue's names)."""

    def put(self, consumer: QueueConsumer) -> None:
        """Add ``consumer``, closing the one it replaces (same key)."""
        old = self.get(consumer.key)
        if old is not None:
            old.close()
        self[consumer.key] = consumer

    def open(self) -> list[QueueConsumer]:
        """Those not closed or deleted by their owner."""
        return [c for c in self.values() if c.wants not in ("closed", "deleted")]

    def describe(self) -> str:
        return ", ".join(c.describe() for c in self.open()) or "none"

    def connected_queues(self) -> tuple[ConnectedQueue, ...]:
        return tuple(ConnectedQueue(c.name, c.spec.anonymous) for c in self.open())

    def in_flight(self) -> int:
        """Unsettled deliveries on the live connection's channels."""
        return sum(c.in_flight for c in self.values())

    def consuming(self) -> bool:
        return any(c.consuming for c in self.values())

    def on_channel(self, channel_id: int) -> QueueConsumer | None:
        """The queue consumed on channel ``channel_id`` of the live connection, if any."""
        for consumer in self.values():
            if consumer.lane is not None and consumer.lane.channel_id == channel_id:
                return consumer
        return None

    def activate(self) -> None:
        """Consume again where each queue's owner wants it (after a hold)."""
        for consumer in list(self.values()):
            guarded(consumer.activate, f"resuming Pulse queue {consumer.name}")()

    def deactivate(self, unbatch: bool = False) -> None:
        """Stop every queue's new deliveries; with ``unbatch``, their acks go out at once from now."""
        for consumer in self.values():
            consumer.deactivate()
            if unbatch and consumer.lane is not None:
                consumer.lane.unbatch()

    def flush_acks(self) -> None:
        """Send the acks already decided on: they must not be redelivered."""
        for consumer in self.values():
            if consumer.lane is not None:
                consumer.lane.acker.flush()

    def connected(self, session: Session, declared: dict[str, tuple[QueueSpec, Any]]) -> None:
        """A connection is up: each queue starts on the channel its queue was declared on, if any."""
        for key, consumer in list(self.items()):
            spec, channel = declared.get(key, (None, None))
            if spec is not consumer.spec:  # replaced while connecting: it declares its own
                session.close_channel(channel)  # (a no-op for an error or None)
                channel = None
            guarded(consumer.connected, f"starting Pulse queue {consumer.name}")(channel)

    def disconnected(self) -> None:
        for consumer in self.values():
            consumer.disconnected()

    def snapshot(self) -> dict[str, Any]:
        """Each queue's figures (``pulse_status``'s ``queues``)."""
        return {
            c.name: c.stats.snapshot(state=c.state(), prefetch=c.prefetch, in_flight=c.in_flight)
            for c in list(self.values())
        }
