"""What the agent (and the audit log) learns about a payment: masked values only."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from dataclasses import asdict, dataclass
from typing import Any

from proxy.securepay.states import PaymentStatus


@dataclass(frozen=True)
class PaymentEvent:
    type: str  # started | progress | field-complete | error | submitting | result | ended
    #            | transferred (the call, and this payment, moved to another agent)
    call_id: str
    sid: str
    agent_id: str  # whom the event is for: the call's agent when it was published
    status: PaymentStatus
    field: str = ""
    masked: dict[str, str] = dataclasses.field(default_factory=dict)  # "•••• 1111" style
    brand: str = ""
    error: str = ""
    token: str = ""
    last4: str = ""

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON types: the status as its wire string."""
        return {**asdict(self), "status": self.status.value}


class EventBus:
    """Fan-out to subscribers with bounded queues (a slow panel loses old events, not memory)."""

    def __init__(self, queue_size: int = 256) -> None:
        self._subscribers: set[asyncio.Queue[PaymentEvent]] = set()
        self._size = queue_size
        self.history: list[PaymentEvent] = []

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def subscribe(self) -> asyncio.Queue[PaymentEvent]:
        queue: asyncio.Queue[PaymentEvent] = asyncio.Queue(self._size)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[PaymentEvent]) -> None:
        self._subscribers.discard(queue)

    def publish(self, event: PaymentEvent) -> None:
        self.history.append(event)
        del self.history[:-1000]
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)
